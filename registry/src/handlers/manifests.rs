//! GET/HEAD/PUT/DELETE `/v2/<name>/manifests/<reference>`.

use super::{header_value, location, set, DIGEST_HEADER};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_pairs, Reference};
use crate::State;
use berth_storage::manifest::{self, MAX_MANIFEST_BYTES};
use berth_storage::meta::{DeleteManifestOutcome, PutManifestOutcome};
use berth_storage::{Algorithm, Digest, RepoName};
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;

fn unknown(repo: &RepoName, reference: &Reference) -> ApiError {
    ApiError::not_found(
        Code::ManifestUnknown,
        format!(
            "manifest {} not found in repository {repo}",
            reference.as_string()
        ),
    )
}

/// GET and HEAD. The stored bytes are returned exactly as pushed, with the
/// media type they were pushed as, whatever the Accept header lists: the
/// digest must match, so there is nothing to convert to.
pub async fn get(
    state: &State,
    repo: &RepoName,
    reference: &Reference,
    head: bool,
) -> ApiResult<Response<Body>> {
    let (key, by_digest) = match reference {
        Reference::Tag(t) => (t.clone(), false),
        Reference::Digest(d) => (d.to_string(), true),
    };
    let found = state
        .storage
        .meta
        .get_manifest(repo, &key, by_digest, !head)
        .await?
        .ok_or_else(|| unknown(repo, reference))?;
    let size = found.size;
    let mut resp = Response::new(if head {
        body::empty()
    } else {
        body::full(found.bytes)
    });
    set(&mut resp, "content-type", header_value(&found.media_type)?);
    set(&mut resp, "content-length", header_value(size)?);
    set(&mut resp, DIGEST_HEADER, header_value(&found.digest)?);
    set(
        &mut resp,
        "etag",
        header_value(format!("\"{}\"", found.digest))?,
    );
    Ok(resp)
}

/// PUT; `actor` (who pushes) goes into the change feed.
pub async fn put(
    state: &State,
    repo: &RepoName,
    reference: &Reference,
    req: Request<RequestBody>,
    actor: &str,
) -> ApiResult<Response<Body>> {
    let too_big = |n: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::SizeInvalid,
            format!("manifest is {n} bytes; the limit is {MAX_MANIFEST_BYTES} bytes (4 MiB)"),
        )
    };
    if let Some(len) = super::content_length(req.headers())? {
        if len > MAX_MANIFEST_BYTES as u64 {
            super::drain(req.into_body()).await;
            return Err(too_big(len.to_string()));
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = query_pairs(req.uri().query());
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                Code::ManifestInvalid,
                format!("could not read manifest body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > MAX_MANIFEST_BYTES {
                super::drain(body).await;
                return Err(too_big(format!("more than {MAX_MANIFEST_BYTES}")));
            }
            buf.extend_from_slice(data);
        }
    }
    let bytes = buf.freeze();

    let digest = match reference {
        Reference::Digest(expected) => {
            let computed = Digest::compute(expected.algorithm(), &bytes);
            if &computed != expected {
                return Err(ApiError::bad_request(
                    Code::DigestInvalid,
                    format!("manifest body has digest {computed}, not {expected} as the URL says"),
                ));
            }
            computed
        }
        Reference::Tag(_) => Digest::compute(Algorithm::Sha256, &bytes),
    };
    let parsed = manifest::parse(&bytes, content_type.as_deref())
        .map_err(|e| ApiError::bad_request(Code::ManifestInvalid, e.to_string()))?;

    let mut tags = Vec::new();
    if let Reference::Tag(t) = reference {
        tags.push(t.clone());
    }
    for (k, v) in &query {
        if k == "tag" {
            berth_storage::names::validate_tag(v)
                .map_err(|e| ApiError::bad_request(Code::ManifestInvalid, e.to_string()))?;
            if !tags.contains(v) {
                tags.push(v.clone());
            }
        }
    }
    let subject = parsed.subject.clone();
    let outcome = state
        .storage
        .meta
        .put_manifest(repo, &digest, parsed, bytes.to_vec(), tags.clone(), actor)
        .await?;
    match outcome {
        PutManifestOutcome::Stored => {}
        PutManifestOutcome::QuotaExceeded(refused) => return Err(refused.into()),
        PutManifestOutcome::MissingBlob(d) => {
            return Err(ApiError::bad_request(
                Code::ManifestBlobUnknown,
                format!("manifest references blob {d}, which is not in repository {repo}; push the blob first"),
            )
            .with_detail(serde_json::json!({ "digest": d.to_string() })))
        }
        PutManifestOutcome::MissingManifest(d) => {
            return Err(ApiError::bad_request(
                Code::ManifestBlobUnknown,
                format!("index references manifest {d}, which is not in repository {repo}; push it first"),
            )
            .with_detail(serde_json::json!({ "digest": d.to_string() })))
        }
    }
    tracing::debug!(%repo, %digest, ?tags, "manifest stored");
    let mut resp = body::status_only(StatusCode::CREATED);
    set(
        &mut resp,
        "location",
        location(&format!("/v2/{repo}/manifests/{digest}"))?,
    );
    set(&mut resp, DIGEST_HEADER, header_value(&digest)?);
    if let Some(s) = subject {
        set(&mut resp, "oci-subject", header_value(s)?);
    }
    if matches!(reference, Reference::Digest(_)) {
        for t in &tags {
            resp.headers_mut().append("oci-tag", header_value(t)?);
        }
    }
    Ok(resp)
}

/// DELETE by digest removes the manifest and its tags; DELETE by tag
/// removes only that tag.
pub async fn delete(
    state: &State,
    repo: &RepoName,
    reference: &Reference,
    actor: &str,
) -> ApiResult<Response<Body>> {
    match reference {
        Reference::Tag(t) => {
            if !state.storage.meta.delete_tag(repo, t, actor).await? {
                return Err(unknown(repo, reference));
            }
        }
        Reference::Digest(d) => match state.storage.meta.delete_manifest(repo, d, actor).await? {
            DeleteManifestOutcome::Deleted => {}
            DeleteManifestOutcome::NotFound => return Err(unknown(repo, reference)),
            DeleteManifestOutcome::ReferencedByIndex(index) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    Code::Denied,
                    format!(
                        "manifest {d} is part of index {index} in {repo}; delete the index first"
                    ),
                ))
            }
        },
    }
    Ok(body::status_only(StatusCode::ACCEPTED))
}
