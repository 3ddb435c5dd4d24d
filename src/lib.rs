//! lockstep: GitOps with secrets kept encrypted in Git.
//!
//! The library follows the pipeline the binary runs, one module per stage:
//!
//! ```text
//! keys → sops format → render → decrypt → apply → sync
//! ```
//!
//! Only the command-line surface exists so far ([`cli`]); each stage lands as its own module and the
//! commands that need it report themselves as not implemented (exit code 2) until then.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod keys;
pub mod sops;
