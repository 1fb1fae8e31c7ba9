//! berth-storage against a real data directory and each metadata backend
//! (a SQLite file; a PostgreSQL database).

#[macro_use]
mod support;

use berth_storage::manifest::{self, OCI_INDEX, OCI_MANIFEST};
use berth_storage::meta::{DeleteManifestOutcome, PutManifestOutcome, UnlinkBlobOutcome};
use berth_storage::uploads::FinishError;
use berth_storage::{Algorithm, Digest, RepoName, Storage};
use bytes::Bytes;
use support::{Backend, Place};

/// Files in the staging directory's shards.
fn staged_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().count())
        .sum()
}

for_each_backend!(
    manifests_reference_checks_and_deletes_survive_reopen,
    uploads_verify_sha256_and_sha512_and_discard_mismatches,
    concurrent_pushes_never_pass_the_quota,
    concurrent_build_users_are_distinct,
    digest_locks_exclude_each_other,
    concurrent_small_blobs_commit_together_and_refusals_roll_back_alone,
    held_is_given_back_inside_the_charging_transaction,
    inline_blobs_go_with_their_rows,
    a_moved_tag_is_served_at_once_while_readers_keep_reading,
);

// The blob and upload cases again with blobs in S3 (a real Garage) and
// sessions in PostgreSQL, as replicas run.
on_s3!(
    manifests_reference_checks_and_deletes_survive_reopen,
    uploads_verify_sha256_and_sha512_and_discard_mismatches,
    digest_locks_exclude_each_other,
    concurrent_small_blobs_commit_together_and_refusals_roll_back_alone,
    held_is_given_back_inside_the_charging_transaction,
    inline_blobs_go_with_their_rows,
    uploads_span_replicas_and_the_sweep_spares_live_sessions,
    a_part_replaced_after_its_etag_was_saved_fails_completion,
);

fn body(
    parts: &[&'static [u8]],
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures_util::stream::iter(
        parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p)))
            .collect::<Vec<_>>(),
    )
}

async fn store_blob(s: &Storage, repo: &RepoName, bytes: &'static [u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let mut session = s.uploads.start(repo).await.unwrap();
    s.uploads
        .append(&mut session, body(&[bytes]), None, None)
        .await
        .unwrap();
    let done = s.uploads.finish(&mut session, &digest).await.unwrap();
    let size = done.size;
    assert_eq!(size, bytes.len() as u64);
    s.store_upload(done, repo, &digest).await.unwrap().unwrap();
    digest
}

fn image(config: &Digest, layers: &[&Digest]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": layers.iter().map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l.to_string(), "size": 1})).collect::<Vec<_>>()
    }))
    .unwrap()
}

/// Parses `bytes` as `media_type` and puts it into `repo` under `tag`.
async fn put_tagged(
    s: &Storage,
    repo: &RepoName,
    bytes: &[u8],
    media_type: &str,
    tag: &str,
) -> PutManifestOutcome {
    let parsed = manifest::parse(bytes, Some(media_type)).unwrap();
    s.meta
        .put_manifest(
            repo,
            &Digest::sha256_of(bytes),
            parsed,
            bytes.to_vec(),
            vec![tag.into()],
            "test",
        )
        .await
        .unwrap()
}

async fn manifests_reference_checks_and_deletes_survive_reopen(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let repo = RepoName::parse("tool-a/web").unwrap();
    let s = place.storage(dir.path()).await;
    let config = store_blob(&s, &repo, b"{}").await;
    let layer = store_blob(&s, &repo, b"layer bytes").await;
    let missing = Digest::sha256_of(b"never uploaded");

    // A manifest naming a blob the repo lacks is refused and stores nothing.
    let bad = image(&config, &[&missing]);
    let out = put_tagged(&s, &repo, &bad, OCI_MANIFEST, "v0").await;
    assert_eq!(out, PutManifestOutcome::MissingBlob(missing));
    assert!(s
        .meta
        .get_manifest(&repo, "v0", false, true)
        .await
        .unwrap()
        .is_none());

    let good = image(&config, &[&layer]);
    let digest = Digest::sha256_of(&good);
    let out = put_tagged(&s, &repo, &good, OCI_MANIFEST, "v1").await;
    assert_eq!(out, PutManifestOutcome::Stored);

    // An index over it; the child can then not be deleted from under it.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": good.len()}]
    }))
    .unwrap();
    let index_digest = Digest::sha256_of(&index);
    assert_eq!(
        put_tagged(&s, &repo, &index, OCI_INDEX, "multi").await,
        PutManifestOutcome::Stored
    );
    assert!(matches!(
        s.meta
            .delete_manifest(&repo, &digest, "test")
            .await
            .unwrap(),
        DeleteManifestOutcome::ReferencedByIndex(_)
    ));
    // Nor can a layer a manifest needs be unlinked.
    assert!(matches!(
        s.meta.unlink_blob(&repo, &layer).await.unwrap(),
        UnlinkBlobOutcome::ReferencedByManifest(_)
    ));
    s.close().await;

    // Everything is there after a reopen (migrations run again harmlessly).
    let s = place.storage(dir.path()).await;
    let m = s
        .meta
        .get_manifest(&repo, "v1", false, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.bytes, good);
    assert_eq!(m.digest, digest.to_string());
    assert_eq!(
        s.meta
            .delete_manifest(&repo, &index_digest, "test")
            .await
            .unwrap(),
        DeleteManifestOutcome::Deleted
    );
    assert_eq!(
        s.meta
            .delete_manifest(&repo, &digest, "test")
            .await
            .unwrap(),
        DeleteManifestOutcome::Deleted
    );
    assert!(
        s.meta
            .get_manifest(&repo, "v1", false, false)
            .await
            .unwrap()
            .is_none(),
        "tags go with the manifest"
    );
    assert_eq!(
        s.meta.unlink_blob(&repo, &layer).await.unwrap(),
        UnlinkBlobOutcome::Unlinked
    );
    assert_eq!(
        s.meta.unlink_blob(&repo, &layer).await.unwrap(),
        UnlinkBlobOutcome::NotFound
    );
    // The blob (a small one: its bytes inline) stays for GC to decide
    // about.
    assert_eq!(s.meta.blob_size(&layer).await.unwrap(), Some(11));
    assert_eq!(
        s.meta.inline_blob(&layer).await.unwrap().as_deref(),
        Some(&b"layer bytes"[..])
    );
    s.close().await;
    assert!(matches!(
        s.meta.ping().await,
        Err(berth_storage::StorageError::Closed)
    ));
}

/// The manifest cache (SQLite) must never answer a tag with the manifest
/// it pointed at before a commit that moved it, however many reads are
/// caching it around that commit.
async fn a_moved_tag_is_served_at_once_while_readers_keep_reading(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let repo = RepoName::parse("tool-a/moving").unwrap();
    let s = place.storage(dir.path()).await;
    let config = store_blob(&s, &repo, b"{}").await;
    let layers = [
        store_blob(&s, &repo, b"layer one").await,
        store_blob(&s, &repo, b"layer two").await,
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (s, repo, stop) = (s.clone(), repo.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.meta
                        .get_manifest(&repo, "latest", false, true)
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for round in 0..40 {
        let bytes = image(&config, &[&layers[round % 2]]);
        let digest = Digest::sha256_of(&bytes);
        assert_eq!(
            put_tagged(&s, &repo, &bytes, OCI_MANIFEST, "latest").await,
            PutManifestOutcome::Stored
        );
        let served = s
            .meta
            .get_manifest(&repo, "latest", false, true)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            served.digest,
            digest.to_string(),
            "round {round}: the tag's old manifest"
        );
        assert_eq!(served.bytes, bytes);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    s.close().await;
}

async fn uploads_verify_sha256_and_sha512_and_discard_mismatches(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Place::new(backend).storage(dir.path()).await;
    let repo = RepoName::parse("tool-b/app").unwrap();

    let mut session = s.uploads.start(&repo).await.unwrap();
    s.uploads
        .append(&mut session, body(&[b"hello ", b"world"]), None, None)
        .await
        .unwrap();
    assert_eq!(session.offset(), 11);
    let wrong = Digest::sha256_of(b"other");
    match s.uploads.finish(&mut session, &wrong).await {
        Err(FinishError::DigestMismatch { computed, .. }) => {
            assert_eq!(computed, Digest::sha256_of(b"hello world"))
        }
        other => panic!("expected a mismatch, got {:?}", other.map(|_| ())),
    }
    match &*s.uploads {
        berth_storage::Uploads::Local(u) => assert_eq!(
            staged_files(u.dir()),
            0,
            "a refused upload leaves no staging file"
        ),
        berth_storage::Uploads::Shared(_) => assert_eq!(
            s.meta.upload_count().await.unwrap(),
            0,
            "a refused upload leaves no session"
        ),
    }
    drop(session);

    let mut session = s.uploads.start(&repo).await.unwrap();
    let id = session.id();
    assert!(
        s.uploads
            .open(&id, &RepoName::parse("tool-b/other").unwrap())
            .await
            .unwrap()
            .is_none(),
        "sessions belong to one repo"
    );
    s.uploads
        .append(&mut session, body(&[b"hello world"]), None, None)
        .await
        .unwrap();
    let d512 = Digest::compute(Algorithm::Sha512, b"hello world");
    let done = s.uploads.finish(&mut session, &d512).await.unwrap();
    let size = done.size;
    assert_eq!(size, 11);
    // Small: verified in memory and kept in the database, not as a file.
    let berth_storage::Staged::Memory(bytes) = &done.content else {
        panic!("an 11-byte upload is kept in memory")
    };
    assert_eq!(&bytes[..], b"hello world");
    s.store_upload(done, &repo, &d512).await.unwrap().unwrap();
    assert_eq!(
        s.meta.inline_blob(&d512).await.unwrap().as_deref(),
        Some(&b"hello world"[..])
    );
    assert!(!dir.path().join("blobs/sha512").exists());
    assert!(
        s.uploads.open(&id, &repo).await.unwrap().is_none(),
        "a finished session is forgotten"
    );
}

/// Twenty pushes of distinct blobs into one namespace with room for ten,
/// through two handles on one database (two replicas, for PostgreSQL):
/// exactly ten are linked, the ledger is exact, and a blob linked by two
/// repositories of the namespace at once is charged once.
async fn concurrent_pushes_never_pass_the_quota(backend: Backend) {
    use berth_storage::meta::{LimitSetting, QuotaPolicy};
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let a = place.metadata(dir.path()).await;
    let b = place.metadata(dir.path()).await;
    for m in [&a, &b] {
        m.set_quota_policy(QuotaPolicy {
            default_limit: Some(1_000_000),
            ..Default::default()
        });
    }
    a.set_quota_limit("tool-q", LimitSetting::Bytes(10 * 1000))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let repo = RepoName::parse(&format!("tool-q/app{}", i % 3)).unwrap();
            let digest = Digest::sha256_of(format!("blob {i}").as_bytes());
            meta.link_blob(&repo, &digest, 1000, ())
                .await
                .unwrap()
                .is_ok()
        }));
    }
    let mut linked = 0;
    for t in tasks {
        linked += usize::from(t.await.unwrap());
    }
    assert_eq!(linked, 10, "exactly the room there was");
    let q = a.quota("tool-q").await.unwrap().unwrap();
    assert_eq!(q.used_bytes, 10_000);

    // One shared blob linked into five repositories at once: charged once.
    a.set_quota_limit("tool-s", LimitSetting::Bytes(1_000_000))
        .await
        .unwrap();
    let shared = Digest::sha256_of(b"shared layer");
    let mut tasks = Vec::new();
    for i in 0..5 {
        let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let repo = RepoName::parse(&format!("tool-s/r{i}")).unwrap();
            meta.link_blob(&repo, &shared, 777, ())
                .await
                .unwrap()
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.quota("tool-s").await.unwrap().unwrap().used_bytes, 777);
    assert!(a.reconcile_quota().await.unwrap().is_empty(), "no drift");
    a.close().await;
    b.close().await;
}

/// Build uids allocated for many tools at once (two handles): all distinct.
async fn concurrent_build_users_are_distinct(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let place = Place::new(backend);
    let a = place.metadata(dir.path()).await;
    let b = place.metadata(dir.path()).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let meta = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            meta.build_user(&format!("tool{i}"), 1000).await.unwrap()
        }));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in tasks {
        assert!(seen.insert(t.await.unwrap().expect("a number")));
    }
    assert_eq!(seen.len(), 16);
    assert_eq!(
        a.build_user("tool3", 1000).await.unwrap(),
        b.build_user("tool3", 1000).await.unwrap()
    );
    a.close().await;
    b.close().await;
}

/// A digest's lock (held by upload completion and by GC around an object
/// and its row) excludes another holder: in the process with SQLite, and
/// across processes sharing the database with PostgreSQL (two `Storage`s
/// on two data dirs stand for two replicas). A guard dropped without
/// `release` frees the lock too.
async fn digest_locks_exclude_each_other(backend: Backend) {
    use std::time::{Duration, Instant};
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let place = Place::new(backend);
    let a = place.storage(d1.path()).await;
    let b = match backend {
        Backend::Sqlite => a.clone(),
        Backend::Postgres => {
            // Replicas on local blobs must share them (a shared mount):
            // the store's identity says which store it is.
            std::fs::copy(
                d1.path().join("berth-store-id"),
                d2.path().join("berth-store-id"),
            )
            .unwrap();
            place.storage(d2.path()).await
        }
        Backend::S3 => place.storage(d2.path()).await,
    };
    let digest = Digest::sha256_of(b"locked").to_string();
    let held = a.lock_digests(&[&digest]).await.unwrap();
    let waiter = {
        let (b, digest) = (b.clone(), digest.clone());
        tokio::spawn(async move {
            let g = b.lock_digests(&[&digest]).await.unwrap();
            let at = Instant::now();
            g.release().await;
            at
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "a second holder got a held lock");
    let released = Instant::now();
    held.release().await;
    assert!(waiter.await.unwrap() >= released);

    let dropped = a.lock_digests(&[&digest]).await.unwrap();
    drop(dropped);
    tokio::time::timeout(Duration::from_secs(10), b.lock_digests(&[&digest]))
        .await
        .expect("a dropped guard frees its lock")
        .unwrap()
        .release()
        .await;
}

/// Small blobs linked at once into a namespace with room for a quarter of
/// them: SQLite commits writes queued together in one transaction (group
/// commit), each in its own savepoint, PostgreSQL commits each under the
/// namespace's lock; either way refused ones roll back alone (no bytes
/// left behind), the rest commit, and the quota stays exact.
async fn concurrent_small_blobs_commit_together_and_refusals_roll_back_alone(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Place::new(backend).storage(dir.path()).await;
    s.meta.set_quota_policy(berth_storage::meta::QuotaPolicy {
        default_limit: Some(100),
        ..Default::default()
    });
    let repo = RepoName::parse("tool-group/app").unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (s, repo) = (s.clone(), repo.clone());
            tokio::spawn(async move {
                let data = Bytes::from(format!("blob {i:05}"));
                assert_eq!(data.len(), 10);
                let digest = Digest::sha256_of(&data);
                let linked = s
                    .meta
                    .link_inline_blob(&repo, &digest, data, ())
                    .await
                    .unwrap();
                (digest, linked.is_ok())
            })
        })
        .collect();
    let mut kept = 0;
    for t in tasks {
        let (digest, ok) = t.await.unwrap();
        let stored = s.meta.inline_blob(&digest).await.unwrap();
        assert_eq!(stored.is_some(), ok, "a refused blob leaves no row");
        kept += ok as usize;
    }
    assert_eq!(kept, 10, "exactly the limit's worth fits");
    let q = s.meta.quota("tool-group").await.unwrap().unwrap();
    assert_eq!(q.used_bytes, 100);
    assert!(
        s.meta.reconcile_quota().await.unwrap().is_empty(),
        "no drift"
    );
    s.close().await;
}

/// Stands for an upload's hold on its staged bytes: when dropped, it reads
/// the namespace's charged bytes through the handle's other connections
/// (what any other request would see at that moment).
struct Probe {
    meta: berth_storage::Metadata,
    handle: tokio::runtime::Handle,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let used = tokio::task::block_in_place(|| {
            self.handle
                .block_on(self.meta.quota("tool-held"))
                .unwrap()
                .map_or(0, |q| q.used_bytes)
        });
        self.seen.lock().unwrap().push(used);
    }
}

/// `held` (an upload's reservation of its staged bytes) is given back
/// inside the write that charges them, before its commit: when it is
/// dropped nobody sees the charge yet, and once the write returns it is
/// gone and the charge is there. A refused write drops it too.
async fn held_is_given_back_inside_the_charging_transaction(backend: Backend) {
    use berth_storage::meta::QuotaPolicy;
    let dir = tempfile::tempdir().unwrap();
    let s = Place::new(backend).storage(dir.path()).await;
    s.meta.set_quota_policy(QuotaPolicy {
        default_limit: Some(100),
        ..Default::default()
    });
    let repo = RepoName::parse("tool-held/app").unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = || Probe {
        meta: s.meta.clone(),
        handle: tokio::runtime::Handle::current(),
        seen: seen.clone(),
    };
    let used = || async { s.meta.quota("tool-held").await.unwrap().unwrap().used_bytes };

    // On a worker thread: the probe blocks in place while it reads.
    let (meta, r) = (s.meta.clone(), repo.clone());
    let (p1, p2, p3) = (probe(), probe(), probe());
    tokio::spawn(async move {
        let file = Digest::sha256_of(b"a file-backed blob");
        assert!(meta.link_blob(&r, &file, 60, p1).await.unwrap().is_ok());
        let small = Bytes::from_static(&[7u8; 30]);
        let inline = Digest::sha256_of(&small);
        assert!(meta
            .link_inline_blob(&r, &inline, small, p2)
            .await
            .unwrap()
            .is_ok());
        let big = Digest::sha256_of(b"does not fit");
        assert!(meta.link_blob(&r, &big, 20, p3).await.unwrap().is_err());
    })
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![0, 60, 90],
        "each hold went before its own charge was visible, after the one before"
    );
    assert_eq!(used().await, 90);
    s.close().await;
}

/// A blob kept inline is a row like any other for GC: once unlinked and
/// past the grace period its row goes, and its bytes with it (no object to
/// delete). Linked into another repository as a file upload of the same
/// digest would (`link_blob`), its bytes are still read from the database
/// and the namespace is charged once.
async fn inline_blobs_go_with_their_rows(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let s = Place::new(backend).storage(dir.path()).await;
    let repo = RepoName::parse("tool-inline/app").unwrap();
    let digest = store_blob(&s, &repo, b"a small config").await;
    let linked = s.meta.linked_blob(&repo, &digest).await.unwrap().unwrap();
    assert!(linked.inline);
    assert_eq!(linked.size, 14);
    assert!(s.blobs.size(&digest).await.unwrap().is_none(), "no object");

    assert_eq!(
        s.meta.unlink_blob(&repo, &digest).await.unwrap(),
        UnlinkBlobOutcome::Unlinked
    );
    let cutoff = berth_storage::now_ms() + 60_000;
    let plan = s.meta.gc_plan(cutoff, cutoff).await.unwrap();
    assert_eq!(
        plan.blobs
            .iter()
            .map(|b| b.digest.clone())
            .collect::<Vec<_>>(),
        vec![digest.to_string()]
    );
    let deleted = s.delete_blobs(plan.blobs, cutoff).await.unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(s.meta.blob_size(&digest).await.unwrap(), None);
    assert_eq!(s.meta.inline_blob(&digest).await.unwrap(), None);

    // Inline again, then the same digest linked as a file upload links.
    let digest = store_blob(&s, &repo, b"a small config").await;
    let other = RepoName::parse("tool-inline/other").unwrap();
    s.meta
        .link_blob(&other, &digest, 14, ())
        .await
        .unwrap()
        .unwrap();
    assert!(
        s.meta
            .linked_blob(&other, &digest)
            .await
            .unwrap()
            .unwrap()
            .inline
    );
    assert_eq!(
        s.meta
            .quota("tool-inline")
            .await
            .unwrap()
            .unwrap()
            .used_bytes,
        14,
        "charged once in the namespace"
    );
    assert!(s.meta.reconcile_quota().await.unwrap().is_empty());
    s.close().await;
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

async fn read_all(s: &Storage, digest: &Digest, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    use futures_util::StreamExt;
    let mut stream = s.blobs.get(digest, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = stream.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

fn owned_body(
    chunks: Vec<Vec<u8>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
}

/// S3 only: one upload's requests on two replicas (two `Storage`s, own
/// data dirs, one database and bucket): chunks smaller and larger than a
/// part alternate, the blob is read back whole and by range from the
/// other; the orphan sweep deletes an unreferenced blob object and an
/// upload object whose session is gone, but not a live session's; a
/// replica with another bucket is refused at start-up; fsck reads the
/// bucket.
async fn uploads_span_replicas_and_the_sweep_spares_live_sessions(backend: Backend) {
    assert_eq!(backend, Backend::S3);
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let place = Place::new(backend);
    let a = place.storage(d1.path()).await;
    let b = place.storage(d2.path()).await;
    let repo = RepoName::parse("tool-s3/app").unwrap();
    let chunks = vec![
        pattern(1 << 20, 1),
        pattern(9 << 20, 2),
        pattern(100, 3),
        pattern(6 << 20, 4),
    ];
    let all = chunks.concat();
    let digest = Digest::sha256_of(&all);
    let id = a.uploads.start(&repo).await.unwrap().id();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let s = if i % 2 == 0 { &b } else { &a };
        let mut session = s.uploads.open(&id, &repo).await.unwrap().unwrap();
        let n = s
            .uploads
            .append(&mut session, owned_body(vec![chunk]), None, None)
            .await
            .unwrap();
        assert!(n > 0);
    }
    let mut session = a.uploads.open(&id, &repo).await.unwrap().unwrap();
    assert_eq!(session.offset(), all.len() as u64);
    let done = a.uploads.finish(&mut session, &digest).await.unwrap();
    // Between the finish and the link the assembled object is a live
    // session's: the sweep leaves it.
    let future = berth_storage::now_ms() + 3_600_000;
    b.sweep_orphans(future, false).await.unwrap();
    a.store_upload(done, &repo, &digest).await.unwrap().unwrap();
    assert_eq!(read_all(&b, &digest, None).await, all);
    assert_eq!(read_all(&b, &digest, Some(5..70_000)).await, all[5..70_000]);
    assert_eq!(b.blobs.size(&digest).await.unwrap(), Some(all.len() as u64));
    assert_eq!(a.meta.upload_count().await.unwrap(), 0);

    // An orphan blob object (its row deleted, the object not) and an
    // orphan upload object (a session row gone before its object).
    let orphan = {
        let data = pattern(200_000, 9);
        let d = Digest::sha256_of(&data);
        let mut s = a.uploads.start(&repo).await.unwrap();
        a.uploads
            .append(&mut s, owned_body(vec![data]), None, None)
            .await
            .unwrap();
        let done = a.uploads.finish(&mut s, &d).await.unwrap();
        a.store_upload(done, &repo, &d).await.unwrap().unwrap();
        a.meta.unlink_blob(&repo, &d).await.unwrap();
        let plan = a.meta.gc_plan(future, future).await.unwrap();
        a.meta
            .delete_blob_rows_checked(plan.blobs, future)
            .await
            .unwrap();
        d
    };
    let stale = {
        let data = pattern(300_000, 7);
        let mut s = b.uploads.start(&repo).await.unwrap();
        let id = s.id();
        b.uploads
            .append(&mut s, owned_body(vec![data.clone()]), None, None)
            .await
            .unwrap();
        let _done = b
            .uploads
            .finish(&mut s, &Digest::sha256_of(&data))
            .await
            .unwrap();
        b.meta.delete_upload(&id, None).await.unwrap().unwrap();
        id
    };
    let live = {
        let mut s = b.uploads.start(&repo).await.unwrap();
        b.uploads
            .append(&mut s, owned_body(vec![pattern(6 << 20, 5)]), None, None)
            .await
            .unwrap();
        s.id()
    };
    assert!(a.blobs.size(&orphan).await.unwrap().is_some());
    let swept = a.sweep_orphans(future, false).await.unwrap();
    assert_eq!(
        swept.iter().map(|o| o.digest.clone()).collect::<Vec<_>>(),
        vec![orphan.to_string()]
    );
    assert!(a.blobs.size(&orphan).await.unwrap().is_none());
    let uploads: Vec<String> = a
        .blobs
        .list_upload_objects()
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    assert!(!uploads.contains(&stale), "the orphaned upload object went");
    assert_eq!(
        b.blobs.size(&digest).await.unwrap(),
        Some(all.len() as u64),
        "a linked blob stays"
    );
    // The live session goes on and finishes.
    let mut s = a.uploads.open(&live, &repo).await.unwrap().unwrap();
    a.uploads
        .append(&mut s, owned_body(vec![pattern(10, 6)]), None, None)
        .await
        .unwrap();
    let whole = [pattern(6 << 20, 5), pattern(10, 6)].concat();
    let d = Digest::sha256_of(&whole);
    let done = a.uploads.finish(&mut s, &d).await.unwrap();
    a.store_upload(done, &repo, &d).await.unwrap().unwrap();
    assert_eq!(read_all(&b, &d, None).await, whole);

    // Another bucket with this database: refused, saying why.
    let d3 = tempfile::tempdir().unwrap();
    let mut other = place.config(d3.path(), berth_storage::Synchronous::Normal);
    other.s3 = Some(support::s3_config(support::garage::server().unwrap()));
    let refused = berth_storage::Storage::connect(&other).await;
    let Err(e) = refused else {
        panic!("a replica with another bucket started")
    };
    assert!(e.to_string().contains("another blob store"), "{e}");

    // fsck (SQLite metadata in a data dir, blobs in a bucket).
    let d4 = tempfile::tempdir().unwrap();
    let mut sqlite_s3 = place.config(d4.path(), berth_storage::Synchronous::Normal);
    sqlite_s3.postgres = None;
    sqlite_s3.s3 = Some(support::s3_config(support::garage::server().unwrap()));
    let s = berth_storage::Storage::connect(&sqlite_s3).await.unwrap();
    let data = pattern(100_000, 3);
    let d = Digest::sha256_of(&data);
    let mut session = s.uploads.start(&repo).await.unwrap();
    s.uploads
        .append(&mut session, owned_body(vec![data]), None, None)
        .await
        .unwrap();
    let done = s.uploads.finish(&mut session, &d).await.unwrap();
    s.store_upload(done, &repo, &d).await.unwrap().unwrap();
    let report = berth_storage::Storage::check_integrity(d4.path(), sqlite_s3.s3.clone())
        .await
        .unwrap();
    assert_eq!((report.blob_rows, report.objects), (1, 1));
    assert!(report.rows_without_object.is_empty() && report.orphan_objects.is_empty());
    s.close().await;
}

/// S3 only: what a late part upload of a dropped request would do (it
/// lands after another request re-sent that part and saved its ETag): the
/// server refuses to complete with ETags that no longer match, so the
/// upload fails rather than assembling bytes its saved hash never saw.
async fn a_part_replaced_after_its_etag_was_saved_fails_completion(backend: Backend) {
    assert_eq!(backend, Backend::S3);
    let dir = tempfile::tempdir().unwrap();
    let s = Place::new(backend).storage(dir.path()).await;
    let id = uuid::Uuid::new_v4().to_string();
    let m = s.blobs.create_multipart(&id).await.unwrap();
    let saved = s
        .blobs
        .put_part(&id, &m, 0, Bytes::from(pattern(5 << 20, 1)))
        .await
        .unwrap();
    let _late = s
        .blobs
        .put_part(&id, &m, 0, Bytes::from(pattern(5 << 20, 2)))
        .await
        .unwrap();
    let completed = s.blobs.complete_multipart(&id, &m, &[saved]).await;
    assert!(completed.is_err(), "completion with a stale ETag succeeded");
}

/// SQLite at `sqlite_synchronous = "full"`, where every commit also syncs
/// the WAL the writer's VFS wrote it to: concurrent pushes are all
/// acknowledged, and a reopen finds every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_at_full_acknowledges_every_push_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = Place::new(Backend::Sqlite).config(dir.path(), berth_storage::Synchronous::Full);
    let s = Storage::connect(&config).await.unwrap();
    let repo = RepoName::parse("tool-full/app").unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (s, repo) = (s.clone(), repo.clone());
            tokio::spawn(async move {
                let blobs = [
                    Bytes::from(format!("{{\"seed\":{i}}}")),
                    Bytes::from(vec![i as u8; 3000]),
                ];
                let mut digests = Vec::new();
                for data in blobs {
                    let digest = Digest::sha256_of(&data);
                    s.meta
                        .link_inline_blob(&repo, &digest, data, ())
                        .await
                        .unwrap()
                        .unwrap();
                    digests.push(digest);
                }
                let manifest = image(&digests[0], &[&digests[1]]);
                let out = put_tagged(&s, &repo, &manifest, OCI_MANIFEST, &format!("t{i}")).await;
                assert_eq!(out, PutManifestOutcome::Stored);
                Digest::sha256_of(&manifest)
            })
        })
        .collect();
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.unwrap());
    }
    s.close().await;

    let s = Storage::connect(&config).await.unwrap();
    for (i, digest) in pushed.iter().enumerate() {
        let found = s
            .meta
            .get_manifest(&repo, &format!("t{i}"), false, true)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("t{i} is gone after a reopen"));
        assert_eq!(found.digest, digest.to_string());
    }
    s.close().await;
}
