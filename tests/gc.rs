//! Garbage collection end to end: retention with dry-run equal to the real
//! run, the liveness rules (indexes, referrers, pins), a GC storm while
//! clients push and pull, kill -9 in the middle of a run, and docker pulling
//! a pinned image after cleanup.

mod common;
#[path = "common/storm.rs"]
mod storm;

use berth_conformance::client::Client;
use berth_conformance::fixtures::{
    descriptor, sha256 as digest_of, Blob, Ctx, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER,
    OCI_MANIFEST,
};
use common::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;
use storm::tags_of;

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

#[test]
fn gc_storm_loses_nothing_while_pushes_and_pulls_go_on() {
    let seconds: u64 = std::env::var("BERTH_STORM_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Both GC grace periods; the storm judges late pushes by it.
    let grace = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let berth = Berth::start_with(
        &data,
        free_port(),
        &format!(
            "[auth]\nenabled = false\n[gc]\nenabled = false\nuntagged_grace = \"{0}s\"\nblob_grace = \"{0}s\"\n[gc.retention]\nkeep_last = 3\n",
            grace.as_secs()
        ),
    );
    let report = storm::run(
        &berth.url(),
        storm::StormOptions {
            seconds,
            jobs: &["tag-cleanup", "untagged"],
            halfway: None,
            grace,
        },
    );
    assert!(
        report.final_failures.is_empty(),
        "tagged images not pullable after the storm: {:#?}",
        report.final_failures
    );
    // A final GC past the grace period leaves nothing unreferenced.
    std::thread::sleep(grace + Duration::from_millis(200));
    let last = gc_run(&berth, "untagged", false);
    let (rows, objects) = check_storage(&data, true);
    println!(
        "gc storm: {} (final run freed {} more); {rows} blob rows = {objects} objects",
        report.summary(),
        last["bytes_freed"]
    );
    let failures = report.storm.failures();
    assert!(
        failures.is_empty(),
        "no 5xx, no lost blob, no failed GC run: {failures:#?}"
    );
    assert_eq!(rows, objects);
    let storm = &report.storm;
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
