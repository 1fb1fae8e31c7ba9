//! The console's quota page at platform scale: 10,000 namespaces (20,000
//! repositories, 100,000 manifests). Measures the page rendered
//! server-side in-process (the storage query plus maud), for the sorts,
//! filters and pages an admin uses, and then the same pages over HTTP from
//! the real binary, signed in through the form.
//!
//!     cargo bench --bench ui
//!
//! Figures go to BENCHMARKS.md. Nothing here asserts a time; the target
//! (issue 13) is under 100 ms.

use berth::config::Config;
use berth_registry::ui::{pages, views::Ctx};
use berth_storage::meta::{FixtureBlob, FixtureManifest, FixtureRepo};
use berth_storage::{Metadata, Synchronous};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAMESPACES: usize = 10_000;
const REPOS_PER_NAMESPACE: usize = 2;
const MANIFESTS_PER_REPO: usize = 5;
const ITERATIONS: usize = 50;

/// The pages measured: what an admin clicks.
const QUERIES: &[(&str, &str)] = &[
    ("largest first (default), page 1", ""),
    ("by name, page 100", "sort=name&order=asc&page=99"),
    ("by share of limit, descending", "sort=percent&order=desc"),
    ("over 90% of the limit", "over=90&sort=percent&order=desc"),
    ("by limit (unlimited first)", "sort=limit&order=desc"),
    ("by repositories", "sort=repositories&order=desc"),
    ("name contains \"tool-09\"", "q=tool-09"),
    ("500 rows per page, last page", "per=500&page=19"),
];

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, samples: &mut [Duration], extra: &str) {
    println!(
        "{name:<52} n={:<4} p50={:>8.2} ms  p99={:>8.2} ms  max={:>8.2} ms  {extra}",
        samples.len(),
        percentile(samples, 0.50).as_secs_f64() * 1e3,
        percentile(samples, 0.99).as_secs_f64() * 1e3,
        percentile(samples, 1.0).as_secs_f64() * 1e3
    );
}

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
                    // Sizes spread so that some namespaces pass 90% of
                    // the 1 GiB default.
                    links.push(FixtureBlob {
                        digest: layer.clone(),
                        size: 1_000_000 + (n * 7919) % 200_000_000,
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
    let config = "[quota]\nunlimited = [\"tool-00007\", \"tool-00042\"]\n";
    rt.block_on(async {
        let meta = Metadata::open(&data.join("berth.db"), Synchronous::Normal).unwrap();
        let started = Instant::now();
        populate(&meta).await;
        meta.reconcile_quota().await.unwrap();
        println!(
            "fixture: {NAMESPACES} namespaces, {} repositories, {} manifests; built in {:?}",
            NAMESPACES * REPOS_PER_NAMESPACE,
            NAMESPACES * REPOS_PER_NAMESPACE * MANIFESTS_PER_REPO,
            started.elapsed()
        );
        meta.close().await;

        // The registry as `berth serve` builds it, on that data dir.
        let mut cfg: Config = toml::from_str(config).unwrap();
        cfg.storage.data_dir = data.clone();
        cfg.builds.enabled = false;
        let state = berth::app::build_state(&cfg, None).await.unwrap();
        let ctx = Ctx {
            principal: berth_registry::auth::Principal::Admin,
            token: None,
            csrf: "x".repeat(43),
            flash: None,
            tool_prefix: "tool-".into(),
        };
        for (name, query) in QUERIES {
            let mut samples = Vec::new();
            let mut html = 0;
            for _ in 0..ITERATIONS {
                let t = Instant::now();
                let page = pages::quotas(&state, &ctx, Some(query)).await.unwrap();
                let text = page.into_string();
                samples.push(t.elapsed());
                html = text.len();
            }
            report(
                &format!("rendered in-process: {name}"),
                &mut samples,
                &format!("({} KiB HTML)", html / 1024),
            );
        }
        state.storage.close().await;
    });
    drop(rt);

    // Over HTTP, from the real binary, signed in through the form.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config_path = dir.path().join("berth.toml");
    std::fs::write(&config_path, format!("{config}[builds]\nenabled = false\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .arg("--config")
        .arg(&config_path)
        .env("BERTH_ADMIN_PASSWORD", "bench")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..400 {
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
    let cookie_value = |r: &ureq::http::Response<ureq::Body>, name: &str| -> String {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .expect("cookie")
            .to_owned()
    };
    let form = agent.get(&format!("{url}/ui/login")).call().unwrap();
    let login_token = cookie_value(&form, "berth_login");
    let signed_in = agent
        .post(&format!("{url}/ui/login"))
        .header("cookie", &format!("berth_login={login_token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .send(format!(
            "login_csrf={login_token}&next=%2Fui%2F&username=admin&password=bench"
        ))
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let session = format!(
        "berth_session={}",
        cookie_value(&signed_in, "berth_session")
    );
    for (name, query) in QUERIES {
        let fetch = || {
            let t = Instant::now();
            let mut r = agent
                .get(&format!("{url}/ui/quotas?{query}"))
                .header("cookie", &session)
                .call()
                .unwrap();
            assert_eq!(r.status(), 200);
            let n = r.body_mut().read_to_vec().unwrap().len();
            (t.elapsed(), n)
        };
        fetch();
        let mut samples = Vec::new();
        let mut bytes = 0;
        for _ in 0..ITERATIONS {
            let (d, n) = fetch();
            samples.push(d);
            bytes = n;
        }
        report(
            &format!("HTTP GET /ui/quotas: {name}"),
            &mut samples,
            &format!("({} KiB)", bytes / 1024),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
