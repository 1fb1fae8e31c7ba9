//! The metadata store: repositories, manifests, tags, blob links, quota,
//! GC bookkeeping, builds and accounts. `types` and `builds` are what it
//! holds and answers, for every backend; `sqlite/` is the embedded backend
//! and the only place its SQL lives. `Metadata` is the handle the rest of
//! berth calls; ARCHITECTURE.md states the contract a second backend
//! (PostgreSQL) must meet.

pub mod builds;
pub mod console;
mod sqlite;
mod types;

pub(crate) use sqlite::Integrity;
pub use sqlite::{Metadata, Synchronous};
pub use types::*;
