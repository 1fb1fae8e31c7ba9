//! The admin API of garbage collection: run a job now (or dry), list
//! runs, pins, and per-namespace retention overrides.

use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_gc::JobKind;
use berth_storage::meta::RetentionOverride;
use berth_storage::{Digest, RepoName};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

const MAX_BODY: usize = 64 * 1024;

async fn json_body(req: Request<RequestBody>) -> ApiResult<serde_json::Value> {
    let bytes = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(Code::Unsupported, format!("cannot read body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(Code::Unsupported, format!("body is not JSON: {e}")))
}

fn parse_bool(v: Option<&str>, name: &str) -> ApiResult<bool> {
    match v {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(
            Code::Unsupported,
            format!("{name}={other:?} must be true or false"),
        )),
    }
}

/// `POST /admin/v1/gc/{tag-cleanup|untagged}?dry_run=BOOL`: runs now.
pub async fn run(
    state: &State,
    job: &str,
    method: &Method,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    if method != Method::POST {
        return Err(super::method_not_allowed(method));
    }
    let job = JobKind::parse(job).ok_or_else(|| {
        ApiError::not_found(
            Code::Unsupported,
            format!("no GC job {job:?}; the jobs are tag-cleanup and untagged"),
        )
    })?;
    let dry_run = parse_bool(query_get(&query_pairs(query), "dry_run"), "dry_run")?;
    let report = state.gc.run(job, dry_run, "admin").await;
    Ok(body::json_response(
        StatusCode::OK,
        &serde_json::to_value(report).expect("reports serialize"),
    ))
}

/// `GET /admin/v1/gc/runs[?limit=N]`: newest first.
pub async fn runs(
    state: &State,
    method: &Method,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    if method != Method::GET {
        return Err(super::method_not_allowed(method));
    }
    let limit = match query_get(&query_pairs(query), "limit") {
        None => 50,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| {
                ApiError::bad_request(Code::Unsupported, format!("limit={v:?} is not a number"))
            })?
            .min(1000),
    };
    let runs = state.storage.meta.gc_runs(limit).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &serde_json::json!({ "runs": runs }),
    ))
}

/// `GET`/`POST /admin/v1/pins`.
pub async fn pins(state: &State, req: Request<RequestBody>) -> ApiResult<Response<Body>> {
    match *req.method() {
        Method::GET => {
            let pins = state.storage.meta.list_pins().await?;
            Ok(body::json_response(
                StatusCode::OK,
                &serde_json::json!({ "pins": pins }),
            ))
        }
        Method::POST => {
            let v = json_body(req).await?;
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let repository = field("repository").ok_or_else(|| {
                ApiError::bad_request(Code::NameInvalid, "a pin needs \"repository\"")
            })?;
            let digest = field("digest").ok_or_else(|| {
                ApiError::bad_request(Code::DigestInvalid, "a pin needs \"digest\"")
            })?;
            let repo = RepoName::parse(&repository)?;
            let digest: Digest = digest.parse()?;
            let pin = state
                .storage
                .meta
                .add_pin(
                    repo.as_str(),
                    &digest.to_string(),
                    &field("reason").unwrap_or_default(),
                )
                .await?;
            tracing::info!(repository = %repo, %digest, "pinned");
            Ok(body::json_response(
                StatusCode::CREATED,
                &serde_json::to_value(pin).expect("serializes"),
            ))
        }
        ref m => Err(super::method_not_allowed(m)),
    }
}

/// `DELETE /admin/v1/pins/{id}`.
pub async fn pin(state: &State, id: &str, method: &Method) -> ApiResult<Response<Body>> {
    if method != Method::DELETE {
        return Err(super::method_not_allowed(method));
    }
    let id: i64 = id.parse().map_err(|_| {
        ApiError::bad_request(Code::Unsupported, format!("pin id {id:?} is not a number"))
    })?;
    if !state.storage.meta.delete_pin(id).await? {
        return Err(ApiError::not_found(
            Code::NameUnknown,
            format!("no pin {id}"),
        ));
    }
    Ok(body::status_only(StatusCode::NO_CONTENT))
}

/// `GET /admin/v1/retention`: the default policy and every override.
pub async fn retention(state: &State, method: &Method) -> ApiResult<Response<Body>> {
    if method != Method::GET {
        return Err(super::method_not_allowed(method));
    }
    let r = &state.gc.config().retention;
    let overrides = state.storage.meta.retention_overrides().await?;
    Ok(body::json_response(
        StatusCode::OK,
        &serde_json::json!({
            "default": {
                "keep_last": r.keep_last,
                "protected_tags": r.protected_tags,
                "max_age_ms": r.max_age.map(|d| d.as_millis() as u64),
                "keep_pattern": r.keep_pattern.as_ref().map(|p| p.as_str()),
            },
            "overrides": overrides,
        }),
    ))
}

/// `PUT /admin/v1/retention/{ns}` with any of `keep_last`, `protected_tags`,
/// `max_age` ("30d"), `keep_pattern`; `DELETE` returns to the default.
pub async fn retention_namespace(
    state: &State,
    ns: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
    match *req.method() {
        Method::DELETE => {
            state.storage.meta.set_retention_override(ns, None).await?;
            Ok(body::status_only(StatusCode::NO_CONTENT))
        }
        Method::PUT => {
            let v = json_body(req).await?;
            let bad = |m: String| ApiError::bad_request(Code::Unsupported, m);
            let keep_last = match v.get("keep_last") {
                None | Some(serde_json::Value::Null) => None,
                Some(x) => Some(
                    x.as_u64()
                        .filter(|n| *n <= u32::MAX as u64)
                        .ok_or_else(|| bad("keep_last must be a non-negative integer".into()))?
                        as u32,
                ),
            };
            let protected_tags = match v.get("protected_tags") {
                None | Some(serde_json::Value::Null) => None,
                Some(x) => Some(
                    x.as_array()
                        .and_then(|a| {
                            a.iter()
                                .map(|t| t.as_str().map(str::to_owned))
                                .collect::<Option<Vec<_>>>()
                        })
                        .ok_or_else(|| bad("protected_tags must be a list of tag names".into()))?,
                ),
            };
            let max_age_ms = match v.get("max_age") {
                None | Some(serde_json::Value::Null) => None,
                Some(x) => {
                    let s = x
                        .as_str()
                        .ok_or_else(|| bad("max_age must be a duration such as \"30d\"".into()))?;
                    Some(
                        humantime::parse_duration(s)
                            .map_err(|e| bad(format!("max_age {s:?}: {e}")))?
                            .as_millis() as i64,
                    )
                }
            };
            let keep_pattern = match v.get("keep_pattern") {
                None | Some(serde_json::Value::Null) => None,
                Some(x) => {
                    let p = x
                        .as_str()
                        .ok_or_else(|| bad("keep_pattern must be a string".into()))?;
                    berth_gc::retention::compile_pattern(p).map_err(|e| bad(e.to_string()))?;
                    Some(p.to_owned())
                }
            };
            let o = RetentionOverride {
                keep_last,
                protected_tags,
                max_age_ms,
                keep_pattern,
            };
            state
                .storage
                .meta
                .set_retention_override(ns, Some(o.clone()))
                .await?;
            Ok(body::json_response(
                StatusCode::OK,
                &serde_json::json!({ "namespace": ns, "override": o }),
            ))
        }
        ref m => Err(super::method_not_allowed(m)),
    }
}
