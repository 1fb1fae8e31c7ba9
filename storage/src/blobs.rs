//! The content-addressed blob store: layers and configs as objects named
//! `blobs/<algorithm>/<2 hex>/<hex>` in an `object_store::ObjectStore`.
//! On the local filesystem a finished upload is renamed into place (no second
//! copy). On S3 (`[storage.s3]`) an upload's bytes go up as an S3 multipart
//! upload at `uploads/<session>/data` as they arrive (`crate::uploads`'s
//! shared sessions), and the finished object is copied server-side to its
//! blob path; a blob GET may then be answered with a presigned URL.
//!
//! Every object_store error is a `StorageError::ObjectStore`: a 500 whose
//! cause is logged, never shown (object_store's messages carry no
//! credentials: S3 requests are signed in headers).

use crate::digest::Digest;
use crate::StorageError;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::signer::Signer;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Read size when serving blobs from local files: large enough that the
/// per-chunk hop to a blocking thread is noise next to the copy itself.
const READ_CHUNK: usize = 256 * 1024;

/// An object found by listing the store.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub digest: Digest,
    pub size: u64,
    pub last_modified_ms: i64,
}

/// A stream of blob bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// `[storage.s3]`: blobs (and shared upload sessions' bytes) in an
/// S3-compatible bucket.
#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    /// `https://...` of an S3-compatible service; AWS's own when `None`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Credentials; when `None`, the usual AWS environment variables (and
    /// the other sources `AmazonS3Builder::from_env` reads).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain `http://` endpoints (tests, a service on the same host).
    pub allow_http: bool,
    /// `https://<bucket>.<endpoint>` rather than `<endpoint>/<bucket>`.
    pub virtual_hosted_style: bool,
    /// Every object's name starts with this (a bucket shared with others).
    pub prefix: Option<String>,
    /// Blob GETs answer 307 to a presigned URL valid this long.
    pub redirect: Option<std::time::Duration>,
}

impl std::fmt::Debug for S3Config {
    /// Everything but the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<set>"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("prefix", &self.prefix)
            .field("redirect", &self.redirect)
            .finish()
    }
}

/// The object naming the store (a uuid written by the first process that
/// opened it): replicas compare it with the one recorded in the database.
const IDENTITY_OBJECT: &str = "berth-store-id";

/// S3's CopyObject copies at most 5 GiB; larger objects are streamed
/// through this process instead, in `STREAM_COPY_PART` parts (two in
/// flight: about 48 MiB of memory for the length of such a commit; 10,000
/// parts make 160 GiB, the largest blob this path can store).
const COPY_OBJECT_MAX: u64 = 5 * 1024 * 1024 * 1024;
const STREAM_COPY_PART: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Set when the store is the local filesystem, to allow renames into it.
    local: Option<Arc<LocalFileSystem>>,
    /// Set on S3: resumable multipart uploads, which any replica can add a
    /// part to or complete by the upload's id.
    multipart: Option<Arc<dyn MultipartStore>>,
    /// Set when blob GETs redirect to presigned URLs valid this long.
    signer: Option<(Arc<dyn Signer>, std::time::Duration)>,
}

impl BlobStore {
    /// A blob store in the local directory `root` (created if missing).
    pub fn local(root: &Path) -> Result<BlobStore, StorageError> {
        std::fs::create_dir_all(root)?;
        let fs = Arc::new(LocalFileSystem::new_with_prefix(root)?);
        Ok(BlobStore {
            store: fs.clone(),
            local: Some(fs),
            multipart: None,
            signer: None,
        })
    }

    /// A blob store on any object_store backend (S3, GCS, Azure, memory).
    pub fn remote(store: Arc<dyn ObjectStore>) -> BlobStore {
        BlobStore {
            store,
            local: None,
            multipart: None,
            signer: None,
        }
    }

    /// A blob store on a backend with resumable multipart uploads, which
    /// shared upload sessions need (S3; `InMemory` in unit tests).
    pub fn shared<T: ObjectStore + MultipartStore>(store: T) -> BlobStore {
        let store = Arc::new(store);
        BlobStore {
            store: store.clone(),
            local: None,
            multipart: Some(store),
            signer: None,
        }
    }

    /// The bucket `config` names. Nothing is sent yet: a wrong endpoint or
    /// credentials show at the first request (`identity` at start-up).
    pub fn s3(config: &S3Config) -> Result<BlobStore, StorageError> {
        // reqwest's rustls is built without a provider of its own (see the
        // workspace's Cargo.toml); ring is the one berth uses everywhere.
        // Installed once per process; a second call finds it there.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(config.virtual_hosted_style);
        if let Some(endpoint) = &config.endpoint {
            b = b.with_endpoint(endpoint);
        }
        if let Some(region) = &config.region {
            b = b.with_region(region);
        }
        if let Some(id) = &config.access_key_id {
            b = b.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        let s3 = b
            .build()
            .map_err(|e| StorageError::Internal(format!("[storage.s3] is not usable: {e}")))?;
        let prefix = config
            .prefix
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty());
        Ok(match prefix {
            Some(p) => {
                let s = Arc::new(PrefixStore::new(s3, p));
                let mut bs = BlobStore::remote(s.clone());
                bs.multipart = Some(s.clone());
                bs.signer = config.redirect.map(|d| (s as Arc<dyn Signer>, d));
                bs
            }
            None => {
                let s = Arc::new(s3);
                let mut bs = BlobStore::remote(s.clone());
                bs.multipart = Some(s.clone());
                bs.signer = config.redirect.map(|d| (s as Arc<dyn Signer>, d));
                bs
            }
        })
    }

    /// Whether upload sessions must be shared (the store is not this
    /// machine's disk, so other replicas may use it).
    pub fn is_shared(&self) -> bool {
        self.multipart.is_some()
    }

    /// This store's identity: a uuid kept in the store itself (written by
    /// the first process to open it), so two processes agree exactly when
    /// they use the same store, whatever address they reach it by.
    pub async fn identity(&self) -> Result<String, StorageError> {
        let path = ObjectPath::from(IDENTITY_OBJECT);
        let read = |bytes: Bytes| {
            String::from_utf8(bytes.to_vec())
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| uuid::Uuid::parse_str(s).is_ok())
        };
        match self.store.get(&path).await {
            Ok(r) => {
                if let Some(id) = read(r.bytes().await?) {
                    return Ok(id);
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.store
            .put(&path, PutPayload::from(format!("{id}\n")))
            .await?;
        // Read back: a process that wrote at the same moment may have won.
        let got = read(self.store.get(&path).await?.bytes().await?);
        got.ok_or_else(|| {
            StorageError::Internal(format!("{IDENTITY_OBJECT} in the blob store is not a uuid"))
        })
    }

    /// A presigned GET URL for the blob, when `[storage.s3] redirect` is on.
    pub async fn presigned_get(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let Some((signer, expiry)) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(http::Method::GET, &Self::object_path(digest), *expiry)
            .await?;
        Ok(Some(url.to_string()))
    }

    fn multipart(&self) -> Result<&Arc<dyn MultipartStore>, StorageError> {
        self.multipart.as_ref().ok_or_else(|| {
            StorageError::Internal("this blob store has no multipart uploads".into())
        })
    }

    /// Where a shared upload session's bytes are assembled.
    pub fn upload_path(session: &str) -> ObjectPath {
        ObjectPath::from(format!("uploads/{session}/data"))
    }

    pub async fn create_multipart(&self, session: &str) -> Result<String, StorageError> {
        Ok(self
            .multipart()?
            .create_multipart(&Self::upload_path(session))
            .await?)
    }

    /// Uploads part `index` (0-based) of the session's multipart upload;
    /// its ETag.
    pub async fn put_part(
        &self,
        session: &str,
        multipart_id: &str,
        index: usize,
        data: Bytes,
    ) -> Result<String, StorageError> {
        let part = self
            .multipart()?
            .put_part(
                &Self::upload_path(session),
                &multipart_id.to_owned(),
                index,
                PutPayload::from_bytes(data),
            )
            .await?;
        Ok(part.content_id)
    }

    /// Completes the session's multipart upload from its parts' ETags.
    pub async fn complete_multipart(
        &self,
        session: &str,
        multipart_id: &str,
        parts: &[String],
    ) -> Result<(), StorageError> {
        let parts = parts
            .iter()
            .map(|p| PartId {
                content_id: p.clone(),
            })
            .collect();
        self.multipart()?
            .complete_multipart(&Self::upload_path(session), &multipart_id.to_owned(), parts)
            .await?;
        Ok(())
    }

    /// Aborts the session's multipart upload (its parts stop costing
    /// storage); one already gone is not an error.
    pub async fn abort_multipart(
        &self,
        session: &str,
        multipart_id: &str,
    ) -> Result<(), StorageError> {
        match self
            .multipart()?
            .abort_multipart(&Self::upload_path(session), &multipart_id.to_owned())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Size of the assembled upload object.
    pub async fn upload_size(&self, session: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&Self::upload_path(session)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams the assembled upload object (a sha512 upload's one
    /// verification read: the running hash is sha256).
    pub async fn upload_stream(&self, session: &str) -> Result<ByteStream, StorageError> {
        let r = self.store.get(&Self::upload_path(session)).await?;
        Ok(r.into_stream()
            .map(|r| r.map_err(StorageError::from))
            .boxed())
    }

    /// Moves a verified upload object to its blob path (a server-side copy
    /// up to 5 GiB, streamed through this process past that), then deletes
    /// it; a failed delete leaves it for the orphan sweep.
    pub async fn commit_upload(
        &self,
        session: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<(), StorageError> {
        let from = Self::upload_path(session);
        let to = Self::object_path(digest);
        if size <= COPY_OBJECT_MAX {
            self.store.copy(&from, &to).await?;
        } else {
            let mut source = self.store.get(&from).await?.into_stream();
            let mut writer = WriteMultipart::new_with_chunk_size(
                self.store.put_multipart(&to).await?,
                STREAM_COPY_PART,
            );
            while let Some(chunk) = source.next().await {
                writer.wait_for_capacity(2).await?;
                writer.put(chunk?);
            }
            writer.finish().await?;
        }
        self.delete_upload_objects(session).await;
        Ok(())
    }

    /// Deletes what a session left in the store (its assembled object);
    /// failures are logged, and the orphan sweep retries.
    pub async fn delete_upload_objects(&self, session: &str) {
        match self.store.delete(&Self::upload_path(session)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(session, error = %e, "upload object not deleted; the orphan sweep retries")
            }
        }
    }

    /// Objects under `uploads/`: (session id, path, last modified ms).
    pub async fn list_upload_objects(
        &self,
    ) -> Result<Vec<(String, ObjectPath, i64)>, StorageError> {
        let mut stream = self.store.list(Some(&ObjectPath::from("uploads")));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let parts: Vec<&str> = meta.location.as_ref().split('/').collect();
            if let ["uploads", id, ..] = parts.as_slice() {
                out.push((
                    (*id).to_owned(),
                    meta.location.clone(),
                    meta.last_modified.timestamp_millis(),
                ));
            }
        }
        Ok(out)
    }

    /// Deletes one object by path; a missing one is not an error.
    pub async fn delete_path(&self, path: &ObjectPath) -> Result<(), StorageError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn object_path(digest: &Digest) -> ObjectPath {
        let hex = digest.hex();
        ObjectPath::from(format!(
            "blobs/{}/{}/{}",
            digest.algorithm().name(),
            &hex[..2],
            hex
        ))
    }

    /// Moves a verified staging file into the store under `digest`.
    /// The staging file is gone afterwards, whatever the outcome.
    pub async fn commit_staged(
        &self,
        staged: PathBuf,
        digest: &Digest,
    ) -> Result<(), StorageError> {
        let location = Self::object_path(digest);
        if let Some(local) = &self.local {
            let target = local.path_to_filesystem(&location)?;
            return tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
                let dir = target.parent().expect("object path has a parent");
                std::fs::create_dir_all(dir)?;
                std::fs::rename(&staged, &target)?;
                // Make the rename durable before the metadata row that names it.
                std::fs::File::open(dir)?.sync_all()?;
                Ok(())
            })
            .await
            .map_err(|e| StorageError::Internal(format!("commit task failed: {e}")))?;
        }
        let result = async {
            let upload = self.store.put_multipart(&location).await?;
            let mut writer = WriteMultipart::new(upload);
            let mut file = tokio::fs::File::open(&staged).await?;
            let mut buf = vec![0u8; 8 * 1024 * 1024];
            loop {
                use tokio::io::AsyncReadExt;
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await?;
                writer.write(&buf[..n]);
            }
            writer.finish().await?;
            Ok::<_, StorageError>(())
        }
        .await;
        let _ = tokio::fs::remove_file(&staged).await;
        result
    }

    /// Streams `range` of the blob (all of it when `None`).
    pub async fn get(
        &self,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<ByteStream, StorageError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(&Self::object_path(digest), options)
            .await?;
        let range = result.range.clone();
        Ok(match result.payload {
            GetResultPayload::File(file, _) => file_stream(file, range),
            GetResultPayload::Stream(s) => s.map(|r| r.map_err(StorageError::from)).boxed(),
        })
    }

    /// Size of the stored object, or `None` when it is missing.
    pub async fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        match self.store.head(&Self::object_path(digest)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the object; a missing object is not an error.
    pub async fn delete(&self, digest: &Digest) -> Result<(), StorageError> {
        match self.store.delete(&Self::object_path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes many objects; missing ones are not an error. On the local
    /// filesystem this is one trip to a blocking thread for the batch.
    /// Returns the digests whose deletion failed (with why).
    pub async fn delete_many(
        &self,
        digests: Vec<Digest>,
    ) -> Result<Vec<(Digest, String)>, StorageError> {
        if let Some(local) = &self.local {
            let paths: Vec<(Digest, std::path::PathBuf)> = digests
                .into_iter()
                .map(|d| {
                    local
                        .path_to_filesystem(&Self::object_path(&d))
                        .map(|p| (d, p))
                })
                .collect::<Result<_, _>>()?;
            return tokio::task::spawn_blocking(move || {
                paths
                    .into_iter()
                    .filter_map(|(d, p)| match std::fs::remove_file(&p) {
                        Ok(()) => None,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => Some((d, e.to_string())),
                    })
                    .collect()
            })
            .await
            .map_err(|e| StorageError::Internal(format!("delete task failed: {e}")));
        }
        let mut failed = Vec::new();
        for d in digests {
            if let Err(e) = self.delete(&d).await {
                failed.push((d, e.to_string()));
            }
        }
        Ok(failed)
    }

    /// Every blob object in the store. Paths that are not blob objects
    /// (foreign files) are skipped.
    pub async fn list(&self) -> Result<Vec<StoredObject>, StorageError> {
        let mut stream = self.store.list(Some(&ObjectPath::from("blobs")));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let parts: Vec<&str> = meta.location.as_ref().split('/').collect();
            if let ["blobs", alg, _, hex] = parts.as_slice() {
                if let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() {
                    if Self::object_path(&digest) == meta.location {
                        out.push(StoredObject {
                            digest,
                            size: meta.size,
                            last_modified_ms: meta.last_modified.timestamp_millis(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Stores `bytes` as the blob `digest`, checking the digest and size
    /// as they stream (a mismatch stores nothing: the multipart upload is
    /// aborted). For copying blobs between stores (`berth migrate`).
    pub async fn put_verified(
        &self,
        digest: &Digest,
        size: u64,
        mut bytes: ByteStream,
    ) -> Result<(), StorageError> {
        let upload = self.store.put_multipart(&Self::object_path(digest)).await?;
        let mut writer = WriteMultipart::new(upload);
        let mut hasher = crate::digest::Hasher::new(digest.algorithm());
        let mut seen = 0u64;
        let copied = async {
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                seen += chunk.len() as u64;
                writer.wait_for_capacity(4).await?;
                writer.write(&chunk);
            }
            Ok::<_, StorageError>(())
        }
        .await;
        let verified = copied.and_then(|()| {
            let got = hasher.finish();
            if got == *digest && seen == size {
                Ok(())
            } else {
                Err(StorageError::Internal(format!(
                    "blob {digest}: read {seen} bytes with digest {got}, expected {size} bytes"
                )))
            }
        });
        match verified {
            Ok(()) => {
                writer.finish().await?;
                Ok(())
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Answers when the store does (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.size(&Digest::sha256_of(b"berth-healthz"))
            .await
            .map(|_| ())
    }
}

/// Reads `range` of a local file in large chunks on blocking threads.
fn file_stream(file: std::fs::File, range: Range<u64>) -> ByteStream {
    struct State {
        file: std::fs::File,
        pos: u64,
        end: u64,
        seeked: bool,
    }
    let state = State {
        file,
        pos: range.start,
        end: range.end,
        seeked: false,
    };
    stream::try_unfold(state, |mut st| async move {
        if st.pos >= st.end {
            return Ok(None);
        }
        let want = (st.end - st.pos).min(READ_CHUNK as u64) as usize;
        let (st, chunk) = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            if !st.seeked {
                st.file.seek(SeekFrom::Start(st.pos))?;
                st.seeked = true;
            }
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                let n = st.file.read(&mut buf[filled..])?;
                if n == 0 {
                    return Err(StorageError::Internal(
                        "blob file is shorter than recorded".into(),
                    ));
                }
                filled += n;
            }
            st.pos += want as u64;
            Ok((st, Bytes::from(buf)))
        })
        .await
        .map_err(|e| StorageError::Internal(format!("read task failed: {e}")))??;
        Ok(Some((chunk, st)))
    })
    .boxed()
}
