//! `/v1/namespaces/{ns}/...`: what a namespace's own account manages
//! itself, for any namespace (a tool's, or one such as `toolforge` that is
//! no tool): its API tokens. Authorized once: the namespace's own account
//! or the admin. Revoking needs more than a pull-only token; creating
//! needs a password login, never an API token.

use crate::auth::Caller;
use crate::body::Body;
use crate::error::ApiResult;
use crate::handlers::{method_not_allowed, tokens};
use crate::request_body::RequestBody;
use crate::routes::NamespaceOp;
use crate::State;
use http::{Request, Response};

pub async fn handle(
    state: &State,
    caller: &Caller,
    ns: &str,
    op: NamespaceOp,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let auth = &state.auth;
    auth.require_owner(caller, ns)?;
    let query = req.uri().query().map(str::to_owned);
    match op {
        NamespaceOp::ListTokens => tokens::list_namespace(state, ns, query.as_deref()).await,
        NamespaceOp::CreateToken => {
            auth.require_write(caller)?;
            auth.require_password(caller)?;
            tokens::create_for_namespace(state, caller, ns, req).await
        }
        NamespaceOp::RevokeToken(id) => {
            auth.require_write(caller)?;
            tokens::revoke(state, &id, Some(ns)).await
        }
        NamespaceOp::MethodNotAllowed(m) => Err(method_not_allowed(&m)),
    }
}
