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
            Err(e) => {
                // What was saved stays (the upload can go on from it);
                // the claim and its reservation go.
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
                return Err(StorageError::Internal("a claim without reservation was refused".into()).into())
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
                .put_part(&row.id, &multipart_id, parts.len(), Bytes::from(row.pending))
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
                Err(e) => tracing::warn!(session = %id, error = %e, "could not expire an upload session"),
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
    parts: Vec<String>,
    /// Bytes not in a part yet: the row's pending bytes, then the body's.
    buf: BytesMut,
}

impl<'a> Writer<'a> {
    fn new(uploads: &'a SharedUploads, row: UploadRow, token: &'a str) -> Result<Self, StorageError> {
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
        Ok(())
    }
}
