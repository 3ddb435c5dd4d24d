//! The lockstep engine: the one [`pipeline`] both edges (the CLI and the controller) run, and the
//! stages behind it that need the outside world — [`source`] (a directory or a Git commit, and its
//! signature), [`decrypt`] (the only place plaintext is made, in memory), [`apply`] (server-side
//! apply, inventory, prune, health, diff). Render and the SOPS crates are re-exported so the edges
//! name every stage through one crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
pub mod decrypt;
pub mod pipeline;
pub mod probe;
pub mod rerun;
pub mod review;
pub mod sealed;
pub mod source;

pub use lockstep_core::objects;
pub use lockstep_crypto::{keys, sops};
pub use lockstep_render as render;
