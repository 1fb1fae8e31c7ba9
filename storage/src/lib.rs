//! berth-storage: everything berth keeps. Digests and names (the grammar
//! every identifier passes before it touches a path or a row), the
//! content-addressed blob store on object_store, the SQLite metadata, and
//! upload staging.
//!
//! Invariant: objects are written before the rows that name them and rows
//! are deleted before their objects, so a crash can leave an orphan object
//! (harmless, swept later) but never a row pointing at nothing.

pub mod blobs;
pub mod digest;
pub mod manifest;
pub mod meta;
pub mod names;
pub mod uploads;

pub use blobs::BlobStore;
pub use digest::{Algorithm, Digest, DigestError};
pub use meta::{Metadata, Synchronous};
pub use names::{NameError, RepoName};
pub use uploads::Uploads;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failures of the storage layer itself (not of the client's request).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("request body error: {0}")]
    Body(String),
    #[error("upload passed its size limit of {limit} bytes ({received} received)")]
    TooLarge { limit: u64, received: u64 },
    #[error("storage is shutting down")]
    Closed,
    #[error("{0}")]
    Internal(String),
}

/// Current time as unix milliseconds, the unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Where and how to store data.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub synchronous: Synchronous,
}

/// The storage parts the registry uses, opened together on one data dir.
#[derive(Clone)]
pub struct Storage {
    pub meta: Metadata,
    pub blobs: BlobStore,
    pub uploads: Arc<Uploads>,
    data_dir: PathBuf,
}

impl Storage {
    /// Opens the embedded default: `<data_dir>/berth.db` for metadata,
    /// `<data_dir>/blobs/` for blobs and `<data_dir>/uploads/` for staging
    /// (on the same filesystem, so committing an upload is a rename).
    pub fn open(config: &StorageConfig) -> Result<Storage, StorageError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)?;
        let meta = Metadata::open(&dir.join("berth.db"), config.synchronous)?;
        let blobs = BlobStore::local(dir)?;
        let uploads = Arc::new(Uploads::open(&dir.join("uploads"))?);
        Ok(Storage {
            meta,
            blobs,
            uploads,
            data_dir: dir.clone(),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Closes the database cleanly (pending writes finish first).
    pub async fn close(&self) {
        self.meta.close().await;
    }
}
