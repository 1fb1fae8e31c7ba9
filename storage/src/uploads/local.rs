//! Upload sessions of one process (blobs on the local filesystem, the
//! embedded default). Bytes stream into a staging file under
//! `<data dir>/uploads/` while a running SHA-256 is updated, so memory per
//! upload is one buffered batch, never the blob. Session state lives only in
//! this process: after a restart the staging directory is emptied and old
//! upload URLs answer BLOB_UPLOAD_UNKNOWN.
//!
//! Small blobs never touch the disk here: an upload's first
//! `inline_max` bytes are kept in memory, and an upload that ends within
//! them is handed back as bytes, which the metadata store keeps inline
//! (one row instead of a file, an fsync and a rename). Past that size, or
//! when the memory budget shared by all sessions (`memory`) is spent, the
//! bytes kept so far go to the staging file and the upload goes on there.
//!
//! Every session is a tenant's claim on the host, so each is bounded: no
//! file descriptor is held between requests (the staging file is opened
//! for the length of one PATCH/PUT), sessions are capped per namespace and
//! overall, idle ones expire in minutes, and staged bytes count against
//! the namespace's quota (`stored + staged <= limit`) through the staging
//! ledger kept here.

use super::{AppendError, FinishError, Finished, Hold, Staged, StagingFull, UploadLimits};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::names::RepoName;
use crate::{now_ms, StorageError};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// Bytes gathered from the request body before one trip to a blocking
/// thread writes and hashes them. One batch is written while the next is
/// gathered, so an upload holds at most two: the per-upload memory bound.
const WRITE_BATCH: usize = 1024 * 1024;

/// A session shared between the requests that address it.
pub type SessionHandle = Arc<tokio::sync::Mutex<Session>>;

/// All open upload sessions and what each namespace has staged.
pub struct LocalUploads {
    dir: PathBuf,
    limits: UploadLimits,
    /// Shared with the `StagedHold`s of finished uploads.
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// The repository is kept beside the lock so that a request for
    /// another repository is turned away without waiting for the session.
    sessions: HashMap<Uuid, (RepoName, SessionHandle)>,
    namespaces: HashMap<String, Staging>,
    /// Bytes sessions keep in memory (against `UploadLimits::memory`).
    memory: u64,
}

/// One namespace's open sessions and the bytes they hold or have reserved.
#[derive(Debug, Default, Clone, Copy)]
struct Staging {
    sessions: usize,
    bytes: u64,
}

/// One upload: its staging file and how far it has got. Lock it (it is
/// behind a tokio mutex) for the duration of a request so that two requests
/// for the same upload cannot interleave their bytes.
pub struct Session {
    pub id: Uuid,
    pub repo: RepoName,
    /// The staging file, created when the first bytes go to disk.
    path: PathBuf,
    /// What the upload has received, while it is small enough to keep in
    /// memory (not yet hashed: it is hashed when it finishes or goes to
    /// the file). `None` once the upload is staged in the file.
    memory: Option<BytesMut>,
    /// The running hash of what is in the file; `None` while a blocking
    /// write has it, or once finished.
    hasher: Option<Hasher>,
    /// The batch being written and hashed, which holds the running hash.
    /// Kept here rather than by the request, so that a request dropped
    /// mid-body (its client gone) leaves it for the next request on the
    /// session to collect: the hash, the offset and the order of the
    /// file's bytes survive a resumed upload.
    writing: Option<Writing>,
    offset: u64,
    /// Bytes this session holds in its namespace's staging ledger: its
    /// offset, plus what the request in flight has reserved.
    charged: u64,
    pub started_ms: i64,
    pub updated_ms: i64,
    /// Set when the session was finished or cancelled by a request that held
    /// the lock before this one.
    closed: bool,
}

/// A finished upload's staged bytes, still reserved in its namespace's
/// ledger until this is dropped: keep it until the blob is linked (and so
/// charged to the quota), so that no other upload takes the room between
/// the two. Dropping it gives the bytes back.
pub struct StagedHold {
    state: Arc<Mutex<State>>,
    namespace: String,
    bytes: u64,
}

impl Drop for StagedHold {
    fn drop(&mut self) {
        release(&self.state, &self.namespace, self.bytes, false);
    }
}

impl LocalUploads {
    /// Opens the staging directory, discarding leftovers of a previous run.
    pub fn open(dir: &Path, limits: UploadLimits) -> Result<LocalUploads, StorageError> {
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
        Ok(LocalUploads {
            dir: dir.to_owned(),
            limits,
            state: Arc::new(Mutex::new(State::default())),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> &UploadLimits {
        &self.limits
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Starts an upload into `repo` with an empty staging file, unless the
    /// namespace or the registry already holds as many sessions as allowed.
    pub async fn start(&self, repo: &RepoName) -> Result<SessionHandle, StorageError> {
        let ns = repo.namespace().to_owned();
        {
            let mut state = self.state();
            if state.sessions.len() >= self.limits.total {
                return Err(StorageError::LimitReached {
                    limit: "uploads_total",
                    message: format!(
                        "the registry has {} unfinished uploads, its limit ([limits] uploads_total); retry shortly",
                        self.limits.total
                    ),
                });
            }
            let staging = state.namespaces.entry(ns.clone()).or_default();
            if staging.sessions >= self.limits.per_namespace {
                return Err(StorageError::LimitReached {
                    limit: "uploads_per_namespace",
                    message: format!(
                        "{ns} has {} unfinished uploads, its limit ([limits] uploads_per_namespace); finish or cancel some (idle ones expire after {})",
                        self.limits.per_namespace,
                        humantime::format_duration(self.limits.idle_timeout)
                    ),
                });
            }
            // Counted now so that concurrent starts cannot pass the limit.
            staging.sessions += 1;
        }
        let id = Uuid::new_v4();
        let name = id.simple().to_string();
        // No file yet: most uploads (configs, small layers) end in memory,
        // and an idle session holds no descriptor either way.
        let path = self.dir.join(&name[..2]).join(&name);
        let now = now_ms();
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            id,
            repo: repo.clone(),
            path,
            memory: (self.limits.inline_max > 0).then(BytesMut::new),
            hasher: Some(Hasher::new(Algorithm::Sha256)),
            writing: None,
            offset: 0,
            charged: 0,
            started_ms: now,
            updated_ms: now,
            closed: false,
        }));
        self.state()
            .sessions
            .insert(id, (repo.clone(), session.clone()));
        Ok(session)
    }

    /// The session `id` if it exists and belongs to `repo`.
    pub fn get(&self, id: &str, repo: &RepoName) -> Option<SessionHandle> {
        let id = Uuid::parse_str(id).ok()?;
        let state = self.state();
        let (owner, session) = state.sessions.get(&id)?;
        (owner == repo).then(|| session.clone())
    }

    /// Bytes the namespace's unfinished uploads hold.
    pub fn staged_bytes(&self, namespace: &str) -> u64 {
        self.state()
            .namespaces
            .get(namespace)
            .map_or(0, |s| s.bytes)
    }

    fn release(&self, namespace: &str, bytes: u64, session_closed: bool) {
        release(&self.state, namespace, bytes, session_closed);
    }

    /// Reserves `n` more staged bytes for `session`, if its namespace's
    /// staged total stays within `room` (None: unlimited).
    fn reserve(&self, session: &mut Session, n: u64, room: Option<u64>) -> Result<(), StagingFull> {
        let mut state = self.state();
        let staging = state
            .namespaces
            .entry(session.repo.namespace().to_owned())
            .or_default();
        if let Some(room) = room {
            if staging.bytes + n > room {
                return Err(StagingFull {
                    namespace: session.repo.namespace().to_owned(),
                    staged: staging.bytes,
                    room,
                    needed: session.charged + n,
                });
            }
        }
        staging.bytes += n;
        session.charged += n;
        Ok(())
    }

    /// Brings the session's charge back to what it actually holds (after a
    /// request, whether it finished its body or not).
    fn settle(&self, session: &mut Session) {
        if session.charged > session.offset {
            let excess = session.charged - session.offset;
            self.release(session.repo.namespace(), excess, false);
            session.charged = session.offset;
        }
    }

    /// Takes `n` bytes of the shared memory budget for `session`, if its
    /// upload stays within `inline_max` and the budget has room.
    fn keep_in_memory(&self, session: &Session, n: u64) -> bool {
        if session.offset + n > self.limits.inline_max {
            return false;
        }
        let mut state = self.state();
        if state.memory + n > self.limits.memory {
            return false;
        }
        state.memory += n;
        true
    }

    /// Takes the bytes `session` keeps in memory, giving back their share
    /// of the budget.
    fn take_memory(&self, session: &mut Session) -> Option<BytesMut> {
        let kept = session.memory.take()?;
        let mut state = self.state();
        state.memory = state.memory.saturating_sub(kept.len() as u64);
        Some(kept)
    }

    /// Ends a session: it leaves the table and gives back its place and
    /// its staged bytes, except `keep` bytes, which the caller holds on to.
    fn close(&self, session: &mut Session, keep: u64) {
        if session.closed {
            return;
        }
        self.take_memory(session);
        session.closed = true;
        session.hasher = None;
        self.state().sessions.remove(&session.id);
        let keep = keep.min(session.charged);
        self.release(session.repo.namespace(), session.charged - keep, true);
        session.charged = 0;
    }

    /// Cancels an upload and deletes its staging file.
    pub async fn cancel(&self, session: &mut Session) -> Result<(), StorageError> {
        // A write still in flight could recreate the file after it is gone.
        let _ = session.collect_write(&mut None).await;
        self.close(session, 0);
        remove_quietly(session.path.clone()).await;
        Ok(())
    }

    /// Appends a body stream to the session: kept in memory while the
    /// upload is small (see the module's doc), else written to the staging
    /// file, hashing as it goes. Memory stays at one `WRITE_BATCH` (or
    /// `inline_max`) however large the body is. The
    /// bytes are reserved in the namespace's staging ledger before they are
    /// kept: all `declared` bytes at once when the length is known (so
    /// concurrent uploads cannot each get half-way and all fail), else
    /// chunk by chunk. With `room` (what the quota leaves), the append
    /// stops with `AppendError::Quota` as soon as staged bytes would pass
    /// it (nothing past it is written). The file is open only during this
    /// call.
    pub async fn append<S, E>(
        &self,
        session: &mut Session,
        mut body: S,
        room: Option<u64>,
        declared: Option<u64>,
    ) -> Result<u64, AppendError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file: Option<std::fs::File> = None;
        let mut batch = BytesMut::new();
        // What this call received (bytes replayed from memory into the
        // file are not new).
        let start_offset = session.offset;
        let result = async {
            // A write a dropped request left behind comes first.
            session.collect_write(&mut file).await?;
            let mut reserved = 0u64;
            if let Some(n) = declared {
                self.reserve(session, n, room)?;
                reserved = n;
            }
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
                let n = chunk.len() as u64;
                if n <= reserved {
                    reserved -= n;
                } else {
                    self.reserve(session, n - reserved, room)?;
                    reserved = 0;
                }
                if session.memory.is_some() {
                    if self.keep_in_memory(session, n) {
                        if let Some(kept) = session.memory.as_mut() {
                            kept.extend_from_slice(&chunk);
                        }
                        session.offset += n;
                        session.updated_ms = now_ms();
                        continue;
                    }
                    // Too large for memory now: what was kept goes to the
                    // file first (hashed there).
                    if let Some(kept) = self.take_memory(session) {
                        session.offset -= kept.len() as u64;
                        batch.extend_from_slice(&kept);
                    }
                }
                batch.extend_from_slice(&chunk);
                if batch.len() >= WRITE_BATCH {
                    // One batch is written and hashed while the next is
                    // read: otherwise the socket, the disk and the hash
                    // take turns, and a large push runs at a third of
                    // what the three manage side by side.
                    session.collect_write(&mut file).await?;
                    session.start_write(&mut file, batch.split().freeze())?;
                }
            }
            session.collect_write(&mut file).await?;
            if !batch.is_empty() {
                session.start_write(&mut file, batch.split().freeze())?;
                session.collect_write(&mut file).await?;
            }
            Ok::<_, AppendError>(session.offset.saturating_sub(start_offset))
        }
        .await;
        // A batch still being written when the body failed is waited for,
        // so that the session keeps its running hash and counts its bytes.
        let _ = session.collect_write(&mut file).await;
        // Bytes reserved but never written (a body cut short, a refusal)
        // go back to the namespace.
        self.settle(session);
        if let Some(f) = file {
            // Closing can block on some filesystems.
            let _ = tokio::task::spawn_blocking(move || drop(f)).await;
        }
        result
    }

    /// Verifies the received bytes against `expected` and hands them back
    /// to be committed (the staging file, or the bytes of a small upload),
    /// with the blob's size and the hold on its staged bytes. On a
    /// mismatch the upload is discarded. Either way the session ends.
    pub async fn finish(
        &self,
        session: &mut Session,
        expected: &Digest,
    ) -> Result<Finished, FinishError> {
        let collected = session.collect_write(&mut None).await;
        let hasher = session.hasher.take();
        let memory = self.take_memory(session);
        let size = session.offset;
        let namespace = session.repo.namespace().to_owned();
        self.close(session, size);
        let hold = StagedHold {
            state: self.state.clone(),
            namespace,
            bytes: size,
        };
        if let Err(e) = collected {
            remove_quietly(session.path.clone()).await;
            return Err(e.into());
        }
        let hasher =
            hasher.ok_or_else(|| StorageError::Internal("upload has no running hash".into()))?;
        let algorithm = expected.algorithm();
        if let Some(kept) = memory {
            // At most `inline_max` bytes, none hashed yet: hashed here, on
            // the request's own thread, rather than on a blocking one.
            let data = kept.freeze();
            let computed = Digest::compute(algorithm, &data);
            if &computed != expected {
                return Err(FinishError::DigestMismatch {
                    expected: expected.clone(),
                    computed,
                });
            }
            return Ok(Finished {
                content: Staged::Memory(data),
                size,
                hold: Hold::Local(hold),
            });
        }
        let path = session.path.clone();
        let verified = tokio::task::spawn_blocking(move || -> Result<Digest, StorageError> {
            // What the requests wrote is flushed before the blob is named
            // (created here when nothing was: an empty upload is valid).
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?
                .sync_data()?;
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
        Ok(Finished {
            content: Staged::File(session.path.clone()),
            size,
            hold: Hold::Local(hold),
        })
    }

    /// Cancels sessions not written to since `cutoff_ms`; returns how many.
    /// A session a request is using right now is not idle and is skipped.
    pub async fn expire(&self, cutoff_ms: i64) -> usize {
        let sessions: Vec<_> = self
            .state()
            .sessions
            .values()
            .map(|(_, s)| s.clone())
            .collect();
        let mut expired = 0;
        for s in sessions {
            let Ok(mut s) = s.try_lock() else { continue };
            if !s.closed && s.updated_ms < cutoff_ms {
                let _ = self.cancel(&mut s).await;
                expired += 1;
            }
        }
        expired
    }

    /// Cancels sessions idle for longer than the idle timeout.
    pub async fn expire_idle(&self) -> usize {
        let idle = self.limits.idle_timeout.as_millis() as i64;
        self.expire(now_ms() - idle).await
    }

    pub fn open_count(&self) -> usize {
        self.state().sessions.len()
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

    /// Starts writing and hashing one batch on a blocking thread, opening
    /// the staging file for appending on the first batch of a request.
    /// The file and the running hash are the write's until `collect_write`.
    fn start_write(
        &mut self,
        file: &mut Option<std::fs::File>,
        data: Bytes,
    ) -> Result<(), StorageError> {
        let mut hasher = self
            .hasher
            .take()
            .ok_or_else(|| StorageError::Internal("upload has no running hash".into()))?;
        let open = file.take();
        let path = self.path.clone();
        // Counted now: a request that asks for the offset while the write
        // is in flight (a client resuming after its connection dropped)
        // must see the bytes, which land in the file before any later
        // request's. A failed write takes them back in `collect_write`.
        self.offset += data.len() as u64;
        self.updated_ms = now_ms();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let mut f = match open {
                Some(f) => f,
                None => match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                {
                    Ok(f) => f,
                    Err(e) => return (None, hasher, Err((e, data.len() as u64))),
                },
            };
            let r = f.write_all(&data).map_err(|e| (e, data.len() as u64));
            if r.is_ok() {
                hasher.update(&data);
            }
            (Some(f), hasher, r)
        }));
        Ok(())
    }

    /// Waits for the write in flight, if any: takes back the running hash
    /// (and the file, when it is this request's) and counts the bytes
    /// written. The handle stays in the session until the write is done,
    /// so a request dropped while waiting here loses nothing.
    async fn collect_write(
        &mut self,
        file: &mut Option<std::fs::File>,
    ) -> Result<(), StorageError> {
        let Some(writing) = self.writing.as_mut() else {
            return Ok(());
        };
        let joined = writing.await;
        self.writing = None;
        let (f, hasher, result) = joined.map_err(|e| StorageError::Internal(e.to_string()))?;
        self.hasher = Some(hasher);
        if file.is_none() {
            *file = f;
        }
        if let Err((e, unwritten)) = result {
            self.offset -= unwritten;
            return Err(e.into());
        }
        self.updated_ms = now_ms();
        Ok(())
    }
}

/// A batch being written and hashed on a blocking thread: what it hands
/// back is the staging file and the running hash, and whether the batch
/// was written.
type Writing = tokio::task::JoinHandle<(Option<std::fs::File>, Hasher, Result<(), WriteFailed>)>;

/// A batch that did not reach the file: the error, and the batch's length
/// (counted in the offset when the write began).
type WriteFailed = (std::io::Error, u64);

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing panics while holding it; a poisoned lock still holds
    // consistent counts.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes `bytes` off the namespace's ledger, and a session when one closed.
fn release(state: &Mutex<State>, namespace: &str, bytes: u64, session_closed: bool) {
    let mut state = lock(state);
    if let Some(s) = state.namespaces.get_mut(namespace) {
        s.bytes = s.bytes.saturating_sub(bytes);
        if session_closed {
            s.sessions = s.sessions.saturating_sub(1);
        }
        if s.sessions == 0 && s.bytes == 0 {
            state.namespaces.remove(namespace);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn body(chunks: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        )
    }

    fn uploads(dir: &Path, per_namespace: usize, total: usize) -> LocalUploads {
        with_memory(dir, per_namespace, total, 0, 0)
    }

    fn with_memory(
        dir: &Path,
        per_namespace: usize,
        total: usize,
        inline_max: u64,
        memory: u64,
    ) -> LocalUploads {
        LocalUploads::open(
            &dir.join("uploads"),
            UploadLimits {
                per_namespace,
                total,
                idle_timeout: Duration::from_secs(60),
                inline_max,
                memory,
            },
        )
        .unwrap()
    }

    /// Staging files under the uploads dir (all shards).
    fn staged_files(u: &LocalUploads) -> usize {
        std::fs::read_dir(u.dir())
            .unwrap()
            .map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().count())
            .sum()
    }

    fn file_of(done: &Finished) -> Vec<u8> {
        match &done.content {
            Staged::File(p) => std::fs::read(p).unwrap(),
            Staged::Memory(_) | Staged::Object => panic!("expected a staging file"),
        }
    }

    /// A request dropped while its batch is still being written (its
    /// client gone mid-body) leaves the write to the session: a resumed
    /// upload sees every byte in the offset and finishes with the right
    /// digest. (When the request held the write, the running hash went
    /// with it and the session could only fail.)
    #[tokio::test]
    async fn a_request_dropped_mid_write_leaves_the_upload_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let u = uploads(dir.path(), 10, 10);
        let repo = RepoName::parse("tool-a/x").unwrap();
        let s = u.start(&repo).await.unwrap();
        let mut s = s.lock().await;
        let first: Vec<u8> = (0..2 * WRITE_BATCH).map(|i| (i % 251) as u8).collect();
        // Two batches, then a body that never ends: the second batch is
        // written (or being written) when the request is dropped.
        let stalled = futures_util::stream::iter(
            first
                .chunks(WRITE_BATCH)
                .map(|c| Ok::<_, String>(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )
        .chain(futures_util::stream::pending());
        let dropped = tokio::time::timeout(
            Duration::from_millis(300),
            u.append(&mut s, Box::pin(stalled), None, None),
        )
        .await;
        assert!(dropped.is_err(), "the body never ends");
        assert_eq!(s.offset(), first.len() as u64);
        let rest = b"and the rest";
        u.append(&mut s, body(&[rest]), None, None).await.unwrap();
        let mut whole = first.clone();
        whole.extend_from_slice(rest);
        let done = u
            .finish(&mut s, &Digest::compute(Algorithm::Sha256, &whole))
            .await
            .unwrap();
        assert_eq!(file_of(&done), whole);
    }

    #[tokio::test]
    async fn small_uploads_end_in_memory_and_larger_ones_move_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let u = with_memory(dir.path(), 10, 10, 8, 1024);
        let repo = RepoName::parse("tool-a/x").unwrap();
        // Two PATCHes within 8 bytes: no file at all.
        let s = u.start(&repo).await.unwrap();
        let mut s = s.lock().await;
        u.append(&mut s, body(&[b"abc"]), None, None).await.unwrap();
        u.append(&mut s, body(&[b"de", b"f"]), None, None)
            .await
            .unwrap();
        assert_eq!((s.offset(), staged_files(&u)), (6, 0));
        let done = u
            .finish(&mut s, &Digest::compute(Algorithm::Sha256, b"abcdef"))
            .await
            .unwrap();
        assert!(matches!(&done.content, Staged::Memory(b) if &b[..] == b"abcdef"));
        // Past 8 bytes in a later PATCH: what memory kept goes first.
        let s = u.start(&repo).await.unwrap();
        let mut s = s.lock().await;
        u.append(&mut s, body(&[b"12345"]), None, None)
            .await
            .unwrap();
        let n = u
            .append(&mut s, body(&[b"678", b"90"]), None, None)
            .await
            .unwrap();
        assert_eq!((n, s.offset(), staged_files(&u)), (5, 10, 1));
        let wrong = u
            .finish(&mut s, &Digest::compute(Algorithm::Sha256, b"12345678"))
            .await;
        assert!(matches!(wrong, Err(FinishError::DigestMismatch { .. })));
        let s = u.start(&repo).await.unwrap();
        let mut s = s.lock().await;
        u.append(&mut s, body(&[b"1234", b"567890"]), None, None)
            .await
            .unwrap();
        let done = u
            .finish(&mut s, &Digest::compute(Algorithm::Sha256, b"1234567890"))
            .await
            .unwrap();
        assert_eq!(file_of(&done), b"1234567890");
        // A mismatch in memory is refused the same way.
        let s = u.start(&repo).await.unwrap();
        let mut s = s.lock().await;
        u.append(&mut s, body(&[b"abc"]), None, None).await.unwrap();
        let wrong = u
            .finish(&mut s, &Digest::compute(Algorithm::Sha256, b"abd"))
            .await;
        assert!(matches!(wrong, Err(FinishError::DigestMismatch { .. })));
        assert_eq!(u.state().memory, 0, "every byte of the budget came back");
    }

    #[tokio::test]
    async fn the_memory_budget_is_shared_and_spent_uploads_go_to_files() {
        let dir = tempfile::tempdir().unwrap();
        let u = with_memory(dir.path(), 10, 10, 8, 10);
        let repo = RepoName::parse("tool-a/x").unwrap();
        let (a, b) = (u.start(&repo).await.unwrap(), u.start(&repo).await.unwrap());
        let (mut a, mut b) = (a.lock().await, b.lock().await);
        u.append(&mut a, body(&[b"12345678"]), None, None)
            .await
            .unwrap();
        // 8 of 10 bytes are taken: b's 4 go to a file.
        u.append(&mut b, body(&[b"wxyz"]), None, None)
            .await
            .unwrap();
        assert_eq!((u.state().memory, staged_files(&u)), (8, 1));
        let done = u
            .finish(&mut b, &Digest::compute(Algorithm::Sha256, b"wxyz"))
            .await
            .unwrap();
        assert_eq!(file_of(&done), b"wxyz");
        u.cancel(&mut a).await.unwrap();
        assert_eq!(u.state().memory, 0);
        // An empty upload is valid, in memory or not.
        for u in [&u, &uploads(dir.path(), 1, 1)] {
            let s = u.start(&repo).await.unwrap();
            let mut s = s.lock().await;
            let done = u
                .finish(&mut s, &Digest::compute(Algorithm::Sha256, b""))
                .await
                .unwrap();
            assert_eq!(done.size, 0);
        }
    }

    #[tokio::test]
    async fn sessions_are_capped_per_namespace_and_overall() {
        let dir = tempfile::tempdir().unwrap();
        let u = uploads(dir.path(), 2, 3);
        let a = RepoName::parse("tool-a/x").unwrap();
        let b = RepoName::parse("tool-b/x").unwrap();
        let a1 = u.start(&a).await.unwrap();
        let _a2 = u.start(&a).await.unwrap();
        assert!(matches!(
            u.start(&a).await,
            Err(StorageError::LimitReached {
                limit: "uploads_per_namespace",
                ..
            })
        ));
        let _b1 = u.start(&b).await.unwrap();
        assert!(matches!(
            u.start(&b).await,
            Err(StorageError::LimitReached {
                limit: "uploads_total",
                ..
            })
        ));
        u.cancel(&mut *a1.lock().await).await.unwrap();
        assert!(u.start(&b).await.is_ok());
    }

    #[tokio::test]
    async fn staged_bytes_count_against_the_room_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let u = uploads(dir.path(), 10, 10);
        let repo = RepoName::parse("tool-a/x").unwrap();
        let s1 = u.start(&repo).await.unwrap();
        let s2 = u.start(&repo).await.unwrap();
        let mut s1 = s1.lock().await;
        let mut s2 = s2.lock().await;
        u.append(&mut s1, body(&[b"12345", b"678"]), Some(10), None)
            .await
            .unwrap();
        assert_eq!(u.staged_bytes("tool-a"), 8);
        // Only 2 bytes of room are left for the second session.
        let refused = u
            .append(&mut s2, body(&[b"12", b"345"]), Some(10), None)
            .await;
        assert!(matches!(refused, Err(AppendError::Quota(_))));
        assert_eq!(s2.offset(), 0, "nothing past the room is written");
        assert_eq!(
            u.staged_bytes("tool-a"),
            8,
            "an unwritten reservation is given back"
        );
        u.cancel(&mut s1).await.unwrap();
        assert_eq!(u.staged_bytes("tool-a"), 0);
        u.append(&mut s2, body(&[b"0123456789"]), Some(10), Some(10))
            .await
            .unwrap();
        let digest = Digest::compute(Algorithm::Sha256, b"0123456789");
        let done = u.finish(&mut s2, &digest).await.unwrap();
        assert_eq!(done.size, 10);
        assert_eq!(file_of(&done), b"0123456789");
        assert_eq!(u.open_count(), 0);
        // Held until the blob is linked, then given back.
        assert_eq!(u.staged_bytes("tool-a"), 10);
        drop(done);
        assert_eq!(u.staged_bytes("tool-a"), 0);
    }

    #[tokio::test]
    async fn a_declared_length_is_reserved_whole_before_any_byte() {
        let dir = tempfile::tempdir().unwrap();
        let u = uploads(dir.path(), 10, 10);
        let repo = RepoName::parse("tool-a/x").unwrap();
        let a = u.start(&repo).await.unwrap();
        let b = u.start(&repo).await.unwrap();
        let (mut a, mut b) = (a.lock().await, b.lock().await);
        // A body shorter than it declared keeps only what it wrote.
        u.append(&mut a, body(&[b"abc"]), Some(10), Some(6))
            .await
            .unwrap();
        assert_eq!(u.staged_bytes("tool-a"), 3);
        // 8 declared bytes do not fit beside those 3: refused before any
        // byte is written.
        let refused = u
            .append(&mut b, body(&[b"abcdefgh"]), Some(10), Some(8))
            .await;
        assert!(matches!(refused, Err(AppendError::Quota(_))));
        assert_eq!(b.offset(), 0);
        assert_eq!(u.staged_bytes("tool-a"), 3);
        u.append(&mut b, body(&[b"abcdefg"]), Some(10), Some(7))
            .await
            .unwrap();
        assert_eq!(u.staged_bytes("tool-a"), 10);
    }

    #[tokio::test]
    async fn idle_sessions_expire_but_busy_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let u = uploads(dir.path(), 10, 10);
        let repo = RepoName::parse("tool-a/x").unwrap();
        let idle = u.start(&repo).await.unwrap();
        let busy = u.start(&repo).await.unwrap();
        u.append(&mut *idle.lock().await, body(&[b"abc"]), None, None)
            .await
            .unwrap();
        let _held = busy.lock().await;
        assert_eq!(u.expire(now_ms() + 1).await, 1);
        assert_eq!(u.open_count(), 1);
        assert_eq!(u.staged_bytes("tool-a"), 0);
    }
}
