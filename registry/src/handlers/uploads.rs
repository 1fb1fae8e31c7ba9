//! The blob upload protocol: POST (start, monolithic with `?digest=`, or
//! cross-repository mount), PATCH (streamed or chunked with Content-Range),
//! PUT (close, optionally with a final chunk), GET (status), DELETE (cancel).

use super::{content_length, header_value, location, set, DIGEST_HEADER};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_storage::uploads::{AppendError, FinishError, Session, Staged};
use berth_storage::{Digest, RepoName};
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyDataStream;

fn upload_url(repo: &RepoName, session: &Session) -> String {
    format!("/v2/{repo}/blobs/uploads/{}", session.id())
}

/// The `Range` header value for an upload holding `offset` bytes. With no
/// bytes yet, registry:2 and clients agree on "0-0".
fn range_value(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn progress(status: StatusCode, repo: &RepoName, session: &Session) -> ApiResult<Response<Body>> {
    let mut resp = body::status_only(status);
    set(&mut resp, "location", location(&upload_url(repo, session))?);
    set(
        &mut resp,
        "range",
        header_value(range_value(session.offset()))?,
    );
    set(&mut resp, "docker-upload-uuid", header_value(session.id())?);
    Ok(resp)
}

fn created(repo: &RepoName, digest: &Digest) -> ApiResult<Response<Body>> {
    let mut resp = body::status_only(StatusCode::CREATED);
    set(
        &mut resp,
        "location",
        location(&format!("/v2/{repo}/blobs/{digest}"))?,
    );
    set(&mut resp, DIGEST_HEADER, header_value(digest)?);
    Ok(resp)
}

fn unknown_upload(id: &str) -> ApiError {
    ApiError::not_found(
        Code::BlobUploadUnknown,
        format!("upload {:?} is unknown: it finished, was cancelled, expired, or the registry restarted; start a new upload", id.chars().take(64).collect::<String>()),
    )
}

/// The upload `id` of `repo`, held for this request; unknown when it does
/// not exist, belongs to another repository, or was finished or cancelled
/// by a request before this one.
async fn open_session(state: &State, repo: &RepoName, id: &str) -> ApiResult<Session> {
    state
        .storage
        .uploads
        .open(id, repo)
        .await?
        .ok_or_else(|| unknown_upload(id))
}

/// A chunk that does not continue the upload (it holds `offset` bytes):
/// 416, with where to go on from.
fn out_of_order(repo: &RepoName, session: &Session, offset: u64, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        Code::BlobUploadInvalid,
        format!("{what}; the upload holds {offset} bytes; send the chunk starting at {offset}"),
    )
    .with_header_text(header::LOCATION, upload_url(repo, session))
    .with_header_text(header::RANGE, range_value(offset))
}

fn digest_param(query: &[(String, String)]) -> ApiResult<Option<Digest>> {
    query_get(query, "digest")
        .map(|d| d.parse().map_err(ApiError::from))
        .transpose()
}

/// Starts an upload. `may_pull` says whether the caller may read a
/// repository (the source of a cross-repository mount).
pub async fn start(
    state: &State,
    repo: &RepoName,
    req: Request<RequestBody>,
    may_pull: impl Fn(&RepoName) -> bool,
) -> ApiResult<Response<Body>> {
    let query = query_pairs(req.uri().query());
    if let (Some(mount), Some(from)) = (query_get(&query, "mount"), query_get(&query, "from")) {
        // A mount that cannot be done (bad names, blob not in `from`, no
        // right to read `from`) falls back to an ordinary upload session,
        // as the spec asks; the client learns nothing about `from`.
        if let (Ok(digest), Ok(from)) = (mount.parse::<Digest>(), RepoName::parse(from)) {
            let mounted = if may_pull(&from) {
                state.storage.meta.mount_blob(&from, repo, &digest).await?
            } else {
                None
            };
            match mounted {
                Some(Ok(_size)) => return created(repo, &digest),
                // Mounting is possible but the namespace is full: say so
                // now rather than after the client sends the whole blob.
                Some(Err(refused)) => return Err(refused.into()),
                None => {}
            }
        }
    }
    let ((monolithic, session), req) = before_body(req, async {
        let monolithic = digest_param(&query)?;
        Ok((monolithic, state.storage.uploads.start(repo).await?))
    })
    .await?;
    let mut session = session;
    match monolithic {
        Some(digest) => {
            let room = if state
                .storage
                .meta
                .namespace_holds_blob(repo.namespace(), &digest.to_string())
                .await?
            {
                None // a blob the namespace already holds costs nothing
            } else {
                state.storage.meta.quota_available(repo.namespace()).await?
            };
            let appended = append_body(state, repo, &mut session, req, room).await;
            if let Err(e) = appended {
                // Nobody holds this session's URL, so nobody could resume it.
                state.storage.uploads.cancel(&mut session).await?;
                return Err(e);
            }
            complete(state, repo, &mut session, &digest).await
        }
        None => {
            let mut resp = progress(StatusCode::ACCEPTED, repo, &session)?;
            if let Some(min) = state.config.chunk_min_length {
                set(&mut resp, "oci-chunk-min-length", header_value(min)?);
            }
            Ok(resp)
        }
    }
}

/// Parses `Content-Range: <start>-<end>` (also accepting `bytes ` and a
/// `/total` suffix) into inclusive bounds.
fn content_range(headers: &HeaderMap) -> ApiResult<Option<(u64, u64)>> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            Code::BlobUploadInvalid,
            format!("malformed Content-Range {v:?}; expected <start>-<end>"),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    crate::ranges::parse_content_range(s)
        .map(Some)
        .ok_or_else(bad)
}

/// Checks a chunk's Content-Range against what the upload holds: chunks
/// must arrive in order, each starting where the last ended.
fn check_chunk(repo: &RepoName, session: &Session, headers: &HeaderMap) -> ApiResult<()> {
    let Some((start, end)) = content_range(headers)? else {
        return Ok(());
    };
    let out_of_order = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            Code::BlobUploadInvalid,
            format!(
                "chunk {start}-{end} does not continue the upload, which holds {} bytes; send the chunk starting at {}",
                session.offset(),
                session.offset()
            ),
        )
        .with_header_text(header::LOCATION, upload_url(repo, session))
        .with_header_text(header::RANGE, range_value(session.offset()))
    };
    if start != session.offset() {
        return Err(out_of_order());
    }
    if let Some(len) = content_length(headers)? {
        // `0-18446744073709551615` is 2^64 bytes: no u64 holds it.
        if (end - start).checked_add(1) != Some(len) {
            return Err(ApiError::bad_request(
                Code::BlobUploadInvalid,
                format!(
                    "Content-Range {start}-{end} is {} bytes but Content-Length is {len}",
                    u128::from(end - start) + 1
                ),
            ));
        }
    }
    Ok(())
}

/// Runs `checks`, what comes before a request's body (they read what they
/// need of the request beforehand: the body is not shared across their
/// awaits); when they refuse, the body is read and dropped first
/// (bounded), so that a client still sending it reads the error rather
/// than a reset connection.
async fn before_body<T>(
    req: Request<RequestBody>,
    checks: impl std::future::Future<Output = ApiResult<T>>,
) -> ApiResult<(T, Request<RequestBody>)> {
    match checks.await {
        Ok(v) => Ok((v, req)),
        Err(e) => {
            super::drain(req.into_body()).await;
            Err(e)
        }
    }
}

/// The upload a chunk is for, if it continues the upload.
async fn session_for_chunk(
    state: &State,
    repo: &RepoName,
    id: &str,
    headers: &HeaderMap,
) -> ApiResult<Session> {
    let session = open_session(state, repo, id).await?;
    check_chunk(repo, &session, headers)?;
    Ok(session)
}

pub async fn patch(
    state: &State,
    repo: &RepoName,
    id: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let headers = req.headers().clone();
    let (mut session, req) = before_body(req, session_for_chunk(state, repo, id, &headers)).await?;
    append_within_quota(state, repo, &mut session, req).await?;
    progress(StatusCode::ACCEPTED, repo, &session)
}

pub async fn put(
    state: &State,
    repo: &RepoName,
    id: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let (query, headers) = (query_pairs(req.uri().query()), req.headers().clone());
    let ((digest, mut session), req) = before_body(req, async {
        let digest = digest_param(&query)?.ok_or_else(|| {
            ApiError::bad_request(
                Code::DigestInvalid,
                "closing an upload needs ?digest=<algorithm>:<hex>",
            )
        })?;
        Ok((digest, session_for_chunk(state, repo, id, &headers).await?))
    })
    .await?;
    append_within_quota(state, repo, &mut session, req).await?;
    complete(state, repo, &mut session, &digest).await
}

/// Verifies the digest, moves the staged file into the blob store (object
/// first) and links the blob into the repository (row second).
async fn complete(
    state: &State,
    repo: &RepoName,
    session: &mut Session,
    digest: &Digest,
) -> ApiResult<Response<Body>> {
    let done = match state.storage.uploads.finish(session, digest).await {
        Ok(done) => done,
        Err(FinishError::DigestMismatch { expected, computed }) => {
            return Err(ApiError::bad_request(
                Code::DigestInvalid,
                format!("uploaded content has digest {computed}, not {expected}; the upload was discarded"),
            ))
        }
        Err(FinishError::Busy { offset }) => {
            return Err(out_of_order(
                repo,
                session,
                offset,
                "another request is writing this upload",
            ))
        }
        Err(FinishError::Gone) => return Err(unknown_upload(&session.id())),
        Err(FinishError::Storage(e)) => return Err(e.into()),
    };
    // Refuse before a staged file enters the store when it clearly cannot
    // fit; the binding check is the one inside `link_blob`'s transaction
    // (and for a small blob kept in memory, only that one: refusing it
    // leaves nothing behind).
    let ns = repo.namespace();
    if matches!(done.content, Staged::File(_) | Staged::Object)
        && !state
            .storage
            .meta
            .namespace_holds_blob(ns, &digest.to_string())
            .await?
    {
        if let Some(available) = state.storage.meta.quota_available(ns).await? {
            if done.size > available {
                let size = done.size;
                state.storage.uploads.discard(done).await;
                return Err(quota_refusal(state, repo, size, 0).await);
            }
        }
    }
    // A refusal here (a concurrent push took the room) leaves the object
    // uncharged and unreferenced; the blob sweep removes it. The staged
    // bytes stay reserved until the write that charges the blob.
    let size = done.size;
    state.storage.store_upload(done, repo, digest).await??;
    tracing::debug!(%repo, %digest, size, "blob stored");
    created(repo, digest)
}

/// Appends the request body within what the namespace's quota leaves.
async fn append_within_quota(
    state: &State,
    repo: &RepoName,
    session: &mut Session,
    req: Request<RequestBody>,
) -> ApiResult<()> {
    let room = state.storage.meta.quota_available(repo.namespace()).await?;
    append_body(state, repo, session, req, room).await
}

/// Appends the request body to the session. `room` is what the quota
/// leaves (None: unlimited); bytes staged by the namespace's unfinished
/// uploads count against it. The declared length is checked first and the
/// bytes as they arrive, so a client is not made to send 500 MB to hear no.
async fn append_body(
    state: &State,
    repo: &RepoName,
    session: &mut Session,
    req: Request<RequestBody>,
    room: Option<u64>,
) -> ApiResult<()> {
    let declared = content_length(req.headers())?;
    if let (Some(len), Some(room)) = (declared, room) {
        let staged = state.storage.uploads.staged_bytes(repo.namespace()).await?;
        if staged + len > room {
            super::drain(req.into_body()).await;
            return Err(quota_refusal(state, repo, len, staged).await);
        }
    }
    match state
        .storage
        .uploads
        .append(
            session,
            BodyDataStream::new(req.into_body()),
            room,
            declared,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(AppendError::Quota(full)) => {
            Err(quota_refusal(state, repo, full.needed, full.staged).await)
        }
        Err(AppendError::Busy { offset }) => Err(out_of_order(
            repo,
            session,
            offset,
            "another request is writing this upload, or the chunk does not continue it",
        )),
        Err(AppendError::Gone) => Err(unknown_upload(&session.id())),
        Err(AppendError::Storage(e)) => Err(e.into()),
    }
}

/// The quota error for an upload of `size` bytes into `repo`, whose
/// namespace has `staged` bytes in unfinished uploads.
async fn quota_refusal(state: &State, repo: &RepoName, size: u64, staged: u64) -> ApiError {
    let ns = repo.namespace();
    match state.storage.meta.quota(ns).await {
        Ok(Some(q)) => berth_storage::meta::QuotaExceeded {
            namespace: ns.to_owned(),
            used: q.used_bytes,
            limit: q.limit_bytes.unwrap_or(u64::MAX),
            needed: size,
            staged,
        }
        .into(),
        Ok(None) | Err(_) => ApiError::new(
            StatusCode::FORBIDDEN,
            Code::Denied,
            format!("quota exceeded for {ns}"),
        ),
    }
}

pub async fn status(state: &State, repo: &RepoName, id: &str) -> ApiResult<Response<Body>> {
    let session = open_session(state, repo, id).await?;
    progress(StatusCode::NO_CONTENT, repo, &session)
}

pub async fn cancel(state: &State, repo: &RepoName, id: &str) -> ApiResult<Response<Body>> {
    let mut session = open_session(state, repo, id).await?;
    state.storage.uploads.cancel(&mut session).await?;
    Ok(body::status_only(StatusCode::NO_CONTENT))
}
