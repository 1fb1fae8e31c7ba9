//! Scale-out as a platform runs it: two berth replicas (own data dirs) on
//! one PostgreSQL and one S3 bucket (Garage), behind a balancer that sends
//! each *request* to the next replica (test-tools' `rr-proxy`), so every
//! upload's POST, PATCHes and PUT are spread over both. Through the
//! balancer: the conformance suite, skopeo and docker round trips, 20
//! concurrent pushes into one quota, and the GC storm with `kill -9` of a
//! replica halfway, losing nothing acknowledged. Without a Garage binary
//! and with `CI` unset, each test prints why and passes.

mod common;
#[path = "../storage/tests/support/garage.rs"]
mod garage;
#[path = "../storage/tests/support/postgres.rs"]
mod pg;
#[path = "common/storm.rs"]
mod storm;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Replicas on one database and bucket, and the balancer in front.
struct Cluster {
    replicas: Vec<Option<Berth>>,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    config: String,
    config_path: PathBuf,
    proxy: Child,
    proxy_port: u16,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// A new database and bucket; `extra`: more config after `[storage]`
    /// and `[storage.s3]`.
    fn start(replicas: usize, extra: &str) -> Option<Cluster> {
        let (dir, config) = Cluster::new_storage(extra)?;
        Some(Cluster::on(dir, config, replicas))
    }

    /// A config naming a new database and bucket, in a new directory.
    fn new_storage(extra: &str) -> Option<(tempfile::TempDir, String)> {
        let server = garage::server()?;
        let bucket = garage::fresh_bucket(server);
        let config = format!(
            "[storage]\ndatabase_url = \"{}\"\ndatabase_max_connections = 12\n{}{extra}",
            pg::fresh_database(),
            server.config_toml(&bucket)
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cluster.toml"), &config).unwrap();
        Some((dir, config))
    }

    /// `replicas` berths on `config` (in `dir`/cluster.toml) and the balancer.
    fn on(dir: tempfile::TempDir, config: String, replicas: usize) -> Cluster {
        let config_path = dir.path().join("cluster.toml");
        let dirs: Vec<PathBuf> = (0..replicas)
            .map(|i| dir.path().join(format!("replica{i}")))
            .collect();
        let ports: Vec<u16> = (0..replicas).map(|_| free_port()).collect();
        let started: Vec<Option<Berth>> = dirs
            .iter()
            .zip(&ports)
            .map(|(d, p)| Some(Berth::start_with(d, *p, &config)))
            .collect();
        let mut proxy = Command::new(test_tool("rr-proxy"));
        proxy.args(["--listen", "127.0.0.1:0"]);
        for p in &ports {
            proxy.args(["--backend", &format!("http://127.0.0.1:{p}")]);
        }
        let mut proxy = proxy
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(proxy.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let proxy_port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("rr-proxy said {line:?}"));
        Cluster {
            replicas: started,
            dirs,
            ports,
            config,
            config_path,
            proxy,
            proxy_port,
            _dir: dir,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.proxy_port)
    }

    fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    fn replica(&self, i: usize) -> &Berth {
        self.replicas[i].as_ref().unwrap()
    }

    /// Requests each replica was sent, per the balancer.
    fn served(&self) -> Vec<u64> {
        let (_, v) = send_json("GET", &format!("{}/_rr/stats", self.url()), None, None);
        v["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .collect()
    }

    /// `berth fsck` on the shared storage (read-only, replicas running).
    fn fsck(&self) -> String {
        run(Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["fsck", "--json", "--config"])
            .arg(&self.config_path))
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.as_ref()
                    .map(|b| format!("--- replica {i}\n{}", b.log_text()))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.proxy.kill();
        let _ = self.proxy.wait();
    }
}

fn assert_every_replica_served(cluster: &Cluster) {
    let served = cluster.served();
    assert!(
        served.iter().all(|&n| n > 10),
        "the balancer should have spread requests over every replica: {served:?}"
    );
}

#[test]
fn conformance_through_a_round_robin_balancer() {
    let Some(cluster) = Cluster::start(2, "") else {
        return;
    };
    let password = cluster.replica(0).namespace_credentials("tool-conformance");
    let target = berth_conformance::Target {
        url: cluster.url(),
        namespace: "tool-conformance".into(),
        credentials: Some(("tool-conformance".into(), password)),
    };
    let outcomes = berth_conformance::run(&target, "");
    let report = berth_conformance::report(&outcomes);
    println!("{report}");
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "conformance failures behind the balancer:\n{report}\n{}",
        cluster.logs()
    );
    assert_every_replica_served(&cluster);
}

/// skopeo and docker push through the balancer and pull back byte for
/// byte; layers large enough for several S3 parts, chunked by docker.
#[test]
fn skopeo_and_docker_round_trips_through_the_balancer() {
    let Some(cluster) = Cluster::start(2, "") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let password = cluster.replica(1).namespace_credentials("tool-rr");
    let creds = format!("tool-rr:{password}");
    let layout = dir.path().join("layout");
    let layers = write_oci_layout(&layout, "v1", "balanced", 4);
    skopeo_push_layout(
        &layout,
        "v1",
        &format!("{}/tool-rr/app:v1", cluster.host()),
        &creds,
    );
    let pulled = dir.path().join("pulled");
    skopeo_copy(
        &format!("docker://{}/tool-rr/app:v1", cluster.host()),
        &format!("oci:{}:v1", pulled.display()),
        &["--src-creds", &creds],
    );
    for layer in &layers {
        let d = sha256(layer);
        let bytes = std::fs::read(pulled.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(&bytes, layer, "layer {d} differs after the round trip");
    }

    // docker: a 12 MB layer of random bytes (three S3 parts' worth), pushed
    // by a private daemon through the balancer, pulled by a fresh one.
    let ctx = dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let big: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).rotate_left(7) >> 11) as u8)
        .collect();
    std::fs::write(ctx.join("big.bin"), &big).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /big.bin\n",
    )
    .unwrap();
    let image = format!("{}/tool-rr/docker:v1", cluster.host());
    {
        let docker = Dockerd::start(&dir.path().join("docker-push"));
        docker.login(&cluster.host(), "tool-rr", &password).unwrap();
        run(docker
            .cmd()
            .args(["build", "-q", "-t", &image])
            .arg(&ctx)
            .env("DOCKER_BUILDKIT", "0"));
        run(docker.cmd().args(["push", &image]));
    }
    let docker = Dockerd::start(&dir.path().join("docker-pull"));
    docker.login(&cluster.host(), "tool-rr", &password).unwrap();
    run(docker.cmd().args(["pull", &image]));
    let out = dir.path().join("saved.tar");
    run(docker.cmd().args(["save", "-o"]).arg(&out).arg(&image));
    let saved = std::fs::read(&out).unwrap();
    assert!(
        saved.windows(4096).any(|w| w == &big[..4096]),
        "the pulled image should hold the layer's bytes"
    );
    assert_every_replica_served(&cluster);
    let report: serde_json::Value = serde_json::from_str(&cluster.fsck()).unwrap();
    assert_eq!(report["rows_without_object"], serde_json::json!([]));
}

/// 20 clients push at once into one namespace whose limit fits 10 of
/// their images, through the balancer: exactly as many as fit are
/// accepted, the ledger equals a recount, and no push was half-charged.
#[test]
fn quota_stays_exact_with_concurrent_pushes_on_both_replicas() {
    let Some(cluster) = Cluster::start(2, "") else {
        return;
    };
    let password = cluster.replica(0).namespace_credentials("tool-q");
    let admin = basic("admin", ADMIN_PASSWORD);
    // Each image: a 300 KB layer (a file, not inline) plus config and manifest.
    let layer_size = 300_000usize;
    let limit = 10 * layer_size as u64 + 5 * 1024;
    let (status, _) = send_json(
        "PUT",
        &format!("{}/admin/v1/quotas/tool-q", cluster.url()),
        Some(&admin),
        Some(serde_json::json!({ "limit_bytes": limit })),
    );
    assert_eq!(status, 200);
    let accepted = Arc::new(Mutex::new(0u64));
    let url = cluster.url();
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (url, password, accepted) = (url.clone(), password.clone(), accepted.clone());
            std::thread::spawn(move || {
                let client =
                    berth_conformance::client::Client::new(&url, Some(("tool-q".into(), password)));
                let ctx = berth_conformance::fixtures::Ctx::new(client, "tool-q");
                let layer = berth_conformance::fixtures::Blob::new(
                    (0..layer_size)
                        .map(|j| ((j * 131 + i * 7919) % 251) as u8)
                        .collect(),
                );
                let repo = format!("tool-q/app{i}");
                let config = berth_conformance::fixtures::Blob::new(
                    format!("{{\"client\":{i}}}").into_bytes(),
                );
                let manifest = serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": berth_conformance::fixtures::OCI_MANIFEST,
                    "config": berth_conformance::fixtures::descriptor(
                        berth_conformance::fixtures::OCI_CONFIG, &config),
                    "layers": [berth_conformance::fixtures::descriptor(
                        berth_conformance::fixtures::OCI_LAYER, &layer)],
                }))
                .unwrap();
                if ctx.push_blob(&repo, &config).is_ok()
                    && ctx.push_blob(&repo, &layer).is_ok()
                    && ctx
                        .put_manifest(
                            &repo,
                            "v1",
                            berth_conformance::fixtures::OCI_MANIFEST,
                            &manifest,
                        )
                        .is_ok_and(|r| r.status == 201)
                {
                    *accepted.lock().unwrap() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let accepted = *accepted.lock().unwrap();
    let (_, quota) = send_json(
        "GET",
        &format!("{}/admin/v1/quotas/tool-q", cluster.url()),
        Some(&admin),
        None,
    );
    let used = quota["used_bytes"].as_u64().unwrap();
    assert!(used <= limit, "over the limit: {used} > {limit}");
    assert!(
        (1..=10).contains(&accepted),
        "between 1 and 10 images fit, {accepted} were accepted"
    );
    let (_, drift) = send_json(
        "POST",
        &format!("{}/admin/v1/quotas/_reconcile", cluster.url()),
        Some(&admin),
        None,
    );
    assert_eq!(drift["drift"], serde_json::json!([]), "the ledger drifted");
}

/// The GC storm through the balancer on PostgreSQL + S3, untagged GC
/// running back to back (on whichever replica the trigger lands), and one
/// replica killed with SIGKILL halfway and started again at once. No tag is
/// removed by policy in this storm, so every push the registry
/// acknowledged must pull completely at the end; fsck finds every object.
#[test]
fn gc_storm_with_a_replica_killed_loses_nothing_acknowledged() {
    // Both GC grace periods; the storm judges late pushes by it.
    let grace = std::time::Duration::from_secs(2);
    let Some(mut cluster) = Cluster::start(
        2,
        &format!(
            "[auth]\nenabled = false\n[gc]\nenabled = false\nuntagged_grace = \"{0}s\"\nblob_grace = \"{0}s\"\n",
            grace.as_secs()
        ),
    ) else {
        return;
    };
    let seconds: u64 = std::env::var("BERTH_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    // Replica 1 is killed halfway and started again on its data dir (what
    // systemd or Kubernetes does); requests in flight to it fail, and
    // until it is back the balancer sends it nothing.
    let victim = Arc::new(Mutex::new(cluster.replicas[1].take()));
    let revive = victim.clone();
    let (dir, port, config) = (
        cluster.dirs[1].clone(),
        cluster.ports[1],
        cluster.config.clone(),
    );
    let report = storm::run(
        &cluster.url(),
        storm::StormOptions {
            seconds,
            jobs: &["untagged"],
            halfway: Some(Box::new(move |_| {
                let mut replica = revive.lock().unwrap();
                replica.as_mut().unwrap().kill9();
                *replica = Some(Berth::start_with(&dir, port, &config));
                // The balancer tries a refused backend again after 1 s.
                std::thread::sleep(std::time::Duration::from_millis(1500));
            })),
            grace,
        },
    );
    cluster.replicas[1] = victim.lock().unwrap().take();
    let client = berth_conformance::client::Client::new(&cluster.url(), None);
    let check = storm::Storm::default();
    for (repo, tag) in &report.acknowledged {
        storm::storm_pull(&client, &check, repo, tag);
    }
    println!(
        "scale-out storm: {}; {} acknowledged pushes re-pulled after the kill, {} complete",
        report.summary(),
        report.acknowledged.len(),
        check.pulls.load(Ordering::Relaxed)
    );
    let failures = report.storm.failures();
    assert!(
        failures.is_empty(),
        "failures outside the outage window: {failures:#?}\n{}",
        cluster.logs()
    );
    assert!(
        report.final_failures.is_empty(),
        "{:#?}",
        report.final_failures
    );
    assert_eq!(
        check.pulls.load(Ordering::Relaxed),
        report.acknowledged.len() as u64,
        "every acknowledged push pulls completely: {:#?}",
        check.failures()
    );
    assert!(
        report.storm.manifests_removed.load(Ordering::Relaxed) > 0,
        "GC must actually collect during the storm"
    );
    // The ledger equals a recount after the kill (no charge lost or doubled).
    let (status, drift) = send_json(
        "POST",
        &format!("{}/admin/v1/quotas/_reconcile", cluster.url()),
        None,
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(drift["drift"], serde_json::json!([]), "the ledger drifted");
    let fsck: serde_json::Value = serde_json::from_str(&cluster.fsck()).unwrap();
    assert_eq!(
        fsck["rows_without_object"],
        serde_json::json!([]),
        "objects lost: {fsck}"
    );
    assert_every_replica_served(&cluster);
}

/// An embedded installation (SQLite + files) moved by `berth migrate`
/// into a new PostgreSQL database and S3 bucket, then served by two
/// replicas behind the balancer: the image, a blob too large to be inline
/// (copied into the bucket) and the namespace's password all carry over,
/// and fsck on the shared storage finds every object.
#[test]
fn an_embedded_installation_migrates_to_postgres_and_s3() {
    let Some((dir, config)) = Cluster::new_storage("") else {
        return;
    };
    let source = dir.path().join("embedded");
    let mut berth = Berth::start(&source);
    let password = berth.namespace_credentials("tool-mv");
    let creds = format!("tool-mv:{password}");
    let layout = dir.path().join("layout");
    let layers = write_oci_layout(&layout, "v1", "moving", 3);
    skopeo_push_layout(
        &layout,
        "v1",
        &format!("{}/tool-mv/app:v1", berth.host()),
        &creds,
    );
    let big = incompressible(3_000_000);
    let big_digest = sha256(&big);
    let (pushed, _, _) = send(
        "POST",
        &format!(
            "{}/v2/tool-mv/app/blobs/uploads/?digest={big_digest}",
            berth.url()
        ),
        &[("authorization", &basic("tool-mv", &password))],
        big.clone(),
    );
    assert_eq!(pushed, 201);
    berth.signal(libc::SIGTERM);
    berth.wait();

    let out = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["migrate", "--data-dir"])
        .arg(&source)
        .arg("--to")
        .arg(dir.path().join("cluster.toml")));
    assert!(out.contains("copied"), "{out}");

    let cluster = Cluster::on(dir, config, 2);
    let pulled = tempfile::tempdir().unwrap();
    skopeo_copy(
        &format!("docker://{}/tool-mv/app:v1", cluster.host()),
        &format!("oci:{}:v1", pulled.path().display()),
        &["--src-creds", &creds],
    );
    for layer in &layers {
        let d = sha256(layer);
        let bytes = std::fs::read(pulled.path().join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(&bytes, layer, "layer {d} differs after the migration");
    }
    for _ in 0..2 {
        // Once from each replica.
        let (status, _, bytes) = request(
            "GET",
            &format!("{}/v2/tool-mv/app/blobs/{big_digest}", cluster.url()),
            &[("authorization", &basic("tool-mv", &password))],
        );
        assert_eq!(status, 200);
        assert!(bytes == big, "the large blob differs after the migration");
    }
    let report: serde_json::Value = serde_json::from_str(&cluster.fsck()).unwrap();
    assert_eq!(
        report["rows_without_object"],
        serde_json::json!([]),
        "{report}"
    );
    assert!(report["objects"].as_u64().unwrap() >= 1, "{report}");
}
