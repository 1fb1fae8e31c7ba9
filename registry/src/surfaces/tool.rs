//! `/v1/tool/{tool}/...`: a tool's own API, in Toolforge's shapes (builds,
//! quota, clean, and the build trigger: starting builds on a git push is
//! authorized exactly as starting a build is). Authorized once: the tool's own account, or the admin.

use crate::auth::Caller;
use crate::body::Body;
use crate::error::ApiResult;
use crate::handlers::{builds, method_not_allowed, quota, triggers};
use crate::request_body::RequestBody;
use crate::routes::ToolOp;
use crate::State;
use http::{Request, Response};

pub async fn handle(
    state: &State,
    caller: &Caller,
    tool: &str,
    op: ToolOp,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    // Toolforge's clients read errors from `error` and `messages`.
    answer(state, caller, tool, op, req)
        .await
        .map_err(|e| e.in_toolforge_shape())
}

async fn answer(
    state: &State,
    caller: &Caller,
    tool: &str,
    op: ToolOp,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let namespace = state.builds.namespace(tool);
    state.auth.require_owner(caller, &namespace)?;
    if op.writes() {
        state.auth.require_write(caller)?;
    }
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match op {
        ToolOp::Quota => quota::tool(state, &namespace).await,
        ToolOp::ListBuilds => builds::list(state, tool).await,
        ToolOp::StartBuild => builds::start(state, tool, req).await,
        ToolOp::ShowBuild(id) => builds::show(state, tool, &id).await,
        ToolOp::DeleteBuild(id) => builds::delete(state, tool, &id, query).await,
        ToolOp::BuildLogs(id) => builds::logs(state, tool, &id, query, req.headers()).await,
        ToolOp::CancelBuild(id) => builds::cancel(state, tool, &id).await,
        ToolOp::Clean => builds::clean(state, tool).await,
        ToolOp::ShowTrigger => triggers::show(state, tool).await,
        ToolOp::PutTrigger => triggers::put(state, tool, req).await,
        ToolOp::DeleteTrigger => triggers::delete(state, tool).await,
        ToolOp::RotateTrigger => triggers::rotate(state, tool).await,
        ToolOp::MethodNotAllowed(m) => Err(method_not_allowed(&m)),
    }
}
