//! The checks, grouped by the spec's workflow categories. Each returns
//! `Err(reason)` naming what the registry did instead of what the spec asks.

use crate::client::Resp;
use crate::fixtures::*;

pub type CheckResult = Result<(), String>;

fn status(resp: &Resp, want: &[u16], what: &str) -> CheckResult {
    if want.contains(&resp.status) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected HTTP {want:?}, got {}",
            resp.describe()
        ))
    }
}

/// The status must match and the body must be the OCI error shape with `code`.
fn error(resp: &Resp, want_status: &[u16], code: &str, what: &str) -> CheckResult {
    status(resp, want_status, what)?;
    match resp.error_code() {
        Some(c) if c == code => Ok(()),
        Some(c) => Err(format!("{what}: expected error code {code}, got {c}")),
        None => Err(format!(
            "{what}: body is not the OCI error shape: {:?}",
            resp.text()
        )),
    }
}

/// The body must be the OCI error shape, with any code.
fn error_shape(resp: &Resp, want_status: &[u16], what: &str) -> CheckResult {
    status(resp, want_status, what)?;
    resp.error_code()
        .map(|_| ())
        .ok_or_else(|| format!("{what}: body is not the OCI error shape: {:?}", resp.text()))
}

fn header_eq(resp: &Resp, name: &str, want: &str, what: &str) -> CheckResult {
    match resp.header(name) {
        Some(v) if v == want => Ok(()),
        other => Err(format!(
            "{what}: header {name} should be {want:?}, is {other:?}"
        )),
    }
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> CheckResult {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn post_upload(ctx: &Ctx, repo: &str) -> Result<String, String> {
    let r = ctx.client.send(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Vec::new(),
    )?;
    status(&r, &[202], "POST upload")?;
    r.header("location")
        .map(str::to_owned)
        .ok_or_else(|| "POST upload: no Location".into())
}

fn get_blob_matches(ctx: &Ctx, repo: &str, blob: &Blob) -> CheckResult {
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/blobs/{}", blob.digest))?;
    status(&r, &[200], "GET blob")?;
    ensure(r.body == blob.bytes, || {
        format!(
            "GET blob returned {} bytes that differ from the {} pushed",
            r.body.len(),
            blob.bytes.len()
        )
    })
}

// ---------------------------------------------------------------- pull ----

pub fn base_endpoint(ctx: &Ctx) -> CheckResult {
    let r = ctx.client.get("/v2/")?;
    status(&r, &[200], "GET /v2/")
}

pub fn manifest_get_by_tag_and_digest(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("pull");
    let (manifest, digest) = ctx.push_image(&repo, "v1")?;
    for reference in ["v1", digest.as_str()] {
        let r = ctx.client.send(
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[(
                "accept",
                &format!("{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}"),
            )],
            Vec::new(),
        )?;
        status(&r, &[200], "GET manifest")?;
        ensure(r.body == manifest, || {
            "GET manifest: bytes differ from what was pushed".into()
        })?;
        header_eq(&r, "content-type", OCI_MANIFEST, "GET manifest")?;
        header_eq(&r, "docker-content-digest", &digest, "GET manifest")?;
    }
    Ok(())
}

pub fn manifest_head(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("head");
    let (manifest, digest) = ctx.push_image(&repo, "v1")?;
    let r = ctx.client.head(&format!("/v2/{repo}/manifests/v1"))?;
    status(&r, &[200], "HEAD manifest")?;
    header_eq(
        &r,
        "content-length",
        &manifest.len().to_string(),
        "HEAD manifest",
    )?;
    header_eq(&r, "docker-content-digest", &digest, "HEAD manifest")?;
    header_eq(&r, "content-type", OCI_MANIFEST, "HEAD manifest")
}

pub fn manifest_unknown(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("unknown");
    ctx.push_image(&repo, "v1")?;
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/manifests/does-not-exist"))?;
    error(&r, &[404], "MANIFEST_UNKNOWN", "GET unknown tag")?;
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/manifests/{}", sha256(b"nothing")))?;
    error(&r, &[404], "MANIFEST_UNKNOWN", "GET unknown digest")?;
    let r = ctx
        .client
        .head(&format!("/v2/{repo}/manifests/does-not-exist"))?;
    status(&r, &[404], "HEAD unknown tag")?;
    // The released v1.1 conformance suite asks for a reference that is
    // neither a tag nor a digest: no such manifest, so 404 (not 400).
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/manifests/.INVALID_MANIFEST_NAME"))?;
    error(
        &r,
        &[404],
        "MANIFEST_UNKNOWN",
        "GET an impossible reference",
    )?;
    let r = ctx
        .client
        .head(&format!("/v2/{repo}/manifests/.INVALID_MANIFEST_NAME"))?;
    status(&r, &[404], "HEAD an impossible reference")
}

pub fn manifest_unknown_repository(ctx: &Ctx) -> CheckResult {
    let r = ctx.client.get(&format!(
        "/v2/{}/manifests/latest",
        ctx.repo("never-pushed")
    ))?;
    status(&r, &[404], "GET manifest of unknown repository")?;
    match r.error_code().as_deref() {
        Some("MANIFEST_UNKNOWN") | Some("NAME_UNKNOWN") => Ok(()),
        other => Err(format!(
            "unknown repository: expected MANIFEST_UNKNOWN or NAME_UNKNOWN, got {other:?}"
        )),
    }
}

pub fn blob_get_and_head(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("blob");
    let blob = ctx.blob(5000);
    ctx.push_blob(&repo, &blob)?;
    get_blob_matches(ctx, &repo, &blob)?;
    let r = ctx
        .client
        .head(&format!("/v2/{repo}/blobs/{}", blob.digest))?;
    status(&r, &[200], "HEAD blob")?;
    header_eq(&r, "content-length", "5000", "HEAD blob")?;
    header_eq(&r, "docker-content-digest", &blob.digest, "HEAD blob")
}

pub fn blob_unknown(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("blob-unknown");
    ctx.push_blob(&repo, &ctx.blob(10))?;
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/blobs/{}", sha256(b"never pushed")))?;
    error(&r, &[404], "BLOB_UNKNOWN", "GET unknown blob")?;
    let r = ctx
        .client
        .head(&format!("/v2/{repo}/blobs/{}", sha256(b"never pushed")))?;
    status(&r, &[404], "HEAD unknown blob")
}

pub fn blob_range(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("range");
    let blob = ctx.blob(1000);
    ctx.push_blob(&repo, &blob)?;
    let path = format!("/v2/{repo}/blobs/{}", blob.digest);
    let r = ctx
        .client
        .send("GET", &path, &[("range", "bytes=10-19")], Vec::new())?;
    status(&r, &[206], "GET blob bytes=10-19")?;
    ensure(r.body == blob.bytes[10..20], || {
        "range 10-19 returned the wrong bytes".into()
    })?;
    header_eq(
        &r,
        "content-range",
        "bytes 10-19/1000",
        "GET blob bytes=10-19",
    )?;
    let r = ctx
        .client
        .send("GET", &path, &[("range", "bytes=990-")], Vec::new())?;
    status(&r, &[206], "GET blob bytes=990-")?;
    ensure(r.body == blob.bytes[990..], || {
        "open range returned the wrong bytes".into()
    })?;
    let r = ctx
        .client
        .send("GET", &path, &[("range", "bytes=-5")], Vec::new())?;
    status(&r, &[206], "GET blob bytes=-5")?;
    ensure(r.body == blob.bytes[995..], || {
        "suffix range returned the wrong bytes".into()
    })?;
    let r = ctx
        .client
        .send("GET", &path, &[("range", "bytes=5000-6000")], Vec::new())?;
    status(&r, &[416], "GET blob beyond its end")
}

// ---------------------------------------------------------------- push ----

pub fn push_monolithic_post_put(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("mono");
    let blob = ctx.blob(3000);
    let location = post_upload(ctx, &repo)?;
    let r = ctx.client.send(
        "PUT",
        &with_query(&location, &format!("digest={}", blob.digest)),
        &[("content-type", "application/octet-stream")],
        blob.bytes.clone(),
    )?;
    status(&r, &[201], "PUT with body")?;
    header_eq(&r, "docker-content-digest", &blob.digest, "PUT with body")?;
    ensure(
        r.header("location")
            .is_some_and(|l| l.ends_with(&format!("/v2/{repo}/blobs/{}", blob.digest))),
        || {
            format!(
                "PUT: Location should name the blob, is {:?}",
                r.header("location")
            )
        },
    )?;
    get_blob_matches(ctx, &repo, &blob)
}

pub fn push_post_with_digest(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("post-digest");
    let blob = ctx.blob(3000);
    let r = ctx.client.send(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={}", blob.digest),
        &[("content-type", "application/octet-stream")],
        blob.bytes.clone(),
    )?;
    status(&r, &[201], "POST ?digest= with body")?;
    get_blob_matches(ctx, &repo, &blob)
}

pub fn push_streamed_patch(ctx: &Ctx) -> CheckResult {
    // What go-containerregistry and the CNB lifecycle send: one PATCH with
    // the whole blob and no Content-Range, then an empty PUT.
    let repo = ctx.repo("stream");
    let blob = ctx.blob(300_000);
    let location = post_upload(ctx, &repo)?;
    let r = ctx.client.send(
        "PATCH",
        &location,
        &[("content-type", "application/octet-stream")],
        blob.bytes.clone(),
    )?;
    status(&r, &[202], "streamed PATCH")?;
    header_eq(&r, "range", "0-299999", "streamed PATCH")?;
    let next = r.header("location").ok_or("PATCH: no Location")?.to_owned();
    let r = ctx.client.send(
        "PUT",
        &with_query(&next, &format!("digest={}", blob.digest)),
        &[],
        Vec::new(),
    )?;
    status(&r, &[201], "empty PUT closing a streamed upload")?;
    get_blob_matches(ctx, &repo, &blob)
}

pub fn push_chunked(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("chunked");
    let blob = ctx.blob(30_000);
    let mut location = post_upload(ctx, &repo)?;
    let chunks = [(0usize, 10_000usize), (10_000, 20_000)];
    for (start, end) in chunks {
        let range = format!("{}-{}", start, end - 1);
        let len = (end - start).to_string();
        let r = ctx.client.send(
            "PATCH",
            &location,
            &[
                ("content-type", "application/octet-stream"),
                ("content-range", &range),
                ("content-length", &len),
            ],
            blob.bytes[start..end].to_vec(),
        )?;
        status(&r, &[202], "chunk PATCH")?;
        header_eq(
            &r,
            "range",
            &range.replace(&format!("{start}-"), "0-"),
            "chunk PATCH",
        )?;
        location = r
            .header("location")
            .ok_or("chunk PATCH: no Location")?
            .to_owned();
    }
    let r = ctx.client.get(&location)?;
    status(&r, &[204], "GET upload status")?;
    header_eq(&r, "range", "0-19999", "GET upload status")?;
    // The last chunk travels with the closing PUT.
    let r = ctx.client.send(
        "PUT",
        &with_query(&location, &format!("digest={}", blob.digest)),
        &[
            ("content-type", "application/octet-stream"),
            ("content-range", "20000-29999"),
            ("content-length", "10000"),
        ],
        blob.bytes[20_000..].to_vec(),
    )?;
    status(&r, &[201], "PUT with final chunk")?;
    get_blob_matches(ctx, &repo, &blob)
}

pub fn chunk_out_of_order(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("order");
    let blob = ctx.blob(200);
    let location = post_upload(ctx, &repo)?;
    let r = ctx.client.send(
        "PATCH",
        &location,
        &[("content-range", "100-199"), ("content-length", "100")],
        blob.bytes[100..].to_vec(),
    )?;
    status(&r, &[416], "PATCH starting past the upload's end")?;
    let r = ctx.client.send(
        "PATCH",
        &location,
        &[("content-range", "0-99"), ("content-length", "100")],
        blob.bytes[..100].to_vec(),
    )?;
    status(&r, &[202], "first chunk after a refused one")?;
    let location = r.header("location").ok_or("PATCH: no Location")?.to_owned();
    let r = ctx.client.send(
        "PATCH",
        &location,
        &[("content-range", "0-99"), ("content-length", "100")],
        blob.bytes[..100].to_vec(),
    )?;
    status(&r, &[416], "repeated chunk")?;
    // The upload must still be usable after the refusals.
    let r = ctx.client.send(
        "PATCH",
        &location,
        &[("content-range", "100-199"), ("content-length", "100")],
        blob.bytes[100..].to_vec(),
    )?;
    status(&r, &[202], "next chunk after a refused repeat")?;
    let location = r.header("location").ok_or("PATCH: no Location")?.to_owned();
    let r = ctx.client.send(
        "PUT",
        &with_query(&location, &format!("digest={}", blob.digest)),
        &[],
        Vec::new(),
    )?;
    status(&r, &[201], "closing PUT")?;
    get_blob_matches(ctx, &repo, &blob)
}

pub fn upload_wrong_digest(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("baddigest");
    let blob = ctx.blob(100);
    let wrong = sha256(b"something else");
    let location = post_upload(ctx, &repo)?;
    let r = ctx.client.send(
        "PUT",
        &with_query(&location, &format!("digest={wrong}")),
        &[],
        blob.bytes.clone(),
    )?;
    error(
        &r,
        &[400],
        "DIGEST_INVALID",
        "PUT with a digest that does not match",
    )?;
    let r = ctx.client.head(&format!("/v2/{repo}/blobs/{wrong}"))?;
    status(&r, &[404], "blob of a refused upload")?;
    let r = ctx
        .client
        .head(&format!("/v2/{repo}/blobs/{}", blob.digest))?;
    status(&r, &[404], "content of a refused upload")
}

pub fn upload_malformed_digest(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("malformed");
    let location = post_upload(ctx, &repo)?;
    let r = ctx.client.send(
        "PUT",
        &with_query(&location, "digest=sha256:nothex"),
        &[],
        b"x".to_vec(),
    )?;
    error(&r, &[400], "DIGEST_INVALID", "PUT with a malformed digest")
}

pub fn upload_cancel(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("cancel");
    let location = post_upload(ctx, &repo)?;
    let r = ctx
        .client
        .send("PATCH", &location, &[], b"partial".to_vec())?;
    status(&r, &[202], "PATCH")?;
    let location = r.header("location").ok_or("PATCH: no Location")?.to_owned();
    let r = ctx.client.delete(&location)?;
    status(&r, &[204], "DELETE upload")?;
    let r = ctx.client.get(&location)?;
    error(&r, &[404], "BLOB_UPLOAD_UNKNOWN", "GET a cancelled upload")
}

pub fn upload_unknown(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("noupload");
    ctx.push_blob(&repo, &ctx.blob(10))?;
    let r = ctx.client.send(
        "PATCH",
        &format!("/v2/{repo}/blobs/uploads/00000000-0000-0000-0000-000000000000"),
        &[],
        b"x".to_vec(),
    )?;
    error(&r, &[404], "BLOB_UPLOAD_UNKNOWN", "PATCH an unknown upload")
}

pub fn push_sha512_blob(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("sha512");
    let blob = ctx.blob(4000);
    let digest = sha512(&blob.bytes);
    let location = post_upload(ctx, &repo)?;
    let r = ctx.client.send(
        "PUT",
        &with_query(&location, &format!("digest={digest}")),
        &[],
        blob.bytes.clone(),
    )?;
    status(&r, &[201], "PUT with a sha512 digest")?;
    let r = ctx.client.get(&format!("/v2/{repo}/blobs/{digest}"))?;
    status(&r, &[200], "GET sha512 blob")?;
    ensure(r.body == blob.bytes, || "sha512 blob bytes differ".into())
}

pub fn mount_blob(ctx: &Ctx) -> CheckResult {
    let from = ctx.repo("mount-src");
    let to = ctx.repo("mount-dst");
    let blob = ctx.blob(1500);
    ctx.push_blob(&from, &blob)?;
    let r = ctx.client.send(
        "POST",
        &format!("/v2/{to}/blobs/uploads/?mount={}&from={from}", blob.digest),
        &[],
        Vec::new(),
    )?;
    status(&r, &[201], "cross-repository mount")?;
    ensure(
        r.header("location")
            .is_some_and(|l| l.ends_with(&format!("/v2/{to}/blobs/{}", blob.digest))),
        || {
            format!(
                "mount: Location should be the blob in the target, is {:?}",
                r.header("location")
            )
        },
    )?;
    get_blob_matches(ctx, &to, &blob)
}

pub fn mount_fallback(ctx: &Ctx) -> CheckResult {
    let from = ctx.repo("mount-empty");
    let to = ctx.repo("mount-fallback");
    ctx.push_blob(&from, &ctx.blob(10))?;
    let missing = ctx.blob(10);
    let r = ctx.client.send(
        "POST",
        &format!(
            "/v2/{to}/blobs/uploads/?mount={}&from={from}",
            missing.digest
        ),
        &[],
        Vec::new(),
    )?;
    status(&r, &[202], "mount of a blob the source lacks")?;
    let location = r
        .header("location")
        .ok_or("mount fallback: no Location")?
        .to_owned();
    let r = ctx.client.send(
        "PUT",
        &with_query(&location, &format!("digest={}", missing.digest)),
        &[],
        missing.bytes.clone(),
    )?;
    status(&r, &[201], "upload through the fallback session")
}

pub fn manifest_put_by_digest(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("bydigest");
    let config = ctx.config();
    let layer = ctx.blob(100);
    ctx.push_blob(&repo, &config)?;
    ctx.push_blob(&repo, &layer)?;
    let manifest = image_manifest(OCI_MANIFEST, &config, &[&layer], None);
    let digest = sha256(&manifest);
    let r = ctx.put_manifest(&repo, &digest, OCI_MANIFEST, &manifest)?;
    status(&r, &[201], "PUT manifest by digest")?;
    header_eq(
        &r,
        "docker-content-digest",
        &digest,
        "PUT manifest by digest",
    )?;
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/{digest}"))?;
    status(&r, &[200], "GET manifest pushed by digest")?;
    ensure(r.body == manifest, || "manifest bytes differ".into())
}

pub fn manifest_put_with_tag_query(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("tagquery");
    let config = ctx.config();
    ctx.push_blob(&repo, &config)?;
    let manifest = image_manifest(OCI_MANIFEST, &config, &[], None);
    let digest = sha256(&manifest);
    let r = ctx.put_manifest(
        &repo,
        &format!("{digest}?tag=one&tag=two"),
        OCI_MANIFEST,
        &manifest,
    )?;
    status(&r, &[201], "PUT manifest by digest with ?tag=")?;
    let tags: Vec<_> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    ensure(tags.contains(&"one") && tags.contains(&"two"), || {
        format!("OCI-Tag headers should list one and two, are {tags:?}")
    })?;
    for t in ["one", "two"] {
        let r = ctx.client.head(&format!("/v2/{repo}/manifests/{t}"))?;
        status(&r, &[200], "HEAD a tag set by ?tag=")?;
    }
    Ok(())
}

pub fn manifest_docker_schema2(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("docker");
    let config = ctx.config();
    let layer = ctx.blob(100);
    ctx.push_blob(&repo, &config)?;
    ctx.push_blob(&repo, &layer)?;
    let manifest = image_manifest(DOCKER_MANIFEST, &config, &[&layer], None);
    let r = ctx.put_manifest(&repo, "v2s2", DOCKER_MANIFEST, &manifest)?;
    status(&r, &[201], "PUT Docker schema2 manifest")?;
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/v2s2"))?;
    status(&r, &[200], "GET Docker schema2 manifest")?;
    header_eq(
        &r,
        "content-type",
        DOCKER_MANIFEST,
        "GET Docker schema2 manifest",
    )?;
    ensure(r.body == manifest, || "manifest bytes differ".into())
}

fn push_index(ctx: &Ctx, index_type: &str, child_type: &str) -> CheckResult {
    let repo = ctx.repo("index");
    let mut children = Vec::new();
    for _ in 0..2 {
        let config = ctx.config();
        let layer = ctx.blob(200);
        ctx.push_blob(&repo, &config)?;
        ctx.push_blob(&repo, &layer)?;
        let m = image_manifest(child_type, &config, &[&layer], None);
        let r = ctx.put_manifest(&repo, &sha256(&m), child_type, &m)?;
        status(&r, &[201], "PUT child manifest")?;
        children.push(m);
    }
    let refs: Vec<&[u8]> = children.iter().map(|c| c.as_slice()).collect();
    let index = index_manifest(index_type, child_type, &refs);
    let r = ctx.put_manifest(&repo, "multi", index_type, &index)?;
    status(&r, &[201], "PUT index")?;
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/multi"))?;
    status(&r, &[200], "GET index")?;
    header_eq(&r, "content-type", index_type, "GET index")?;
    ensure(r.body == index, || "index bytes differ".into())?;
    // An index naming a manifest the repository lacks is refused.
    let stranger = image_manifest(child_type, &ctx.config(), &[], None);
    let bad = index_manifest(index_type, child_type, &[&children[0], &stranger]);
    let r = ctx.put_manifest(&repo, "broken", index_type, &bad)?;
    error_shape(&r, &[400, 404], "PUT index with an unknown child")
}

pub fn manifest_oci_index(ctx: &Ctx) -> CheckResult {
    push_index(ctx, OCI_INDEX, OCI_MANIFEST)
}

pub fn manifest_docker_list(ctx: &Ctx) -> CheckResult {
    push_index(ctx, DOCKER_LIST, DOCKER_MANIFEST)
}

pub fn manifest_artifact_and_unknown_fields(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("artifact");
    let empty = Blob::new(b"{}".to_vec());
    let layer = ctx.blob(64);
    ctx.push_blob(&repo, &empty)?;
    ctx.push_blob(&repo, &layer)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.sbom.v1",
        "config": descriptor(OCI_EMPTY, &empty),
        "layers": [ { "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                      "digest": layer.digest, "size": 64,
                      "annotations": {"org.opencontainers.image.title": "sbom.json"} } ],
        "annotations": {"com.example.key": "value"},
        "x-unknown-field": {"kept": true}
    }))
    .expect("json");
    let r = ctx.put_manifest(&repo, "sbom", OCI_MANIFEST, &manifest)?;
    status(
        &r,
        &[201],
        "PUT artifact manifest with unknown fields and mixed media types",
    )?;
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/sbom"))?;
    status(&r, &[200], "GET artifact")?;
    ensure(r.body == manifest, || {
        "artifact bytes differ (unknown fields must be kept)".into()
    })
}

pub fn manifest_missing_blob(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("missing");
    let config = ctx.config();
    ctx.push_blob(&repo, &config)?;
    let absent = ctx.blob(100);
    let manifest = image_manifest(OCI_MANIFEST, &config, &[&absent], None);
    let r = ctx.put_manifest(&repo, "v1", OCI_MANIFEST, &manifest)?;
    error(
        &r,
        &[400, 404],
        "MANIFEST_BLOB_UNKNOWN",
        "PUT manifest naming a missing layer",
    )?;
    let r = ctx.client.head(&format!("/v2/{repo}/manifests/v1"))?;
    status(&r, &[404], "tag of a refused manifest")
}

pub fn manifest_invalid(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("invalid");
    ctx.push_blob(&repo, &ctx.blob(10))?;
    let r = ctx.put_manifest(&repo, "v1", OCI_MANIFEST, b"{ this is not json")?;
    error(&r, &[400], "MANIFEST_INVALID", "PUT malformed JSON")?;
    let r = ctx.put_manifest(&repo, "v1", OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:zz","size":1},"layers":[]}"#)?;
    error_shape(&r, &[400], "PUT manifest with a malformed digest")
}

pub fn manifest_digest_mismatch(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("mismatch");
    let config = ctx.config();
    ctx.push_blob(&repo, &config)?;
    let manifest = image_manifest(OCI_MANIFEST, &config, &[], None);
    let r = ctx.put_manifest(&repo, &sha256(b"other"), OCI_MANIFEST, &manifest)?;
    error(
        &r,
        &[400],
        "DIGEST_INVALID",
        "PUT manifest under the wrong digest",
    )
}

pub fn manifest_too_large(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("large");
    let config = ctx.config();
    ctx.push_blob(&repo, &config)?;
    let padding = "x".repeat(4 * 1024 * 1024);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &config), "layers": [],
        "annotations": {"padding": padding}
    }))
    .expect("json");
    let r = ctx.put_manifest(&repo, "big", OCI_MANIFEST, &manifest)?;
    error_shape(&r, &[400, 413], "PUT manifest over 4 MiB")
}

pub fn manifest_subject_header(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("subject");
    let (subject, subject_digest) = ctx.push_image(&repo, "v1")?;
    let empty = Blob::new(b"{}".to_vec());
    ctx.push_blob(&repo, &empty)?;
    let referrer = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
        "config": descriptor(OCI_EMPTY, &empty), "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()}
    }))
    .expect("json");
    let r = ctx.put_manifest(&repo, &sha256(&referrer), OCI_MANIFEST, &referrer)?;
    status(&r, &[201], "PUT manifest with subject")?;
    header_eq(
        &r,
        "oci-subject",
        &subject_digest,
        "PUT manifest with subject",
    )
}

// ----------------------------------------------------------- discovery ----

fn push_tags(ctx: &Ctx, repo: &str, tags: &[&str]) -> CheckResult {
    let config = ctx.config();
    ctx.push_blob(repo, &config)?;
    let manifest = image_manifest(OCI_MANIFEST, &config, &[], None);
    for t in tags {
        let r = ctx.put_manifest(repo, t, OCI_MANIFEST, &manifest)?;
        status(&r, &[201], "PUT tag")?;
    }
    Ok(())
}

fn tag_list(r: &Resp) -> Result<Vec<String>, String> {
    let v = r.json()?;
    Ok(v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

pub fn tags_list(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("tags");
    push_tags(ctx, &repo, &["beta", "alpha", "v1.0", "Zeta"])?;
    let r = ctx.client.get(&format!("/v2/{repo}/tags/list"))?;
    status(&r, &[200], "GET tags")?;
    let v = r.json()?;
    ensure(v["name"] == repo.as_str(), || {
        format!("tags list name should be {repo}, is {}", v["name"])
    })?;
    let tags = tag_list(&r)?;
    ensure(tags == ["Zeta", "alpha", "beta", "v1.0"], || {
        format!("tags should be lexically sorted, are {tags:?}")
    })
}

pub fn tags_pagination(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("page");
    push_tags(ctx, &repo, &["a", "b", "c", "d", "e"])?;
    let r = ctx.client.get(&format!("/v2/{repo}/tags/list?n=2"))?;
    status(&r, &[200], "GET tags n=2")?;
    ensure(tag_list(&r)? == ["a", "b"], || {
        format!("n=2 should give [a, b], gave {:?}", tag_list(&r))
    })?;
    let link = r
        .header("link")
        .ok_or("n=2 with more tags left: no Link header")?
        .to_owned();
    ensure(link.contains("rel=\"next\""), || {
        format!("Link should be rel=\"next\": {link}")
    })?;
    let next = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_owned();
    let r = ctx.client.get(&next)?;
    status(&r, &[200], "GET the Link target")?;
    ensure(tag_list(&r)? == ["c", "d"], || {
        format!("second page should be [c, d], was {:?}", tag_list(&r))
    })?;
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/tags/list?n=10&last=d"))?;
    ensure(tag_list(&r)? == ["e"], || {
        format!("last=d should give [e], gave {:?}", tag_list(&r))
    })?;
    ensure(r.header("link").is_none(), || {
        "last page should have no Link".into()
    })?;
    let r = ctx.client.get(&format!("/v2/{repo}/tags/list?n=0"))?;
    status(&r, &[200], "GET tags n=0")?;
    ensure(tag_list(&r)?.is_empty(), || {
        format!("n=0 should give no tags, gave {:?}", tag_list(&r))
    })
}

pub fn tags_unknown_repository(ctx: &Ctx) -> CheckResult {
    let r = ctx
        .client
        .get(&format!("/v2/{}/tags/list", ctx.repo("nobody")))?;
    error(
        &r,
        &[404],
        "NAME_UNKNOWN",
        "GET tags of an unknown repository",
    )
}

pub fn catalog(ctx: &Ctx) -> CheckResult {
    let a = ctx.repo("cat-a");
    let b = ctx.repo("cat-b");
    ctx.push_image(&a, "v1")?;
    ctx.push_image(&b, "v1")?;
    // Walk the catalog by its Link headers (bounded), collecting every name.
    let mut repos: Vec<String> = Vec::new();
    let mut next = Some("/v2/_catalog?n=100".to_owned());
    for _ in 0..1000 {
        let Some(url) = next.take() else { break };
        let r = ctx.client.get(&url)?;
        status(&r, &[200], "GET catalog")?;
        let v = r.json()?;
        repos.extend(
            v["repositories"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_owned)),
        );
        next = r.header("link").map(|l| {
            l.trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_owned()
        });
    }
    ensure(repos.contains(&a) && repos.contains(&b), || {
        "catalog should list pushed repositories".into()
    })?;
    let mut sorted = repos.clone();
    sorted.sort();
    ensure(sorted == repos, || {
        "catalog should be sorted across pages".into()
    })?;
    let r = ctx.client.get(&format!("/v2/_catalog?n=1&last={a}"))?;
    status(&r, &[200], "GET catalog n=1&last=")?;
    let v = r.json()?;
    let page: Vec<&str> = v["repositories"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    ensure(page.len() == 1 && page[0] > a.as_str(), || {
        format!("page after {a} should hold one later name, holds {page:?}")
    })?;
    ensure(
        r.header("link").is_some_and(|l| l.contains("rel=\"next\"")),
        || "a partial catalog page needs a Link header".into(),
    )?;
    let r = ctx.client.get("/v2/_catalog?n=0")?;
    status(&r, &[200], "GET catalog n=0")?;
    let v = r.json()?;
    ensure(
        v["repositories"].as_array().is_some_and(|a| a.is_empty()),
        || "n=0 should give an empty list".into(),
    )
}

pub fn referrers(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("referrers");
    let (subject, subject_digest) = ctx.push_image(&repo, "v1")?;
    let empty = Blob::new(b"{}".to_vec());
    ctx.push_blob(&repo, &empty)?;
    let mut pushed = Vec::new();
    for (artifact_type, annotation) in [
        ("application/vnd.example.sig", "sig"),
        ("application/vnd.example.sbom", "sbom"),
    ] {
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": descriptor(OCI_EMPTY, &empty), "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()},
            "annotations": {"org.example.kind": annotation}
        }))
        .expect("json");
        let r = ctx.put_manifest(&repo, &sha256(&m), OCI_MANIFEST, &m)?;
        status(&r, &[201], "PUT referrer")?;
        pushed.push((sha256(&m), artifact_type, annotation));
    }
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/referrers/{subject_digest}"))?;
    status(&r, &[200], "GET referrers")?;
    header_eq(&r, "content-type", OCI_INDEX, "GET referrers")?;
    let v = r.json()?;
    let list = v["manifests"]
        .as_array()
        .ok_or("referrers: no manifests array")?;
    ensure(list.len() == 2, || {
        format!("referrers should list 2 manifests, lists {}", list.len())
    })?;
    for (digest, artifact_type, annotation) in &pushed {
        let entry = list
            .iter()
            .find(|e| e["digest"] == digest.as_str())
            .ok_or_else(|| format!("referrer {digest} missing"))?;
        ensure(entry["artifactType"] == *artifact_type, || {
            format!("artifactType of {digest} should be {artifact_type}: {entry}")
        })?;
        ensure(
            entry["annotations"]["org.example.kind"] == *annotation,
            || format!("annotations of {digest} not copied: {entry}"),
        )?;
    }
    let r = ctx.client.get(&format!(
        "/v2/{repo}/referrers/{subject_digest}?artifactType=application/vnd.example.sbom"
    ))?;
    status(&r, &[200], "GET referrers filtered")?;
    let v = r.json()?;
    let list = v["manifests"]
        .as_array()
        .ok_or("filtered referrers: no manifests array")?;
    ensure(
        list.len() == 1 && list[0]["artifactType"] == "application/vnd.example.sbom",
        || format!("filter should leave the sbom only: {v}"),
    )?;
    header_eq(
        &r,
        "oci-filters-applied",
        "artifactType",
        "GET referrers filtered",
    )
}

pub fn referrers_unknown_subject(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("noreferrers");
    ctx.push_image(&repo, "v1")?;
    let r = ctx.client.get(&format!(
        "/v2/{repo}/referrers/{}",
        sha256(b"no such subject")
    ))?;
    status(&r, &[200], "GET referrers of an unknown subject")?;
    let v = r.json()?;
    ensure(
        v["manifests"].as_array().is_some_and(|a| a.is_empty()),
        || format!("should be an empty index: {v}"),
    )?;
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/referrers/sha256:not-a-digest"))?;
    status(&r, &[400, 404], "GET referrers with a malformed digest")
}

// ---------------------------------------------------------- management ----

pub fn delete_tag(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("deltag");
    let (_, digest) = ctx.push_image(&repo, "gone")?;
    let r = ctx.client.delete(&format!("/v2/{repo}/manifests/gone"))?;
    status(&r, &[202], "DELETE tag")?;
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/gone"))?;
    error(&r, &[404], "MANIFEST_UNKNOWN", "GET a deleted tag")?;
    let r = ctx.client.head(&format!("/v2/{repo}/manifests/{digest}"))?;
    status(&r, &[200], "the manifest of a deleted tag stays")
}

pub fn delete_manifest(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("delman");
    let (_, digest) = ctx.push_image(&repo, "v1")?;
    let r = ctx
        .client
        .delete(&format!("/v2/{repo}/manifests/{digest}"))?;
    status(&r, &[202], "DELETE manifest")?;
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/{digest}"))?;
    error(&r, &[404], "MANIFEST_UNKNOWN", "GET a deleted manifest")?;
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/v1"))?;
    status(&r, &[404], "a tag of a deleted manifest")?;
    let r = ctx
        .client
        .delete(&format!("/v2/{repo}/manifests/{digest}"))?;
    status(&r, &[404], "DELETE it again")
}

pub fn delete_blob(ctx: &Ctx) -> CheckResult {
    let repo = ctx.repo("delblob");
    let blob = ctx.blob(500);
    ctx.push_blob(&repo, &blob)?;
    let r = ctx
        .client
        .delete(&format!("/v2/{repo}/blobs/{}", blob.digest))?;
    status(&r, &[202], "DELETE blob")?;
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/blobs/{}", blob.digest))?;
    error(&r, &[404], "BLOB_UNKNOWN", "GET a deleted blob")
}

pub fn delete_keeps_shared_blob(ctx: &Ctx) -> CheckResult {
    // The same layer in two repositories: deleting it from one must leave
    // the other's image whole.
    let a = ctx.repo("shared-a");
    let b = ctx.repo("shared-b");
    let layer = ctx.blob(4096);
    for repo in [&a, &b] {
        let config = ctx.config();
        ctx.push_blob(repo, &config)?;
        ctx.push_blob(repo, &layer)?;
        let m = image_manifest(OCI_MANIFEST, &config, &[&layer], None);
        status(
            &ctx.put_manifest(repo, "v1", OCI_MANIFEST, &m)?,
            &[201],
            "PUT manifest",
        )?;
    }
    let (_, digest_a) = {
        let r = ctx.client.get(&format!("/v2/{a}/manifests/v1"))?;
        (r.body.clone(), sha256(&r.body))
    };
    status(
        &ctx.client
            .delete(&format!("/v2/{a}/manifests/{digest_a}"))?,
        &[202],
        "DELETE manifest in a",
    )?;
    status(
        &ctx.client
            .delete(&format!("/v2/{a}/blobs/{}", layer.digest))?,
        &[202],
        "DELETE layer in a",
    )?;
    get_blob_matches(ctx, &b, &layer)
}

// ---------------------------------------------------------- bad input ----

pub fn invalid_names(ctx: &Ctx) -> CheckResult {
    let long = "a".repeat(300);
    for path in [
        "/v2/UPPER/tags/list".to_owned(),
        "/v2/a..b/tags/list".to_owned(),
        "/v2/a%2Fb/tags/list".to_owned(),
        format!("/v2/{}/{long}/tags/list", ctx.namespace),
        format!("/v2/{}/ok/manifests/bad%20tag", ctx.namespace),
    ] {
        let r = ctx.client.get(&path)?;
        error_shape(
            &r,
            &[400, 404],
            &format!("GET {}", &path[..path.len().min(60)]),
        )?;
    }
    Ok(())
}

pub fn path_tricks(ctx: &Ctx) -> CheckResult {
    for path in [
        format!(
            "/v2/{}/x/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd",
            ctx.namespace
        ),
        format!("/v2/{}/x/blobs/sha256:../../../etc/passwd", ctx.namespace),
        "/v2/%2e%2e/%2e%2e/manifests/latest".to_owned(),
        format!("/v2/{}/x/blobs/uploads/..%2F..%2Fberth.db", ctx.namespace),
    ] {
        let r = ctx.client.get(&path)?;
        ensure(r.status >= 400 && r.status < 500, || {
            format!("GET {path}: expected a 4xx, got {}", r.describe())
        })?;
    }
    Ok(())
}
