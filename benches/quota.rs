//! Quota query latency at platform scale: 10,000 namespaces holding
//! 100,000 manifests. Measures the storage calls behind the admin API and
//! the real binary's HTTP answers for the list and one-namespace views.
//!
//!     cargo bench --bench quota
//!
//! Figures go to BENCHMARKS.md. Nothing here asserts a time.

use berth_storage::meta::{FixtureBlob, FixtureManifest, FixtureRepo};
use berth_storage::{Metadata, Synchronous};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAMESPACES: usize = 10_000;
const REPOS_PER_NAMESPACE: usize = 2;
const MANIFESTS_PER_REPO: usize = 5;
const ITERATIONS_LIST: usize = 30;
const ITERATIONS_ONE: usize = 2_000;

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, samples: &mut [Duration]) {
    println!(
        "{name:<44} n={:<5} p50={:>9.3} ms  p99={:>9.3} ms  max={:>9.3} ms",
        samples.len(),
        percentile(samples, 0.50).as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        percentile(samples, 1.0).as_secs_f64() * 1e3
    );
}

/// Fills the database through the storage API's bulk loader; the
/// measured calls are the public API.
async fn populate(meta: &Metadata) {
    let now = 1_700_000_000_000i64;
    let base = format!("sha256:{:064x}", 0u64);
    let body = vec![b'{'; 700];
    let mut n = 1u64;
    let repos = (0..NAMESPACES).flat_map(move |ns| {
        let namespace = format!("tool-{ns:05}");
        (0..REPOS_PER_NAMESPACE)
            .map(|r| {
                let mut links = vec![FixtureBlob {
                    digest: base.clone(),
                    size: 50_000_000,
                    at_ms: now,
                }];
                let mut manifests = Vec::new();
                for m in 0..MANIFESTS_PER_REPO {
                    let layer = format!("sha256:{n:064x}");
                    n += 1;
                    let digest = format!("sha256:{n:064x}");
                    n += 1;
                    links.push(FixtureBlob {
                        digest: layer.clone(),
                        size: 1_000_000 + n % 7_000_000,
                        at_ms: now,
                    });
                    manifests.push(FixtureManifest {
                        digest,
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        bytes: body.clone(),
                        size: body.len() as u64,
                        pushed_ms: now,
                        blobs: vec![base.clone(), layer],
                        tags: vec![format!("v{m}")],
                    });
                }
                FixtureRepo {
                    name: format!("{namespace}/app{r}"),
                    created_ms: now,
                    links,
                    manifests,
                }
            })
            .collect::<Vec<_>>()
    });
    meta.bulk_load(repos).await.expect("populate");
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let meta = Metadata::open(&data.join("berth.db"), Synchronous::Normal).unwrap();
        let started = Instant::now();
        populate(&meta).await;
        let populated = started.elapsed();
        let started = Instant::now();
        let drift = meta.reconcile_quota().await.unwrap();
        println!(
            "fixture: {NAMESPACES} namespaces, {} repositories, {} manifests; built in {populated:?}; reconcile of all namespaces {:?} ({} corrected)",
            NAMESPACES * REPOS_PER_NAMESPACE,
            NAMESPACES * REPOS_PER_NAMESPACE * MANIFESTS_PER_REPO,
            started.elapsed(),
            drift.len()
        );

        let mut list = Vec::new();
        for _ in 0..ITERATIONS_LIST {
            let t = Instant::now();
            let all = meta.quota_list().await.unwrap();
            list.push(t.elapsed());
            assert_eq!(all.len(), NAMESPACES);
        }
        report("storage quota_list (all namespaces)", &mut list);
        let mut one = Vec::new();
        let mut detail = Vec::new();
        for i in 0..ITERATIONS_ONE {
            let ns = format!("tool-{:05}", (i * 7919) % NAMESPACES);
            let t = Instant::now();
            meta.quota(&ns).await.unwrap().unwrap();
            one.push(t.elapsed());
            let t = Instant::now();
            let d = meta.quota_detail(&ns, 10).await.unwrap().unwrap();
            detail.push(t.elapsed());
            assert_eq!(d.repositories_usage.len(), REPOS_PER_NAMESPACE);
        }
        report("storage quota (one namespace)", &mut one);
        report("storage quota_detail (breakdown + largest)", &mut detail);
        meta.close().await;
    });

    // The same questions over HTTP, to the real binary.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .env("BERTH_ADMIN_PASSWORD", "bench")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "admin:bench")
    );
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if agent
            .get(&format!("{url}/healthz"))
            .call()
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let fetch = |path: &str| -> (Duration, usize) {
        let t = Instant::now();
        let mut r = agent
            .get(&format!("{url}{path}"))
            .header("authorization", &auth)
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let n = r
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .unwrap()
            .len();
        (t.elapsed(), n)
    };
    fetch("/admin/v1/quotas"); // warm the login cache and page cache
    let mut list = Vec::new();
    let mut bytes = 0;
    for _ in 0..ITERATIONS_LIST {
        let (d, n) = fetch("/admin/v1/quotas");
        list.push(d);
        bytes = n;
    }
    report(
        &format!("HTTP GET /admin/v1/quotas ({} KiB JSON)", bytes / 1024),
        &mut list,
    );
    let mut one = Vec::new();
    for i in 0..ITERATIONS_ONE {
        one.push(
            fetch(&format!(
                "/admin/v1/quotas/tool-{:05}",
                (i * 7919) % NAMESPACES
            ))
            .0,
        );
    }
    report("HTTP GET /admin/v1/quotas/{ns}", &mut one);
    let _ = child.kill();
    let _ = child.wait();
}
