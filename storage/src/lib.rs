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
pub mod locks;
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
    pub locks: Arc<locks::BlobLocks>,
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
            locks: Arc::new(locks::BlobLocks::default()),
            data_dir: dir.clone(),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Completes an upload: moves the verified staging file into the blob
    /// store (object first) and links the blob into `repo` (row second),
    /// under the digest's lock so GC cannot interleave. The inner error is
    /// a quota refusal; the object then stays, uncharged, for the sweep.
    pub async fn store_upload(
        &self,
        staged: PathBuf,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<Result<(), meta::QuotaExceeded>, StorageError> {
        let key = digest.to_string();
        let _guard = self.locks.lock(&key).await;
        self.blobs.commit_staged(staged, digest).await?;
        self.meta.link_blob(repo, digest, size).await
    }

    /// Deletes blob rows that are still unlinked and untouched since
    /// `cutoff`, then their objects, holding their locks throughout.
    /// Returns what was deleted. An object that cannot be deleted stays as
    /// an orphan for `sweep_orphans`.
    pub async fn delete_blobs(
        &self,
        batch: Vec<meta::DoomedBlob>,
        cutoff: i64,
    ) -> Result<Vec<meta::DoomedBlob>, StorageError> {
        let digests: Vec<String> = batch.iter().map(|b| b.digest.clone()).collect();
        let _guards = self
            .locks
            .lock_many(digests.iter().map(String::as_str))
            .await;
        let deleted = self.meta.delete_blob_rows_checked(batch, cutoff).await?;
        let digests: Vec<Digest> = deleted
            .iter()
            .filter_map(|b| b.digest.parse().ok())
            .collect();
        for (d, e) in self.blobs.delete_many(digests).await? {
            tracing::warn!(digest = %d, error = %e, "blob object not deleted; a later sweep retries");
        }
        Ok(deleted)
    }

    /// Objects in the blob store without a blob row, last written before
    /// `cutoff` (e.g. left by a crash between a row deletion and its
    /// object's, or by a refused upload). Deletes them unless `dry_run`.
    pub async fn sweep_orphans(
        &self,
        cutoff: i64,
        dry_run: bool,
    ) -> Result<Vec<meta::DoomedBlob>, StorageError> {
        let objects = self.blobs.list().await?;
        let mut orphans = Vec::new();
        for chunk in objects.chunks(512) {
            let present = self
                .meta
                .blob_rows_present(chunk.iter().map(|o| o.digest.to_string()).collect())
                .await?;
            for (o, present) in chunk.iter().zip(present) {
                if present || o.last_modified_ms >= cutoff {
                    continue;
                }
                if !dry_run {
                    let key = o.digest.to_string();
                    let _guard = self.locks.lock(&key).await;
                    // Re-check under the lock: an upload may have linked it.
                    if self.meta.blob_rows_present(vec![key.clone()]).await?[0] {
                        continue;
                    }
                    self.blobs.delete(&o.digest).await?;
                }
                orphans.push(meta::DoomedBlob {
                    digest: o.digest.to_string(),
                    size: o.size,
                });
            }
        }
        Ok(orphans)
    }

    /// Closes the database cleanly (pending writes finish first).
    pub async fn close(&self) {
        self.meta.close().await;
    }
}
