//! Upload sessions shared by replicas (`[storage.s3]`): the session is a
//! row of `upload_sessions` in the metadata database, its bytes are in S3,
//! so a POST, its PATCHes and the PUT may each be served by another berth.
//!
//! Where things are, after each request:
//!
//! - bytes: parts of an S3 multipart upload at `uploads/<id>/data`
//!   (resumable by its id from any process; ETags in the row, in order),
//!   plus the tail that does not make a part yet (S3 parts are at least
//!   5 MiB except the last) as `pending` bytes in the row, fewer than
//!   `MIN_PART`;
//! - the running SHA-256: its serialised state in the row (`hash_state`),
//!   restored by the next request wherever it runs, so nothing is hashed
//!   twice;
//! - quota: `received + reserved` of every session of the namespace is
//!   its staged bytes, counted against the room the quota leaves, and
//!   turned into stored bytes by the transaction that links the blob
//!   (which deletes the row).
//!
//! One writer at a time: a request first *claims* the row (a conditional
//! UPDATE: nobody else's claim, and the offset the chunk continues), writes
//! parts, saves its progress under the claim after each part and at the
//! end, and gives the claim back. A second request meanwhile gets `Busy`
//! (the handler's 416 BLOB_UPLOAD_INVALID) and writes nothing; no database
//! transaction is open while a body streams. A request that dies keeps
//! what it saved: a dropped request's claim is released by a task its
//! guard spawns; a replica that dies holding one leaves the session to the
//! idle expiry.
//!
//! Memory per request: one part (`PART_SIZE`) plus a body chunk; S3's part
//! upload takes the part's bytes whole.

use super::{AppendError, FinishError, Finished, Hold, Staged, StagingFull, UploadLimits};
use crate::blobs::BlobStore;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::meta::sessions::{Claim, Reserve, StartRefused, UploadProgress, UploadRow};
use crate::meta::Metadata;
use crate::names::RepoName;
use crate::{now_ms, StorageError};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use uuid::Uuid;

/// S3's smallest part (except the last): a tail shorter than this waits
/// in the row for the next request.
pub const MIN_PART: usize = 5 * 1024 * 1024;

/// Bytes gathered before a part is sent while a body streams.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Quota reserved at a time while a body of unknown length streams (one
/// database write per step, not per chunk).
const RESERVE_STEP: u64 = PART_SIZE as u64;

pub struct SharedUploads {
    meta: Metadata,
    blobs: BlobStore,
    limits: UploadLimits,
}

/// A shared session as the request found it.
pub struct Session {
    row: UploadRow,
}

impl Session {
    pub fn id(&self) -> &str {
        &self.row.id
    }

    pub fn offset(&self) -> u64 {
        self.row.received
    }
}

/// Gives a claim back if the request holding it is dropped (the client
/// went away mid-body: hyper drops the handler's future).
struct ClaimGuard {
    meta: Metadata,
    id: String,
    token: String,
    armed: bool,
}

impl ClaimGuard {
    async fn release(mut self) {
        self.armed = false;
        if let Err(e) = self.meta.release_upload(&self.id, &self.token).await {
            tracing::warn!(session = %self.id, error = %e, "could not release an upload claim; the session expires when idle");
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (meta, id, token) = (
            self.meta.clone(),
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.token),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = meta.release_upload(&id, &token).await {
                    tracing::warn!(session = %id, error = %e, "could not release an upload claim; the session expires when idle");
                }
            });
        }
    }
}

impl SharedUploads {
    pub fn new(meta: Metadata, blobs: BlobStore, limits: UploadLimits) -> SharedUploads {
        SharedUploads {
            meta,
            blobs,
            limits,
        }
    }

    pub fn limits(&self) -> &UploadLimits {
        &self.limits
    }

    pub async fn start(&self, repo: &RepoName) -> Result<Session, StorageError> {
        let now = now_ms();
        let row = UploadRow {
            id: Uuid::new_v4().to_string(),
            repo: repo.to_string(),
            namespace: repo.namespace().to_owned(),
            received: 0,
            reserved: 0,
            hash_state: Hasher::new(Algorithm::Sha256).save(),
            multipart_id: None,
            parts: Vec::new(),
            pending: Vec::new(),
            claim: None,
            started_ms: now,
            updated_ms: now,
        };
        match self
            .meta
            .create_upload(row.clone(), self.limits.per_namespace, self.limits.total)
            .await?
        {
            None => Ok(Session { row }),
            Some(StartRefused::Total(n)) => Err(StorageError::LimitReached {
                limit: "uploads_total",
                message: format!(
                    "the registry has {n} unfinished uploads, its limit ([limits] uploads_total); retry shortly"
                ),
            }),
            Some(StartRefused::Namespace(n)) => Err(StorageError::LimitReached {
                limit: "uploads_per_namespace",
                message: format!(
                    "{} has {n} unfinished uploads, its limit ([limits] uploads_per_namespace); finish or cancel some (idle ones expire after {})",
                    repo.namespace(),
                    humantime::format_duration(self.limits.idle_timeout)
                ),
            }),
        }
    }

    pub async fn open(&self, id: &str, repo: &RepoName) -> Result<Option<Session>, StorageError> {
        // Ids are uuids; anything else names no session (and never reaches
        // the database as a key it was not made from).
        let Ok(id) = Uuid::parse_str(id) else {
            return Ok(None);
        };
        let Some(row) = self.meta.upload(&id.to_string()).await? else {
            return Ok(None);
        };
        Ok((row.repo == repo.as_str()).then_some(Session { row }))
    }

    pub async fn staged_bytes(&self, namespace: &str) -> Result<u64, StorageError> {
        self.meta.staged_upload_bytes(namespace).await
    }

    pub async fn open_count(&self) -> usize {
        match self.meta.upload_count().await {
            Ok(n) => n as usize,
            Err(e) => {
                tracing::warn!(error = %e, "could not count upload sessions");
                0
            }
        }
    }

    /// Claims the session for one request, expecting it to hold what the
    /// request saw; reserves `reserve` bytes of `room`.
    async fn claim(
        &self,
        session: &Session,
        reserve: u64,
        room: Option<u64>,
    ) -> Result<(UploadRow, ClaimGuard), AppendError> {
        let token = Uuid::new_v4().simple().to_string();
        match self
            .meta
            .claim_upload(&session.row.id, session.row.received, &token, reserve, room)
            .await?
        {
            Claim::Claimed(row) => {
                let guard = ClaimGuard {
                    meta: self.meta.clone(),
                    id: row.id.clone(),
                    token,
                    armed: true,
                };
                Ok((row, guard))
            }
            Claim::Gone => Err(AppendError::Gone),
            Claim::Busy(row) => Err(AppendError::Busy {
                offset: row.received,
            }),
            Claim::Full { staged, room } => Err(AppendError::Quota(StagingFull {
                namespace: session.row.namespace.clone(),
                staged,
                room,
                needed: reserve,
            })),
        }
    }

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
        let (row, mut guard) = self.claim(session, declared.unwrap_or(0), room).await?;
        let token = guard.token.clone();
        let mut w = Writer::new(self, row, &token)?;
        let start = w.received;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
                w.reserve(chunk.len() as u64, room).await?;
                w.push(&chunk);
                if w.buf.len() >= PART_SIZE {
                    w.flush_part().await?;
                    w.save(false).await?;
                }
            }
            if w.buf.len() >= MIN_PART {
                w.flush_part().await?;
            }
            w.save(true).await?;
            Ok::<_, AppendError>(())
        }
        .await;
        session.row.received = w.saved;
        match result {
            Ok(()) => {
                // `save(true)` gave the claim back with the progress.
                guard.armed = false;
                Ok(w.saved - start)
            }
            Err(AppendError::Gone) => {
                // Cancelled or expired meanwhile: whoever deleted the row
                // aborted the multipart upload it knew of; one this
                // request created after that is its own to abort.
                guard.armed = false;
                if let Some(m) = &w.multipart_id {
                    if w.created_multipart {
                        let _ = self.blobs.abort_multipart(&w.id, m).await;
                    }
                }
                Err(AppendError::Gone)
            }
            Err(e) => {
                // What was saved stays (the upload can go on from it);
                // the claim and its reservation go. A multipart upload
                // this request created but never saved in the row would
                // be known to nobody: it is aborted.
                if let (Some(m), true, false) =
                    (&w.multipart_id, w.created_multipart, w.multipart_saved)
                {
                    let _ = self.blobs.abort_multipart(&w.id, m).await;
                }
                guard.release().await;
                Err(e)
            }
        }
    }

    pub async fn finish(
        &self,
        session: &mut Session,
        expected: &Digest,
    ) -> Result<Finished, FinishError> {
        let (row, guard) = match self.claim(session, 0, None).await {
            Ok(c) => c,
            Err(AppendError::Busy { offset }) => return Err(FinishError::Busy { offset }),
            Err(AppendError::Gone) => return Err(FinishError::Gone),
            Err(AppendError::Quota(_)) => {
                return Err(StorageError::Internal(
                    "a claim without reservation was refused".into(),
                )
                .into())
            }
            Err(AppendError::Storage(e)) => return Err(e.into()),
        };
        // From here on the session ends whatever happens: the claim is
        // kept until the row goes (linked, or discarded).
        let mut guard = guard;
        guard.armed = false;
        let id = row.id.clone();
        let result = self.verify(row, expected).await;
        if result.is_err() {
            self.discard(&id).await;
        }
        result
    }

    async fn verify(&self, row: UploadRow, expected: &Digest) -> Result<Finished, FinishError> {
        let size = row.received;
        let hasher = Hasher::restore(Algorithm::Sha256, &row.hash_state).ok_or_else(|| {
            StorageError::Internal(format!("upload {} has a damaged hash state", row.id))
        })?;
        let check = |computed: Digest| {
            if &computed == expected {
                Ok(())
            } else {
                Err(FinishError::DigestMismatch {
                    expected: expected.clone(),
                    computed,
                })
            }
        };
        let small = row.parts.is_empty() && (size <= self.limits.inline_max || size == 0);
        if small {
            let data = Bytes::from(row.pending);
            check(match expected.algorithm() {
                Algorithm::Sha256 => hasher.finish(),
                other => Digest::compute(other, &data),
            })?;
            return Ok(Finished {
                content: Staged::Memory(data),
                size,
                hold: Hold::Shared(row.id),
            });
        }
        // A sha256 upload is verified before anything more is written.
        if expected.algorithm() == Algorithm::Sha256 {
            check(hasher.finish())?;
        }
        let multipart_id = match &row.multipart_id {
            Some(m) => m.clone(),
            None => self.blobs.create_multipart(&row.id).await?,
        };
        let mut parts = row.parts;
        if !row.pending.is_empty() || parts.is_empty() {
            // The last part may be short.
            let etag = self
                .blobs
                .put_part(
                    &row.id,
                    &multipart_id,
                    parts.len(),
                    Bytes::from(row.pending),
                )
                .await?;
            parts.push(etag);
        }
        self.blobs
            .complete_multipart(&row.id, &multipart_id, &parts)
            .await?;
        let stored = self.blobs.upload_size(&row.id).await?;
        if stored != Some(size) {
            return Err(StorageError::Internal(format!(
                "upload {} assembled {stored:?} bytes in the blob store, not the {size} received",
                row.id
            ))
            .into());
        }
        if expected.algorithm() != Algorithm::Sha256 {
            // The running hash is sha256; a sha512 upload (rare) pays one
            // read of the assembled object, as the local staging does.
            let mut h = Hasher::new(expected.algorithm());
            let mut s = self.blobs.upload_stream(&row.id).await?;
            while let Some(chunk) = s.next().await {
                h.update(&chunk?);
            }
            check(h.finish())?;
        }
        Ok(Finished {
            content: Staged::Object,
            size,
            hold: Hold::Shared(row.id),
        })
    }

    pub async fn cancel(&self, session: &mut Session) -> Result<(), StorageError> {
        if let Some(row) = self.meta.delete_upload(&session.row.id, None).await? {
            self.remove_objects(&row).await;
        }
        Ok(())
    }

    /// Deletes a session's row and objects (a finished upload that will not
    /// be stored, or a failed finish).
    pub async fn discard(&self, id: &str) {
        match self.meta.delete_upload(id, None).await {
            Ok(Some(row)) => self.remove_objects(&row).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(session = id, error = %e, "could not delete an upload session; it expires when idle")
            }
        }
    }

    /// Aborts a session's multipart upload and deletes its object (row
    /// first, objects second: what is left is swept as an orphan).
    async fn remove_objects(&self, row: &UploadRow) {
        if let Some(m) = &row.multipart_id {
            if let Err(e) = self.blobs.abort_multipart(&row.id, m).await {
                tracing::warn!(session = %row.id, error = %e, "could not abort a multipart upload; a bucket lifecycle rule for incomplete uploads collects it");
            }
        }
        self.blobs.delete_upload_objects(&row.id).await;
    }

    /// Cancels sessions not written to since `cutoff_ms`, from any replica
    /// (each deletion re-checks idleness, so a session written to
    /// meanwhile stays); how many.
    pub async fn expire(&self, cutoff_ms: i64) -> usize {
        let ids = match self.meta.idle_uploads(cutoff_ms).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "could not list idle upload sessions");
                return 0;
            }
        };
        let mut expired = 0;
        for id in ids {
            match self.meta.delete_upload(&id, Some(cutoff_ms)).await {
                Ok(Some(row)) => {
                    self.remove_objects(&row).await;
                    expired += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(session = %id, error = %e, "could not expire an upload session")
                }
            }
        }
        expired
    }

    pub async fn expire_idle(&self) -> usize {
        let idle = self.limits.idle_timeout.as_millis() as i64;
        self.expire(now_ms() - idle).await
    }
}

/// One request's writing of a claimed session.
struct Writer<'a> {
    uploads: &'a SharedUploads,
    id: String,
    namespace: String,
    token: &'a str,
    hasher: Hasher,
    /// Bytes received, saved or not.
    received: u64,
    /// Bytes saved in the row (parts and pending).
    saved: u64,
    /// `received` may grow to this without reserving more.
    reserved_to: u64,
    multipart_id: Option<String>,
    /// Whether this request created the multipart upload, and whether
    /// the row has its id yet.
    created_multipart: bool,
    multipart_saved: bool,
    parts: Vec<String>,
    /// Bytes not in a part yet: the row's pending bytes, then the body's.
    buf: BytesMut,
}

impl<'a> Writer<'a> {
    fn new(
        uploads: &'a SharedUploads,
        row: UploadRow,
        token: &'a str,
    ) -> Result<Self, StorageError> {
        let hasher = Hasher::restore(Algorithm::Sha256, &row.hash_state).ok_or_else(|| {
            StorageError::Internal(format!("upload {} has a damaged hash state", row.id))
        })?;
        let mut buf = BytesMut::with_capacity(row.pending.len());
        buf.extend_from_slice(&row.pending);
        Ok(Writer {
            uploads,
            token,
            hasher,
            received: row.received,
            saved: row.received,
            reserved_to: row.received + row.reserved,
            multipart_id: row.multipart_id,
            created_multipart: false,
            multipart_saved: false,
            parts: row.parts,
            buf,
            id: row.id,
            namespace: row.namespace,
        })
    }

    /// Makes sure `n` more bytes are reserved (in steps, so a streamed
    /// body costs one write per step rather than per chunk; a step that
    /// does not fit is retried with what is needed).
    async fn reserve(&mut self, n: u64, room: Option<u64>) -> Result<(), AppendError> {
        let need = (self.received + n).saturating_sub(self.reserved_to);
        if need == 0 {
            return Ok(());
        }
        let meta = &self.uploads.meta;
        let mut ask = need.max(RESERVE_STEP);
        loop {
            match meta.reserve_upload(&self.id, self.token, ask, room).await? {
                Reserve::Reserved => {
                    self.reserved_to += ask;
                    return Ok(());
                }
                Reserve::Lost => return Err(AppendError::Gone),
                Reserve::Full { staged, room } if ask == need => {
                    return Err(AppendError::Quota(StagingFull {
                        namespace: self.namespace.clone(),
                        staged,
                        room,
                        needed: need,
                    }))
                }
                Reserve::Full { .. } => ask = need,
            }
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.buf.extend_from_slice(chunk);
        self.received += chunk.len() as u64;
    }

    /// Sends what is buffered as the next part.
    async fn flush_part(&mut self) -> Result<(), StorageError> {
        let blobs = &self.uploads.blobs;
        let multipart_id = match &self.multipart_id {
            Some(m) => m.clone(),
            None => {
                let m = blobs.create_multipart(&self.id).await?;
                self.multipart_id = Some(m.clone());
                self.created_multipart = true;
                m
            }
        };
        let data = self.buf.split().freeze();
        let etag = blobs
            .put_part(&self.id, &multipart_id, self.parts.len(), data)
            .await?;
        self.parts.push(etag);
        Ok(())
    }

    /// Saves the progress under the claim (`release`: and gives it back).
    async fn save(&mut self, release: bool) -> Result<(), AppendError> {
        let progress = UploadProgress {
            received: self.received,
            reserved: self.reserved_to.saturating_sub(self.received),
            hash_state: self.hasher.save(),
            multipart_id: self.multipart_id.clone(),
            parts: self.parts.clone(),
            pending: self.buf.to_vec(),
            release,
        };
        if !self
            .uploads
            .meta
            .save_upload(&self.id, self.token, progress)
            .await?
        {
            return Err(AppendError::Gone);
        }
        self.saved = self.received;
        self.multipart_saved = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Synchronous;
    use object_store::memory::InMemory;
    use std::time::Duration;

    fn body(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
    }

    /// Two "replicas": their own `SharedUploads` over one database and
    /// one object store.
    fn replicas(
        dir: &std::path::Path,
        limits: UploadLimits,
    ) -> (SharedUploads, SharedUploads, BlobStore, Metadata) {
        let meta = Metadata::open(&dir.join("berth.db"), Synchronous::Normal).unwrap();
        let blobs = BlobStore::shared(InMemory::new());
        let a = SharedUploads::new(meta.clone(), blobs.clone(), limits.clone());
        let b = SharedUploads::new(meta.clone(), blobs.clone(), limits);
        (a, b, blobs, meta)
    }

    fn limits() -> UploadLimits {
        UploadLimits {
            per_namespace: 4,
            total: 6,
            idle_timeout: Duration::from_secs(60),
            inline_max: 16,
            memory: 0,
        }
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    async fn object(blobs: &BlobStore, digest: &Digest) -> Vec<u8> {
        let mut s = blobs.get(digest, None).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunked_upload_goes_on_across_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, blobs, meta) = replicas(dir.path(), limits());
        let repo = RepoName::parse("tool-a/x").unwrap();
        let chunks = [
            data(1000, 1),
            data(PART_SIZE + 3 * 1024 * 1024, 2),
            data(10, 3),
            data(MIN_PART, 4),
            data(7, 5),
        ];
        let all: Vec<u8> = chunks.concat();
        let started = a.start(&repo).await.unwrap();
        let id = started.id().to_owned();
        // Each chunk on the other replica, opened afresh from the row.
        for (i, chunk) in chunks.iter().enumerate() {
            let u = if i % 2 == 0 { &b } else { &a };
            let mut s = u.open(&id, &repo).await.unwrap().unwrap();
            let n = u
                .append(
                    &mut s,
                    body(vec![
                        chunk[..chunk.len() / 2].to_vec(),
                        chunk[chunk.len() / 2..].to_vec(),
                    ]),
                    None,
                    None,
                )
                .await
                .unwrap();
            assert_eq!(n, chunk.len() as u64);
        }
        let row = meta.upload(&id).await.unwrap().unwrap();
        assert_eq!(row.received, all.len() as u64);
        assert!(
            row.pending.len() < MIN_PART,
            "a tail shorter than a part waits in the row"
        );
        assert_eq!(row.claim, None);
        assert_eq!(
            meta.staged_upload_bytes("tool-a").await.unwrap(),
            all.len() as u64
        );
        let digest = Digest::sha256_of(&all);
        let mut s = b.open(&id, &repo).await.unwrap().unwrap();
        let done = b.finish(&mut s, &digest).await.unwrap();
        assert!(matches!(done.content, Staged::Object));
        assert_eq!(done.size, all.len() as u64);
        blobs.commit_upload(&id, &digest, done.size).await.unwrap();
        assert_eq!(object(&blobs, &digest).await, all);
        assert_eq!(
            blobs.list_upload_objects().await.unwrap().len(),
            0,
            "the temporary object is gone"
        );
        // Linking deletes the row: its staged bytes become stored ones.
        meta.link_uploaded_blob(&repo, &digest, done.size, None, &id)
            .await
            .unwrap()
            .unwrap();
        assert!(meta.upload(&id).await.unwrap().is_none());
        assert_eq!(meta.staged_upload_bytes("tool-a").await.unwrap(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_uploads_end_as_bytes_and_mismatches_end_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _blobs, meta) = replicas(dir.path(), limits());
        let repo = RepoName::parse("tool-a/x").unwrap();
        let mut s = a.start(&repo).await.unwrap();
        a.append(&mut s, body(vec![b"abc".to_vec()]), None, Some(3))
            .await
            .unwrap();
        let mut s = b.open(s.id(), &repo).await.unwrap().unwrap();
        b.append(&mut s, body(vec![b"def".to_vec()]), None, None)
            .await
            .unwrap();
        let done = a
            .finish(&mut s, &Digest::sha256_of(b"abcdef"))
            .await
            .unwrap();
        assert!(matches!(&done.content, Staged::Memory(d) if &d[..] == b"abcdef"));
        // sha512 is verified over the bytes too.
        let mut s = a.start(&repo).await.unwrap();
        a.append(&mut s, body(vec![b"xyz".to_vec()]), None, None)
            .await
            .unwrap();
        let sha512 = Digest::compute(Algorithm::Sha512, b"xyz");
        assert!(a.finish(&mut s, &sha512).await.is_ok());
        // A mismatch discards the session.
        let mut s = a.start(&repo).await.unwrap();
        let id = s.id().to_owned();
        a.append(&mut s, body(vec![data(100, 9)]), None, None)
            .await
            .unwrap();
        let wrong = a.finish(&mut s, &Digest::sha256_of(b"no")).await;
        assert!(matches!(wrong, Err(FinishError::DigestMismatch { .. })));
        assert!(meta.upload(&id).await.unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_writer_at_a_time_and_chunks_must_continue() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, _blobs, meta) = replicas(dir.path(), limits());
        let repo = RepoName::parse("tool-a/x").unwrap();
        let s = a.start(&repo).await.unwrap();
        let mut on_a = a.open(s.id(), &repo).await.unwrap().unwrap();
        let mut on_b = b.open(s.id(), &repo).await.unwrap().unwrap();
        // A's body is still streaming (its claim is held) when B's comes.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
        tx.send(Ok(Bytes::from_static(b"first"))).unwrap();
        let rx = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let writing = tokio::spawn(async move {
            let n = a.append(&mut on_a, rx, None, None).await;
            (a, on_a, n)
        });
        // Until A's claim is in the row (no timing: the row says so).
        while meta.upload(s.id()).await.unwrap().unwrap().claim.is_none() {
            tokio::task::yield_now().await;
        }
        let refused = b
            .append(&mut on_b, body(vec![b"second".to_vec()]), None, None)
            .await;
        assert!(
            matches!(refused, Err(AppendError::Busy { offset: 0 })),
            "{refused:?}"
        );
        drop(tx);
        let (_a, on_a, n) = writing.await.unwrap();
        assert_eq!(n.unwrap(), 5);
        assert_eq!(on_a.offset(), 5);
        // B's view is stale: its chunk does not continue the upload.
        assert!(matches!(
            b.append(&mut on_b, body(vec![b"x".to_vec()]), None, None)
                .await,
            Err(AppendError::Busy { offset: 5 })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caps_quota_and_expiry_hold_across_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, blobs, meta) = replicas(dir.path(), limits());
        let repo = RepoName::parse("tool-a/x").unwrap();
        let mut sessions = Vec::new();
        for i in 0..4 {
            let u = if i % 2 == 0 { &a } else { &b };
            sessions.push(u.start(&repo).await.unwrap());
        }
        assert!(matches!(
            b.start(&repo).await,
            Err(StorageError::LimitReached {
                limit: "uploads_per_namespace",
                ..
            })
        ));
        let other = RepoName::parse("tool-b/x").unwrap();
        a.start(&other).await.unwrap();
        a.start(&other).await.unwrap();
        assert!(matches!(
            b.start(&other).await,
            Err(StorageError::LimitReached {
                limit: "uploads_total",
                ..
            })
        ));
        // Staged bytes of both replicas count against the room.
        let room = Some(PART_SIZE as u64 * 2);
        a.append(
            &mut sessions[0],
            body(vec![data(PART_SIZE, 1)]),
            room,
            Some(PART_SIZE as u64),
        )
        .await
        .unwrap();
        let refused = b
            .append(
                &mut sessions[1],
                body(vec![data(PART_SIZE + 1, 1)]),
                room,
                Some(PART_SIZE as u64 + 1),
            )
            .await;
        assert!(matches!(refused, Err(AppendError::Quota(_))), "{refused:?}");
        assert_eq!(
            meta.staged_upload_bytes("tool-a").await.unwrap(),
            PART_SIZE as u64
        );
        // Without a declared length the refusal comes as the bytes do.
        let refused = b
            .append(
                &mut sessions[1],
                body(vec![data(1024 * 1024, 1); 9]),
                room,
                None,
            )
            .await;
        assert!(matches!(refused, Err(AppendError::Quota(_))), "{refused:?}");
        // The part it completed before the refusal stays (the upload can
        // go on from there); what it had reserved beyond went back.
        assert_eq!(
            meta.staged_upload_bytes("tool-a").await.unwrap(),
            2 * PART_SIZE as u64
        );
        assert_eq!(
            meta.upload(sessions[1].id())
                .await
                .unwrap()
                .unwrap()
                .received,
            PART_SIZE as u64
        );
        // Expiry, from either replica, aborts the multipart upload.
        assert!(meta
            .upload(sessions[0].id())
            .await
            .unwrap()
            .unwrap()
            .multipart_id
            .is_some());
        assert_eq!(b.expire(now_ms() + 1).await, 6);
        assert_eq!(meta.upload_count().await.unwrap(), 0);
        assert_eq!(meta.staged_upload_bytes("tool-a").await.unwrap(), 0);
        assert!(blobs.list_upload_objects().await.unwrap().is_empty());
    }
}
