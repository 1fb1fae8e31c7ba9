//! `/v2/...`: the OCI distribution API. Each operation needs one action on
//! one repository (`needs`); it is checked once, here, before any handler
//! runs. `/v2/` itself only asks who is calling (that 401 is how clients
//! find the token endpoint), and the catalog lists only what the caller may
//! read.

use crate::auth::{Action, Caller};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::handlers::{blobs, discovery, manifests, method_not_allowed, uploads};
use crate::request_body::RequestBody;
use crate::routes::OciOp;
use crate::State;
use berth_storage::RepoName;
use http::{Request, Response, StatusCode};

/// The repository an operation touches and what it does to it.
fn needs(op: &OciOp) -> Option<(&RepoName, Action)> {
    use OciOp::*;
    Some(match op {
        Tags(repo)
        | Referrers(repo, _)
        | GetManifest { repo, .. }
        | ImpossibleManifest { repo, .. }
        | GetBlob { repo, .. } => (repo, Action::Pull),
        PutManifest { repo, .. }
        | StartUpload(repo)
        | PatchUpload(repo, _)
        | FinishUpload(repo, _)
        | UploadStatus(repo, _)
        | CancelUpload(repo, _) => (repo, Action::Push),
        DeleteManifest { repo, .. } | DeleteBlob { repo, .. } => (repo, Action::Delete),
        Base | Catalog | MethodNotAllowed(_) => return None,
    })
}

pub async fn handle(
    state: &State,
    caller: &Caller,
    op: OciOp,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let auth = &state.auth;
    if let Some((repo, action)) = needs(&op) {
        auth.require(caller, req.headers(), repo, action)?;
    }
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match op {
        OciOp::Base => {
            auth.require_known(caller, req.headers())?;
            Ok(body::json_response(StatusCode::OK, &serde_json::json!({})))
        }
        OciOp::Catalog => discovery::catalog(state, query, |ns| auth.may_list(caller, ns)).await,
        OciOp::Tags(repo) => discovery::tags(state, &repo, query).await,
        OciOp::Referrers(repo, digest) => discovery::referrers(state, &repo, &digest, query).await,
        OciOp::GetManifest {
            repo,
            reference,
            head,
        } => manifests::get(state, &repo, &reference, head).await,
        OciOp::PutManifest { repo, reference } => {
            manifests::put(state, &repo, &reference, req, caller.actor()).await
        }
        OciOp::DeleteManifest { repo, reference } => {
            manifests::delete(state, &repo, &reference, caller.actor()).await
        }
        OciOp::ImpossibleManifest { repo, reference } => Err(ApiError::not_found(
            Code::ManifestUnknown,
            format!(
                "manifest {:?} not found in repository {repo}: it is neither a tag nor a digest",
                reference.chars().take(128).collect::<String>()
            ),
        )),
        OciOp::GetBlob { repo, digest, head } => {
            let headers = req.headers().clone();
            blobs::get(state, &repo, &digest, &headers, head).await
        }
        OciOp::DeleteBlob { repo, digest } => blobs::delete(state, &repo, &digest).await,
        // A mount needs pull rights on the source; without them the client
        // gets an ordinary upload and learns nothing.
        OciOp::StartUpload(repo) => {
            uploads::start(state, &repo, req, |from| {
                auth.may(caller, from, Action::Pull)
            })
            .await
        }
        OciOp::PatchUpload(repo, id) => uploads::patch(state, &repo, &id, req).await,
        OciOp::FinishUpload(repo, id) => uploads::put(state, &repo, &id, req).await,
        OciOp::UploadStatus(repo, id) => uploads::status(state, &repo, &id).await,
        OciOp::CancelUpload(repo, id) => uploads::cancel(state, &repo, &id).await,
        OciOp::MethodNotAllowed(m) => Err(method_not_allowed(&m)),
    }
}
