//! Scale-out as deployed: two berth processes (own data dirs) on one
//! PostgreSQL and one S3 bucket, behind no balancer: the tests send each
//! request of an upload to the replica a round-robin balancer might. The
//! servers are real: PostgreSQL (`storage/tests/support/postgres.rs`) and
//! Garage (`storage/tests/support/garage.rs`). Without a Garage binary
//! and with `CI` unset, each test prints why and passes.

mod common;
#[path = "../storage/tests/support/garage.rs"]
mod garage;
#[path = "../storage/tests/support/postgres.rs"]
mod pg;

use common::*;
use std::path::Path;

/// A database, a bucket and two berths on them; `b` redirects blob GETs
/// to presigned URLs, `a` serves bytes itself.
struct Pair {
    a: Berth,
    b: Berth,
    url: String,
    creds: (String, String),
    _dir: tempfile::TempDir,
}

fn config(url: &str, storage: &str, s3: &str, extra: &str) -> String {
    format!(
        "[storage]\ndatabase_url = \"{url}\"\ndatabase_max_connections = 8\n{storage}\n{s3}{extra}\n"
    )
}

/// `storage`: more `[storage]` keys; `tail`: more sections.
fn pair(ns: &str, storage: &str, tail: &str) -> Option<Pair> {
    let server = garage::server()?;
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database();
    let bucket = garage::fresh_bucket(server);
    let s3 = server.config_toml(&bucket);
    let a = Berth::start_with(
        &dir.path().join("a"),
        free_port(),
        &format!("{}{tail}", config(&url, storage, &s3, "")),
    );
    let b = Berth::start_with(
        &dir.path().join("b"),
        free_port(),
        &format!("{}{tail}", config(&url, storage, &s3, "redirect = true\n")),
    );
    let password = a.namespace_credentials(ns);
    Some(Pair {
        a,
        b,
        url,
        creds: (ns.to_owned(), password),
        _dir: dir,
    })
}

impl Pair {
    fn auth(&self) -> String {
        basic(&self.creds.0, &self.creds.1)
    }
}

fn header(h: &ureq::http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed)
                .rotate_left((i % 7) as u32)
        })
        .collect()
}

/// The blob's bytes through `berth`, following a redirect if it answers one.
fn pull(berth: &Berth, repo: &str, digest: &str, auth: &str) -> (u16, Vec<u8>) {
    let (status, h, body) = request(
        "GET",
        &format!("{}/v2/{repo}/blobs/{digest}", berth.url()),
        &[("authorization", auth)],
    );
    if status == 307 {
        let (status, _, body) = request("GET", &header(&h, "location"), &[]);
        return (status, body);
    }
    (status, body)
}

/// POST on A, PATCHes on A, B and A (1 MiB, 9 MiB, 100 bytes: under and
/// over S3's 5 MiB part), PUT with a last chunk on B; the blob is read
/// from A (bytes from berth) and from B (a 307 to S3), HEAD never
/// redirects; a monolithic upload and a small inline blob too; a chunk
/// that does not continue the upload is refused by either replica.
#[test]
fn one_upload_spread_over_two_replicas() {
    let Some(p) = pair("tool-s3", "", "") else {
        return;
    };
    let auth = p.auth();
    let repo = "tool-s3/app";
    let chunks = [
        pattern(1 << 20, 1),
        pattern(9 << 20, 2),
        pattern(100, 3),
        pattern(2 << 20, 4),
    ];
    let all = chunks.concat();
    let digest = sha256(&all);

    let (status, h, _) = send(
        "POST",
        &format!("{}/v2/{repo}/blobs/uploads/", p.a.url()),
        &[("authorization", &auth)],
        vec![],
    );
    assert_eq!(status, 202);
    let location = header(&h, "location");
    let mut offset = 0usize;
    for (i, chunk) in chunks[..3].iter().enumerate() {
        let to = if i % 2 == 0 { &p.a } else { &p.b };
        let range = format!("{offset}-{}", offset + chunk.len() - 1);
        let (status, h, body) = send(
            "PATCH",
            &format!("{}{location}", to.url()),
            &[
                ("authorization", &auth),
                ("content-range", &range),
                ("content-type", "application/octet-stream"),
            ],
            chunk.clone(),
        );
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        offset += chunk.len();
        assert_eq!(header(&h, "range"), format!("0-{}", offset - 1));
    }
    // A chunk that does not continue the upload, on either replica: 416.
    for to in [&p.a, &p.b] {
        let (status, h, body) = send(
            "PATCH",
            &format!("{}{location}", to.url()),
            &[("authorization", &auth), ("content-range", "0-9")],
            vec![0; 10],
        );
        assert_eq!(status, 416, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("BLOB_UPLOAD_INVALID"));
        assert_eq!(header(&h, "range"), format!("0-{}", offset - 1));
    }
    // Status from the other replica.
    let (status, h, _) = request(
        "GET",
        &format!("{}{location}", p.b.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 204);
    assert_eq!(header(&h, "range"), format!("0-{}", offset - 1));
    let sep = if location.contains('?') { '&' } else { '?' };
    let (status, h, body) = send(
        "PUT",
        &format!("{}{location}{sep}digest={digest}", p.b.url()),
        &[
            ("authorization", &auth),
            (
                "content-range",
                &format!("{offset}-{}", offset + chunks[3].len() - 1),
            ),
        ],
        chunks[3].clone(),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(header(&h, "docker-content-digest"), digest);

    let (status, body) = pull(&p.a, repo, &digest, &auth);
    assert_eq!(status, 200);
    assert!(body == all, "A serves the blob's bytes");
    let (status, h, _) = request(
        "GET",
        &format!("{}/v2/{repo}/blobs/{digest}", p.b.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 307, "B redirects");
    assert!(header(&h, "location").contains("X-Amz-Signature"));
    let (status, body) = pull(&p.b, repo, &digest, &auth);
    assert_eq!(status, 200);
    assert!(body == all, "the presigned URL yields the blob's bytes");
    let (status, h, _) = request(
        "HEAD",
        &format!("{}/v2/{repo}/blobs/{digest}", p.b.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 200, "HEAD is never redirected");
    assert_eq!(header(&h, "content-length"), all.len().to_string());
    // A range through berth.
    let (status, _, body) = request(
        "GET",
        &format!("{}/v2/{repo}/blobs/{digest}", p.a.url()),
        &[("authorization", &auth), ("range", "bytes=10-99")],
    );
    assert_eq!(status, 206);
    assert_eq!(body, all[10..100]);

    // Monolithic, on B; read on A.
    let mono = pattern(6 << 20, 9);
    let mono_digest = sha256(&mono);
    let (status, _, body) = send(
        "POST",
        &format!(
            "{}/v2/{repo}/blobs/uploads/?digest={mono_digest}",
            p.b.url()
        ),
        &[("authorization", &auth)],
        mono.clone(),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert!(pull(&p.a, repo, &mono_digest, &auth).1 == mono);

    // Small: inline in blob_data, served by either (no redirect).
    let small = b"a small config blob".to_vec();
    let small_digest = sha256(&small);
    let (status, h, _) = send(
        "POST",
        &format!("{}/v2/{repo}/blobs/uploads/", p.a.url()),
        &[("authorization", &auth)],
        vec![],
    );
    assert_eq!(status, 202);
    let location = header(&h, "location");
    let (status, _, _) = send(
        "PUT",
        &format!("{}{location}{sep}digest={small_digest}", p.b.url()),
        &[("authorization", &auth)],
        small.clone(),
    );
    assert_eq!(status, 201);
    let (status, _, body) = request(
        "GET",
        &format!("{}/v2/{repo}/blobs/{small_digest}", p.b.url()),
        &[("authorization", &auth)],
    );
    assert_eq!((status, body), (200, small));
    let db = pg::database_of(&p.url);
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM blob_data"), "1");
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM upload_sessions"), "0");
}

fn layer_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(&digest[7..])
}

/// skopeo pushes a multi-layer image through A and pulls it through B
/// (which redirects blob GETs to S3): byte for byte. Every blob is an
/// object (`inline_blob_max = "0"`), so every pull is a redirect.
#[test]
fn skopeo_through_one_replica_and_back_out_of_the_other() {
    let Some(p) = pair("tool-sk", "inline_blob_max = \"0\"", "") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let creds = format!("{}:{}", p.creds.0, p.creds.1);
    let layout = dir.path().join("layout");
    let layers = write_oci_layout(&layout, "v1", "s3 skopeo", 4);
    skopeo_copy(
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/tool-sk/app:v1", p.a.host()),
        &["--dest-creds", &creds],
    );
    let out = dir.path().join("pulled");
    skopeo_copy(
        &format!("docker://{}/tool-sk/app:v1", p.b.host()),
        &format!("oci:{}:v1", out.display()),
        &["--src-creds", &creds],
    );
    for layer in &layers {
        let d = sha256(layer);
        let pulled = std::fs::read(layer_path(&out, &d)).unwrap();
        assert!(&pulled == layer, "layer {d} differs after the round trip");
    }
    let db = pg::database_of(&p.url);
    assert_eq!(
        pg::psql(db, "SELECT COUNT(*) FROM blob_data"),
        "0",
        "every blob in S3"
    );
}

/// Quota counts the staged bytes of both replicas' sessions: with room for
/// 12 MiB, 8 MiB staged through A leave no room for 8 MiB through B until
/// A's upload is cancelled.
#[test]
fn staged_bytes_of_both_replicas_count_against_the_quota() {
    let Some(p) = pair("tool-q3", "", "") else {
        return;
    };
    let auth = p.auth();
    let admin = basic("admin", ADMIN_PASSWORD);
    let (status, _, body) = send(
        "PUT",
        &format!("{}/admin/v1/quotas/tool-q3", p.a.url()),
        &[
            ("authorization", &admin),
            ("content-type", "application/json"),
        ],
        br#"{"limit_bytes": 12582912}"#.to_vec(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let start = |berth: &Berth| {
        let (status, h, _) = send(
            "POST",
            &format!("{}/v2/tool-q3/app/blobs/uploads/", berth.url()),
            &[("authorization", &auth)],
            vec![],
        );
        assert_eq!(status, 202);
        header(&h, "location")
    };
    let on_a = start(&p.a);
    let (status, _, body) = send(
        "PATCH",
        &format!("{}{on_a}", p.a.url()),
        &[("authorization", &auth)],
        pattern(8 << 20, 1),
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let on_b = start(&p.b);
    let (status, _, body) = send(
        "PATCH",
        &format!("{}{on_b}", p.b.url()),
        &[("authorization", &auth)],
        pattern(8 << 20, 2),
    );
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{text}");
    assert!(
        text.contains("DENIED") && text.contains("unfinished uploads"),
        "{text}"
    );
    let (status, _, _) = request(
        "DELETE",
        &format!("{}{on_a}", p.b.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 204, "cancelled from the other replica");
    let (status, _, body) = send(
        "PATCH",
        &format!("{}{on_b}", p.b.url()),
        &[("authorization", &auth)],
        pattern(8 << 20, 2),
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    // A cancelled upload is unknown on both.
    for berth in [&p.a, &p.b] {
        let (status, _, body) = request(
            "GET",
            &format!("{}{on_a}", berth.url()),
            &[("authorization", &auth)],
        );
        assert_eq!(status, 404);
        assert!(String::from_utf8_lossy(&body).contains("BLOB_UPLOAD_UNKNOWN"));
    }
}

/// Untagged GC on S3: an image's manifest is deleted, GC deletes its blob
/// rows and objects in the bucket, the orphan sweep runs over the bucket,
/// and an upload in progress meanwhile (a part in S3, a tail in its row)
/// is untouched: it goes on and finishes on the other replica.
#[test]
fn gc_on_s3_removes_unreferenced_objects_and_spares_live_uploads() {
    let gc = "[gc]\nenabled = false\nuntagged_grace = \"1s\"\nblob_grace = \"1s\"\n";
    let Some(p) = pair("tool-gc3", "inline_blob_max = \"0\"", gc) else {
        return;
    };
    let auth = p.auth();
    let dir = tempfile::tempdir().unwrap();
    let creds = format!("{}:{}", p.creds.0, p.creds.1);
    let layout = dir.path().join("layout");
    let layers = write_oci_layout(&layout, "old", "s3 gc", 2);
    skopeo_copy(
        &format!("oci:{}:old", layout.display()),
        &format!("docker://{}/tool-gc3/app:old", p.a.host()),
        &["--dest-creds", &creds],
    );
    let layer = sha256(&layers[0]);
    let (status, h, _) = request(
        "GET",
        &format!("{}/v2/tool-gc3/app/blobs/{layer}", p.b.url()),
        &[("authorization", &auth)],
    );
    assert_eq!(status, 307);
    let presigned = header(&h, "location");
    assert_eq!(request("GET", &presigned, &[]).0, 200);
    // An upload in progress: one 6 MiB part in S3 and a short tail.
    let (status, h, _) = send(
        "POST",
        &format!("{}/v2/tool-gc3/app/blobs/uploads/", p.a.url()),
        &[("authorization", &auth)],
        vec![],
    );
    assert_eq!(status, 202);
    let location = header(&h, "location");
    let first = pattern((6 << 20) + 10, 5);
    let (status, _, _) = send(
        "PATCH",
        &format!("{}{location}", p.a.url()),
        &[("authorization", &auth)],
        first.clone(),
    );
    assert_eq!(status, 202);

    let admin = basic("admin", ADMIN_PASSWORD);
    let (status, _, _) = request(
        "DELETE",
        &format!("{}/v2/tool-gc3/app/manifests/old", p.a.url()),
        &[("authorization", &admin)],
    );
    assert_eq!(status, 202);
    // The grace periods are 1 s: GC judges by time, so the test waits it out.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (status, _, body) = request(
        "POST",
        &format!("{}/admin/v1/gc/untagged?dry_run=false", p.b.url()),
        &[("authorization", &admin)],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["status"], "ok", "{report}");
    let db = pg::database_of(&p.url);
    assert_eq!(pg::psql(db, "SELECT COUNT(*) FROM manifests"), "0");
    assert_eq!(
        pg::psql(db, "SELECT COUNT(*) FROM upload_sessions"),
        "1",
        "the live upload survives GC"
    );
    // The layer's object is gone from the bucket (the URL presigned
    // before finds nothing), and berth no longer knows the blob.
    assert_eq!(request("GET", &presigned, &[]).0, 404);
    assert_eq!(pull(&p.a, "tool-gc3/app", &layer, &auth).0, 404);

    // The upload goes on, on B, and its blob is whole.
    let rest = pattern(3 << 20, 6);
    let whole = [first.clone(), rest.clone()].concat();
    let digest = sha256(&whole);
    let sep = if location.contains('?') { '&' } else { '?' };
    let (status, _, body) = send(
        "PUT",
        &format!("{}{location}{sep}digest={digest}", p.b.url()),
        &[("authorization", &auth)],
        rest,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert!(pull(&p.a, "tool-gc3/app", &digest, &auth).1 == whole);
}

/// The conformance suite against a replica on PostgreSQL + S3, every blob
/// an object (chunked uploads, ranges, mounts, deletes all through S3).
#[test]
fn a_replica_on_s3_passes_every_conformance_check() {
    let Some(p) = pair("tool-conformance", "inline_blob_max = \"0\"", "") else {
        return;
    };
    // On A, which serves blob bytes itself: berth-conformance's client
    // does not follow redirects (the spec allows a 307 for blob GETs), so
    // B's redirects are checked by the other tests here, skopeo's pull too.
    {
        let berth = &p.a;
        let target = berth_conformance::Target {
            url: berth.url(),
            namespace: "tool-conformance".into(),
            credentials: Some(p.creds.clone()),
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
    }
}

/// An upload outlives the replica that started it: A takes the POST and a
/// PATCH (a part in S3, a tail in the row) and is killed (-9); B takes the
/// rest and the PUT, and the blob is whole.
#[test]
fn an_upload_outlives_the_replica_that_served_it() {
    let Some(mut p) = pair("tool-kill", "", "") else {
        return;
    };
    let auth = p.auth();
    let (status, h, _) = send(
        "POST",
        &format!("{}/v2/tool-kill/app/blobs/uploads/", p.a.url()),
        &[("authorization", &auth)],
        vec![],
    );
    assert_eq!(status, 202);
    let location = header(&h, "location");
    let first = pattern((5 << 20) + 3, 1);
    let (status, _, _) = send(
        "PATCH",
        &format!("{}{location}", p.a.url()),
        &[("authorization", &auth)],
        first.clone(),
    );
    assert_eq!(status, 202);
    p.a.kill9();
    let rest = pattern(700_000, 2);
    let (status, h, body) = send(
        "PATCH",
        &format!("{}{location}", p.b.url()),
        &[
            ("authorization", &auth),
            (
                "content-range",
                &format!("{}-{}", first.len(), first.len() + rest.len() - 1),
            ),
        ],
        rest.clone(),
    );
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let total = first.len() + rest.len();
    assert_eq!(header(&h, "range"), format!("0-{}", total - 1));
    let whole = [first, rest].concat();
    let digest = sha256(&whole);
    let sep = if location.contains('?') { '&' } else { '?' };
    let (status, _, body) = send(
        "PUT",
        &format!("{}{location}{sep}digest={digest}", p.b.url()),
        &[("authorization", &auth)],
        vec![],
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let (status, body) = pull(&p.b, "tool-kill/app", &digest, &auth);
    assert_eq!(status, 200);
    assert!(body == whole);
}
