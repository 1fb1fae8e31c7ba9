//! Blob upload sessions, one API over two implementations chosen when
//! storage is assembled:
//!
//! - `local`: the embedded default (blobs on this machine's disk). Session
//!   state in this process, bytes in a staging file renamed into the blob
//!   store at the end, small uploads in memory. Nothing of it is shared.
//! - `shared`: with `[storage.s3]`, where several replicas share blobs and
//!   metadata. Session state is a row of the metadata database
//!   (`upload_sessions`), bytes go to an S3 multipart upload as they
//!   arrive, the running hash is saved in the row between requests, so
//!   each request of one upload may land on another replica.
//!
//! The registry's handlers call `Uploads` and `Session` only.

pub mod local;
pub mod shared;

pub use local::LocalUploads;
pub use shared::SharedUploads;

use crate::digest::Digest;
use crate::names::RepoName;
use crate::StorageError;
use bytes::Bytes;
use futures_util::Stream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Bounds on what upload sessions may hold (`[limits]` in the config).
#[derive(Debug, Clone)]
pub struct UploadLimits {
    /// Open sessions per namespace.
    pub per_namespace: usize,
    /// Open sessions overall.
    pub total: usize,
    /// A session not written to for this long is cancelled.
    pub idle_timeout: Duration,
    /// Uploads up to this size are kept in memory and finish as bytes for
    /// the metadata store (0: every upload is staged in a file).
    pub inline_max: u64,
    /// Bytes all sessions together may keep in memory; past it, uploads
    /// are staged in files.
    pub memory: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            per_namespace: 64,
            total: 4096,
            idle_timeout: Duration::from_secs(30 * 60),
            inline_max: 64 * 1024,
            memory: 64 * 1024 * 1024,
        }
    }
}

/// A verified upload, ready to be committed.
pub struct Finished {
    pub content: Staged,
    pub size: u64,
    pub hold: Hold,
}

/// Where a verified upload's bytes are.
pub enum Staged {
    /// A staging file, to be moved into the blob store.
    File(PathBuf),
    /// A small blob, for the metadata store to keep inline.
    Memory(Bytes),
    /// The assembled object of a shared session
    /// (`BlobStore::upload_path`), to be copied to its blob path.
    Object,
}

/// What keeps a finished upload's staged bytes counted until the blob is
/// linked (and so charged): then they are given back in the charging
/// transaction.
pub enum Hold {
    /// This process's staging ledger; dropping it gives the bytes back.
    Local(local::StagedHold),
    /// A shared session's row (its `received` bytes are the staged ones),
    /// deleted by `Metadata::link_uploaded_blob`.
    Shared(String),
}

/// Why an upload could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("upload content has digest {computed}, not the {expected} the client named")]
    DigestMismatch { expected: Digest, computed: Digest },
    /// Another request is writing the session (shared sessions only).
    #[error("another request is writing this upload; it holds {offset} bytes")]
    Busy { offset: u64 },
    /// The session ended meanwhile (cancelled, expired, finished).
    #[error("the upload ended meanwhile")]
    Gone,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A namespace's staged bytes would pass the room its quota leaves.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{namespace} has {staged} bytes in unfinished uploads and room for {room}; {needed} more do not fit")]
pub struct StagingFull {
    pub namespace: String,
    /// Bytes staged by the namespace's sessions (this one included).
    pub staged: u64,
    /// What the quota left when the request began (limit - stored).
    pub room: u64,
    /// What this request tried to add.
    pub needed: u64,
}

/// Why an append stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Quota(#[from] StagingFull),
    /// Another request is writing the session, or it holds other bytes
    /// than this chunk continues (shared sessions only).
    #[error("another request is writing this upload; it holds {offset} bytes")]
    Busy { offset: u64 },
    /// The session ended meanwhile (cancelled, expired, finished).
    #[error("the upload ended meanwhile")]
    Gone,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// All upload sessions, of whichever implementation.
pub enum Uploads {
    Local(LocalUploads),
    Shared(SharedUploads),
}

/// One upload session, held by the request using it. A local one is
/// locked for the request (requests for one upload never interleave); a
/// shared one is a snapshot of its row, claimed for the length of each
/// write (see `shared`).
pub enum Session {
    Local(tokio::sync::OwnedMutexGuard<local::Session>),
    /// Boxed: a row snapshot is larger than the local lock guard.
    Shared(Box<shared::Session>),
}

impl Session {
    /// The id in the upload's URL.
    pub fn id(&self) -> String {
        match self {
            Session::Local(s) => s.id.to_string(),
            Session::Shared(s) => s.id().to_owned(),
        }
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        match self {
            Session::Local(s) => s.offset(),
            Session::Shared(s) => s.offset(),
        }
    }
}

impl Uploads {
    pub fn limits(&self) -> &UploadLimits {
        match self {
            Uploads::Local(u) => u.limits(),
            Uploads::Shared(u) => u.limits(),
        }
    }

    /// Starts an upload into `repo`, unless the namespace or the registry
    /// already holds as many sessions as allowed.
    pub async fn start(&self, repo: &RepoName) -> Result<Session, StorageError> {
        match self {
            Uploads::Local(u) => Ok(Session::Local(u.start(repo).await?.lock_owned().await)),
            Uploads::Shared(u) => Ok(Session::Shared(Box::new(u.start(repo).await?))),
        }
    }

    /// The open session `id` of `repo`, or `None` when there is none (or
    /// it belongs to another repository, or ended).
    pub async fn open(&self, id: &str, repo: &RepoName) -> Result<Option<Session>, StorageError> {
        match self {
            Uploads::Local(u) => {
                let Some(handle) = u.get(id, repo) else {
                    return Ok(None);
                };
                let session = handle.lock_owned().await;
                Ok(session.is_open().then_some(Session::Local(session)))
            }
            Uploads::Shared(u) => Ok(u
                .open(id, repo)
                .await?
                .map(|s| Session::Shared(Box::new(s)))),
        }
    }

    /// Bytes the namespace's unfinished uploads hold or have reserved.
    pub async fn staged_bytes(&self, namespace: &str) -> Result<u64, StorageError> {
        match self {
            Uploads::Local(u) => Ok(u.staged_bytes(namespace)),
            Uploads::Shared(u) => u.staged_bytes(namespace).await,
        }
    }

    /// Appends a body stream to the session within `room` (what the quota
    /// leaves; None: unlimited), reserving `declared` bytes up front when
    /// the length is known. Bytes received; memory stays at one batch.
    pub async fn append<S, E>(
        &self,
        session: &mut Session,
        body: S,
        room: Option<u64>,
        declared: Option<u64>,
    ) -> Result<u64, AppendError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        match (self, session) {
            (Uploads::Local(u), Session::Local(s)) => u.append(s, body, room, declared).await,
            (Uploads::Shared(u), Session::Shared(s)) => u.append(s, body, room, declared).await,
            _ => Err(mismatch().into()),
        }
    }

    /// Verifies the received bytes against `expected`; the session ends
    /// either way.
    pub async fn finish(
        &self,
        session: &mut Session,
        expected: &Digest,
    ) -> Result<Finished, FinishError> {
        match (self, session) {
            (Uploads::Local(u), Session::Local(s)) => u.finish(s, expected).await,
            (Uploads::Shared(u), Session::Shared(s)) => u.finish(s, expected).await,
            _ => Err(mismatch().into()),
        }
    }

    /// Cancels an upload and deletes what it staged.
    pub async fn cancel(&self, session: &mut Session) -> Result<(), StorageError> {
        match (self, session) {
            (Uploads::Local(u), Session::Local(s)) => u.cancel(s).await,
            (Uploads::Shared(u), Session::Shared(s)) => u.cancel(s).await,
            _ => Err(mismatch()),
        }
    }

    /// Gives up a finished upload that will not be stored (refused by the
    /// quota, or failed): its staged bytes and whatever holds them.
    pub async fn discard(&self, done: Finished) {
        match (&done.content, &done.hold) {
            (Staged::File(path), _) => {
                if let Err(e) = tokio::fs::remove_file(path).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove staging file");
                    }
                }
            }
            (_, Hold::Shared(id)) => {
                if let Uploads::Shared(u) = self {
                    u.discard(id).await;
                }
            }
            _ => {}
        }
    }

    /// Cancels sessions idle for longer than the idle timeout; how many.
    pub async fn expire_idle(&self) -> usize {
        match self {
            Uploads::Local(u) => u.expire_idle().await,
            Uploads::Shared(u) => u.expire_idle().await,
        }
    }

    /// Expires idle sessions every so often, for as long as the task runs.
    pub async fn run_expiry(self: Arc<Self>) {
        let every = (self.limits().idle_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        loop {
            tokio::time::sleep(every).await;
            let n = self.expire_idle().await;
            if n > 0 {
                tracing::info!(expired = n, "cancelled idle uploads");
            }
        }
    }

    /// Sessions open (in this process, or in the shared database).
    pub async fn open_count(&self) -> usize {
        match self {
            Uploads::Local(u) => u.open_count(),
            Uploads::Shared(u) => u.open_count().await,
        }
    }
}

fn mismatch() -> StorageError {
    StorageError::Internal("an upload session of the other implementation".into())
}
