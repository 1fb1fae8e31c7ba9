//! API tokens: create (the token shown once), list (never a secret),
//! revoke; for the admin (`/admin/v1/tokens`, any namespace's tokens and
//! admin tokens) and for a namespace's own account
//! (`/v1/namespaces/{ns}/tokens`). The surfaces decided access already.

use crate::api::{self, json_body, CreateToken, TokenScope};
use crate::auth::{api_token, Caller};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs};
use crate::State;
use berth_storage::meta::{ApiToken, CreateTokenOutcome, TokenOwner};
use berth_storage::now_ms;
use http::{Request, Response, StatusCode};

/// Expired tokens stay listed this long, then go at the owner's next
/// creation (until then they count against the cap).
const EXPIRED_KEPT_MS: i64 = 7 * 86_400_000;
/// Most tokens one listing answers; `next` pages on.
const LIST_MAX: usize = 1000;

/// `POST /admin/v1/tokens`: `{"namespace": ...}` or `{"admin": true}`.
pub async fn create_admin(
    state: &State,
    caller: &Caller,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    let body: CreateToken = json_body(req).await?;
    let owner = match (body.admin, &body.namespace) {
        (true, None) => None,
        (false, Some(ns)) => {
            super::admin::validate_namespace(ns)?;
            Some(ns.clone())
        }
        _ => {
            return Err(ApiError::bad_request(
                Code::Unsupported,
                "send either \"namespace\": \"<namespace>\" or \"admin\": true",
            ))
        }
    };
    created(create(state, caller, owner, body).await?)
}

/// `POST /v1/namespaces/{ns}/tokens`: a token of `ns`.
pub async fn create_for_namespace(
    state: &State,
    caller: &Caller,
    ns: &str,
    req: Request<RequestBody>,
) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
    let body: CreateToken = json_body(req).await?;
    if body.admin || body.namespace.as_deref().is_some_and(|n| n != ns) {
        return Err(ApiError::bad_request(
            Code::Unsupported,
            format!("this path makes tokens of {ns} only; leave out \"namespace\" and \"admin\""),
        ));
    }
    created(create(state, caller, Some(ns.to_owned()), body).await?)
}

fn created(token: api::TokenCreated) -> ApiResult<Response<Body>> {
    Ok(body::json_response(StatusCode::CREATED, &token))
}

/// Makes a token for `namespace` (`None`: an admin token); the answer
/// holds the token, to be shown once. The API and the console both call
/// this after deciding access.
pub async fn create(
    state: &State,
    caller: &Caller,
    namespace: Option<String>,
    body: CreateToken,
) -> ApiResult<api::TokenCreated> {
    api_token::validate_name(&body.name)
        .map_err(|e| ApiError::bad_request(Code::NameInvalid, e))?;
    let owner = namespace.as_deref().unwrap_or("the admin").to_owned();
    let scope = match (&namespace, body.scope) {
        (None, None | Some(TokenScope::Admin)) => TokenScope::Admin,
        (Some(_), None) => TokenScope::Push,
        (Some(_), Some(s @ (TokenScope::Pull | TokenScope::Push))) => s,
        (None, Some(s)) => {
            return Err(ApiError::bad_request(
                Code::Unsupported,
                format!("an admin token's scope is \"admin\", not {:?}", s.as_str()),
            ))
        }
        (Some(_), Some(TokenScope::Admin)) => {
            return Err(ApiError::bad_request(
                Code::Unsupported,
                "a namespace's token has scope \"pull\" or \"push\"; admin tokens are made with {\"admin\": true} on the admin API",
            ))
        }
    };
    let config = state.auth.config();
    let lifetime = match &body.expires_in {
        None => config.api_token_default_lifetime,
        Some(text) => humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_request(
                Code::Unsupported,
                format!(
                    "expires_in {:?} is not a duration such as \"90d\" or \"12h\": {e}",
                    text.chars().take(64).collect::<String>()
                ),
            )
        })?,
    };
    let max = config.api_token_max_lifetime;
    if lifetime < std::time::Duration::from_secs(1) || lifetime > max {
        return Err(ApiError::bad_request(
            Code::Unsupported,
            format!(
                "expires_in must be between 1s and {} ([auth] api_token_max_lifetime)",
                humantime::format_duration(max)
            ),
        ));
    }
    let cap = config.limits.api_tokens_per_namespace;
    let now = now_ms();
    let expires_ms = now.saturating_add(lifetime.as_millis().min(i64::MAX as u128) as i64);
    // An id drawn twice is a 2^-82 chance; a few draws settle it.
    for _ in 0..4 {
        let (id, secret, token) = api_token::generate();
        let row = ApiToken {
            secret_hash: api_token::hash(&id, &secret),
            id,
            name: body.name.clone(),
            namespace: namespace.clone(),
            scope,
            created_ms: now,
            expires_ms,
            last_used_ms: None,
            created_by: caller.principal.name().to_owned(),
        };
        match state
            .storage
            .meta
            .create_api_token(row.clone(), cap, now - EXPIRED_KEPT_MS)
            .await?
        {
            CreateTokenOutcome::Created => {
                tracing::info!(
                    token = %row.id,
                    name = %row.name,
                    owner = %owner,
                    scope = scope.as_str(),
                    expires_ms,
                    created_by = %row.created_by,
                    "API token created"
                );
                return Ok(api::TokenCreated {
                    info: api::TokenInfo::new(&row, now),
                    token,
                });
            }
            CreateTokenOutcome::IdTaken => continue,
            CreateTokenOutcome::NameTaken(other) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    Code::Denied,
                    format!(
                        "{owner} has a live token named {:?} (id {other}); revoke it or choose another name",
                        body.name
                    ),
                ))
            }
            CreateTokenOutcome::LimitReached(n) => {
                return Err(ApiError::too_many(
                    "api_tokens_per_namespace",
                    format!(
                        "{owner} has {n} API tokens, the limit ([limits] api_tokens_per_namespace = {cap}); revoke some first (expired tokens count until 7 days after they expire)"
                    ),
                ))
            }
        }
    }
    Err(ApiError::internal("could not draw an unused token id"))
}

/// `GET /admin/v1/tokens[?namespace=NS|?admin=true][&n=&last=]`
pub async fn list_admin(state: &State, query: Option<&str>) -> ApiResult<Response<Body>> {
    let pairs = query_pairs(query);
    let owner = match (
        query_get(&pairs, "namespace"),
        query_get(&pairs, "admin").is_some_and(|v| v == "true"),
    ) {
        (Some(ns), false) => {
            super::admin::validate_namespace(ns)?;
            TokenOwner::Namespace(ns.to_owned())
        }
        (None, true) => TokenOwner::Admin,
        (None, false) => TokenOwner::All,
        (Some(_), true) => {
            return Err(ApiError::bad_request(
                Code::Unsupported,
                "ask for ?namespace=<ns> or ?admin=true, not both",
            ))
        }
    };
    list(state, owner, &pairs).await
}

/// `GET /v1/namespaces/{ns}/tokens[?n=&last=]`
pub async fn list_namespace(
    state: &State,
    ns: &str,
    query: Option<&str>,
) -> ApiResult<Response<Body>> {
    super::admin::validate_namespace(ns)?;
    list(
        state,
        TokenOwner::Namespace(ns.to_owned()),
        &query_pairs(query),
    )
    .await
}

async fn list(
    state: &State,
    owner: TokenOwner,
    pairs: &[(String, String)],
) -> ApiResult<Response<Body>> {
    let n = match query_get(pairs, "n") {
        None => LIST_MAX,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(Code::Unsupported, "n must be a number"))?
            .clamp(1, LIST_MAX),
    };
    let last = query_get(pairs, "last").map(|s| s.chars().take(64).collect::<String>());
    let mut rows = state.storage.meta.api_tokens(owner, last, n + 1).await?;
    let next = (rows.len() > n).then(|| {
        rows.truncate(n);
        rows.last().map(|t| t.id.clone()).unwrap_or_default()
    });
    let now = now_ms();
    Ok(body::json_response(
        StatusCode::OK,
        &api::TokenList {
            tokens: rows.iter().map(|t| api::TokenInfo::new(t, now)).collect(),
            next,
        },
    ))
}

/// `DELETE .../tokens/{id}`: revokes at once. `namespace` restricts which
/// tokens may go (a namespace's own path): another's token is "not found".
pub async fn revoke(state: &State, id: &str, namespace: Option<&str>) -> ApiResult<Response<Body>> {
    let unknown = || {
        ApiError::not_found(
            Code::NameUnknown,
            format!(
                "no API token {:?}{}",
                id.chars().take(64).collect::<String>(),
                namespace.map(|ns| format!(" in {ns}")).unwrap_or_default()
            ),
        )
    };
    if !api_token::valid_id(id) {
        return Err(unknown());
    }
    let restrict = namespace.map(|ns| Some(ns.to_owned()));
    if !state.storage.meta.delete_api_token(id, restrict).await? {
        return Err(unknown());
    }
    state.auth.credentials_changed();
    tracing::info!(token = %id, "API token revoked");
    Ok(body::status_only(StatusCode::NO_CONTENT))
}
