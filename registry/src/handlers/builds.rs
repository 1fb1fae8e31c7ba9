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
use http_body_util::BodyExt;

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
    Ok(body::json_response(
        StatusCode::OK,
        &ToolBuildShown {
            build: ToolBuild::from(&b),
            messages: Messages::default(),
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
    let info = state.builds.delete(tool, id, delete_image).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &ToolMessages {
            messages: Messages::info(info),
        },
    ))
}

/// `PUT .../builds/{id}/cancel`: 409 when already finished.
pub async fn cancel(state: &State, tool: &str, id: &str) -> ApiResult<Response<Body>> {
    let b = state.builds.cancel(tool, id).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &ToolBuildShown {
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

/// `GET .../builds/{id}/logs[?follow=true]`: the log as text; following
/// streams new lines until the build ends (`berth_builds::logs::follow`).
/// Toolforge's client sends `follow=True`, so the value is read without
/// regard to case.
pub async fn logs(
    state: &State,
    tool: &str,
    id: &str,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    let follow =
        query_get(&query_pairs(query), "follow").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let chunks = state.builds.logs(tool, id, follow).await?;
    let mut resp = Response::new(BodyExt::boxed_unsync(http_body_util::StreamBody::new(
        futures_util::StreamExt::map(chunks, |r| {
            r.map(hyper::body::Frame::data)
                .map_err(|e| Box::new(e) as crate::body::BoxError)
        }),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}
