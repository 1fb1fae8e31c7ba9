//! The GC storm: clients pushing (images, indexes, referrers, mounts of
//! shared base layers) and pulling (every digest verified) while GC runs
//! back to back, against any registry URL (one berth, or replicas behind
//! a balancer). `run` returns what happened; callers check their storage.
#![allow(dead_code)]

use berth_conformance::client::Client;
use berth_conformance::fixtures::{
    descriptor, sha256 as digest_of, Blob, Ctx, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER,
    OCI_MANIFEST,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn tags_of(client: &Client, repo: &str) -> Vec<String> {
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

/// Counters of what the storm's clients saw.
#[derive(Default)]
pub struct Storm {
    pub pushes: AtomicU64,
    pub pulls: AtomicU64,
    pub blobs_verified: AtomicU64,
    pub pulls_gone: AtomicU64,
    pub gc_runs: AtomicU64,
    pub bytes_freed: AtomicU64,
    pub manifests_removed: AtomicU64,
    pub failures: Mutex<Vec<String>>,
    /// Set while a replica is being killed: what fails then is counted
    /// in `outage_failures`, not in `failures` (a request in flight to a
    /// killed process fails; the final check proves nothing acknowledged
    /// was lost).
    pub outage: AtomicBool,
    pub outage_failures: AtomicU64,
    /// The registry's `untagged_grace` and `blob_grace` (the storm's
    /// config sets both to this): how long a push's blobs and index
    /// children may wait for the manifest that names them.
    pub grace: Duration,
    /// Pushes whose blobs or children were collected after waiting longer
    /// than `grace` for their manifest (a slow push on a loaded machine):
    /// GC doing what the grace allows, so not a failure, but counted.
    pub outlived_grace: AtomicU64,
}

impl Storm {
    pub fn fail(&self, what: String) {
        if self.outage.load(Ordering::Relaxed) {
            self.outage_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut f = self.failures.lock().unwrap();
        if f.len() < 50 {
            f.push(what);
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

/// Pushes one image (config + unique layer + mounted base layers); some
/// as an index of two, some with a referrer. Returns (repo, tag).
pub fn storm_push(
    client: &Client,
    storm: &Storm,
    worker: usize,
    n: u64,
    bases: &[Blob],
) -> Option<(String, String)> {
    let repo = format!("tool-storm/app{}", (worker + n as usize) % 4);
    // Nothing this push uploads is older than this.
    let began = Instant::now();
    let check = |r: berth_conformance::client::Resp,
                 what: &str|
     -> Option<berth_conformance::client::Resp> {
        let unknown = matches!(
            r.error_code().as_deref(),
            Some("BLOB_UNKNOWN" | "MANIFEST_BLOB_UNKNOWN")
        );
        if unknown && began.elapsed() > storm.grace {
            // Unreferenced for longer than the grace: collectable.
            storm.outlived_grace.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if r.status >= 500 || unknown {
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
                .repeat(200 + (n as usize * 37) % 6000)
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
    if n % 5 == 2 {
        // Garbage for untagged GC whatever the job mix: an image pushed by
        // digest only.
        let m = image(3)?;
        put_manifest(&digest_of(&m), OCI_MANIFEST, &m)?;
    }
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
pub fn storm_pull(client: &Client, storm: &Storm, repo: &str, tag: &str) {
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
                // A transport failure (a replica killed mid-answer) is a
                // failure of this pull, counted like any other.
                let r = match client.get(&format!("/v2/{repo}/manifests/{d}")) {
                    Ok(r) => r,
                    Err(e) => return storm.fail(format!("GET child {d} of {repo}: {e}")),
                };
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
            let r = match client.get(&format!("/v2/{repo}/blobs/{d}")) {
                Ok(r) => r,
                Err(e) => return storm.fail(format!("GET blob {d} of {repo}: {e}")),
            };
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

pub fn still_exists(client: &Client, repo: &str, digest: &str) -> bool {
    client
        .head(&format!("/v2/{repo}/manifests/{digest}"))
        .map(|r| r.status == 200)
        .unwrap_or(true)
}

/// Something done to the registry halfway through a storm.
pub type Halfway = Box<dyn FnOnce(&Storm) + Send>;

/// How a storm runs.
pub struct StormOptions {
    pub seconds: u64,
    /// The GC jobs triggered in turn (`tag-cleanup`, `untagged`). Without
    /// `tag-cleanup` no tag is ever removed, so every acknowledged push
    /// must still pull at the end.
    pub jobs: &'static [&'static str],
    /// Called once, halfway through, while the clients go on (e.g. kill a
    /// replica); `Storm::outage` is set while it runs.
    pub halfway: Option<Halfway>,
    /// The grace periods the registry was configured with (`Storm::grace`).
    pub grace: Duration,
}

/// What a storm did, checked from the clients' side.
pub struct StormReport {
    pub storm: Arc<Storm>,
    pub elapsed: Duration,
    /// Every image a push acknowledged (manifest PUT 201), as (repo, tag).
    pub acknowledged: Vec<(String, String)>,
    /// Tagged images at the end, each pulled completely.
    pub tagged_images: u64,
    /// What the final pulls found wrong.
    pub final_failures: Vec<String>,
}

/// The storm, with the base layers pushed first (`tool-base/base:latest`).
pub fn run(url: &str, mut options: StormOptions) -> StormReport {
    // Shared base layers in a namespace of their own, tagged so they live.
    let base_ctx = Ctx::new(Client::new(url, None), "tool-base");
    let bases: Vec<Blob> = (0..3)
        // Past `inline_blob_max` (64 KiB) but the first: blobs are files
        // and database rows both.
        .map(|i| {
            Blob::new(
                format!("base layer {i} ")
                    .repeat(3000 * (i + 1))
                    .into_bytes(),
            )
        })
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

    let storm = Arc::new(Storm {
        grace: options.grace,
        ..Storm::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let pushed: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for worker in 0..8 {
        let (storm, stop, pushed, url, bases) = (
            storm.clone(),
            stop.clone(),
            pushed.clone(),
            url.to_owned(),
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
        let (storm, stop, pushed, url) =
            (storm.clone(), stop.clone(), pushed.clone(), url.to_owned());
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
        let (storm, stop, url, jobs) = (storm.clone(), stop.clone(), url.to_owned(), options.jobs);
        threads.push(std::thread::spawn(move || {
            let client = Client::new(&url, None);
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let job = jobs[k % jobs.len()];
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
                    // Another replica runs this job right now.
                    Ok(r) if r.status == 409 => {}
                    Ok(r) => storm.fail(format!("gc trigger: {}", r.describe())),
                    Err(e) => storm.fail(format!("gc trigger: {e}")),
                }
                k += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(options.seconds / 2));
    if let Some(halfway) = options.halfway.take() {
        storm.outage.store(true, Ordering::Relaxed);
        halfway(&storm);
        storm.outage.store(false, Ordering::Relaxed);
    }
    std::thread::sleep(Duration::from_secs(options.seconds).saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();

    // Every tagged image is completely pullable with verified digests.
    let client = Client::new(url, None);
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
    let mut final_failures = final_check.failures();
    if final_check.pulls.load(Ordering::Relaxed) != tagged_images {
        final_failures.push(format!(
            "{} of {tagged_images} tagged images pulled completely",
            final_check.pulls.load(Ordering::Relaxed)
        ));
    }
    let acknowledged = pushed.lock().unwrap().clone();
    StormReport {
        storm,
        elapsed,
        acknowledged,
        tagged_images,
        final_failures,
    }
}

impl StormReport {
    pub fn summary(&self) -> String {
        let s = &self.storm;
        format!(
            "{:?}; {} pushes, {} complete pulls ({} blobs verified, {} tags gone before their pull), \
             {} GC runs removed {} manifests and freed {} bytes; {} tagged images intact; \
             {} failures ({} more during the outage); {} pushes outlived the grace",
            self.elapsed,
            s.pushes.load(Ordering::Relaxed),
            s.pulls.load(Ordering::Relaxed),
            s.blobs_verified.load(Ordering::Relaxed),
            s.pulls_gone.load(Ordering::Relaxed),
            s.gc_runs.load(Ordering::Relaxed),
            s.manifests_removed.load(Ordering::Relaxed),
            s.bytes_freed.load(Ordering::Relaxed),
            self.tagged_images,
            s.failures.lock().unwrap().len(),
            s.outage_failures.load(Ordering::Relaxed),
            s.outlived_grace.load(Ordering::Relaxed),
        )
    }
}
