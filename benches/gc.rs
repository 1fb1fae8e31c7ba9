//! GC at platform scale: 10,000 namespaces, 100,000 manifests, 1,000,000
//! blobs (metadata generated directly); `BERTH_BENCH_SCALE=10` makes it
//! 1,000,000 manifests and 10,000,000 blobs. Measures tag cleanup and
//! untagged GC (wall time, peak RSS during the run) and the latency of
//! push commits (blob link + manifest insert) issued every 5 ms while each
//! run goes on; before them, on the full fixture: push commits alone, the
//! quota list, the metadata's size on disk, and manifest GETs of random
//! tags from the real binary under wrk (32 connections; needs Debian's
//! wrk, skipped without it) with the binary's peak RSS.
//!
//!     cargo bench --bench gc
//!     BERTH_BENCH_SCALE=10 cargo bench --bench gc
//!
//! `BERTH_BENCH_FIXTURE=DIR` keeps a copy of the built fixture in DIR and
//! starts from that copy next time (the 10x fixture takes two minutes to
//! build and reconcile); `BERTH_BENCH_ONLY=gets,untagged` (any of quota,
//! pushes, gets, tag-cleanup, untagged) runs only those measurements.
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
/// Per repository at scale 1: 9 tagged, 1 untagged and old; every tenth
/// manifest is untagged at any scale.
const MANIFESTS_PER_REPO: usize = 10;
const BLOBS_PER_MANIFEST: usize = 10; // config + 9 layers, all distinct

fn scale() -> usize {
    std::env::var("BERTH_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn manifests_per_repo() -> usize {
    MANIFESTS_PER_REPO * scale()
}

/// Whether measurement `name` is selected by `BERTH_BENCH_ONLY` (all are
/// when it is unset).
fn selected(name: &str) -> bool {
    match std::env::var("BERTH_BENCH_ONLY") {
        Ok(list) => list.split(',').any(|n| n.trim() == name),
        Err(_) => true,
    }
}

/// The metadata files a fixture consists of.
const FIXTURE_FILES: [&str; 1] = ["berth.db"];

/// Copies a kept fixture from `BERTH_BENCH_FIXTURE` into `data`; false when
/// there is none yet.
fn restore_fixture(data: &std::path::Path) -> bool {
    let Ok(kept) = std::env::var("BERTH_BENCH_FIXTURE") else {
        return false;
    };
    let kept = std::path::Path::new(&kept).join(format!("scale-{}", scale()));
    if !kept.join("berth.db").exists() {
        return false;
    }
    let started = Instant::now();
    for f in FIXTURE_FILES {
        std::fs::copy(kept.join(f), data.join(f)).expect("copy the kept fixture");
    }
    println!(
        "fixture: copied from {} in {:.1} s",
        kept.display(),
        started.elapsed().as_secs_f64()
    );
    true
}

/// Keeps the just-built fixture (closed, so its WAL is checkpointed) in
/// `BERTH_BENCH_FIXTURE` for the next run.
fn keep_fixture(data: &std::path::Path) {
    let Ok(kept) = std::env::var("BERTH_BENCH_FIXTURE") else {
        return;
    };
    let kept = std::path::Path::new(&kept).join(format!("scale-{}", scale()));
    std::fs::create_dir_all(&kept).expect("create the fixture directory");
    for f in FIXTURE_FILES {
        std::fs::copy(data.join(f), kept.join(f)).expect("keep the fixture");
    }
}

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
    let per_repo = manifests_per_repo();
    let repos = (0..NAMESPACES).map(move |ns| {
        let mut links = Vec::new();
        let mut manifests = Vec::new();
        for k in 0..per_repo {
            n += 1;
            let digest = format!("sha256:{:064x}", n << 8);
            // Spread over the 20-30 days before now, oldest first.
            let pushed = now - 30 * day + (k as i64 * 10 * day) / per_repo as i64;
            let blobs: Vec<String> = (0..BLOBS_PER_MANIFEST)
                .map(|b| format!("sha256:{:064x}", (n << 8) | (b as u64 + 1)))
                .collect();
            links.extend(blobs.iter().map(|d| FixtureBlob {
                digest: d.clone(),
                size: 1_000_000,
                at_ms: pushed,
            }));
            // A real manifest's body (what GETs serve), about 1 KB.
            let bytes = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0], "size": 1_000_000},
                "layers": blobs[1..].iter().map(|d| serde_json::json!({
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": 1_000_000
                })).collect::<Vec<_>>(),
            }))
            .unwrap();
            manifests.push(FixtureManifest {
                digest,
                media_type: manifest::OCI_MANIFEST.into(),
                size: bytes.len() as u64,
                bytes,
                pushed_ms: pushed,
                blobs,
                tags: if k % 10 != 0 {
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
    let report = gc
        .run(job, false, "bench")
        .await
        .expect("SQLite grants the job at once");
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
    let config = StorageConfig {
        data_dir: dir.path().to_owned(),
        synchronous: Synchronous::Normal,
        uploads: Default::default(),
        postgres: None,
        s3: None,
    };
    let per_repo = manifests_per_repo();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if !restore_fixture(dir.path()) {
        rt.block_on(async {
            let storage = Storage::open(&config).unwrap();
            let started = Instant::now();
            populate(&storage).await;
            let built = started.elapsed();
            let started = Instant::now();
            storage.meta.reconcile_quota().await.unwrap();
            println!(
                "fixture: {NAMESPACES} namespaces, {} manifests ({} tagged), {} blobs; built in {:.1} s, ledger reconciled in {:.1} s",
                NAMESPACES * per_repo,
                NAMESPACES * per_repo * 9 / 10,
                NAMESPACES * per_repo * BLOBS_PER_MANIFEST,
                built.as_secs_f64(),
                started.elapsed().as_secs_f64()
            );
            storage.close().await;
        });
        keep_fixture(dir.path());
    }
    rt.block_on(async {
        let storage = Storage::open(&config).unwrap();
        if selected("quota") {
            let mut list = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let all = storage.meta.quota_list().await.unwrap();
                list.push(t.elapsed());
                assert_eq!(all.len(), NAMESPACES);
            }
            println!(
                "quota list ({NAMESPACES} namespaces): p50 {:.1} ms, p99 {:.1} ms",
                pct(&mut list, 0.5),
                pct(&mut list, 0.99)
            );
        }
        if selected("pushes") {
            let stop = Arc::new(AtomicBool::new(false));
            let pusher = tokio::spawn(pushes_during(storage.clone(), stop.clone(), "steady"));
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.store(true, Ordering::Relaxed);
            let mut lat = pusher.await.unwrap();
            println!(
                "push commits alone: {} in 5 s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                lat.len(),
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99),
                pct(&mut lat, 1.0)
            );
        }
        storage.close().await;
    });
    let size = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    println!(
        "metadata on disk: berth.db {} MiB (+ WAL {} MiB)",
        size("berth.db") >> 20,
        size("berth.db-wal") >> 20
    );
    if selected("gets") {
        manifest_gets(dir.path(), per_repo);
    }
    rt.block_on(async {
        let storage = Storage::open(&config).unwrap();
        let gc = Gc::new(storage.clone(), GcConfig::default());
        if selected("tag-cleanup") {
            measure(&storage, &gc, JobKind::TagCleanup, "tag-cleanup").await;
        }
        if selected("untagged") {
            measure(&storage, &gc, JobKind::Untagged, "untagged").await;
        }
        storage.close().await;
    });
}

/// Manifest GETs of random tags from the real binary on the fixture, by
/// wrk with 32 connections: 10 s after the start, then 15 s measured;
/// the latency percentiles wrk reports and the binary's peak RSS.
fn manifest_gets(data: &std::path::Path, per_repo: usize) {
    use std::process::Command;
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("manifest GETs: skipped (no wrk; apt-get install wrk)");
        return;
    }
    // The steady state measured below is that of a registry whose
    // metadata is in the page cache (this machine holds the 9.6 GB file
    // at 10x). Random GETs alone warm it slowly: 10 s of them touched
    // about a third of the pages, and the reads from disk that remained
    // (a pause of the worker that waits for one) set the p99. So the file
    // is read through once first; the first seconds after the start are
    // still reported apart.
    let warmed = Instant::now();
    let mut file = std::fs::File::open(data.join("berth.db")).unwrap();
    let bytes = std::io::copy(&mut file, &mut std::io::sink()).unwrap();
    println!(
        "page cache: read berth.db ({} MiB) in {:.1} s",
        bytes >> 20,
        warmed.elapsed().as_secs_f64()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = data.with_extension("bench.toml");
    // No scheduled jobs: a tag cleanup falls on every fifth minute of the
    // clock, and with the default retention (keep the last 5 tags) it
    // deleted most of the fixture's tags in the middle of a measurement,
    // which wrk then counted as fast 404s.
    std::fs::write(&config, "[auth]\nenabled = false\n[gc]\nenabled = false\n").unwrap();
    // Kept so that errors under load can be read (printed below when wrk
    // saw any).
    let log = data.with_extension("berth.log");
    let mut berth = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let starting = Instant::now();
    let mut healthy = false;
    for _ in 0..2400 {
        healthy = agent
            .get(&format!("{url}/healthz"))
            .call()
            .map(|r| r.status() == 200)
            .unwrap_or(false);
        if healthy {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        healthy,
        "berth never served the fixture; its log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    println!(
        "berth serving the fixture after {:.1} s",
        starting.elapsed().as_secs_f64()
    );
    let script = data.with_extension("gets.lua");
    std::fs::write(
        &script,
        format!(
            r#"math.randomseed(42)
request = function()
  local k = math.random(1, {last})
  if k % 10 == 0 then k = k - 1 end
  local path = string.format("/v2/tool-%05d/app/manifests/v%d", math.random(0, {ns}), k)
  return wrk.format("GET", path, {{Accept = "application/vnd.oci.image.manifest.v1+json"}})
end
"#,
            last = per_repo - 1,
            ns = NAMESPACES - 1
        ),
    )
    .unwrap();
    let wrk = |seconds: &str| {
        let out = Command::new("wrk")
            .args(["-t1", "-c32", seconds, "--latency", "-s"])
            .arg(&script)
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        move |label: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(label))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        }
    };
    // The first seconds after a start read the database from disk (or
    // the page cache the fixture copy left); reported apart from the
    // steady state that follows.
    let cold = wrk("-d10s");
    println!(
        "manifest GETs, first 10 s after start: {} | latency {} | {}",
        cold("Requests/sec"),
        cold("50%"),
        cold("99%")
    );
    let pick = wrk("-d15s");
    let hwm = std::fs::read_to_string(format!("/proc/{}/status", berth.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    println!(
        "manifest GETs (random tags, 32 connections, 15 s): {} | latency {} | {} | {} | berth peak RSS {} MiB",
        pick("Requests/sec"),
        pick("50%"),
        pick("99%"),
        pick("Non-2xx"),
        hwm / 1024
    );
    if !pick("Non-2xx").is_empty() || !cold("Non-2xx").is_empty() {
        // Which answers: one request by hand, and what berth logged.
        let sample = agent
            .get(&format!("{url}/v2/tool-00000/app/manifests/v1"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .call()
            .map(|mut r| {
                let status = r.status();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                format!("{status} {}", body.chars().take(300).collect::<String>())
            })
            .unwrap_or_else(|e| e.to_string());
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = logged.lines().rev().take(20).collect();
        println!(
            "errors under load: cold run {}; a GET now: {sample}; berth's last log lines:\n{}",
            cold("Non-2xx"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // SAFETY: kill(2) with a pid this process started and has not reaped.
    unsafe {
        libc::kill(berth.id() as i32, libc::SIGTERM);
    }
    let _ = berth.wait();
}
