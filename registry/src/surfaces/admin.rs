//! `/admin/v1/...`: the admin's API. Authorized once, for every operation:
//! only the admin (or an unrestricted registry) gets past the first line,
//! so nobody else learns which admin paths or methods exist.

use crate::auth::Caller;
use crate::body::Body;
use crate::error::{ApiError, ApiResult, Code};
use crate::handlers::{admin, gc, method_not_allowed, notifications, quota, tokens};
use crate::request_body::RequestBody;
use crate::routes::AdminOp;
use crate::State;
use http::{Request, Response};

pub async fn handle(
    state: &State,
    caller: &Caller,
    op: AdminOp,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    state.auth.require_admin(caller)?;
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match op {
        AdminOp::CreateCredentials(ns) => {
            state.auth.require_password(caller)?;
            admin::create_credentials(state, &ns).await
        }
        AdminOp::RevokeCredentials(ns) => admin::revoke_credentials(state, &ns).await,
        AdminOp::ListQuotas => quota::list(state, query).await,
        AdminOp::ReconcileQuotas => quota::reconcile(state).await,
        AdminOp::ShowQuota(ns) => quota::show(state, &ns).await,
        AdminOp::SetQuota(ns) => quota::set(state, &ns, req).await,
        AdminOp::RunGc(job) => gc::run(state, &job, query).await,
        AdminOp::ListGcRuns => gc::runs(state, query).await,
        AdminOp::ListPins => gc::list_pins(state).await,
        AdminOp::AddPin => gc::add_pin(state, req).await,
        AdminOp::DeletePin(id) => gc::delete_pin(state, &id).await,
        AdminOp::ShowRetention => gc::retention(state).await,
        AdminOp::SetRetention(ns) => gc::set_retention(state, &ns, req).await,
        AdminOp::DeleteRetention(ns) => gc::delete_retention(state, &ns).await,
        AdminOp::ListTokens => tokens::list_admin(state, query).await,
        AdminOp::CreateToken => {
            state.auth.require_password(caller)?;
            tokens::create_admin(state, caller, req).await
        }
        AdminOp::RevokeToken(id) => tokens::revoke(state, &id, None).await,
        AdminOp::ListNotifications => notifications::list(state).await,
        AdminOp::NotificationDeliveries(name) => {
            notifications::deliveries(state, &name, query).await
        }
        AdminOp::NotFound => Err(ApiError::not_found(
            Code::Unsupported,
            format!("no such admin endpoint: {}", req.uri().path()),
        )),
        AdminOp::MethodNotAllowed(m) => Err(method_not_allowed(&m)),
    }
}
