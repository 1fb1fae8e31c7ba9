//! `/admin/v1/notifications`: each endpoint's place in the change feed and
//! its delivery log.

use crate::api::{self, NotificationEndpoint, Notifications};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::routes::{query_get, query_pairs};
use crate::State;
use http::{Response, StatusCode};

/// `GET /admin/v1/notifications`
pub async fn list(state: &State) -> ApiResult<Response<Body>> {
    let stored = state.storage.meta.endpoints().await?;
    let mut endpoints = Vec::new();
    for ep in &state.config.notifications.endpoints {
        let feed = stored.iter().find(|s| s.name == ep.name);
        let last_attempt = state
            .storage
            .meta
            .delivery_attempts(&ep.name, 1)
            .await?
            .into_iter()
            .next()
            .map(Into::into);
        endpoints.push(NotificationEndpoint {
            name: ep.name.clone(),
            url: ep.url.clone(),
            events: ep.events.clone(),
            cursor: feed.map_or(0, |f| f.cursor),
            pending: feed.map_or(0, |f| f.pending),
            failures: feed.map_or(0, |f| f.failures),
            next_attempt_ms: feed.map_or(0, |f| f.next_attempt_ms),
            last_attempt,
        });
    }
    Ok(body::json_response(
        StatusCode::OK,
        &Notifications { endpoints },
    ))
}

/// `GET /admin/v1/notifications/{name}/deliveries[?limit=N]`, newest first.
pub async fn deliveries(
    state: &State,
    name: &str,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    if !state
        .config
        .notifications
        .endpoints
        .iter()
        .any(|e| e.name == name)
    {
        return Err(ApiError::not_found(
            Code::NameUnknown,
            format!(
                "no notification endpoint {:?}",
                name.chars().take(64).collect::<String>()
            ),
        ));
    }
    let limit = match query_get(&query_pairs(query), "limit") {
        None => 100,
        Some(v) => v
            .parse::<u32>()
            .map_err(|_| {
                ApiError::bad_request(Code::Unsupported, format!("limit={v:?} is not a number"))
            })?
            .min(1000),
    };
    let attempts = state.storage.meta.delivery_attempts(name, limit).await?;
    Ok(body::json_response(
        StatusCode::OK,
        &api::Deliveries {
            endpoint: name.to_owned(),
            attempts: attempts.into_iter().map(Into::into).collect(),
        },
    ))
}
