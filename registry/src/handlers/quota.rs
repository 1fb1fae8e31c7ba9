//! Quota: the admin API (`/admin/v1/quotas...`) and the Toolforge shape a
//! tool reads its own quota through (`/v1/tool/{tool}/quotas`).

use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_storage::meta::LimitSetting;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

/// How many of a namespace's largest images the detail view lists.
const LARGEST_IMAGES: u32 = 10;
const MAX_BODY: usize = 64 * 1024;

/// `GET /admin/v1/quotas[?over_percent=N]`: every namespace, largest first.
pub async fn list(state: &State, query: Option<&str>) -> ApiResult<Response<Body>> {
    let query = query_pairs(query);
    let over = match query_get(&query, "over_percent") {
        None => None,
        Some(v) => Some(v.parse::<f64>().map_err(|_| {
            ApiError::bad_request(
                Code::Unsupported,
                format!("over_percent={v:?} is not a number"),
            )
        })?),
    };
    let mut all = state.storage.meta.quota_list().await?;
    if let Some(p) = over {
        all.retain(|q| q.limit_bytes.is_some() && q.percent >= p);
    }
    Ok(body::json_response(
        StatusCode::OK,
        &serde_json::json!({ "namespaces": all }),
    ))
}

/// `GET` one namespace with its breakdown; `PUT` sets its limit with
/// `{"limit_bytes": N}`, `{"limit_bytes": null}` (back to the default) or
/// `{"unlimited": true}`.
pub async fn namespace(
    state: &State,
    ns: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
    match *req.method() {
        Method::GET => {
            let detail = state
                .storage
                .meta
                .quota_detail(ns, LARGEST_IMAGES)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(
                        Code::NameUnknown,
                        format!("namespace {ns} holds nothing and has no quota settings"),
                    )
                })?;
            Ok(body::json_response(
                StatusCode::OK,
                &serde_json::to_value(detail).expect("serializes"),
            ))
        }
        Method::PUT => {
            let bytes = http_body_util::Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    ApiError::bad_request(Code::Unsupported, format!("cannot read body: {e}"))
                })?
                .to_bytes();
            let setting = parse_setting(&bytes)?;
            let q = state.storage.meta.set_quota_limit(ns, setting).await?;
            tracing::info!(namespace = ns, ?setting, "quota limit set");
            Ok(body::json_response(
                StatusCode::OK,
                &serde_json::to_value(q).expect("serializes"),
            ))
        }
        ref m => Err(super::method_not_allowed(m)),
    }
}

fn parse_setting(bytes: &[u8]) -> ApiResult<LimitSetting> {
    let bad = |why: &str| {
        ApiError::bad_request(
            Code::Unsupported,
            format!("{why}; send {{\"limit_bytes\": N}}, {{\"limit_bytes\": null}} or {{\"unlimited\": true}}"),
        )
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(&format!("body is not JSON ({e})")))?;
    if v.get("unlimited").and_then(|u| u.as_bool()) == Some(true) {
        return Ok(LimitSetting::Unlimited);
    }
    match v.get("limit_bytes") {
        Some(serde_json::Value::Null) => Ok(LimitSetting::Default),
        Some(n) => n
            .as_u64()
            .map(LimitSetting::Bytes)
            .ok_or_else(|| bad("limit_bytes must be a non-negative integer")),
        None => Err(bad("no limit given")),
    }
}

/// `POST /admin/v1/quotas/_reconcile`: recompute usage from the tables.
pub async fn reconcile(state: &State) -> ApiResult<Response<Body>> {
    let drift = state.storage.meta.reconcile_quota().await?;
    if !drift.is_empty() {
        tracing::warn!(namespaces = drift.len(), "quota reconcile fixed drift");
    }
    Ok(body::json_response(
        StatusCode::OK,
        &serde_json::json!({ "drift": drift }),
    ))
}

/// `GET /v1/tool/{tool}/quotas` in the Toolforge build API's shape.
/// Figures are bytes; `capacity` is the percentage used.
pub async fn tool(state: &State, ns: &str) -> ApiResult<Response<Body>> {
    let q = state.storage.meta.quota(ns).await?;
    let (limit, used, available, percent) = match q {
        Some(q) => (q.limit_bytes, q.used_bytes, q.available_bytes, q.percent),
        None => {
            let limit = state.storage.meta.quota_available(ns).await?;
            (limit, 0, limit, 0.0)
        }
    };
    Ok(body::json_response(
        StatusCode::OK,
        &serde_json::json!({
            "quota": {"categories": [{"name": "Registry", "items": [{
                "name": "Storage", "limit": limit, "used": used, "available": available, "capacity": percent
            }]}]},
            "messages": {"info": [], "warning": [], "error": []}
        }),
    ))
}
