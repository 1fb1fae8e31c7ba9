//! berth-storage: everything berth keeps. Digests and names (the grammar
//! every identifier passes before it touches a path or a row), the
//! content-addressed blob store on object_store, the metadata (SQLite, or
//! PostgreSQL with `[storage] database_url`), and upload staging.
//!
//! Invariant: objects are written before the rows that name them and rows
//! are deleted before their objects, so a crash can leave an orphan object
//! (harmless, swept later) but never a row pointing at nothing.

pub mod blobs;
pub mod digest;
pub mod lease;
pub mod locks;
pub mod manifest;
pub mod meta;
pub mod migrate;
pub mod names;
pub mod uploads;

pub use blobs::{BlobStore, S3Config};
pub use digest::{Algorithm, Digest, DigestError};
pub use meta::{Metadata, PostgresConfig, Synchronous};
pub use names::{NameError, RepoName};
pub use uploads::{Staged, UploadLimits, Uploads};

/// The blob store identity's name in `storage_identity`.
const BLOB_STORE_IDENTITY: &str = "blob_store";

use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Failures of the storage layer itself (not of the client's request).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The metadata database failed (its own error, kept opaque so that
    /// no backend's types leak out of this crate).
    #[error("database error: {0}")]
    Database(DatabaseError),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("blob store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("request body error: {0}")]
    Body(String),
    #[error("storage is shutting down")]
    Closed,
    /// A tenant or overall bound was reached (answered 429, never 500):
    /// `limit` names the config key, `message` says what to do.
    #[error("{message}")]
    LimitReached {
        limit: &'static str,
        message: String,
    },
    /// Another berth process holds this data dir.
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Internal(String),
}

/// Creates the data dir (mode 0700: it holds every tenant's data and
/// berth's secrets) and takes an exclusive lock on `<dir>/berth.lock`,
/// which names the holder's pid. A second process is refused with that pid.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StorageError> {
    std::fs::create_dir_all(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(dir = %dir.display(), was = format!("{mode:o}"), "data dir was readable by others; set it to 0700");
    }
    let path = dir.join("berth.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StorageError::Locked(format!(
                "data dir {} is in use by another berth process (pid {}); stop it first, or give this one its own --data-dir",
                dir.display(),
                if holder.is_empty() { "unknown" } else { holder }
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()?;
    Ok(file)
}

/// A metadata backend's own error.
#[derive(Debug)]
pub struct DatabaseError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for DatabaseError {
    /// The error and its causes ("error performing TLS handshake: invalid
    /// peer certificate: UnknownIssuer"): the top error alone rarely says
    /// what to fix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> StorageError {
        StorageError::Database(DatabaseError(Box::new(e)))
    }
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
    pub uploads: UploadLimits,
    /// Metadata in PostgreSQL instead of `<data_dir>/berth.db`.
    pub postgres: Option<PostgresConfig>,
    /// Blobs in S3 instead of `<data_dir>/blobs/`; upload sessions are
    /// then kept in the metadata database, shared by replicas.
    pub s3: Option<S3Config>,
}

/// The storage parts the registry uses, opened together on one data dir.
#[derive(Clone)]
pub struct Storage {
    pub meta: Metadata,
    pub blobs: BlobStore,
    pub uploads: Arc<Uploads>,
    pub locks: Arc<locks::BlobLocks>,
    data_dir: PathBuf,
    /// Held open until `close`: its lock is what keeps a second berth off
    /// this data dir.
    dir_lock: Arc<std::sync::Mutex<Option<std::fs::File>>>,
}

impl Storage {
    /// Opens the embedded default: `<data_dir>/berth.db` for metadata,
    /// `<data_dir>/blobs/` for blobs and `<data_dir>/uploads/` for staging
    /// (on the same filesystem, so committing an upload is a rename).
    ///
    /// Takes the data dir's lock first: one process per data dir, because
    /// the upload staging, the per-digest locks, the manifest cache and
    /// the GC job locks all live in this process.
    ///
    /// Blocking: call it from a blocking thread (or use `connect`). With
    /// `postgres` set, use `connect`.
    pub fn open(config: &StorageConfig) -> Result<Storage, StorageError> {
        if config.postgres.is_some() {
            return Err(StorageError::Internal(
                "Storage::open is for SQLite; PostgreSQL metadata needs Storage::connect".into(),
            ));
        }
        let dir = &config.data_dir;
        let dir_lock = lock_data_dir(dir)?;
        let meta = Metadata::open(&dir.join("berth.db"), config.synchronous)?;
        if config.s3.is_some() {
            return Err(StorageError::Internal(
                "Storage::open is for local blobs; [storage.s3] needs Storage::connect".into(),
            ));
        }
        // No identity check: database and blobs are in one data dir.
        Storage::assemble(config, meta, dir_lock)
    }

    /// Opens storage from an async context: SQLite on a blocking thread
    /// (as `open`), or PostgreSQL metadata (connecting and migrating)
    /// beside the data dir's blobs and staging.
    pub async fn connect(config: &StorageConfig) -> Result<Storage, StorageError> {
        let dir = config.data_dir.clone();
        let dir_lock = tokio::task::spawn_blocking(move || lock_data_dir(&dir))
            .await
            .map_err(|e| StorageError::Internal(format!("storage start-up task failed: {e}")))??;
        let meta = match &config.postgres {
            Some(pg) => Metadata::connect_postgres(pg).await?,
            None => {
                let (db, sync) = (config.data_dir.join("berth.db"), config.synchronous);
                tokio::task::spawn_blocking(move || Metadata::open(&db, sync))
                    .await
                    .map_err(|e| {
                        StorageError::Internal(format!("storage start-up task failed: {e}"))
                    })??
            }
        };
        let shared = config.postgres.is_some() || config.s3.is_some();
        let config = config.clone();
        let storage =
            tokio::task::spawn_blocking(move || Storage::assemble(&config, meta, dir_lock))
                .await
                .map_err(|e| {
                    StorageError::Internal(format!("storage start-up task failed: {e}"))
                })??;
        // SQLite with local blobs keeps both in one data dir: nothing to
        // tell apart.
        if shared {
            storage.check_identity().await?;
        }
        Ok(storage)
    }

    /// Records the blob store's identity in the metadata database, or
    /// refuses to start when another one is recorded: replicas sharing
    /// PostgreSQL must share blobs too, and one with a data dir (or a
    /// bucket) of its own would serve rows whose objects it cannot see.
    async fn check_identity(&self) -> Result<(), StorageError> {
        let mine = format!(
            "{}:{}",
            if self.blobs.is_shared() {
                "s3"
            } else {
                "local"
            },
            self.blobs.identity().await?
        );
        let recorded = self
            .meta
            .storage_identity(BLOB_STORE_IDENTITY, &mine)
            .await?;
        if recorded != mine {
            return Err(StorageError::Internal(format!(
                "the metadata database belongs to another blob store ({recorded}) than this berth's ({mine}{}): replicas sharing a database must share blobs ([storage.s3]); a database moved to a new blob store needs its storage_identity row deleted by hand",
                if self.blobs.is_shared() { "" } else { ", the data dir's blobs" }
            )));
        }
        Ok(())
    }

    fn assemble(
        config: &StorageConfig,
        meta: Metadata,
        dir_lock: std::fs::File,
    ) -> Result<Storage, StorageError> {
        let dir = &config.data_dir;
        // With S3, sessions live in the database (any replica serves any
        // request of an upload); without, in this process, as fast as ever.
        let (blobs, uploads) = match &config.s3 {
            Some(s3) => {
                let blobs = BlobStore::s3(s3)?;
                let uploads = uploads::SharedUploads::new(
                    meta.clone(),
                    blobs.clone(),
                    config.uploads.clone(),
                );
                (blobs, Uploads::Shared(uploads))
            }
            None => (
                BlobStore::local(dir)?,
                Uploads::Local(uploads::LocalUploads::open(
                    &dir.join("uploads"),
                    config.uploads.clone(),
                )?),
            ),
        };
        let uploads = Arc::new(uploads);
        Ok(Storage {
            meta,
            blobs,
            uploads,
            locks: Arc::new(locks::BlobLocks::default()),
            data_dir: dir.clone(),
            dir_lock: Arc::new(std::sync::Mutex::new(Some(dir_lock))),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Locks `digests` (see `locks`): in this process with SQLite, in the
    /// database with PostgreSQL, where other processes may share blobs.
    pub async fn lock_digests(
        &self,
        digests: &[&str],
    ) -> Result<locks::DigestGuard<'_>, StorageError> {
        match &self.meta {
            Metadata::Sqlite(_) => Ok(locks::DigestGuard::Local(
                self.locks.lock_many(digests.iter().copied()).await,
            )),
            Metadata::Postgres(pg) => Ok(locks::DigestGuard::Shared(Box::new(
                pg.lock_digests(digests).await?,
            ))),
        }
    }

    /// Completes an upload. A staging file moves into the blob store
    /// (object first) and the blob is linked into `repo` (row second),
    /// under the digest's lock so GC cannot interleave; a refused charge
    /// (the inner error) leaves the object, uncharged, for the sweep. A
    /// small upload's bytes go into the metadata store with its row and
    /// link in one transaction: no object, no lock needed, nothing left
    /// behind on a refusal.
    ///
    /// The upload's staged bytes stay reserved (`hold`) until the write
    /// that charges them, which gives them back as it commits.
    pub async fn store_upload(
        &self,
        done: uploads::Finished,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Result<(), meta::QuotaExceeded>, StorageError> {
        let uploads::Finished {
            content,
            size,
            hold,
        } = done;
        let session = match hold {
            uploads::Hold::Local(hold) => {
                return match content {
                    Staged::Memory(data) => {
                        self.meta.link_inline_blob(repo, digest, data, hold).await
                    }
                    Staged::File(path) => {
                        let key = digest.to_string();
                        let guard = self.lock_digests(&[&key]).await?;
                        let result = match self.blobs.commit_staged(path, digest).await {
                            Ok(()) => self.meta.link_blob(repo, digest, size, hold).await,
                            Err(e) => Err(e),
                        };
                        guard.release().await;
                        result
                    }
                    Staged::Object => Err(StorageError::Internal(
                        "a local upload finished as a shared object".into(),
                    )),
                };
            }
            uploads::Hold::Shared(session) => session,
        };
        // A shared session: its row (the staged bytes) goes in the
        // transaction that charges the blob; a refusal or a failure
        // discards the session, objects and all.
        let result = match content {
            Staged::Memory(data) => {
                self.meta
                    .link_uploaded_blob(repo, digest, size, Some(data), &session)
                    .await
            }
            Staged::Object => {
                let key = digest.to_string();
                let guard = self.lock_digests(&[&key]).await?;
                let result = match self.blobs.commit_upload(&session, digest, size).await {
                    Ok(()) => {
                        self.meta
                            .link_uploaded_blob(repo, digest, size, None, &session)
                            .await
                    }
                    Err(e) => Err(e),
                };
                guard.release().await;
                result
            }
            Staged::File(_) => Err(StorageError::Internal(
                "a shared upload finished as a local file".into(),
            )),
        };
        if !matches!(result, Ok(Ok(()))) {
            if let Uploads::Shared(u) = &*self.uploads {
                u.discard(&session).await;
            }
        }
        result
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
        let keys: Vec<&str> = digests.iter().map(String::as_str).collect();
        let guard = self.lock_digests(&keys).await?;
        let result = async {
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
        .await;
        guard.release().await;
        result
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
                    let guard = self.lock_digests(&[&key]).await?;
                    // Re-check under the lock: an upload may have linked it.
                    let deleted = async {
                        if self.meta.blob_rows_present(vec![key.clone()]).await?[0] {
                            return Ok::<_, StorageError>(false);
                        }
                        self.blobs.delete(&o.digest).await?;
                        Ok(true)
                    }
                    .await;
                    guard.release().await;
                    if !deleted? {
                        continue;
                    }
                }
                orphans.push(meta::DoomedBlob {
                    digest: o.digest.to_string(),
                    size: o.size,
                });
            }
        }
        if self.blobs.is_shared() && !dry_run {
            self.sweep_upload_objects(cutoff).await?;
        }
        Ok(orphans)
    }

    /// Objects under `uploads/<session>/` whose session row is gone (a
    /// crash between a row's deletion and its objects'), written before
    /// `cutoff`. A live session's objects are never touched: its row is
    /// looked up, and a session created after the listing is newer than
    /// the cutoff. (Parts of an unfinished multipart upload are not
    /// objects and are not listed; an aborted session's parts go with
    /// `abort_multipart`, and a bucket lifecycle rule catches the rest.)
    async fn sweep_upload_objects(&self, cutoff: i64) -> Result<usize, StorageError> {
        let objects = self.blobs.list_upload_objects().await?;
        let mut removed = 0;
        for chunk in objects.chunks(512) {
            let present = self
                .meta
                .uploads_present(chunk.iter().map(|(id, _, _)| id.clone()).collect())
                .await?;
            for ((id, path, modified), present) in chunk.iter().zip(present) {
                if present || *modified >= cutoff {
                    continue;
                }
                tracing::info!(session = %id, object = %path, "removing an orphaned upload object");
                self.blobs.delete_path(path).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Checks the data dir at `dir` (berth running or not: read-only, no
    /// lock): every blob row has its object (in the data dir, or in the
    /// bucket `s3` names), and what is left for GC.
    pub async fn check_integrity(
        dir: &Path,
        s3: Option<S3Config>,
    ) -> Result<meta::IntegrityReport, StorageError> {
        let db = dir.join("berth.db");
        if !db.exists() {
            return Err(StorageError::Internal(format!(
                "{} holds no berth database",
                dir.display()
            )));
        }
        let rows = tokio::task::spawn_blocking(move || {
            let i = meta::Integrity::open(&db)?;
            let (inline_blobs, inline_damaged) = i.inline_blobs()?;
            Ok::<_, StorageError>(meta::IntegrityRows {
                blob_digests: i.blob_digests()?,
                inline_blobs,
                inline_damaged,
                unreferenced_links: i.unreferenced_links()?,
                unlinked_blob_rows: i.unlinked_blob_rows()?,
            })
        })
        .await
        .map_err(|e| StorageError::Internal(e.to_string()))??;
        let objects = match &s3 {
            Some(s3) => BlobStore::s3(s3)?.list().await?,
            None => BlobStore::local(dir)?.list().await?,
        };
        Ok(integrity_report(rows, objects))
    }

    /// The same check for metadata in PostgreSQL and blobs in `blobs`
    /// (read-only, safe while replicas run).
    pub async fn check_integrity_postgres(
        config: &PostgresConfig,
        blobs: &BlobStore,
    ) -> Result<meta::IntegrityReport, StorageError> {
        let Metadata::Postgres(pg) = Metadata::connect_postgres(config).await? else {
            return Err(StorageError::Internal("not PostgreSQL".into()));
        };
        let rows = pg.integrity_rows().await;
        pg.close().await;
        let rows = rows?;
        let objects = blobs.list().await?;
        Ok(integrity_report(rows, objects))
    }

    /// Closes the database cleanly (pending writes finish first), then
    /// gives up the data dir.
    pub async fn close(&self) {
        self.meta.close().await;
        self.dir_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

/// Rows against objects. Objects are listed after the rows were read, so
/// an object written since then shows as an orphan, never as a loss.
fn integrity_report(
    rows: meta::IntegrityRows,
    objects: Vec<blobs::StoredObject>,
) -> meta::IntegrityReport {
    let object_set: std::collections::HashSet<String> =
        objects.iter().map(|o| o.digest.to_string()).collect();
    let row_set: std::collections::HashSet<&String> = rows.blob_digests.iter().collect();
    let mut orphan_objects: Vec<String> = object_set
        .iter()
        .filter(|d| !row_set.contains(d))
        .cloned()
        .collect();
    orphan_objects.sort();
    meta::IntegrityReport {
        blob_rows: rows.blob_digests.len(),
        objects: objects.len(),
        inline_blobs: rows.inline_blobs,
        inline_damaged: rows.inline_damaged,
        rows_without_object: rows
            .blob_digests
            .iter()
            .filter(|d| !object_set.contains(*d))
            .cloned()
            .collect(),
        orphan_objects,
        unreferenced_links: rows.unreferenced_links,
        unlinked_blob_rows: rows.unlinked_blob_rows,
    }
}
