//! Quota: the admin API (`/admin/v1/quotas...`) and the Toolforge shape a
//! tool reads its own quota through (`/v1/tool/{tool}/quotas`).

use crate::api::{self, json_body};
use crate::body::{self, Body};
use crate::error::{human_bytes, ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs};
use crate::State;
use http::{Request, Response, StatusCode};

const LARGEST_IMAGES: u32 = 10;

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
        &api::QuotaList {
            namespaces: all.into_iter().map(Into::into).collect(),
        },
    ))
}

/// `GET /admin/v1/quotas/{ns}`: usage per repository, largest images.
pub async fn show(state: &State, ns: &str) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
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
        &api::NamespaceDetail::from(detail),
    ))
}

/// `PUT /admin/v1/quotas/{ns}` with `api::SetQuota`.
pub async fn set(state: &State, ns: &str, req: Request<RequestBody>) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
    let setting = json_body::<api::SetQuota>(req).await?.setting()?;
    let q = set_limit(state, ns, setting).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &api::NamespaceQuota::from(q),
    ))
}

/// Sets `ns`'s limit (the admin API and the console's form).
pub async fn set_limit(
    state: &State,
    ns: &str,
    setting: berth_storage::meta::LimitSetting,
) -> ApiResult<berth_storage::meta::NamespaceQuota> {
    super::admin::validate_namespace(ns)?;
    let q = state.storage.meta.set_quota_limit(ns, setting).await?;
    tracing::info!(namespace = ns, ?setting, "quota limit set");
    Ok(q)
}

pub async fn reconcile(state: &State) -> ApiResult<Response<Body>> {
    let drift = state.storage.meta.reconcile_quota().await?;
    if !drift.is_empty() {
        tracing::warn!(namespaces = drift.len(), "quota reconcile fixed drift");
    }
    Ok(body::json_response(
        StatusCode::OK,
        &api::Reconciled {
            drift: drift.into_iter().map(Into::into).collect(),
        },
    ))
}

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
        &api::ToolQuota {
            quota: api::ToolQuotaCategories {
                categories: vec![api::ToolQuotaCategory {
                    name: "Registry".into(),
                    items: vec![api::ToolQuotaItem {
                        name: "Storage".into(),
                        limit: limit.map_or("unlimited".into(), human_bytes),
                        used: human_bytes(used),
                        available: available.map_or("unlimited".into(), human_bytes),
                        capacity: format!("{percent:.1}%"),
                        limit_bytes: limit,
                        used_bytes: used,
                        available_bytes: available,
                    }],
                }],
            },
            messages: api::Messages::default(),
        },
    ))
}
