//! Where a project comes from: an in-memory [`Snapshot`] of its files, from a directory
//! ([`Snapshot::read_dir`]) or a Git commit ([`git::fetch`]), whose signature [`verify`] checks;
//! and the archives of its repository and OCI [`charts`].

pub mod charts;
pub mod git;
pub mod verify;

pub use lockstep_core::snapshot::*;
