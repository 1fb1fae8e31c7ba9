//! The Toolforge-compatible build API at `/v1/tool/{tool}/...`: start,
//! list, show (and `latest`), logs (with `?follow=true`), cancel, delete,
//! clean. Bodies carry Toolforge's `messages: {info, warning, error}`.

use crate::api::{Messages, ToolBuild, ToolBuildShown, ToolBuildStarted, ToolBuilds, ToolMessages};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_builds::{BuildError, BuildRequest};
use http::{Request, Response, StatusCode};

impl From<BuildError> for ApiError {
    fn from(e: BuildError) -> ApiError {
        match e {
            BuildError::Invalid(m) => ApiError::bad_request(Code::Unsupported, m),
            BuildError::NotFound(id) => {
                ApiError::not_found(Code::NameUnknown, format!("no build {id}"))
            }
            BuildError::Finished(id) => ApiError::new(
                StatusCode::CONFLICT,
                Code::Denied,
                format!("build {id} has already finished"),
            ),
            BuildError::TooMany { limit, message } => ApiError::too_many(limit, message),
            BuildError::Unavailable(m) => {
                tracing::error!("{m}");
                ApiError::unavailable(m)
            }
            BuildError::Storage(s) => s.into(),
        }
    }
}

/// `GET .../builds`: the tool's builds, newest first.
pub async fn list(state: &State, tool: &str) -> ApiResult<Response<Body>> {
    let builds = state.builds.list(tool).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &ToolBuilds {
            builds: builds.iter().map(ToolBuild::from).collect(),
            messages: Messages::default(),
        },
    ))
}

/// `POST .../builds` with `{"source_url", "ref", "image_name", "envvars"}`.
pub async fn start(
    state: &State,
    tool: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let request: BuildRequest = crate::api::json_body(req).await?;
    let (record, warnings) = state.builds.start(tool, request).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &ToolBuildStarted {
            messages: Messages {
                info: vec![format!("build {} queued", record.id)],
                warning: warnings,
                error: Vec::new(),
            },
            new_build: crate::api::NewBuild {
                name: record.id,
                resolved_ref: record.resolved_ref,
                parameters: record.params,
            },
        },
    ))
}

/// `GET .../builds/{id}` (or `latest`).
pub async fn show(state: &State, tool: &str, id: &str) -> ApiResult<Response<Body>> {
    let b = state.builds.get(tool, id).await?;
    let build = ToolBuild::from(&b);
    // Toolforge's CLI prints `messages.info` above the build: how a push
    // build came about shows there (its table has no column for it).
    let info = match &build.trigger {
        crate::api::ToolBuildTrigger::Manual => Vec::new(),
        push => vec![push.describe()],
    };
    Ok(body::json_response(
        StatusCode::OK,
        &ToolBuildShown {
            build,
            messages: Messages::info(info),
        },
    ))
}

/// `DELETE .../builds/{id}` (`?delete_image=true` also deletes the image
/// it pushed, unless pinned).
pub async fn delete(
    state: &State,
    tool: &str,
    id: &str,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    let delete_image = query_get(&query_pairs(query), "delete_image") == Some("true");
    let b = state.builds.get(tool, id).await?;
    let info = state.builds.delete(tool, &b.id, delete_image).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &crate::api::ToolBuildDeleted {
            id: b.id,
            messages: Messages::info(info),
        },
    ))
}

/// `PUT .../builds/{id}/cancel`: 409 when already finished.
pub async fn cancel(state: &State, tool: &str, id: &str) -> ApiResult<Response<Body>> {
    let b = state.builds.cancel(tool, id).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &crate::api::ToolBuildCancelled {
            id: b.id.clone(),
            messages: Messages::info(vec![format!("build {} cancelled", b.id)]),
            build: ToolBuild::from(&b),
        },
    ))
}

/// `POST /v1/tool/{tool}/clean`.
pub async fn clean(state: &State, tool: &str) -> ApiResult<Response<Body>> {
    let info = state.builds.clean(tool).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &ToolMessages {
            messages: Messages::info(info),
        },
    ))
}

/// `GET .../builds/{id}/logs[?follow=true]`: following streams new lines
/// until the build ends (`berth_builds::logs::follow`). Toolforge's shape
/// is one JSON object per line, `{"line": "..."}` (an error after the
/// answer began is `{"message": "..."}`), which its CLI parses line by
/// line; `Accept: text/plain` gets the log as it is written. Toolforge's
/// client sends `follow=True`, so the value is read without regard to case.
pub async fn logs(
    state: &State,
    tool: &str,
    id: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> ApiResult<Response<Body>> {
    let follow =
        query_get(&query_pairs(query), "follow").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let plain = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain"));
    let chunks = state.builds.logs(tool, id, follow).await?;
    let (body, content_type) = if plain {
        (body::stream_io(chunks), "text/plain; charset=utf-8")
    } else {
        (
            body::stream_io(Box::pin(json_lines(chunks))),
            "application/x-ndjson",
        )
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Ok(resp)
}

/// The longest log line sent whole; a longer run of bytes without a
/// newline is sent in pieces (the log writer cuts lines at 16 KiB anyway).
const MAX_LINE: usize = 64 * 1024;

#[derive(serde::Serialize)]
struct LogLine<'a> {
    line: &'a str,
}

#[derive(serde::Serialize)]
struct LogError {
    message: String,
}

/// Turns a stream of log bytes into Toolforge's JSON lines.
fn json_lines(
    chunks: berth_builds::logs::LogStream,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    use futures_util::StreamExt;
    futures_util::stream::unfold(
        (chunks, bytes::BytesMut::new(), false),
        |(mut chunks, mut pending, done)| async move {
            if done {
                return None;
            }
            let mut out = Vec::new();
            let finished = match chunks.next().await {
                Some(Ok(data)) => {
                    pending.extend_from_slice(&data);
                    false
                }
                Some(Err(e)) => {
                    push_json(
                        &mut out,
                        &LogError {
                            message: format!("the log cannot be read: {e}"),
                        },
                    );
                    true
                }
                None => true,
            };
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line = pending.split_to(i + 1);
                push_line(&mut out, &line[..i]);
            }
            if pending.len() > MAX_LINE || (finished && !pending.is_empty()) {
                let rest = pending.split();
                push_line(&mut out, &rest);
            }
            if out.is_empty() && finished {
                return None;
            }
            Some((Ok(bytes::Bytes::from(out)), (chunks, pending, finished)))
        },
    )
}

fn push_line(out: &mut Vec<u8>, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    push_json(
        out,
        &LogLine {
            line: text.trim_end_matches('\r'),
        },
    );
}

fn push_json(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    if serde_json::to_writer(&mut *out, value).is_ok() {
        out.push(b'\n');
    }
}
