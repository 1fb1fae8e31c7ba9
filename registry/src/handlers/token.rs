//! `/token`: the distribution token endpoint. GET with optional HTTP Basic
//! (what docker, podman, skopeo and go-containerregistry send), or POST
//! with an OAuth2 password-grant form. The password may be an API token
//! (`docker login -u <any name> -p berth_...`).

use crate::auth::{decode_basic, Identity, LoginError, Principal};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use crate::routes::query_pairs;
use crate::State;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::net::IpAddr;

/// Largest POST form accepted.
const MAX_FORM: usize = 64 * 1024;

pub async fn token(
    state: &State,
    req: Request<RequestBody>,
    peer: IpAddr,
) -> ApiResult<Response<Body>> {
    let (parts, incoming) = req.into_parts();
    let mut params = query_pairs(parts.uri.query());
    let mut credentials = match parts.headers.get(header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let basic = v
                .to_str()
                .ok()
                .and_then(|s| s.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
                .and_then(|(_, rest)| decode_basic(rest));
            Some(basic.ok_or_else(|| {
                bad_login(
                    "the token endpoint takes HTTP Basic credentials: Basic <base64 user:password>",
                )
            })?)
        }
    };
    match parts.method {
        Method::GET => {}
        Method::POST => {
            let bytes = http_body_util::Limited::new(incoming, MAX_FORM)
                .collect()
                .await
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Code::SizeInvalid,
                        format!("cannot read the token form (at most {MAX_FORM} bytes): {e}"),
                    )
                })?
                .to_bytes();
            let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
            let get = |k: &str| {
                form.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            if let (Some(u), Some(p)) = (get("username"), get("password")) {
                credentials = Some((u, p));
            }
            params.extend(form.into_iter().filter(|(k, _)| k == "scope"));
        }
        ref m => return Err(crate::handlers::method_not_allowed(m)),
    }
    let who = if !state.auth.enabled() {
        Identity::of(Principal::Unrestricted)
    } else {
        match credentials {
            // A verified client certificate stands for its namespace
            // account when no credentials are sent.
            None => Identity::of(
                match parts.extensions.get::<crate::auth::ClientCertificate>() {
                    Some(c) => Principal::Namespace(c.namespace.clone()),
                    None => Principal::Anonymous,
                },
            ),
            Some((user, password)) => state
                .auth
                .login(&state.storage.meta, &user, &password, peer)
                .await
                .map_err(|e| match e {
                    LoginError::Invalid(reason) => bad_login(&reason),
                    LoginError::Refused(e) => e,
                })?,
        }
    };
    let scopes: Vec<String> = params
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v)
        .collect();
    let json = state.auth.issue(&who, &scopes)?;
    tracing::debug!(principal = who.principal.name(), token = ?who.token.as_ref().map(|t| &t.id), ?scopes, "token issued");
    Ok(body::json_response(StatusCode::OK, &json))
}

fn bad_login(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, message).with_header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"berth\""),
    )
}
