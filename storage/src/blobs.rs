//! The content-addressed blob store: layers and configs as objects named
//! `blobs/<algorithm>/<2 hex>/<hex>` in an `object_store::ObjectStore`.
//! On the local filesystem a finished upload is renamed into place (no second
//! copy); on any other backend it is streamed up as a multipart upload.

use crate::digest::Digest;
use crate::StorageError;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt, WriteMultipart,
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

#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Set when the store is the local filesystem, to allow renames into it.
    local: Option<Arc<LocalFileSystem>>,
}

impl BlobStore {
    /// A blob store in the local directory `root` (created if missing).
    pub fn local(root: &Path) -> Result<BlobStore, StorageError> {
        std::fs::create_dir_all(root)?;
        let fs = Arc::new(LocalFileSystem::new_with_prefix(root)?);
        Ok(BlobStore {
            store: fs.clone(),
            local: Some(fs),
        })
    }

    /// A blob store on any object_store backend (S3, GCS, Azure, memory).
    pub fn remote(store: Arc<dyn ObjectStore>) -> BlobStore {
        BlobStore { store, local: None }
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
