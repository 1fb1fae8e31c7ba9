//! `/healthz`, `/metrics` and `/token`: for operators, monitoring and
//! clients' logins. Health and the token endpoint answer anyone (the token
//! endpoint judges credentials itself); metrics are public or the admin's
//! by config, and show per-namespace figures only for namespaces the caller
//! may read.

use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::handlers::{method_not_allowed, token};
use crate::request_body::RequestBody;
use crate::routes::OpsOp;
use crate::State;
use http::{HeaderValue, Request, Response, StatusCode};
use std::net::IpAddr;

pub async fn handle(
    state: &State,
    op: OpsOp,
    req: Request<RequestBody>,
    peer: IpAddr,
) -> ApiResult<Response<Body>> {
    match op {
        OpsOp::Healthz => health(state).await,
        OpsOp::Token => token::token(state, req, peer).await,
        OpsOp::Metrics => {
            let auth = &state.auth;
            let caller = auth
                .authenticate(
                    &state.storage.meta,
                    req.headers(),
                    req.extensions().get(),
                    peer,
                )
                .await?;
            if !state.config.metrics_public {
                auth.require_admin(&caller)?;
            }
            let text = state
                .metrics
                .render(&state.storage, |ns| auth.may_list(&caller, ns))
                .await?;
            let mut resp = Response::new(body::full(text));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(resp)
        }
        OpsOp::MethodNotAllowed(m) => Err(method_not_allowed(&m)),
    }
}

/// `/healthz`: 200 when the database and the blob store both answer.
async fn health(state: &State) -> ApiResult<Response<Body>> {
    let db = state.storage.meta.ping().await;
    let blobs = state.storage.blobs.ping().await;
    match (db, blobs) {
        (Ok(()), Ok(())) => Ok(body::json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (db, blobs) => {
            let detail = serde_json::json!({
                "database": db.err().map(|e| e.to_string()).unwrap_or_else(|| "ok".into()),
                "blob_store": blobs.err().map(|e| e.to_string()).unwrap_or_else(|| "ok".into()),
            });
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                "storage is not answering",
            )
            .with_detail(detail))
        }
    }
}
