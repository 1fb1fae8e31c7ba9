//! GC at platform scale: 10,000 namespaces, 100,000 manifests, 1,000,000
//! blobs (metadata generated directly). Measures tag cleanup and untagged
//! GC (wall time, peak RSS during the run) and the latency of push commits
//! (blob link + manifest insert) issued every 5 ms while each run goes on.
//!
//!     cargo bench --bench gc
//!
//! Figures go to BENCHMARKS.md. Nothing here asserts a time.

use berth_gc::{Gc, GcConfig, JobKind};
use berth_storage::manifest;
use berth_storage::meta::{FixtureBlob, FixtureManifest, FixtureRepo};
use berth_storage::{Digest, RepoName, Storage, StorageConfig, Synchronous};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMESPACES: usize = 10_000;
const MANIFESTS_PER_REPO: usize = 10; // 9 tagged, 1 untagged and old
const BLOBS_PER_MANIFEST: usize = 10; // config + 9 layers, all distinct

fn peak_rss_reset() {
    // Linux: writing 5 resets the process's peak RSS (VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pct(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

async fn populate(storage: &Storage) {
    // The fixture goes in through the storage API's bulk loader; the
    // measured calls are the jobs.
    let day = 86_400_000i64;
    let now = berth_storage::now_ms();
    let mut n = 0u64;
    let repos = (0..NAMESPACES).map(move |ns| {
        let mut links = Vec::new();
        let mut manifests = Vec::new();
        for k in 0..MANIFESTS_PER_REPO {
            n += 1;
            let digest = format!("sha256:{:064x}", n << 8);
            let pushed = now - (30 - k as i64) * day;
            let blobs: Vec<String> = (0..BLOBS_PER_MANIFEST)
                .map(|b| format!("sha256:{:064x}", (n << 8) | (b as u64 + 1)))
                .collect();
            links.extend(blobs.iter().map(|d| FixtureBlob {
                digest: d.clone(),
                size: 1_000_000,
                at_ms: pushed,
            }));
            manifests.push(FixtureManifest {
                digest,
                media_type: manifest::OCI_MANIFEST.into(),
                bytes: b"{}".to_vec(),
                size: 900,
                pushed_ms: pushed,
                blobs,
                tags: if k > 0 {
                    vec![format!("v{k}")]
                } else {
                    Vec::new()
                },
            });
        }
        FixtureRepo {
            name: format!("tool-{ns:05}/app"),
            created_ms: now - 30 * day,
            links,
            manifests,
        }
    });
    storage.meta.bulk_load(repos).await.expect("populate");
}

/// Commits small pushes every 5 ms until stopped; returns their latencies.
async fn pushes_during(
    storage: Storage,
    stop: Arc<AtomicBool>,
    tag: &'static str,
) -> Vec<Duration> {
    let repo = RepoName::parse("tool-bench/live").unwrap();
    let mut latencies = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let config = format!("{{\"push\":\"{tag}-{i}\"}}");
        let digest = Digest::sha256_of(config.as_bytes());
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest.to_string(), "size": config.len()},
            "layers": []
        }))
        .unwrap();
        let parsed = manifest::parse(&body, None).unwrap();
        let started = Instant::now();
        storage
            .meta
            .link_blob(&repo, &digest, config.len() as u64, ())
            .await
            .unwrap()
            .unwrap();
        storage
            .meta
            .put_manifest(
                &repo,
                &Digest::sha256_of(&body),
                parsed,
                body,
                vec![format!("{tag}-{i}")],
                "bench",
            )
            .await
            .unwrap();
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies
}

async fn measure(storage: &Storage, gc: &Arc<Gc>, job: JobKind, name: &'static str) {
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = tokio::spawn(pushes_during(storage.clone(), stop.clone(), name));
    tokio::time::sleep(Duration::from_millis(200)).await; // pushes before the run, too
    peak_rss_reset();
    let rss_before = rss_kib("VmRSS:");
    let started = Instant::now();
    let report = gc.run(job, false, "bench").await;
    let wall = started.elapsed();
    let peak = rss_kib("VmHWM:");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = pusher.await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    println!("{name:<12} phases (ms): {:?}", report.phases_ms);
    println!(
        "{name:<12} wall {:>7.2} s | removed: {} tags, {} manifests, {} blob links, {} blobs | RSS {} MiB before, peak {} MiB during | \
         {} concurrent push commits: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        wall.as_secs_f64(),
        report.tags_removed,
        report.manifests_removed,
        report.blob_links_removed,
        report.blobs_removed,
        rss_before / 1024,
        peak / 1024,
        lat.len(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0),
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let storage = Storage::open(&StorageConfig { data_dir: dir.path().to_owned(), synchronous: Synchronous::Normal, uploads: Default::default(), postgres: None, s3: None }).unwrap();
        let started = Instant::now();
        populate(&storage).await;
        let built = started.elapsed();
        let started = Instant::now();
        storage.meta.reconcile_quota().await.unwrap();
        println!(
            "fixture: {NAMESPACES} namespaces, {} manifests ({} tagged), {} blobs; built in {:.1} s, ledger reconciled in {:.1} s",
            NAMESPACES * MANIFESTS_PER_REPO,
            NAMESPACES * (MANIFESTS_PER_REPO - 1),
            NAMESPACES * MANIFESTS_PER_REPO * BLOBS_PER_MANIFEST,
            built.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        let gc = Gc::new(storage.clone(), GcConfig::default());
        measure(&storage, &gc, JobKind::TagCleanup, "tag-cleanup").await;
        measure(&storage, &gc, JobKind::Untagged, "untagged").await;
        storage.close().await;
    });
}
