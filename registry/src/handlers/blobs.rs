//! GET/HEAD/DELETE `/v2/<name>/blobs/<digest>`, with byte ranges.

use super::{header_value, set, DIGEST_HEADER};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::ranges::parse_range;
use crate::State;
use berth_storage::meta::UnlinkBlobOutcome;
use berth_storage::{Digest, RepoName};
use http::{header, HeaderMap, Response, StatusCode};

fn unknown(repo: &RepoName, digest: &Digest) -> ApiError {
    ApiError::not_found(
        Code::BlobUnknown,
        format!("blob {digest} not found in repository {repo}"),
    )
}

pub async fn get(
    state: &State,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response<Body>> {
    let linked = state
        .storage
        .meta
        .linked_blob(repo, digest)
        .await?
        .ok_or_else(|| unknown(repo, digest))?;
    if head {
        // A HEAD is how clients ask "do you still have this?" before
        // skipping an upload: restart the blob's GC grace period before
        // answering yes, so the manifest that follows finds it linked.
        state
            .storage
            .meta
            .blob_used(digest, linked.touched_ms)
            .await?;
    }
    if !head && !linked.inline && linked.size > 0 {
        // `[storage.s3] redirect`: the bytes come from S3 itself, by a
        // presigned URL (registry:2's redirect middleware). The client
        // sends its Range there too. HEAD and inline blobs stay here.
        if let Some(url) = state.storage.blobs.presigned_get(digest).await? {
            let mut resp = body::status_only(StatusCode::TEMPORARY_REDIRECT);
            set(&mut resp, "location", header_value(url)?);
            set(&mut resp, DIGEST_HEADER, header_value(digest)?);
            return Ok(resp);
        }
    }
    let size = linked.size;
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => Some(parse_range(v.to_str().unwrap_or(""), size).ok_or_else(|| {
            ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::RangeInvalid,
                format!("range {v:?} is not satisfiable for a blob of {size} bytes"),
            )
            .with_header_text(header::CONTENT_RANGE, format!("bytes */{size}"))
        })?),
    };
    let (status, len) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, size),
    };
    let body = if head || len == 0 {
        body::empty()
    } else if linked.inline {
        // A small blob kept in the database. Gone meanwhile means
        // collected between the two reads.
        let data = state
            .storage
            .meta
            .inline_blob(digest)
            .await?
            .ok_or_else(|| unknown(repo, digest))?;
        let (start, end) = range
            .as_ref()
            .map_or((0, data.len()), |r| (r.start as usize, r.end as usize));
        if end > data.len() || start > end {
            tracing::error!(%digest, stored = data.len(), size, "inline blob's bytes do not match its size");
            return Err(ApiError::internal(format!(
                "blob {digest} is recorded with {size} bytes but {} are stored",
                data.len()
            )));
        }
        body::full(data.slice(start..end))
    } else {
        match state.storage.blobs.get(digest, range.clone()).await {
            Ok(s) => body::stream(s),
            Err(berth_storage::StorageError::ObjectStore(object_store_err)) => {
                // Garbage collected between the lookup and the read: the
                // blob is simply gone now.
                if state
                    .storage
                    .meta
                    .linked_blob(repo, digest)
                    .await?
                    .is_none()
                {
                    return Err(unknown(repo, digest));
                }
                tracing::error!(%digest, error = %object_store_err, "blob is recorded but its object is unreadable");
                return Err(ApiError::internal(format!(
                    "blob {digest} is recorded but its stored object could not be read"
                )));
            }

            Err(e) => return Err(e.into()),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    set(
        &mut resp,
        "content-type",
        header_value("application/octet-stream")?,
    );
    set(&mut resp, "content-length", header_value(len)?);
    set(&mut resp, DIGEST_HEADER, header_value(digest)?);
    set(&mut resp, "accept-ranges", header_value("bytes")?);
    set(&mut resp, "etag", header_value(format!("\"{digest}\""))?);
    set(
        &mut resp,
        "cache-control",
        header_value("max-age=31536000")?,
    );
    if let Some(r) = range {
        set(
            &mut resp,
            "content-range",
            header_value(format!(
                "bytes {}-{}/{size}",
                r.start,
                r.end.saturating_sub(1)
            ))?,
        );
    }
    Ok(resp)
}

pub async fn delete(state: &State, repo: &RepoName, digest: &Digest) -> ApiResult<Response<Body>> {
    match state.storage.meta.unlink_blob(repo, digest).await? {
        UnlinkBlobOutcome::Unlinked => Ok(body::status_only(StatusCode::ACCEPTED)),
        UnlinkBlobOutcome::NotFound => Err(unknown(repo, digest)),
        UnlinkBlobOutcome::ReferencedByManifest(m) => Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::Denied,
            format!("blob {digest} is used by manifest {m} in {repo}; delete that manifest first"),
        )),
    }
}
