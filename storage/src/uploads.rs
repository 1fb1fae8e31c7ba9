//! Blob upload sessions. Bytes stream into a staging file under
//! `<data dir>/uploads/` while a running SHA-256 is updated, so memory per
//! upload is one buffered chunk, never the blob. Session state lives only in
//! this process: after a restart the staging directory is emptied and old
//! upload URLs answer BLOB_UPLOAD_UNKNOWN.

use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::RepoName;
use crate::{now_ms, StorageError};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Bytes gathered from the request body before one trip to a blocking
/// thread writes and hashes them. This is the per-upload memory bound.
const WRITE_BATCH: usize = 1024 * 1024;

/// A session shared between the requests that address it.
pub type SessionHandle = Arc<tokio::sync::Mutex<Session>>;

/// All open upload sessions.
pub struct Uploads {
    dir: PathBuf,
    /// The repository is kept beside the lock so that a request for another
    /// repository is turned away without waiting for the session.
    sessions: Mutex<HashMap<Uuid, (RepoName, SessionHandle)>>,
}

/// One upload: its staging file and how far it has got. Lock it (it is
/// behind a tokio mutex) for the duration of a request so that two requests
/// for the same upload cannot interleave their bytes.
pub struct Session {
    pub id: Uuid,
    pub repo: RepoName,
    path: PathBuf,
    /// `None` only while a blocking write has it, or once finished.
    io: Option<(std::fs::File, Hasher)>,
    offset: u64,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// Set when the session was finished or cancelled by a request that held
    /// the lock before this one.
    closed: bool,
}

/// Why an upload could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("upload content has digest {computed}, not the {expected} the client named")]
    DigestMismatch { expected: Digest, computed: Digest },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Uploads {
    /// Opens the staging directory, discarding leftovers of a previous run.
    pub fn open(dir: &Path) -> Result<Uploads, StorageError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        // Staging files are spread over 256 subdirectories: creating files
        // in one busy directory serialises on its lock and on the
        // filesystem's inode allocation for it (the top of the profile of
        // small-image pushes before this).
        for shard in 0..=255u8 {
            std::fs::create_dir_all(dir.join(format!("{shard:02x}")))?;
        }
        Ok(Uploads {
            dir: dir.to_owned(),
            sessions: Mutex::new(HashMap::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts an upload into `repo` with an empty staging file.
    pub async fn start(&self, repo: &RepoName) -> Result<SessionHandle, StorageError> {
        let id = Uuid::new_v4();
        let name = id.simple().to_string();
        let path = self.dir.join(&name[..2]).join(&name);
        let p = path.clone();
        let file = tokio::task::spawn_blocking(move || std::fs::File::create_new(p))
            .await
            .map_err(|e| StorageError::Internal(e.to_string()))??;
        let now = now_ms();
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            id,
            repo: repo.clone(),
            path,
            io: Some((file, Hasher::new(Algorithm::Sha256))),
            offset: 0,
            started_ms: now,
            updated_ms: now,
            closed: false,
        }));
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(id, (repo.clone(), session.clone()));
        Ok(session)
    }

    /// The session `id` if it exists and belongs to `repo`.
    pub fn get(&self, id: &str, repo: &RepoName) -> Option<SessionHandle> {
        let id = Uuid::parse_str(id).ok()?;
        let sessions = self.sessions.lock().expect("sessions lock");
        let (owner, session) = sessions.get(&id)?;
        (owner == repo).then(|| session.clone())
    }

    fn forget(&self, id: Uuid) {
        self.sessions.lock().expect("sessions lock").remove(&id);
    }

    /// Cancels an upload and deletes its staging file.
    pub async fn cancel(&self, session: &mut Session) -> Result<(), StorageError> {
        self.forget(session.id);
        session.closed = true;
        session.io = None;
        remove_quietly(session.path.clone()).await;
        Ok(())
    }

    /// Verifies the received bytes against `expected` and hands back the
    /// staging file to be committed to the blob store, with the blob's size.
    /// On a mismatch the upload is discarded.
    pub async fn finish(
        &self,
        session: &mut Session,
        expected: &Digest,
    ) -> Result<(PathBuf, u64), FinishError> {
        self.forget(session.id);
        session.closed = true;
        let (file, hasher) = session
            .io
            .take()
            .ok_or_else(|| StorageError::Internal("upload has no open file".into()))?;
        let path = session.path.clone();
        let algorithm = expected.algorithm();
        let verified = tokio::task::spawn_blocking(move || -> Result<Digest, StorageError> {
            file.sync_data()?;
            drop(file);
            Ok(match algorithm {
                Algorithm::Sha256 => hasher.finish(),
                // The running hash is sha256; a sha512 upload is rare, so
                // it pays one more read of the staged file instead.
                other => hash_file(&path, other)?,
            })
        })
        .await
        .map_err(|e| StorageError::Internal(e.to_string()))?;
        let computed = match verified {
            Ok(d) => d,
            Err(e) => {
                remove_quietly(session.path.clone()).await;
                return Err(e.into());
            }
        };
        if &computed != expected {
            remove_quietly(session.path.clone()).await;
            return Err(FinishError::DigestMismatch {
                expected: expected.clone(),
                computed,
            });
        }
        Ok((session.path.clone(), session.offset))
    }

    /// Cancels uploads not written to since `cutoff_ms`; returns how many.
    pub async fn expire(&self, cutoff_ms: i64) -> usize {
        let sessions: Vec<_> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .values()
            .map(|(_, s)| s.clone())
            .collect();
        let mut expired = 0;
        for s in sessions {
            let mut s = s.lock().await;
            if !s.closed && s.updated_ms < cutoff_ms {
                let _ = self.cancel(&mut s).await;
                expired += 1;
            }
        }
        expired
    }

    pub fn open_count(&self) -> usize {
        self.sessions.lock().expect("sessions lock").len()
    }
}

impl Session {
    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// False once another request finished or cancelled this upload.
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    /// Appends a body stream to the staging file, hashing as it goes.
    /// Memory stays at one `WRITE_BATCH` however large the body is. With
    /// `max_total`, stops with `StorageError::TooLarge` as soon as the
    /// upload would pass that many bytes (nothing past it is written).
    pub async fn append<S, E>(
        &mut self,
        mut body: S,
        max_total: Option<u64>,
    ) -> Result<u64, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut batch = BytesMut::new();
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
            if let Some(max) = max_total {
                let total = self.offset + batch.len() as u64 + chunk.len() as u64;
                if total > max {
                    return Err(StorageError::TooLarge {
                        limit: max,
                        received: total,
                    });
                }
            }
            batch.extend_from_slice(&chunk);
            if batch.len() >= WRITE_BATCH {
                written += self.write_batch(batch.split().freeze()).await?;
            }
        }
        if !batch.is_empty() {
            written += self.write_batch(batch.freeze()).await?;
        }
        Ok(written)
    }

    async fn write_batch(&mut self, data: Bytes) -> Result<u64, StorageError> {
        let (mut file, mut hasher) = self
            .io
            .take()
            .ok_or_else(|| StorageError::Internal("upload has no open file".into()))?;
        let (io, result) = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&data).map(|_| data.len() as u64);
            if r.is_ok() {
                hasher.update(&data);
            }
            ((file, hasher), r)
        })
        .await
        .map_err(|e| StorageError::Internal(e.to_string()))?;
        self.io = Some(io);
        let n = result?;
        self.offset += n;
        self.updated_ms = now_ms();
        Ok(n)
    }
}

fn hash_file(path: &Path, algorithm: Algorithm) -> Result<Digest, StorageError> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

async fn remove_quietly(path: PathBuf) {
    if let Err(e) = tokio::fs::remove_file(&path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove staging file");
        }
    }
}
