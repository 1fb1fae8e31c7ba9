//! `/v1/hooks/{id}`: forges deliver pushes to build triggers here. No
//! berth credentials: a delivery proves it knows the hook's secret (the
//! signature), which `handlers::triggers::deliver` checks before anything
//! else is read from it. Answers are in the tool API's shape (Toolforge's
//! `messages` and `error` beside the OCI `errors`).

use crate::body::Body;
use crate::error::ApiResult;
use crate::handlers::{method_not_allowed, triggers};
use crate::request_body::RequestBody;
use crate::routes::HookOp;
use crate::State;
use http::{Request, Response};
use std::net::IpAddr;

pub async fn handle(
    state: &State,
    op: HookOp,
    req: Request<RequestBody>,
    peer: IpAddr,
) -> ApiResult<Response<Body>> {
    match op {
        HookOp::Deliver(id) => triggers::deliver(state, &id, req, peer).await,
        HookOp::MethodNotAllowed(m) => Err(method_not_allowed(&m)),
    }
    .map_err(|e| e.in_toolforge_shape())
}
