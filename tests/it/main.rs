//! The integration tests, in one binary (on a 2-core machine each test binary would link the whole
//! dependency graph again), a module per area; `support` is the harness: peers, control plane,
//! namespaces, ServiceAccount kubeconfigs, loopback Git servers.

#[macro_use]
mod support;

mod apply;
mod chart_hooks;
mod chart_sources;
mod charts;
mod cli_errors;
mod controller;
mod decrypt;
mod faults;
mod first_day;
mod gitserver;
mod kustomize;
mod kustomize_charts;
mod ordering;
mod peers_smoke;
mod render;
mod review;
mod sops_commands;
mod sops_interop;
mod sops_properties;
mod verify;
