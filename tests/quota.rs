//! Quota end to end: concurrent pushes never pass the limit (with SQLite
//! and with PostgreSQL metadata), dedup counts a blob once per namespace,
//! refused and cancelled pushes charge nothing, deletes give space back,
//! and the admin API, CLI, Toolforge shape, metrics and docker all show
//! the figures and the message.

mod common;
#[path = "../storage/tests/support/postgres.rs"]
mod pg;

use berth_conformance::client::{Client, Resp};
use berth_conformance::fixtures::{
    descriptor, sha256 as digest_of, Blob, Ctx, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST,
};
use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn admin_call(
    berth: &Berth,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = Client::new(&berth.url(), admin());
    let r = client
        .send(
            method,
            path,
            &[("content-type", "application/json")],
            body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        )
        .unwrap();
    let v = if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json().unwrap()
    };
    (r.status, v)
}

fn used(berth: &Berth, ns: &str) -> u64 {
    let (status, v) = admin_call(berth, "GET", &format!("/admin/v1/quotas/{ns}"), None);
    if status == 404 {
        return 0;
    }
    assert_eq!(status, 200, "{v}");
    v["used_bytes"].as_u64().unwrap()
}

fn set_limit(berth: &Berth, ns: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, v) = admin_call(berth, "PUT", &format!("/admin/v1/quotas/{ns}"), Some(body));
    assert_eq!(status, 200, "{v}");
    v
}

fn reconcile_drift(berth: &Berth) -> serde_json::Value {
    let (status, v) = admin_call(berth, "POST", "/admin/v1/quotas/_reconcile", None);
    assert_eq!(status, 200);
    v["drift"].clone()
}

/// Deterministic content of exactly `len` bytes.
fn content(seed: &str, len: usize) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = Vec::with_capacity(len + 32);
    let mut block = sha2::Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = sha2::Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

/// Image `i`: a 1 MiB layer, a config and a manifest whose sizes do not
/// depend on `i`, so every image costs exactly the same.
fn fixed_size_image(i: usize) -> (Blob, Blob, Vec<u8>) {
    let layer = Blob::new(content(&format!("quota layer {i}"), MIB));
    let config = Blob::new(
        format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{"Labels":{{"n":"{i:06}"}}}}}}"#)
            .into_bytes(),
    );
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config), "layers": [descriptor(OCI_LAYER, &layer)]
    }))
    .unwrap();
    (layer, config, manifest)
}

fn push_blob(client: &Client, repo: &str, blob: &Blob) -> Resp {
    client
        .push_blob(repo, &blob.digest, blob.bytes.clone())
        .unwrap()
}

/// Pushes layer, then config, then manifest; the first refusal ends it.
fn push_image(
    client: &Client,
    repo: &str,
    tag: &str,
    image: &(Blob, Blob, Vec<u8>),
) -> Result<(), Box<Resp>> {
    for blob in [&image.0, &image.1] {
        let r = push_blob(client, repo, blob);
        if r.status != 201 {
            return Err(Box::new(r));
        }
    }
    let r = client
        .send(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("content-type", OCI_MANIFEST)],
            image.2.clone(),
        )
        .unwrap();
    if r.status != 201 {
        return Err(Box::new(r));
    }
    Ok(())
}

#[test]
fn twenty_concurrent_pushes_into_room_for_ten_exactly_ten_succeed() {
    twenty_concurrent_pushes(false)
}

/// The same with the metadata in PostgreSQL, where concurrent writes are
/// serialised per namespace by its row lock instead of one writer thread.
#[test]
fn twenty_concurrent_pushes_into_room_for_ten_exactly_ten_succeed_on_postgres() {
    twenty_concurrent_pushes(true)
}

fn twenty_concurrent_pushes(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let config = if postgres {
        format!(
            "[storage]\ndatabase_url = \"{}\"\ndatabase_max_connections = 16\n",
            pg::fresh_database()
        )
    } else {
        String::new()
    };
    let berth = Berth::start_with(&dir.path().join("data"), free_port(), &config);
    let password = berth.namespace_credentials("tool-q");
    let images: Vec<_> = (0..20).map(fixed_size_image).collect();
    let image_size = (images[0].0.bytes.len() + images[0].1.bytes.len() + images[0].2.len()) as u64;
    assert!(images
        .iter()
        .all(|i| (i.0.bytes.len() + i.1.bytes.len() + i.2.len()) as u64 == image_size));
    let limit = 10 * image_size;
    set_limit(
        &berth,
        "tool-q",
        serde_json::json!({ "limit_bytes": limit }),
    );

    // Watch the ledger while the pushes run.
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, max_seen, samples, url) =
            (stop.clone(), max_seen.clone(), samples.clone(), berth.url());
        std::thread::spawn(move || {
            let client = Client::new(&url, admin());
            while !stop.load(Ordering::Relaxed) {
                let r = client.get("/admin/v1/quotas/tool-q").unwrap();
                if r.status == 200 {
                    max_seen.fetch_max(
                        r.json().unwrap()["used_bytes"].as_u64().unwrap(),
                        Ordering::Relaxed,
                    );
                    samples.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let started = Instant::now();
    let barrier = Arc::new(std::sync::Barrier::new(images.len()));
    let handles: Vec<_> = images
        .into_iter()
        .enumerate()
        .map(|(i, image)| {
            let (url, password, barrier) = (berth.url(), password.clone(), barrier.clone());
            std::thread::spawn(move || {
                let client = Client::new(&url, Some(("tool-q".into(), password)));
                client.get("/v2/").unwrap(); // log in before the race starts
                barrier.wait();
                push_image(&client, &format!("tool-q/app{i}"), "v1", &image)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();

    let succeeded = results.iter().filter(|r| r.is_ok()).count();
    let refusals: Vec<&Resp> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|b| &**b))
        .collect();
    for r in &refusals {
        assert_eq!(r.status, 403, "{}", r.describe());
        assert_eq!(r.error_code().as_deref(), Some("DENIED"));
        assert!(
            r.text().contains("quota exceeded for tool-q: "),
            "{}",
            r.text()
        );
        assert!(r.text().contains("this push needs"), "{}", r.text());
    }
    for r in &refusals {
        println!("refused: {}", r.text());
    }
    let final_used = used(&berth, "tool-q");
    println!(
        "quota concurrency: image {image_size} B, limit {limit} B; {succeeded} of 20 pushes succeeded, {} refused, \
         in {elapsed:?}; peak usage seen {} B over {} samples; final usage {final_used} B",
        refusals.len(),
        max_seen.load(Ordering::Relaxed),
        samples.load(Ordering::Relaxed)
    );
    assert_eq!(succeeded, 10, "exactly ten images fit");
    assert!(
        max_seen.load(Ordering::Relaxed) <= limit,
        "usage never passes the limit"
    );
    assert_eq!(
        final_used, limit,
        "the ten images use the quota exactly; refused pushes hold nothing"
    );
    assert_eq!(
        reconcile_drift(&berth),
        serde_json::json!([]),
        "the ledger agrees with the tables"
    );
}

#[test]
fn a_shared_layer_counts_once_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let admin_ctx = Ctx::new(Client::new(&berth.url(), admin()), "x");
    let layer = Blob::new(content("shared layer", 300_000));
    let push_with = |repo: &str, i: usize| {
        let config = Blob::new(format!("{{\"n\":{i}}}").into_bytes());
        admin_ctx.push_blob(repo, &config).unwrap();
        admin_ctx.push_blob(repo, &layer).unwrap();
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config), "layers": [descriptor(OCI_LAYER, &layer)]
        }))
        .unwrap();
        assert_eq!(
            admin_ctx
                .put_manifest(repo, "v1", OCI_MANIFEST, &m)
                .unwrap()
                .status,
            201
        );
        (config.bytes.len() + m.len()) as u64
    };
    let own_a = push_with("tool-d/a", 1);
    let own_b = push_with("tool-d/b", 2);
    let own_c = push_with("tool-e/c", 3);
    let layer_size = layer.bytes.len() as u64;
    assert_eq!(
        used(&berth, "tool-d"),
        layer_size + own_a + own_b,
        "two repositories of one tool: the layer once"
    );
    assert_eq!(
        used(&berth, "tool-e"),
        layer_size + own_c,
        "another tool pays for its own copy"
    );

    // A mount from a shared base counts in the namespace that mounted it.
    let r = admin_ctx
        .client
        .send(
            "POST",
            &format!(
                "/v2/tool-f/app/blobs/uploads/?mount={}&from=tool-d/a",
                layer.digest
            ),
            &[],
            Vec::new(),
        )
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(used(&berth, "tool-f"), layer_size);

    // The breakdown shows the layer as shared between tool-d's repositories.
    let (_, detail) = admin_call(&berth, "GET", "/admin/v1/quotas/tool-d", None);
    let repos = detail["repositories_usage"].as_array().unwrap();
    assert_eq!(repos.len(), 2);
    for r in repos {
        assert_eq!(r["shared_bytes"], layer_size, "{r}");
    }
    assert_eq!(detail["largest_images"].as_array().unwrap().len(), 2);
    assert_eq!(
        detail["largest_images"][0]["tags"],
        serde_json::json!(["v1"])
    );
    assert_eq!(reconcile_drift(&berth), serde_json::json!([]));
}

#[test]
fn refused_and_cancelled_pushes_charge_nothing_and_deletes_give_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start(&dir.path().join("data"));
    let ctx = Ctx::new(Client::new(&berth.url(), admin()), "tool-r");
    set_limit(
        &berth,
        "tool-r",
        serde_json::json!({ "limit_bytes": 100_000 }),
    );

    // Too big, declared up front: refused, nothing charged, nothing stored.
    let big = Blob::new(content("too big", 200_000));
    let r = push_blob(&ctx.client, "tool-r/app", &big);
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(
        r.text().contains(
            "quota exceeded for tool-r: 0 B used of 97.7 KiB, this push needs 195.3 KiB more"
        ),
        "{}",
        r.text()
    );
    assert_eq!(used(&berth, "tool-r"), 0);
    assert_eq!(
        ctx.client
            .head(&format!("/v2/tool-r/app/blobs/{}", big.digest))
            .unwrap()
            .status,
        404
    );
    // Also when streamed without a declared total.
    let post = ctx
        .client
        .send("POST", "/v2/tool-r/app/blobs/uploads/", &[], Vec::new())
        .unwrap();
    let loc = post.header("location").unwrap().to_owned();
    let r = ctx
        .client
        .send("PATCH", &loc, &[], content("stream", 60_000))
        .unwrap();
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_owned();
    let r = ctx
        .client
        .send("PATCH", &loc, &[], content("stream more", 60_000))
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.describe());
    assert_eq!(used(&berth, "tool-r"), 0);
    // The unfinished upload still holds its 60,000 staged bytes, which
    // count against the quota: another 50,000 do not fit beside them.
    let other = ctx
        .client
        .send("POST", "/v2/tool-r/app/blobs/uploads/", &[], Vec::new())
        .unwrap();
    let other_loc = other.header("location").unwrap().to_owned();
    let r = ctx
        .client
        .send("PATCH", &other_loc, &[], content("beside", 50_000))
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.describe());
    assert!(
        r.text().contains("58.6 KiB in unfinished uploads"),
        "{}",
        r.text()
    );
    assert_eq!(ctx.client.delete(&other_loc).unwrap().status, 204);
    // Cancelling the stalled upload gives its staged bytes back.
    assert_eq!(ctx.client.delete(&loc).unwrap().status, 204);

    // A cancelled upload charges nothing.
    let post = ctx
        .client
        .send("POST", "/v2/tool-r/app/blobs/uploads/", &[], Vec::new())
        .unwrap();
    let loc = post.header("location").unwrap().to_owned();
    let r = ctx
        .client
        .send("PATCH", &loc, &[], content("partial", 50_000))
        .unwrap();
    let loc = r.header("location").unwrap().to_owned();
    assert_eq!(ctx.client.delete(&loc).unwrap().status, 204);
    assert_eq!(used(&berth, "tool-r"), 0);

    // A manifest that does not fit is refused; its blobs stay charged
    // (they are linked) until deleted.
    let config = Blob::new(br#"{"architecture":"amd64"}"#.to_vec());
    let layer = Blob::new(content("fits", 99_000));
    ctx.push_blob("tool-r/app", &config).unwrap();
    ctx.push_blob("tool-r/app", &layer).unwrap();
    let blobs_used = (config.bytes.len() + layer.bytes.len()) as u64;
    assert_eq!(used(&berth, "tool-r"), blobs_used);
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config), "layers": [descriptor(OCI_LAYER, &layer)],
        "annotations": {"padding": "x".repeat(2000)}
    }))
    .unwrap();
    let r = ctx
        .put_manifest("tool-r/app", "v1", OCI_MANIFEST, &manifest)
        .unwrap();
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some("DENIED")),
        "{}",
        r.describe()
    );
    assert_eq!(used(&berth, "tool-r"), blobs_used);

    // Raising the limit takes effect at once; deleting gives space back.
    set_limit(&berth, "tool-r", serde_json::json!({ "limit_bytes": null }));
    let r = ctx
        .put_manifest("tool-r/app", "v1", OCI_MANIFEST, &manifest)
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(used(&berth, "tool-r"), blobs_used + manifest.len() as u64);
    let digest = digest_of(&manifest);
    assert_eq!(
        ctx.client
            .delete(&format!("/v2/tool-r/app/manifests/{digest}"))
            .unwrap()
            .status,
        202
    );
    assert_eq!(used(&berth, "tool-r"), blobs_used);
    assert_eq!(
        ctx.client
            .delete(&format!("/v2/tool-r/app/blobs/{}", layer.digest))
            .unwrap()
            .status,
        202
    );
    assert_eq!(used(&berth, "tool-r"), config.bytes.len() as u64);
    assert_eq!(reconcile_drift(&berth), serde_json::json!([]));
}

#[test]
fn admin_api_cli_toolforge_shape_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[quota]\ndefault_limit = \"1GiB\"\nunlimited = [\"toolforge\"]\n",
    );
    let ctx = Ctx::new(Client::new(&berth.url(), admin()), "tool-x");
    ctx.push_image("tool-x/web", "v1").unwrap();
    ctx.push_image("toolforge/run", "v1").unwrap();
    ctx.push_image("tool-y/web", "v1").unwrap();

    let cli = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("quota")
            .args(args)
            .args(["--url", &berth.url()])
            .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD))
    };
    let out = cli(&["set", "tool-x", "2GiB"]);
    assert!(out.contains("tool-x: limit 2.0 GiB (override)"), "{out}");
    let list: serde_json::Value = serde_json::from_str(&cli(&["list", "--json"])).unwrap();
    let entries = list["namespaces"].as_array().unwrap();
    let find = |ns: &str| {
        entries
            .iter()
            .find(|e| e["namespace"] == ns)
            .unwrap()
            .clone()
    };
    assert_eq!(find("tool-x")["limit_bytes"], 2u64 << 30);
    assert_eq!(find("tool-y")["limit_bytes"], 1u64 << 30);
    assert_eq!(
        find("toolforge")["limit_bytes"],
        serde_json::Value::Null,
        "unlimited by config"
    );
    assert_eq!(find("tool-x")["repositories"], 1);
    let sizes: Vec<u64> = entries
        .iter()
        .map(|e| e["used_bytes"].as_u64().unwrap())
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[0] >= w[1]),
        "sorted by usage: {sizes:?}"
    );
    let human = cli(&["list"]);
    assert!(
        human.contains("NAMESPACE") && human.contains("tool-x") && human.contains("2.0 GiB"),
        "{human}"
    );
    let show = cli(&["show", "tool-x"]);
    assert!(
        show.contains("tool-x/web") && show.contains("LARGEST IMAGES") && show.contains("[v1]"),
        "{show}"
    );
    assert!(cli(&["set", "tool-y", "unlimited"]).contains("unlimited"));
    assert!(cli(&["set", "tool-y", "default"]).contains("1.0 GiB (default)"));
    assert!(cli(&["reconcile"]).contains("no drift"));
    let err = run_failing(Command::new(env!("CARGO_BIN_EXE_berth")).args([
        "quota",
        "set",
        "tool-y",
        "lots",
        "--url",
        &berth.url(),
    ]));
    assert!(err.contains("not a size"), "{err}");

    // over_percent filters.
    set_limit(
        &berth,
        "tool-y",
        serde_json::json!({ "limit_bytes": used(&berth, "tool-y") + 10 }),
    );
    let (_, v) = admin_call(&berth, "GET", "/admin/v1/quotas?over_percent=90", None);
    let names: Vec<&str> = v["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tool-y"]);

    // The Toolforge shape, for the tool itself only.
    let password = berth.namespace_credentials("tool-x");
    let (status, _, body) = request(
        "GET",
        &format!("{}/v1/tool/x/quotas", berth.url()),
        &[("authorization", &basic("tool-x", &password))],
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let item = &v["quota"]["categories"][0]["items"][0];
    assert_eq!(v["quota"]["categories"][0]["name"], "Registry");
    assert_eq!(item["name"], "Storage");
    // People read the figures (Toolforge's CLI prints them as they are);
    // programs read the exact bytes beside them.
    assert_eq!(item["limit"], "2.0 GiB");
    assert_eq!(item["limit_bytes"], 2u64 << 30);
    assert_eq!(item["used_bytes"], used(&berth, "tool-x"));
    assert!(item["capacity"].as_str().unwrap().ends_with('%'), "{item}");
    assert!(v["messages"]["error"].as_array().unwrap().is_empty());
    let (status, _, _) = request(
        "GET",
        &format!("{}/v1/tool/y/quotas", berth.url()),
        &[("authorization", &basic("tool-x", &password))],
    );
    assert_eq!(status, 403, "a tool sees only its own quota");
    assert_eq!(
        request("GET", &format!("{}/admin/v1/quotas", berth.url()), &[]).0,
        401
    );

    // Prometheus gauges per namespace.
    let (status, _, metrics) = get(&format!("{}/metrics", berth.url()), None);
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains(&format!(
            "berth_namespace_used_bytes{{namespace=\"tool-x\"}} {}",
            used(&berth, "tool-x")
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "berth_namespace_limit_bytes{{namespace=\"tool-x\"}} {}",
        2u64 << 30
    )));
    assert!(!metrics.contains("berth_namespace_limit_bytes{namespace=\"toolforge\"}"));
    assert!(metrics.contains("berth_http_requests_total"));
}

#[test]
fn docker_push_over_quota_shows_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        "[quota]\nunlimited = [\"toolforge\"]\n",
    );
    let dockerd = Dockerd::start(&dir.path().join("dockerd"));
    let host = berth.host();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, "v1", "quota-docker", 2);
    skopeo_push_layout(
        &layout,
        "v1",
        &format!("{host}/toolforge/base:v1"),
        &format!("admin:{ADMIN_PASSWORD}"),
    );
    let password = berth.namespace_credentials("tool-small");
    set_limit(
        &berth,
        "tool-small",
        serde_json::json!({ "limit_bytes": 500 }),
    );

    dockerd
        .login(&host, "tool-small", &password)
        .expect("docker login");
    run(dockerd
        .cmd()
        .args(["pull", &format!("{host}/toolforge/base:v1")]));
    run(dockerd.cmd().args([
        "tag",
        &format!("{host}/toolforge/base:v1"),
        &format!("{host}/tool-small/app:v1"),
    ]));
    let err = run_failing(
        dockerd
            .cmd()
            .args(["push", &format!("{host}/tool-small/app:v1")]),
    );
    println!("docker push over quota printed:\n{err}");
    assert!(
        err.contains("quota exceeded for tool-small"),
        "docker must show the quota message: {err}"
    );
    assert!(used(&berth, "tool-small") <= 500);
}
