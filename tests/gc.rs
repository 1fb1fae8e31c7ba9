//! Garbage collection end to end: retention with dry-run equal to the real
//! run, the liveness rules (indexes, referrers, pins), a GC storm while
//! clients push and pull, kill -9 in the middle of a run, and docker pulling
//! a pinned image after cleanup.

mod common;

use berth_conformance::client::Client;
use berth_conformance::fixtures::{
    descriptor, sha256 as digest_of, Blob, Ctx, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER,
    OCI_MANIFEST,
};
use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FAST_GC: &str = "[gc]\nenabled = false\nuntagged_grace = \"1s\"\nblob_grace = \"1s\"\n";

fn admin_client(berth: &Berth) -> Client {
    Client::new(&berth.url(), admin())
}

fn gc_run(berth: &Berth, job: &str, dry_run: bool) -> serde_json::Value {
    let r = admin_client(berth)
        .send(
            "POST",
            &format!("/admin/v1/gc/{job}?dry_run={dry_run}"),
            &[],
            Vec::new(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let v = r.json().unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    v
}

fn tags_of(client: &Client, repo: &str) -> Vec<String> {
    let r = client.get(&format!("/v2/{repo}/tags/list")).unwrap();
    if r.status == 404 {
        return Vec::new();
    }
    r.json().unwrap()["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

/// Checks the database against the blob store, with berth stopped or
/// running (`berth_storage`'s read-only integrity check, which `berth
/// fsck` also runs): every blob row has its object, and (with `strict`)
/// there are no unreferenced links, no unlinked blob rows and no orphan
/// objects. Returns (blob rows, objects).
fn check_storage(data: &Path, strict: bool) -> (usize, usize) {
    let report = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(berth_storage::Storage::check_integrity(data, None))
        .unwrap();
    assert!(
        report.rows_without_object.is_empty(),
        "blob rows without their object: data loss: {:?}",
        report.rows_without_object
    );
    if strict {
        assert!(
            report.orphan_objects.is_empty(),
            "orphan objects left after the final GC: {:?}",
            report.orphan_objects
        );
        assert_eq!(
            report.unreferenced_links, 0,
            "unreferenced blob links left after the final GC"
        );
        assert_eq!(
            report.unlinked_blob_rows, 0,
            "unlinked blobs left after the final GC"
        );
    }
    (report.blob_rows, report.objects)
}

#[test]
fn retention_end_to_end_dry_run_equals_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        &format!("{FAST_GC}[gc.retention]\nkeep_last = 2\n"),
    );
    let ctx = Ctx::new(admin_client(&berth), "tool-ret");
    let mut digests = Vec::new();
    for tag in ["v1", "v2", "v3", "v4", "v5", "v6", "keep-me", "latest"] {
        let (_, d) = ctx.push_image("tool-ret/app", tag).unwrap();
        digests.push((tag, d));
        std::thread::sleep(Duration::from_millis(5)); // distinct push times
    }
    // A second tag on v6's digest is judged on its own.
    let v6 = digests[5].1.clone();
    let m = ctx
        .client
        .get(&format!("/v2/tool-ret/app/manifests/{v6}"))
        .unwrap()
        .body;
    assert_eq!(
        ctx.put_manifest("tool-ret/app", "alias", OCI_MANIFEST, &m)
            .unwrap()
            .status,
        201
    );
    // v1 is running somewhere: pinned.
    let r = ctx
        .client
        .send(
            "POST",
            "/admin/v1/pins",
            &[("content-type", "application/json")],
            serde_json::to_vec(&serde_json::json!({
                "repository": "tool-ret/app", "digest": digests[0].1, "reason": "webservice"
            }))
            .unwrap(),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.describe());
    // The namespace keeps release-style tags too.
    let r = ctx
        .client
        .send(
            "PUT",
            "/admin/v1/retention/tool-ret",
            &[("content-type", "application/json")],
            br#"{"keep_pattern": "^keep-"}"#.to_vec(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());

    let dry = gc_run(&berth, "tag-cleanup", true);
    let real = gc_run(&berth, "tag-cleanup", false);
    assert_eq!(
        dry["removed"], real["removed"],
        "dry run reports exactly what the real run removes"
    );
    assert_eq!(real["tags_removed"], 4);
    let mut left = tags_of(&ctx.client, "tool-ret/app");
    left.sort();
    // Newest two unprotected (alias, v6), latest, keep-me (pattern), v1 (pinned).
    assert_eq!(left, ["alias", "keep-me", "latest", "v1", "v6"]);

    // Untagged manifests wait out their grace period from the moment they
    // lost their tags, then go, with their blobs; dry equals real again.
    let early = gc_run(&berth, "untagged", false);
    assert_eq!(
        early["manifests_removed"], 0,
        "the grace period starts when the tag goes: {early}"
    );
    std::thread::sleep(Duration::from_millis(1300));
    let dry = gc_run(&berth, "untagged", true);
    let real = gc_run(&berth, "untagged", false);
    assert_eq!(dry["removed"], real["removed"]);
    assert_eq!(real["manifests_removed"], 4, "{real}");
    assert_eq!(real["blobs_removed"], 8, "config and layer of each: {real}");
    assert!(real["bytes_freed"].as_u64().unwrap() > 0);
    assert!(real["freed_per_namespace"]["tool-ret"].as_u64().unwrap() > 0);
    for (tag, d) in &digests {
        let status = ctx
            .client
            .head(&format!("/v2/tool-ret/app/manifests/{d}"))
            .unwrap()
            .status;
        let expect = if ["v2", "v3", "v4", "v5"].contains(tag) {
            404
        } else {
            200
        };
        assert_eq!(status, expect, "{tag}");
    }
    check_storage(&dir.path().join("data"), false);

    // The runs are on record; the CLI shows them.
    let out = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "runs", "--url", &berth.url()])
        .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD));
    assert!(
        out.contains("untagged by admin [ok]: 0 tags, 4 manifests"),
        "{out}"
    );
    let out = run(Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "run", "untagged", "--dry-run", "--url", &berth.url()])
        .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD));
    assert!(out.contains("(dry run)"), "{out}");
    let (_, _, metrics) = get(&format!("{}/metrics", berth.url()), None);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("berth_gc_removed_total{job=\"untagged\",kind=\"manifests\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("berth_gc_last_run_success{job=\"untagged\"} 1"));
}

#[test]
fn untagged_gc_follows_indexes_referrers_and_pins_and_gives_quota_back() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(&dir.path().join("data"), free_port(), FAST_GC);
    let ctx = Ctx::new(admin_client(&berth), "tool-g");
    let repo = "tool-g/app";
    let shared = Blob::new(b"shared layer of tool-g".repeat(100));
    ctx.push_blob(repo, &shared).unwrap();
    let image = |name: &str, tag: Option<&str>| -> (Vec<u8>, String) {
        let config = Blob::new(format!("{{\"name\":\"{name}\"}}").into_bytes());
        let own = Blob::new(format!("own layer {name}").repeat(50).into_bytes());
        ctx.push_blob(repo, &config).unwrap();
        ctx.push_blob(repo, &own).unwrap();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, &config),
            "layers": [descriptor(OCI_LAYER, &shared), descriptor(OCI_LAYER, &own)]
        }))
        .unwrap();
        let d = digest_of(&m);
        assert_eq!(
            ctx.put_manifest(repo, tag.unwrap_or(&d), OCI_MANIFEST, &m)
                .unwrap()
                .status,
            201
        );
        (m, d)
    };
    let referrer = |subject: &(Vec<u8>, String), kind: &str| -> String {
        let empty = Blob::new(b"{}".to_vec());
        ctx.push_blob(repo, &empty).unwrap();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": kind,
            "config": descriptor(OCI_EMPTY, &empty), "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.1, "size": subject.0.len()}
        }))
        .unwrap();
        let d = digest_of(&m);
        assert_eq!(
            ctx.put_manifest(repo, &d, OCI_MANIFEST, &m).unwrap().status,
            201
        );
        d
    };
    let tagged = image("tagged", Some("v1"));
    let loose = image("loose", None);
    let pinned = image("pinned", None);
    let child_a = image("child-a", None);
    let child_b = image("child-b", None);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child_a.1, "size": child_a.0.len()},
            {"mediaType": OCI_MANIFEST, "digest": child_b.1, "size": child_b.0.len()}
        ]
    }))
    .unwrap();
    assert_eq!(
        ctx.put_manifest(repo, "multi", OCI_INDEX, &index)
            .unwrap()
            .status,
        201
    );
    let sig_of_tagged = referrer(&tagged, "application/vnd.example.sig");
    let sig_of_loose = referrer(&loose, "application/vnd.example.sig");
    let r = ctx
        .client
        .send(
            "POST",
            "/admin/v1/pins",
            &[],
            serde_json::to_vec(&serde_json::json!({"repository": repo, "digest": pinned.1}))
                .unwrap(),
        )
        .unwrap();
    assert_eq!(r.status, 201);

    let exists = |d: &str| {
        ctx.client
            .head(&format!("/v2/{repo}/manifests/{d}"))
            .unwrap()
            .status
            == 200
    };
    let quota_used = || {
        admin_client(&berth)
            .get("/admin/v1/quotas/tool-g")
            .unwrap()
            .json()
            .unwrap()["used_bytes"]
            .as_u64()
            .unwrap()
    };
    let before = quota_used();

    std::thread::sleep(Duration::from_millis(1300));
    let report = gc_run(&berth, "untagged", false);
    assert!(!exists(&loose.1), "untagged and old: collected");
    assert!(!exists(&sig_of_loose), "a referrer goes with its subject");
    assert!(
        exists(&tagged.1) && exists(&sig_of_tagged),
        "tagged subject and its referrer stay"
    );
    assert!(
        exists(&child_a.1) && exists(&child_b.1),
        "children live as long as their index"
    );
    assert!(exists(&pinned.1), "pinned stays");
    assert_eq!(report["manifests_removed"], 2, "{report}");
    // The shared layer stays (others need it); the loose image's own layer goes.
    assert_eq!(
        ctx.client
            .head(&format!("/v2/{repo}/blobs/{}", shared.digest))
            .unwrap()
            .status,
        200
    );
    let after = quota_used();
    assert!(after < before, "GC gives quota back ({before} -> {after})");
    let freed: u64 = report["freed_per_namespace"]["tool-g"].as_u64().unwrap();
    assert_eq!(
        before - after,
        freed,
        "the report's figure is what the ledger got back"
    );

    // Untag the index: it and its children go after the grace period.
    assert_eq!(
        ctx.client
            .delete(&format!("/v2/{repo}/manifests/multi"))
            .unwrap()
            .status,
        202
    );
    gc_run(&berth, "untagged", false);
    assert!(
        exists(&digest_of(&index)),
        "just untagged: still within grace"
    );
    std::thread::sleep(Duration::from_millis(1300));
    let report = gc_run(&berth, "untagged", false);
    assert!(
        !exists(&digest_of(&index)) && !exists(&child_a.1) && !exists(&child_b.1),
        "{report}"
    );
    // Unpinning starts the pinned image's grace period.
    let pins = admin_client(&berth)
        .get("/admin/v1/pins")
        .unwrap()
        .json()
        .unwrap();
    let id = pins["pins"][0]["id"].as_i64().unwrap();
    assert_eq!(
        admin_client(&berth)
            .delete(&format!("/admin/v1/pins/{id}"))
            .unwrap()
            .status,
        204
    );
    gc_run(&berth, "untagged", false);
    assert!(exists(&pinned.1));
    std::thread::sleep(Duration::from_millis(1300));
    gc_run(&berth, "untagged", false);
    assert!(!exists(&pinned.1));
    assert!(exists(&tagged.1) && exists(&sig_of_tagged));
    let drift = admin_client(&berth)
        .send("POST", "/admin/v1/quotas/_reconcile", &[], Vec::new())
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(drift["drift"], serde_json::json!([]));
    check_storage(&dir.path().join("data"), true);
}

/// Counters of what the storm's clients saw.
#[derive(Default)]
struct Storm {
    pushes: AtomicU64,
    pulls: AtomicU64,
    blobs_verified: AtomicU64,
    pulls_gone: AtomicU64,
    gc_runs: AtomicU64,
    bytes_freed: AtomicU64,
    manifests_removed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Storm {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 50 {
            f.push(what);
        }
    }
}

/// Pushes one image (config + unique layer + mounted base layers); some
/// as an index of two, some with a referrer. Returns (repo, tag).
fn storm_push(
    client: &Client,
    storm: &Storm,
    worker: usize,
    n: u64,
    bases: &[Blob],
) -> Option<(String, String)> {
    let repo = format!("tool-storm/app{}", (worker + n as usize) % 4);
    let check = |r: berth_conformance::client::Resp,
                 what: &str|
     -> Option<berth_conformance::client::Resp> {
        if r.status >= 500
            || matches!(
                r.error_code().as_deref(),
                Some("BLOB_UNKNOWN" | "MANIFEST_BLOB_UNKNOWN")
            )
        {
            storm.fail(format!("{what} in {repo}: {}", r.describe()));
            return None;
        }
        Some(r)
    };
    let upload = |blob: &Blob| -> Option<()> {
        let put = match client.push_blob(&repo, &blob.digest, blob.bytes.clone()) {
            Ok(r) => check(r, "PUT blob")?,
            Err(e) => {
                storm.fail(format!("blob push in {repo}: {e}"));
                return None;
            }
        };
        (put.status == 201).then_some(())
    };
    let image = |k: u64| -> Option<Vec<u8>> {
        let config = Blob::new(format!("{{\"worker\":{worker},\"n\":{n},\"k\":{k}}}").into_bytes());
        let layer = Blob::new(
            format!("layer {worker} {n} {k} ")
                .repeat(200 + (n as usize * 37) % 2000)
                .into_bytes(),
        );
        upload(&config)?;
        upload(&layer)?;
        let mut layers = vec![descriptor(OCI_LAYER, &layer)];
        for base in bases.iter().take(1 + (n as usize % bases.len())) {
            let r = check(
                client
                    .send(
                        "POST",
                        &format!(
                            "/v2/{repo}/blobs/uploads/?mount={}&from=tool-base/base",
                            base.digest
                        ),
                        &[],
                        Vec::new(),
                    )
                    .ok()?,
                "mount",
            )?;
            if r.status != 201 {
                storm.fail(format!("mount of a live base layer answered {}", r.status));
                return None;
            }
            layers.push(descriptor(OCI_LAYER, base));
        }
        Some(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, &config), "layers": layers
            }))
            .unwrap(),
        )
    };
    let put_manifest = |reference: &str, media_type: &str, body: &[u8]| -> Option<()> {
        let r = check(
            client
                .send(
                    "PUT",
                    &format!("/v2/{repo}/manifests/{reference}"),
                    &[("content-type", media_type)],
                    body.to_vec(),
                )
                .ok()?,
            "PUT manifest",
        )?;
        if r.status != 201 {
            storm.fail(format!("manifest PUT answered {}", r.describe()));
            return None;
        }
        Some(())
    };
    let tag = format!("w{worker}-{n}");
    let top = if n.is_multiple_of(3) {
        let (a, b) = (image(1)?, image(2)?);
        put_manifest(&digest_of(&a), OCI_MANIFEST, &a)?;
        put_manifest(&digest_of(&b), OCI_MANIFEST, &b)?;
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest_of(&a), "size": a.len()},
                          {"mediaType": OCI_MANIFEST, "digest": digest_of(&b), "size": b.len()}]
        }))
        .unwrap();
        put_manifest(&tag, OCI_INDEX, &index)?;
        index
    } else {
        let m = image(0)?;
        put_manifest(&tag, OCI_MANIFEST, &m)?;
        m
    };
    if n % 4 == 1 {
        let empty = Blob::new(b"{}".to_vec());
        upload(&empty)?;
        let sig = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
            "config": descriptor(OCI_EMPTY, &empty), "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": digest_of(&top), "size": top.len()}
        }))
        .unwrap();
        put_manifest(&digest_of(&sig), OCI_MANIFEST, &sig)?;
    }
    storm.pushes.fetch_add(1, Ordering::Relaxed);
    Some((repo, tag))
}

/// Pulls `repo:tag` completely, verifying every digest. A manifest that is
/// gone (cleanup removed the tag) is fine; a blob missing while the
/// manifest naming it still exists is a loss.
fn storm_pull(client: &Client, storm: &Storm, repo: &str, tag: &str) {
    let r = match client.get(&format!("/v2/{repo}/manifests/{tag}")) {
        Ok(r) => r,
        Err(e) => return storm.fail(format!("GET manifest: {e}")),
    };
    if r.status == 404 {
        storm.pulls_gone.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if r.status != 200 {
        return storm.fail(format!("GET {repo}:{tag}: {}", r.describe()));
    }
    let top_digest = digest_of(&r.body);
    if r.header("docker-content-digest") != Some(top_digest.as_str()) {
        return storm.fail(format!(
            "{repo}:{tag}: body does not match Docker-Content-Digest"
        ));
    }
    let mut todo = vec![(top_digest, r.json().unwrap())];
    while let Some((manifest_digest, m)) = todo.pop() {
        let mut blobs = Vec::new();
        if let Some(children) = m["manifests"].as_array() {
            for c in children {
                let d = c["digest"].as_str().unwrap();
                let r = client.get(&format!("/v2/{repo}/manifests/{d}")).unwrap();
                if r.status != 200 || digest_of(&r.body) != d {
                    if still_exists(client, repo, &manifest_digest) {
                        storm.fail(format!(
                            "child {d} of live index {manifest_digest}: {}",
                            r.describe()
                        ));
                    }
                    return;
                }
                todo.push((d.to_owned(), r.json().unwrap()));
            }
        } else {
            blobs.push(m["config"]["digest"].as_str().unwrap().to_owned());
            blobs.extend(
                m["layers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l["digest"].as_str().unwrap().to_owned()),
            );
        }
        for d in blobs {
            let r = client.get(&format!("/v2/{repo}/blobs/{d}")).unwrap();
            if r.status == 200 && digest_of(&r.body) == d {
                storm.blobs_verified.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if r.status >= 500 || still_exists(client, repo, &manifest_digest) {
                storm.fail(format!(
                    "blob {d} of {repo}@{manifest_digest}: {}",
                    r.describe()
                ));
            }
            return;
        }
    }
    storm.pulls.fetch_add(1, Ordering::Relaxed);
}

fn still_exists(client: &Client, repo: &str, digest: &str) -> bool {
    client
        .head(&format!("/v2/{repo}/manifests/{digest}"))
        .map(|r| r.status == 200)
        .unwrap_or(true)
}

#[test]
fn gc_storm_loses_nothing_while_pushes_and_pulls_go_on() {
    let seconds: u64 = std::env::var("BERTH_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let berth = Berth::start_with(
        &data,
        free_port(),
        "[auth]\nenabled = false\n[gc]\nenabled = false\nuntagged_grace = \"2s\"\nblob_grace = \"2s\"\n[gc.retention]\nkeep_last = 3\n",
    );
    let url = berth.url();
    // Shared base layers in a namespace of their own, tagged so they live.
    let base_ctx = Ctx::new(Client::new(&url, None), "tool-base");
    let bases: Vec<Blob> = (0..3)
        .map(|i| Blob::new(format!("base layer {i} ").repeat(3000).into_bytes()))
        .collect();
    let config = Blob::new(br#"{"base":true}"#.to_vec());
    base_ctx.push_blob("tool-base/base", &config).unwrap();
    for b in &bases {
        base_ctx.push_blob("tool-base/base", b).unwrap();
    }
    let base_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, &config),
        "layers": bases.iter().map(|b| descriptor(OCI_LAYER, b)).collect::<Vec<_>>()
    }))
    .unwrap();
    assert_eq!(
        base_ctx
            .put_manifest("tool-base/base", "latest", OCI_MANIFEST, &base_manifest)
            .unwrap()
            .status,
        201
    );

    let storm = Arc::new(Storm::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pushed: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for worker in 0..8 {
        let (storm, stop, pushed, url, bases) = (
            storm.clone(),
            stop.clone(),
            pushed.clone(),
            url.clone(),
            bases.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let client = Client::new(&url, None);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(image) = storm_push(&client, &storm, worker, n, &bases) {
                    pushed.lock().unwrap().push(image);
                }
                n += 1;
            }
        }));
    }
    for puller in 0..8 {
        let (storm, stop, pushed, url) = (storm.clone(), stop.clone(), pushed.clone(), url.clone());
        threads.push(std::thread::spawn(move || {
            let client = Client::new(&url, None);
            let mut i = puller;
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let p = pushed.lock().unwrap();
                    (!p.is_empty()).then(|| p[p.len() - 1 - (i * 7919) % p.len().min(64)].clone())
                };
                match pick {
                    Some((repo, tag)) => storm_pull(&client, &storm, &repo, &tag),
                    None => std::thread::sleep(Duration::from_millis(10)),
                }
                i += 1;
            }
        }));
    }
    {
        let (storm, stop, url) = (storm.clone(), stop.clone(), url.clone());
        threads.push(std::thread::spawn(move || {
            let client = Client::new(&url, None);
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let job = if k.is_multiple_of(2) {
                    "tag-cleanup"
                } else {
                    "untagged"
                };
                match client.send(
                    "POST",
                    &format!("/admin/v1/gc/{job}?dry_run=false"),
                    &[],
                    Vec::new(),
                ) {
                    Ok(r) if r.status == 200 => {
                        let v = r.json().unwrap();
                        if v["status"] != "ok" {
                            storm.fail(format!("gc run failed: {}", v["errors"]));
                        }
                        storm.gc_runs.fetch_add(1, Ordering::Relaxed);
                        storm
                            .bytes_freed
                            .fetch_add(v["bytes_freed"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        storm.manifests_removed.fetch_add(
                            v["manifests_removed"].as_u64().unwrap_or(0),
                            Ordering::Relaxed,
                        );
                    }
                    Ok(r) => storm.fail(format!("gc trigger: {}", r.describe())),
                    Err(e) => storm.fail(format!("gc trigger: {e}")),
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();

    // Every tagged image is completely pullable with verified digests.
    let client = Client::new(&url, None);
    let catalog = client.get("/v2/_catalog").unwrap().json().unwrap();
    let mut tagged_images = 0;
    let final_check = Storm::default();
    for repo in catalog["repositories"].as_array().unwrap() {
        let repo = repo.as_str().unwrap();
        for tag in tags_of(&client, repo) {
            storm_pull(&client, &final_check, repo, &tag);
            tagged_images += 1;
        }
    }
    let final_failures = final_check.failures.lock().unwrap().clone();
    assert!(
        final_failures.is_empty(),
        "tagged images not pullable after the storm: {final_failures:#?}"
    );
    assert_eq!(
        final_check.pulls.load(Ordering::Relaxed),
        tagged_images,
        "every tagged image pulled completely"
    );

    // A final GC past the grace period leaves nothing unreferenced.
    std::thread::sleep(Duration::from_millis(2200));
    let last = gc_run(&berth, "untagged", false);
    let (rows, objects) = check_storage(&data, true);
    let failures = storm.failures.lock().unwrap().clone();
    println!(
        "gc storm: {:?}; {} pushes, {} complete pulls ({} blobs verified, {} tags gone before their pull), \
         {} GC runs removed {} manifests and freed {} bytes (final run {} more); {} tagged images intact; \
         {} blob rows = {} objects; {} failures",
        elapsed,
        storm.pushes.load(Ordering::Relaxed),
        storm.pulls.load(Ordering::Relaxed),
        storm.blobs_verified.load(Ordering::Relaxed),
        storm.pulls_gone.load(Ordering::Relaxed),
        storm.gc_runs.load(Ordering::Relaxed),
        storm.manifests_removed.load(Ordering::Relaxed),
        storm.bytes_freed.load(Ordering::Relaxed),
        last["bytes_freed"],
        tagged_images,
        rows,
        objects,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "no 5xx, no lost blob, no failed GC run: {failures:#?}"
    );
    assert_eq!(rows, objects);
    assert!(
        storm.pushes.load(Ordering::Relaxed) > 50 && storm.gc_runs.load(Ordering::Relaxed) > 10,
        "the storm must actually storm"
    );
    assert!(
        storm.manifests_removed.load(Ordering::Relaxed) > 0,
        "GC must actually collect during the storm"
    );
}

#[test]
fn kill_9_in_the_middle_of_a_gc_run_loses_nothing_and_the_next_run_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut berth = Berth::start_with(&data, port, FAST_GC);
    let ctx = Ctx::new(admin_client(&berth), "tool-k");
    let mut keep = Vec::new();
    for i in 0..5 {
        keep.push(ctx.push_image(&format!("tool-k/keep{i}"), "v1").unwrap());
    }
    // Plenty of garbage: untagged manifests, each with a blob of its own.
    let config = Blob::new(br#"{"garbage":true}"#.to_vec());
    ctx.push_blob("tool-k/junk", &config).unwrap();
    for i in 0..1500 {
        let layer = Blob::new(format!("junk {i}").into_bytes());
        ctx.push_blob("tool-k/junk", &layer).unwrap();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor(OCI_CONFIG, &config), "layers": [descriptor(OCI_LAYER, &layer)]
        }))
        .unwrap();
        assert_eq!(
            ctx.put_manifest("tool-k/junk", &digest_of(&m), OCI_MANIFEST, &m)
                .unwrap()
                .status,
            201
        );
    }
    std::thread::sleep(Duration::from_millis(1200));
    let trigger = {
        let url = berth.url();
        std::thread::spawn(move || {
            Client::new(&url, admin()).send("POST", "/admin/v1/gc/untagged", &[], Vec::new())
        })
    };
    std::thread::sleep(Duration::from_millis(60));
    berth.kill9();
    let _ = trigger.join();

    let berth = Berth::start_with(&data, port, FAST_GC);
    check_storage(&data, false);
    let runs = admin_client(&berth)
        .get("/admin/v1/gc/runs")
        .unwrap()
        .json()
        .unwrap();
    let killed = &runs["runs"][0]["report"]["status"];
    println!("the killed run is recorded as {killed}");
    assert!(killed == "interrupted" || killed == "ok", "{runs}");
    let report = gc_run(&berth, "untagged", false);
    assert_eq!(report["status"], "ok");
    std::thread::sleep(Duration::from_millis(1200));
    gc_run(&berth, "untagged", false);
    let ctx = Ctx::new(admin_client(&berth), "tool-k");
    for (i, (manifest, digest)) in keep.iter().enumerate() {
        let r = ctx
            .client
            .get(&format!("/v2/tool-k/keep{i}/manifests/v1"))
            .unwrap();
        assert_eq!(
            (r.status, &r.body),
            (200, manifest),
            "tagged image {i} survives"
        );
        let m = r.json().unwrap();
        for d in std::iter::once(&m["config"])
            .chain(m["layers"].as_array().unwrap())
            .map(|x| x["digest"].as_str().unwrap())
        {
            let b = ctx
                .client
                .get(&format!("/v2/tool-k/keep{i}/blobs/{d}"))
                .unwrap();
            assert_eq!((b.status, digest_of(&b.body).as_str()), (200, d));
        }
        assert_eq!(digest_of(manifest), *digest);
    }
    assert!(ctx
        .client
        .get("/v2/tool-k/junk/tags/list")
        .unwrap()
        .json()
        .unwrap()["tags"]
        .as_array()
        .unwrap()
        .is_empty());
    check_storage(&data, true);
}

#[test]
fn docker_pulls_a_pinned_image_after_cleanup_would_have_removed_it() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        &format!("{FAST_GC}[gc.retention]\nkeep_last = 1\n"),
    );
    let dockerd = Dockerd::start(&dir.path().join("dockerd"));
    let host = berth.host();
    let mut digests = Vec::new();
    for tag in ["v1", "v2", "v3"] {
        let layout = dir.path().join(format!("layout-{tag}"));
        write_oci_layout(&layout, tag, &format!("pinned-{tag}"), 1);
        skopeo_push_layout(
            &layout,
            tag,
            &format!("{host}/tool-pin/app:{tag}"),
            &format!("admin:{ADMIN_PASSWORD}"),
        );
        let r = admin_client(&berth)
            .head(&format!("/v2/tool-pin/app/manifests/{tag}"))
            .unwrap();
        digests.push(r.header("docker-content-digest").unwrap().to_owned());
        std::thread::sleep(Duration::from_millis(5));
    }
    // The platform runs v1.
    let r = admin_client(&berth)
        .send("POST", "/admin/v1/pins", &[], serde_json::to_vec(&serde_json::json!({"repository": "tool-pin/app", "digest": digests[0], "reason": "webservice"})).unwrap())
        .unwrap();
    assert_eq!(r.status, 201);
    gc_run(&berth, "tag-cleanup", false);
    std::thread::sleep(Duration::from_millis(1300));
    gc_run(&berth, "untagged", false);
    let client = Client::new(&berth.url(), None);
    let mut tags = tags_of(&client, "tool-pin/app");
    tags.sort();
    assert_eq!(
        tags,
        ["v1", "v3"],
        "keep_last = 1 keeps v3; the pin keeps v1"
    );
    run(dockerd
        .cmd()
        .args(["pull", &format!("{host}/tool-pin/app:v1")]));
    run(dockerd
        .cmd()
        .args(["pull", &format!("{host}/tool-pin/app@{}", digests[0])]));
    let err = run_failing(
        dockerd
            .cmd()
            .args(["pull", &format!("{host}/tool-pin/app:v2")]),
    );
    assert!(
        err.contains("not found") || err.contains("manifest unknown"),
        "{err}"
    );
    let r = client
        .head(&format!("/v2/tool-pin/app/manifests/{}", digests[1]))
        .unwrap();
    assert_eq!(r.status, 404, "v2 was collected");
}

#[test]
fn fsck_reports_soundness_and_finds_a_missing_object_while_berth_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fsck = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("fsck").arg("--data-dir").arg(&data);
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    // A small image's blobs are kept in the database (the default).
    let berth = Berth::start(&data);
    Ctx::new(admin_client(&berth), "tool-fsck")
        .push_image("tool-fsck/app", "v1")
        .unwrap();
    drop(berth);
    // Then berth keeps every blob in a file.
    let berth = Berth::start_with(&data, free_port(), "[storage]\ninline_blob_max = \"0\"\n");
    let ctx = Ctx::new(admin_client(&berth), "tool-fsck");
    ctx.push_image("tool-fsck/app", "v2").unwrap();
    let ok = fsck(false);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(text.contains("no data is missing"), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&fsck(true).stdout).unwrap();
    assert_eq!(
        (
            &report["blob_rows"],
            &report["objects"],
            &report["inline_blobs"]
        ),
        (&2.into(), &2.into(), &2.into()),
        "{report}"
    );
    // Lose one object behind berth's back: fsck says so and fails.
    let objects = data.join("blobs").join("sha256");
    let shard = std::fs::read_dir(&objects)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let object = std::fs::read_dir(&shard)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&object).unwrap();
    let lost = fsck(false);
    let text = String::from_utf8_lossy(&lost.stdout);
    assert!(!lost.status.success(), "{text}");
    assert!(
        text.contains("MISSING") && text.contains("DATA IS MISSING"),
        "{text}"
    );
}
