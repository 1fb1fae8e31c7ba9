//! The admin API of garbage collection: run a job now (or dry), list
//! runs, pins, and per-namespace retention overrides.

use crate::api::{self, json_body};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_gc::JobKind;
use berth_storage::{Digest, RepoName};
use http::{Request, Response, StatusCode};

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
pub async fn run(state: &State, job: &str, query: Option<&str>) -> ApiResult<Response<Body>> {
    let dry_run = parse_bool(query_get(&query_pairs(query), "dry_run"), "dry_run")?;
    let report = run_job(state, job, dry_run).await?;
    Ok(body::json_response(StatusCode::OK, &report))
}

/// Runs GC job `job` now, for the admin (the API and the console).
pub async fn run_job(state: &State, job: &str, dry_run: bool) -> ApiResult<api::RunReport> {
    let job = JobKind::parse(job).ok_or_else(|| {
        ApiError::not_found(
            Code::Unsupported,
            format!("no GC job {job:?}; the jobs are tag-cleanup and untagged"),
        )
    })?;
    match state.gc.run(job, dry_run, "admin").await {
        Ok(report) => Ok(report),
        Err(e @ berth_gc::RunRefused::Busy { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::Denied,
            e.to_string(),
        )),
        Err(berth_gc::RunRefused::Storage(e)) => Err(e.into()),
    }
}

/// `GET /admin/v1/gc/runs[?limit=N]`: newest first.
pub async fn runs(state: &State, query: Option<&str>) -> ApiResult<Response<Body>> {
    let limit = match query_get(&query_pairs(query), "limit") {
        None => 50,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| {
                ApiError::bad_request(Code::Unsupported, format!("limit={v:?} is not a number"))
            })?
            .min(1000),
    };
    let runs = stored_runs(state, limit).await?;
    Ok(body::json_response(StatusCode::OK, &api::GcRuns { runs }))
}

/// The newest `limit` stored runs (the API and the console).
pub async fn stored_runs(state: &State, limit: u32) -> ApiResult<Vec<api::GcRun>> {
    Ok(state
        .storage
        .meta
        .gc_runs(limit)
        .await?
        .into_iter()
        .filter_map(run_from_record)
        .collect())
}

/// A stored run in the API's shape; `None` (logged) when its report no
/// longer reads.
pub fn run_from_record(r: berth_storage::meta::GcRunRecord) -> Option<api::GcRun> {
    match serde_json::from_value(r.report) {
        Ok(report) => Some(api::GcRun {
            id: r.id,
            job: r.job,
            dry_run: r.dry_run,
            trigger: r.trigger,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            report,
        }),
        Err(e) => {
            tracing::warn!(run = r.id, error = %e, "a stored GC report is unreadable; left out");
            None
        }
    }
}

/// `GET /admin/v1/pins`.
pub async fn list_pins(state: &State) -> ApiResult<Response<Body>> {
    let pins = state.storage.meta.list_pins().await?;
    Ok(body::json_response(
        StatusCode::OK,
        &api::Pins {
            pins: pins.into_iter().map(Into::into).collect(),
        },
    ))
}

/// `POST /admin/v1/pins` with `{"repository", "digest", "reason"}`.
pub async fn add_pin(state: &State, req: Request<RequestBody>) -> ApiResult<Response<Body>> {
    let add: api::AddPin = json_body(req).await?;
    let repo = RepoName::parse(&add.repository)?;
    let digest: Digest = add.digest.parse()?;
    let pin = state
        .storage
        .meta
        .add_pin(repo.as_str(), &digest.to_string(), &add.reason)
        .await?;
    tracing::info!(repository = %repo, %digest, "pinned");
    Ok(body::json_response(
        StatusCode::CREATED,
        &api::Pin::from(pin),
    ))
}

/// `DELETE /admin/v1/pins/{id}`.
pub async fn delete_pin(state: &State, id: &str) -> ApiResult<Response<Body>> {
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
pub async fn retention(state: &State) -> ApiResult<Response<Body>> {
    let r = &state.gc.config().retention;
    let overrides = state.storage.meta.retention_overrides().await?;
    Ok(body::json_response(
        StatusCode::OK,
        &api::Retention {
            default: api::RetentionDefault {
                keep_last: r.keep_last,
                protected_tags: r.protected_tags.clone(),
                max_age_ms: r.max_age.map(|d| d.as_millis() as u64),
                keep_pattern: r.keep_pattern.as_ref().map(|p| p.as_str().to_owned()),
            },
            overrides: overrides
                .into_iter()
                .map(|(ns, o)| (ns, o.into()))
                .collect(),
        },
    ))
}

/// `DELETE /admin/v1/retention/{ns}`: back to the default.
pub async fn delete_retention(state: &State, ns: &str) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
    state.storage.meta.set_retention_override(ns, None).await?;
    Ok(body::status_only(StatusCode::NO_CONTENT))
}

/// `PUT /admin/v1/retention/{ns}` with any of `keep_last`, `protected_tags`,
/// `max_age` ("30d"), `keep_pattern`.
pub async fn set_retention(
    state: &State,
    ns: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
    let set: api::SetRetention = json_body(req).await?;
    let bad = |m: String| ApiError::bad_request(Code::Unsupported, m);
    let max_age_ms = match &set.max_age {
        None => None,
        Some(s) => Some(
            humantime::parse_duration(s)
                .map_err(|e| {
                    bad(format!(
                        "max_age {s:?} is not a duration such as \"30d\": {e}"
                    ))
                })?
                .as_millis() as i64,
        ),
    };
    if let Some(p) = &set.keep_pattern {
        berth_gc::retention::compile_pattern(p).map_err(|e| bad(e.to_string()))?;
    }
    let o = api::RetentionOverride {
        keep_last: set.keep_last,
        protected_tags: set.protected_tags,
        max_age_ms,
        keep_pattern: set.keep_pattern,
    };
    state
        .storage
        .meta
        .set_retention_override(ns, Some(o.clone().into()))
        .await?;
    Ok(body::json_response(
        StatusCode::OK,
        &api::RetentionSet {
            namespace: ns.to_owned(),
            value: o,
        },
    ))
}
