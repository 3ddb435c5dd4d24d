//! lockstep: GitOps with secrets kept encrypted in Git.
//!
//! The library follows the pipeline the binary runs, one module per stage:
//!
//! ```text
//! keys → sops format → render → decrypt → apply → sync
//! ```
//!
//! Built so far: [`keys`] and [`sops`] (encrypt before commit), [`source`] and [`render`] (manifests
//! per environment, secrets sealed), and the command-line edge [`cli`]. Commands whose stage is not
//! built yet report themselves as not implemented (exit code 2).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apply;
pub mod cli;
pub mod controller;
pub mod decrypt;
pub mod keys;
pub mod render;
pub mod sops;
pub mod source;
