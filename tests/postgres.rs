//! The real binary with its metadata in PostgreSQL (`[storage]
//! database_url`): the conformance suite, skopeo pushing and pulling, two
//! berth processes starting at once on one empty database (migrations run
//! once), and the metadata surviving a restart. The server is a real
//! PostgreSQL started by the harness (`storage/tests/support/postgres.rs`).

mod common;
#[path = "../storage/tests/support/postgres.rs"]
mod pg;

use common::*;
use std::path::Path;
use std::process::Command;

/// berth's config selecting PostgreSQL database `url`.
fn config(url: &str) -> String {
    format!("[storage]\ndatabase_url = \"{url}\"\ndatabase_max_connections = 8\n")
}

fn start(data: &Path, url: &str) -> Berth {
    Berth::start_with(data, free_port(), &config(url))
}

#[test]
fn berth_on_postgres_passes_every_conformance_check() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let berth = start(&dir.path().join("data"), &url);
    assert!(
        berth.log_text().contains("Postgres"),
        "berth should say it opened PostgreSQL:\n{}",
        berth.log_text()
    );
    let password = berth.namespace_credentials("tool-conformance");
    let target = berth_conformance::Target {
        url: berth.url(),
        namespace: "tool-conformance".into(),
        credentials: Some(("tool-conformance".into(), password)),
    };
    let outcomes = berth_conformance::run(&target, "");
    let report = berth_conformance::report(&outcomes);
    println!("{report}");
    assert!(outcomes.len() >= 40, "the suite should run all its checks");
    let failed: Vec<_> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "conformance failures:\n{report}\nberth log:\n{}",
        berth.log_text()
    );
    // The rows are in PostgreSQL, not in a SQLite file beside the blobs.
    let db = pg::database_of(&url);
    let repos: u64 = pg::psql(db, "SELECT COUNT(*) FROM repositories")
        .parse()
        .unwrap();
    assert!(repos > 0);
    assert!(!dir.path().join("data/berth.db").exists());
}

/// skopeo pushes an image, berth restarts, skopeo pulls it back byte for
/// byte; quota and tags are what the database says.
#[test]
fn skopeo_round_trip_on_postgres_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let data = dir.path().join("data");
    let mut berth = start(&data, &url);
    let password = berth.namespace_credentials("tool-pg");
    let creds = format!("tool-pg:{password}");
    let layout = dir.path().join("layout");
    let layers = write_oci_layout(&layout, "v1", "postgres e2e", 3);
    let image = format!("docker://{}/tool-pg/app:v1", berth.host());
    skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &image,
        &["--dest-creds", &creds],
    );
    let db = pg::database_of(&url);
    assert_eq!(
        pg::psql(
            db,
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.name = 'tool-pg/app'"
        ),
        "v1"
    );
    let used: u64 = pg::psql(
        db,
        "SELECT used_bytes FROM namespaces WHERE name = 'tool-pg'",
    )
    .parse()
    .unwrap();
    let layer_bytes: u64 = layers.iter().map(|l| l.len() as u64).sum();
    assert!(used > layer_bytes, "quota charged: {used} <= {layer_bytes}");

    berth.kill9();
    let berth = Berth::start_with(&data, berth.port, &config(&url));
    let out = dir.path().join("pulled");
    skopeo_copy(
        &format!("docker://{}/tool-pg/app:v1", berth.host()),
        &format!("oci:{}:v1", out.display()),
        &["--src-creds", &creds],
    );
    for layer in &layers {
        let d = sha256(layer);
        let pulled = std::fs::read(out.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(&pulled, layer, "layer {d} differs after the round trip");
    }
    // The admin API reads the same ledger.
    let (status, _, body) = request(
        "GET",
        &format!("{}/admin/v1/quotas/tool-pg", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["used_bytes"].as_u64(), Some(used));
}

/// Two berths (own data dirs, one database) starting at the same moment on
/// an empty database: both come up, and each migration ran once. Their
/// data dirs stand for one shared mount: the blob store's identity file
/// is the same in both (without it the second is refused, below).
#[test]
fn two_berths_starting_together_migrate_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    for d in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
        std::fs::write(
            dir.path().join(d).join("berth-store-id"),
            "8a0e4b7e-7c1d-4b0a-9b49-2f7a2f1f6c11\n",
        )
        .unwrap();
    }
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| start(&dir.path().join("a"), &url));
        let b = s.spawn(|| start(&dir.path().join("b"), &url));
        (a.join().unwrap(), b.join().unwrap())
    });
    let db = pg::database_of(&url);
    assert_eq!(
        pg::psql(
            db,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"
        ),
        // Every migration this berth knows (the storage unit test pins
        // how many), each once.
        (1..=berth_storage::Metadata::schema_version())
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    // What one writes, the other reads.
    let password = a.namespace_credentials("tool-two");
    let (status, _, _) = request(
        "GET",
        &format!("{}/v2/", b.url()),
        &[("authorization", &basic("tool-two", &password))],
    );
    assert_eq!(status, 200, "{}", b.log_text());
    drop((a, b));
}

/// A berth on a database whose blobs are another berth's local data dir
/// (a misconfiguration: neither would see the other's objects) refuses to
/// start, saying why, and leaves the database as it was.
#[test]
fn a_replica_with_blobs_of_its_own_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let a = start(&dir.path().join("a"), &url);
    let data = dir.path().join("b");
    let port = free_port();
    let mut b = Berth::spawn(&data, port, &config(&url), None);
    let status = b.wait().unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(data.with_extension(format!("{port}.log"))).unwrap();
    assert!(
        log.contains("another blob store") && log.contains("[storage.s3]"),
        "{log}"
    );
    let db = pg::database_of(&url);
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM storage_identity"), "1");
    drop(a);
}

/// Untagged GC through the binary on PostgreSQL: an untagged image's
/// manifest, links, blob rows and objects go (rows before objects, under
/// the digest locks in the database), the tagged one stays whole, and the
/// ledger has no drift. The untagged image was pushed with every blob in a
/// file (`inline_blob_max = "0"`), the tagged one after a restart with the
/// default, its small blobs inline in `blob_data`: GC deletes files, and
/// inline bytes are pulled from the database.
#[test]
fn untagged_gc_on_postgres_removes_rows_then_objects() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let data = dir.path().join("data");
    let gc = "[gc]\nenabled = false\nuntagged_grace = \"1s\"\nblob_grace = \"1s\"\n";
    let objects = || -> usize {
        match std::fs::read_dir(data.join("blobs/sha256")) {
            Ok(shards) => shards
                .map(|shard| std::fs::read_dir(shard.unwrap().path()).unwrap().count())
                .sum(),
            Err(_) => 0,
        }
    };
    let push = |berth: &Berth, creds: &str, tag: &str, seed: &str| {
        let layout = dir.path().join(format!("layout-{tag}"));
        write_oci_layout(&layout, tag, seed, 3);
        skopeo_push_layout(
            &layout,
            tag,
            &format!("{}/tool-gc/app:{tag}", berth.host()),
            creds,
        );
    };
    let db = pg::database_of(&url);
    let files = format!(
        "[storage]\ndatabase_url = \"{url}\"\ndatabase_max_connections = 8\ninline_blob_max = \"0\"\n{gc}"
    );
    let berth = Berth::start_with(&data, free_port(), &files);
    let password = berth.namespace_credentials("tool-gc");
    let creds = format!("tool-gc:{password}");
    push(&berth, &creds, "old", "gc old");
    assert_eq!(objects(), 4, "config and three layers as files");
    drop(berth);
    let berth = Berth::start_with(&data, free_port(), &format!("{}{gc}", config(&url)));
    push(&berth, &creds, "new", "gc new");
    assert_eq!(objects(), 4);
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM blob_data"), "4");

    let auth = basic("admin", ADMIN_PASSWORD);
    let (status, _, _) = request(
        "DELETE",
        &format!("{}/v2/tool-gc/app/manifests/old", berth.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 202);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (status, _, body) = request(
        "POST",
        &format!("{}/admin/v1/gc/untagged?dry_run=false", berth.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["status"], "ok", "{report}");

    // What is left: the tagged image's config and three layers, inline.
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM manifests"), "1");
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM blobs"), "4");
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM blob_data"), "4");
    assert_eq!(objects(), 0, "objects follow their rows");
    let (status, _, body) = request(
        "POST",
        &format!("{}/admin/v1/quotas/_reconcile", berth.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["drift"], serde_json::json!([]), "drift after GC: {v}");
    let out = dir.path().join("pulled");
    skopeo_copy(
        &format!("docker://{}/tool-gc/app:new", berth.host()),
        &format!("oci:{}:new", out.display()),
        &["--src-creds", &creds],
    );
}

/// `berth migrate`: an embedded installation (SQLite + files) with an
/// image, a quota limit and an API token moves to PostgreSQL and a new
/// data dir; berth started on the new config serves the same image byte
/// for byte to the same token, with the same quota. A second run into the
/// now filled database is refused and changes nothing.
#[test]
fn migrate_moves_an_embedded_installation_to_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("embedded");
    let mut berth = Berth::start(&source);
    let password = berth.namespace_credentials("tool-mig");
    let layout = dir.path().join("layout");
    let layers = write_oci_layout(&layout, "v1", "migrate", 3);
    skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/tool-mig/app:v1", berth.host()),
        &["--dest-creds", &format!("tool-mig:{password}")],
    );
    // A layer too large to be kept inline: it lives as a file, which the
    // migration must copy.
    let big = incompressible(1_000_000);
    let big_digest = sha256(&big);
    let (pushed, _, _) = send(
        "POST",
        &format!(
            "{}/v2/tool-mig/app/blobs/uploads/?digest={big_digest}",
            berth.url()
        ),
        &[
            ("authorization", &basic("tool-mig", &password)),
            ("content-type", "application/octet-stream"),
        ],
        big.clone(),
    );
    assert_eq!(pushed, 201);
    let admin = basic("admin", ADMIN_PASSWORD);
    let quota_url = |b: &Berth| format!("{}/admin/v1/quotas/tool-mig", b.url());
    let (status, _) = send_json(
        "PUT",
        &quota_url(&berth),
        Some(&admin),
        Some(serde_json::json!({ "limit_bytes": 50_000_000 })),
    );
    assert_eq!(status, 200);
    let (status, before) = send_json("GET", &quota_url(&berth), Some(&admin), None);
    assert_eq!(status, 200);
    let (status, token) = send_json(
        "POST",
        &format!("{}/admin/v1/tokens", berth.url()),
        Some(&admin),
        Some(serde_json::json!({ "namespace": "tool-mig", "name": "ci" })),
    );
    assert_eq!(status, 201, "{token}");
    let token = token["token"].as_str().unwrap().to_owned();
    // A JWT berth signed before the move (with its generated token key).
    let (status, jwt) = send_json(
        "GET",
        &format!(
            "{}/token?service=berth&scope=repository:tool-mig/app:pull",
            berth.url()
        ),
        Some(&basic("tool-mig", &password)),
        None,
    );
    assert_eq!(status, 200);
    let jwt = jwt["token"].as_str().unwrap().to_owned();
    berth.signal(libc::SIGTERM);
    berth.wait();

    let url = pg::fresh_database();
    let target = dir.path().join("replica-data");
    let target_config = dir.path().join("target.toml");
    std::fs::write(
        &target_config,
        format!(
            "[storage]\ndata_dir = \"{}\"\ndatabase_url = \"{url}\"\n",
            target.display()
        ),
    )
    .unwrap();
    let migrate = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("migrate")
            .arg("--data-dir")
            .arg(&source)
            .arg("--to")
            .arg(&target_config);
        cmd
    };
    let out = run(&mut migrate());
    assert!(out.contains("manifests"), "{out}");
    assert!(out.contains("copied"), "{out}");

    let berth = Berth::start_with(&target, free_port(), &config(&url));
    let pulled = dir.path().join("pulled");
    skopeo_copy(
        &format!("docker://{}/tool-mig/app:v1", berth.host()),
        &format!("oci:{}:v1", pulled.display()),
        &["--src-creds", &format!("tool-mig:{token}")],
    );
    for layer in &layers {
        let d = sha256(layer);
        let bytes = std::fs::read(pulled.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!(&bytes, layer, "layer {d} differs after the migration");
    }
    let (status, after) = send_json("GET", &quota_url(&berth), Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(after["used_bytes"], before["used_bytes"]);
    assert_eq!(after["limit_bytes"], 50_000_000);
    // The namespace's password moved too (its hash is a row).
    let (status, _) = send_json(
        "GET",
        &format!("{}/v2/tool-mig/app/tags/list", berth.url()),
        Some(&basic("tool-mig", &password)),
        None,
    );
    assert_eq!(status, 200);
    // The token key moved into the database: the old JWT still verifies.
    let (status, _) = send_json(
        "GET",
        &format!("{}/v2/tool-mig/app/tags/list", berth.url()),
        Some(&format!("Bearer {jwt}")),
        None,
    );
    assert_eq!(status, 200, "a JWT issued before the migration");
    // The large blob was copied as a file into the new data dir.
    assert!(target
        .join("blobs/sha256")
        .join(&big_digest[7..9])
        .join(&big_digest[7..])
        .exists());
    let (status, _, bytes) = request(
        "GET",
        &format!("{}/v2/tool-mig/app/blobs/{big_digest}", berth.url()),
        &[("authorization", &basic("tool-mig", &token))],
    );
    assert_eq!(status, 200);
    assert!(bytes == big, "the large blob differs after the migration");

    // fsck reads the rows from PostgreSQL and finds every object; an
    // object removed behind berth's back is reported as lost.
    let fsck = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("fsck").arg("--config").arg(&target_config);
        cmd
    };
    let report = run(&mut fsck());
    assert!(report.contains("no data is missing"), "{report}");
    assert!(report.contains("inline in the database"), "{report}");
    std::fs::remove_file(
        target
            .join("blobs/sha256")
            .join(&big_digest[7..9])
            .join(&big_digest[7..]),
    )
    .unwrap();
    let report = run_failing(&mut fsck());
    assert!(
        report.contains(&format!("MISSING  {big_digest}")),
        "{report}"
    );

    let again = run_failing(&mut migrate());
    assert!(again.contains("not empty"), "{again}");
}

/// `sslmode=require`: berth connects over TLS and verifies the server's
/// certificate against `[storage] database_ca`; a server whose certificate
/// does not chain to it (here: the platform's roots, which do not hold the
/// test CA) is refused at start, with the reason.
#[test]
fn tls_to_postgres_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let db = pg::database_of(&pg::fresh_database()).to_owned();
    let url = pg::tls_url(&db);
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        &format!(
            "[storage]\ndatabase_url = \"{url}\"\ndatabase_ca = \"{}\"\n",
            pg::tls_ca().display()
        ),
    );
    let password = berth.namespace_credentials("tool-tls");
    let (status, _) = send_json(
        "GET",
        &format!("{}/v2/tool-tls/app/tags/list", berth.url()),
        Some(&basic("tool-tls", &password)),
        None,
    );
    assert_eq!(status, 404, "the namespace's account works; nothing pushed");
    // The connections really are encrypted.
    let encrypted = pg::psql(
        &db,
        "SELECT COUNT(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
         WHERE s.ssl AND a.datname = current_database() AND a.pid <> pg_backend_pid()",
    );
    assert_ne!(encrypted, "0", "berth's connections should use TLS");
    // The cache-invalidation listener connects the same way.
    assert!(
        wait_for_line(
            &berth.log,
            "listening for cache invalidations",
            std::time::Duration::from_secs(10)
        ),
        "{}",
        berth.log_text()
    );

    let refused = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .arg("--config")
        .arg({
            let path = dir.path().join("no-ca.toml");
            std::fs::write(&path, format!("[storage]\ndatabase_url = \"{url}\"\n")).unwrap();
            path
        })
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("certificate"), "{said}");
}
