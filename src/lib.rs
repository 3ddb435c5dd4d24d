//! lockstep: GitOps with secrets kept encrypted in Git.
//!
//! The library follows the pipeline the binary runs, one module per stage:
//!
//! ```text
//! keys → sops format → render → decrypt → apply → sync
//! ```
//!
//! | stage | module |
//! |---|---|
//! | the object vocabulary every stage shares (identity, scope, kind order) | [`objects`] |
//! | age keys | [`keys`] |
//! | the SOPS file format | [`sops`] |
//! | where a project comes from (directory, Git commit, chart archives) | [`source`] |
//! | templates + values → manifests, secrets sealed | [`render`] |
//! | the only place plaintext is produced | [`decrypt`] |
//! | dry run, server-side apply, inventory, prune, health, diff | [`apply`] |
//! | the one pipeline both edges run: fetch → verify → render → decrypt → validate → apply → prune → health | [`pipeline`] |
//! | a change's effect on every environment, keyless, as a pull-request comment | [`review`] |
//! | the `Sync` resource and its reconcile | [`controller`] |
//! | arguments, environment, exit codes, human output | [`cli`] |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod controller;

pub use lockstep_engine::{
    apply, decrypt, keys, objects, pipeline, probe, render, review, sops, source,
};
