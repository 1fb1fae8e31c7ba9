//! berth-storage against a real SQLite file and a real data directory.

use berth_storage::manifest::{self, OCI_INDEX, OCI_MANIFEST};
use berth_storage::meta::{DeleteManifestOutcome, PutManifestOutcome, UnlinkBlobOutcome};
use berth_storage::uploads::FinishError;
use berth_storage::{Algorithm, Digest, RepoName, Storage, StorageConfig, Synchronous};
use bytes::Bytes;

/// Files in the staging directory's shards.
fn staged_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().count())
        .sum()
}

fn open(dir: &std::path::Path) -> Storage {
    Storage::open(&StorageConfig {
        data_dir: dir.to_owned(),
        synchronous: Synchronous::Full,
        uploads: Default::default(),
    })
    .unwrap()
}

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
    let session = s.uploads.start(repo).await.unwrap();
    let mut session = session.lock().await;
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

#[tokio::test]
async fn manifests_reference_checks_and_deletes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let repo = RepoName::parse("tool-a/web").unwrap();
    let s = open(dir.path());
    let config = store_blob(&s, &repo, b"{}").await;
    let layer = store_blob(&s, &repo, b"layer bytes").await;
    let missing = Digest::sha256_of(b"never uploaded");

    // A manifest naming a blob the repo lacks is refused and stores nothing.
    let bad = image(&config, &[&missing]);
    let parsed = manifest::parse(&bad, Some(OCI_MANIFEST)).unwrap();
    let out = s
        .meta
        .put_manifest(
            &repo,
            &Digest::sha256_of(&bad),
            parsed,
            bad.clone(),
            vec!["v0".into()],
            "test",
        )
        .await
        .unwrap();
    assert_eq!(out, PutManifestOutcome::MissingBlob(missing));
    assert!(s
        .meta
        .get_manifest(&repo, "v0", false, true)
        .await
        .unwrap()
        .is_none());

    let good = image(&config, &[&layer]);
    let digest = Digest::sha256_of(&good);
    let parsed = manifest::parse(&good, Some(OCI_MANIFEST)).unwrap();
    let out = s
        .meta
        .put_manifest(
            &repo,
            &digest,
            parsed,
            good.clone(),
            vec!["v1".into()],
            "test",
        )
        .await
        .unwrap();
    assert_eq!(out, PutManifestOutcome::Stored);

    // An index over it; the child can then not be deleted from under it.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest.to_string(), "size": good.len()}]
    }))
    .unwrap();
    let index_digest = Digest::sha256_of(&index);
    let parsed = manifest::parse(&index, Some(OCI_INDEX)).unwrap();
    assert_eq!(
        s.meta
            .put_manifest(
                &repo,
                &index_digest,
                parsed,
                index.clone(),
                vec!["multi".into()],
                "test"
            )
            .await
            .unwrap(),
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
    let s = open(dir.path());
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

#[tokio::test]
async fn uploads_verify_sha256_and_sha512_and_discard_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let repo = RepoName::parse("tool-b/app").unwrap();

    let session = s.uploads.start(&repo).await.unwrap();
    let mut session = session.lock().await;
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
    assert_eq!(
        staged_files(s.uploads.dir()),
        0,
        "a refused upload leaves no staging file"
    );
    drop(session);

    let session = s.uploads.start(&repo).await.unwrap();
    let id = session.lock().await.id.to_string();
    assert!(
        s.uploads
            .get(&id, &RepoName::parse("tool-b/other").unwrap())
            .is_none(),
        "sessions belong to one repo"
    );
    let mut session = session.lock().await;
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
        s.uploads.get(&id, &repo).is_none(),
        "a finished session is forgotten"
    );
}

/// Writes queued together commit in one transaction (group commit), each
/// in its own savepoint: refused ones roll back alone, the rest commit,
/// and the quota stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_small_blobs_commit_together_and_refusals_roll_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
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
