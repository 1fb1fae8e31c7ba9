//! `/admin/v1/...`: the admin API. Every route here has already been
//! checked to come from the admin.

use crate::auth::secrets;
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::State;
use http::{Response, StatusCode};

/// Names that can never be namespace accounts: they are principals already.
const RESERVED: &[&str] = &[
    crate::auth::ADMIN_USER,
    crate::auth::ANONYMOUS,
    "unrestricted",
];

/// Checks that `ns` can own repositories and an account.
pub fn validate_namespace(ns: &str) -> ApiResult<()> {
    berth_storage::RepoName::parse(ns)?;
    if ns.contains('/') || RESERVED.contains(&ns) {
        return Err(ApiError::bad_request(
            Code::NameInvalid,
            format!("{ns:?} cannot be a namespace account: it must be one path component and not one of {RESERVED:?}"),
        ));
    }
    Ok(())
}

/// `POST .../credentials`: creates or rotates the namespace's secret and
/// shows it once.
pub async fn create_credentials(state: &State, ns: &str) -> ApiResult<Response<Body>> {
    let created = issue_credentials(state, ns).await?;
    Ok(body::json_response(
        if created.rotated {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        &created,
    ))
}

/// Creates or rotates `ns`'s secret (the API and the console). Sign-ins
/// with the old one end: remembered logins and console sessions.
pub async fn issue_credentials(state: &State, ns: &str) -> ApiResult<crate::api::Credentials> {
    validate_namespace(ns)?;
    let secret = secrets::generate_secret();
    let to_hash = secret.clone();
    let hash = tokio::task::spawn_blocking(move || secrets::hash_secret(&to_hash))
        .await
        .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))?;
    let created = state.storage.meta.set_namespace_secret(ns, hash).await?;
    credentials_changed(state, ns).await?;
    tracing::info!(namespace = ns, created, "namespace credentials issued");
    Ok(crate::api::Credentials {
        username: ns.to_owned(),
        password: secret,
        namespace: ns.to_owned(),
        rotated: !created,
    })
}

/// `DELETE .../credentials`: revokes the namespace's account.
pub async fn revoke_credentials(state: &State, ns: &str) -> ApiResult<Response<Body>> {
    revoke(state, ns).await?;
    Ok(body::status_only(StatusCode::NO_CONTENT))
}

/// Revokes `ns`'s account (the API and the console).
pub async fn revoke(state: &State, ns: &str) -> ApiResult<()> {
    validate_namespace(ns)?;
    if !state.storage.meta.delete_namespace_account(ns).await? {
        return Err(ApiError::not_found(
            Code::NameUnknown,
            format!("namespace {ns} has no credentials"),
        ));
    }
    credentials_changed(state, ns).await?;
    tracing::info!(namespace = ns, "namespace credentials revoked");
    Ok(())
}

async fn credentials_changed(state: &State, ns: &str) -> ApiResult<()> {
    state.auth.credentials_changed();
    state
        .ui
        .sessions
        .end_all(&crate::auth::Principal::Namespace(ns.to_owned()))
        .await
}
