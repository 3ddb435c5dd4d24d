//! The vocabulary every lockstep stage shares, and nothing else: the Kubernetes object identity,
//! scope and apply order ([`objects`]), and the in-memory project ([`snapshot`]) that render reads
//! and the engine fills from a directory or a Git commit.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod objects;
pub mod snapshot;

pub use objects::ObjectId;
pub use snapshot::{Snapshot, SourceError};
