//! `/ui/...`: the web console. Callers are known by their session cookie
//! (never by an `Authorization` header, and the cookie is sent to `/ui/`
//! only, so a browser's session is no key to the APIs). Access is decided
//! here, once per operation, through `Auth` like every other surface:
//! admin pages need the admin, a namespace's or tool's pages their owner
//! (or the admin). Every POST but the sign-in carries the session's CSRF
//! token; the sign-in form carries its own, paired with a cookie. Errors
//! are pages, never JSON, and never a Basic-auth prompt.

use crate::auth::{Caller, Identity, LoginError, Principal};
use crate::body::{self, Body};
use crate::error::{ApiError, ApiResult, Code};
use crate::handlers::{self, admin::validate_namespace};
use crate::request_body::RequestBody;
use crate::routes::{query_get, query_pairs, validate_build_id, validate_tool, Reference, UiOp};
use crate::ui::session::{cookie, set_cookie, COOKIE, LOGIN_COOKIE};
use crate::ui::views::{self, Ctx};
use crate::ui::{pages, FORM_BYTES};
use crate::State;
use berth_storage::RepoName;
use http::{header, request::Parts, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use maud::Markup;
use std::net::IpAddr;
use std::time::Duration;

/// The console's own policy: its scripts and styles only, from berth
/// itself; no inline script; never framed; forms post only to berth.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../ui/assets/console.css");
const JS: &str = include_str!("../ui/assets/console.js");
/// How long the sign-in form's token lives.
const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(1800);

pub async fn handle(
    state: &State,
    op: UiOp,
    req: Request<RequestBody>,
    peer: IpAddr,
) -> ApiResult<Response<Body>> {
    if !state.ui.config.enabled {
        return Err(ApiError::not_found(
            Code::NameUnknown,
            "the web console is off ([ui] enabled = false)",
        ));
    }
    let (parts, body) = req.into_parts();
    let token = cookie(&parts.headers, COOKIE).map(str::to_owned);
    // Assets, `/` and the sign-in POST never look at the session: with
    // PostgreSQL a lookup is a write (the session's use), and a page
    // loads its stylesheet and script besides.
    let needs_session = !matches!(op, UiOp::Asset(_) | UiOp::Root | UiOp::Login);
    let mut session = match token.as_deref() {
        Some(t) if needs_session => state.ui.sessions.get(t).await?,
        _ => None,
    };
    // A session signed in with an API token lasts only while the token
    // does: revoked or expired, the session ends here.
    if let (Some(s), Some(cookie_value)) = (&session, token.as_deref()) {
        if let Some(api_token) = &s.token {
            let still = state
                .auth
                .token_origin(&state.storage.meta, &api_token.id, s.principal.name())
                .await;
            if still.is_err() {
                state.ui.sessions.end(cookie_value).await?;
                session = None;
            }
        }
    }
    let ctx = session.map(|s| Ctx {
        principal: s.principal,
        token: s.token,
        csrf: s.csrf,
        flash: s.flash,
        tool_prefix: state.builds.namespace(""),
    });
    match respond(
        state,
        op,
        &parts,
        body,
        peer,
        ctx.as_ref(),
        token.as_deref(),
    )
    .await
    {
        Ok(resp) => Ok(resp),
        Err(Failure::Api(e)) => {
            if e.status == StatusCode::NOT_FOUND
                && matches!(e.code, Code::NameUnknown)
                && parts.uri.path() == "/"
            {
                return Err(e);
            }
            if let Some(limit) = e.limit {
                state.metrics.limit_refused(limit);
            }
            let mut resp = html(
                e.status,
                views::error_page(ctx.as_ref(), e.status, &e.message),
            );
            for (name, value) in e.headers {
                if name != header::WWW_AUTHENTICATE {
                    resp.headers_mut().insert(name, value);
                }
            }
            Ok(resp)
        }
        Err(Failure::SignIn) => Ok(to_login(&parts)),
    }
}

/// Why a request was not answered with its page.
enum Failure {
    Api(ApiError),
    /// No live session: to the sign-in form (and back afterwards).
    SignIn,
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Api(e)
    }
}

impl From<berth_builds::BuildError> for Failure {
    fn from(e: berth_builds::BuildError) -> Failure {
        Failure::Api(e.into())
    }
}

impl From<berth_storage::StorageError> for Failure {
    fn from(e: berth_storage::StorageError) -> Failure {
        Failure::Api(e.into())
    }
}

type UiResult<T> = Result<T, Failure>;

fn forbidden(message: impl Into<String>) -> Failure {
    Failure::Api(ApiError::new(StatusCode::FORBIDDEN, Code::Denied, message))
}

#[allow(clippy::too_many_arguments)]
async fn respond(
    state: &State,
    op: UiOp,
    parts: &Parts,
    body: RequestBody,
    peer: IpAddr,
    ctx: Option<&Ctx>,
    token: Option<&str>,
) -> UiResult<Response<Body>> {
    let query = parts.uri.query();
    // Pages anyone may see.
    match &op {
        UiOp::Root => {
            let browser = parts
                .headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            return if browser {
                Ok(redirect("/ui/"))
            } else {
                Err(ApiError::not_found(Code::NameUnknown, "no such endpoint: /").into())
            };
        }
        UiOp::Asset(name) => return asset(name),
        UiOp::NotFound => {
            return Err(ApiError::not_found(
                Code::NameUnknown,
                format!("the console has no page {}", parts.uri.path()),
            )
            .into())
        }
        UiOp::MethodNotAllowed(m) => return Err(handlers::method_not_allowed(m).into()),
        UiOp::LoginForm => {
            let next = safe_next(query_get(&query_pairs(query), "next"));
            if ctx.is_some() {
                return Ok(redirect(&next));
            }
            return Ok(login_form(state, parts, &next, None, StatusCode::OK));
        }
        UiOp::Login => return login(state, parts, body, peer).await,
        _ => {}
    }
    let Some(ctx) = ctx else {
        return Err(Failure::SignIn);
    };
    let token = token.unwrap_or_default();
    let caller = Caller {
        token: ctx.token.clone(),
        ..Caller::new(ctx.principal.clone(), None)
    };
    let auth = &state.auth;
    let admin = |what: &str| -> UiResult<()> {
        auth.require_admin(&caller)
            .map_err(|_| forbidden(format!("{what} is for the admin only")))
    };
    let owner = |ns: &str| -> UiResult<()> {
        validate_namespace(ns)?;
        Ok(auth.require_owner(&caller, ns)?)
    };
    let tool_owner = |tool: &str| -> UiResult<String> {
        let tool = validate_tool(tool)?;
        auth.require_owner(&caller, &state.builds.namespace(&tool))?;
        Ok(tool)
    };
    // What changes a tool's things needs more than a pull-only API token,
    // as on the tool's API.
    let tool_writer = |tool: &str| -> UiResult<String> {
        let tool = tool_owner(tool)?;
        auth.require_write(&caller)?;
        Ok(tool)
    };
    // A POST is read (bounded) and its CSRF token checked before anything.
    let form = if parts.method == http::Method::POST {
        let form = read_form(parts, body).await?;
        let sent = query_get(&form, "csrf").unwrap_or("");
        if !crate::auth::secrets::secrets_equal(sent, &ctx.csrf) || sent.is_empty() {
            return Err(forbidden(
                "this form's CSRF token is missing or out of date: reload the page and try again",
            ));
        }
        Some(form)
    } else {
        None
    };
    let form = form.unwrap_or_default();
    let flash_to = async |message: &str, location: &str| -> Result<Response<Body>, Failure> {
        state.ui.sessions.flash(token, message).await?;
        Ok(redirect(location))
    };
    match op {
        UiOp::Home => match &ctx.principal {
            Principal::Namespace(ns) => Ok(redirect(&format!("/ui/namespaces/{ns}"))),
            _ => page(pages::overview(state, ctx).await?),
        },
        UiOp::Logout => {
            state.ui.sessions.end(token).await?;
            let mut resp = redirect("/ui/login");
            add_cookie(
                &mut resp,
                &set_cookie(COOKIE, "", "/ui", Duration::ZERO, state.ui.secure(parts)),
            );
            Ok(resp)
        }
        UiOp::Quotas => {
            admin("the quota list")?;
            page(pages::quotas(state, ctx, query).await?)
        }
        UiOp::SetLimit(ns) => {
            admin("setting a limit")?;
            let setting = pages::limit_setting(&form)?;
            let q = handlers::quota::set_limit(state, &ns, setting).await?;
            let back = safe_next(query_get(&form, "back"));
            flash_to(
                &format!(
                    "The limit of {ns} is now {} ({}).",
                    q.limit_bytes
                        .map(views::bytes)
                        .unwrap_or_else(|| "unlimited".into()),
                    q.limit_source
                ),
                &back,
            )
            .await
        }
        UiOp::Namespace(ns) => {
            owner(&ns)?;
            page(pages::namespace(state, ctx, &ns, query).await?)
        }
        UiOp::DeleteTag(ns) => {
            owner(&ns)?;
            let repo = RepoName::parse(query_get(&form, "repository").unwrap_or(""))
                .map_err(ApiError::from)?;
            let tag = query_get(&form, "tag").unwrap_or("").to_owned();
            if repo.namespace() != ns {
                return Err(forbidden(format!("{repo} is not in {ns}")));
            }
            berth_storage::names::validate_tag(&tag)
                .map_err(|e| ApiError::bad_request(Code::ManifestInvalid, e.to_string()))?;
            auth.require(&caller, &parts.headers, &repo, crate::auth::Action::Delete)?;
            handlers::manifests::delete(state, &repo, &Reference::Tag(tag.clone()), caller.actor())
                .await?;
            flash_to(
                &format!(
                    "Deleted tag {tag} of {repo}; garbage collection frees what only it kept."
                ),
                &format!("/ui/namespaces/{ns}"),
            )
            .await
        }
        UiOp::RotateCredentials(ns) => {
            admin("managing credentials")?;
            let created = handlers::admin::issue_credentials(state, &ns).await?;
            page(pages::credentials_shown(ctx, &created))
        }
        UiOp::RevokeCredentials(ns) => {
            admin("managing credentials")?;
            handlers::admin::revoke(state, &ns).await?;
            flash_to(
                &format!("The account {ns} is revoked; its sign-ins and sessions ended."),
                &format!("/ui/namespaces/{ns}"),
            )
            .await
        }
        // API tokens: what `/v1/namespaces/{ns}/tokens` allows, the same
        // way (the namespace's own account or the admin; no token makes
        // another, and a pull-only one changes nothing).
        UiOp::CreateToken(ns) => {
            owner(&ns)?;
            auth.require_write(&caller)?;
            auth.require_password(&caller)?;
            let request = pages::token_request(&form)?;
            let created =
                handlers::tokens::create(state, &caller, Some(ns.clone()), request).await?;
            page(pages::token_shown(ctx, &created))
        }
        UiOp::RevokeToken(ns, id) => {
            owner(&ns)?;
            auth.require_write(&caller)?;
            handlers::tokens::revoke(state, &id, Some(&ns)).await?;
            flash_to(
                &format!("The API token {id} is revoked; it stopped working at once."),
                &format!("/ui/namespaces/{ns}"),
            )
            .await
        }
        UiOp::Gc => {
            admin("garbage collection")?;
            page(pages::gc(state, ctx).await?)
        }
        UiOp::GcRun(id) => {
            admin("garbage collection")?;
            page(pages::gc_run(state, ctx, &id).await?)
        }
        UiOp::RunGc(job) => {
            admin("garbage collection")?;
            let dry_run = query_get(&form, "dry_run") != Some("false");
            let report = handlers::gc::run_job(state, &job, dry_run).await?;
            flash_to(
                &format!(
                    "{} run #{} of {job}: {}.",
                    if dry_run { "Dry" } else { "Real" },
                    report.id,
                    report.status
                ),
                &format!("/ui/gc/runs/{}", report.id),
            )
            .await
        }
        UiOp::Builds => match ctx.own_tool() {
            Some(tool) if !ctx.is_admin() => Ok(redirect(&format!("/ui/tools/{tool}/builds"))),
            _ => {
                admin("the builds of every tool")?;
                page(pages::builds(state, ctx).await?)
            }
        },
        UiOp::ToolBuilds(tool) => {
            let tool = tool_owner(&tool)?;
            page(pages::tool_builds(state, ctx, &tool).await?)
        }
        UiOp::StartBuild(tool) => {
            let tool = tool_writer(&tool)?;
            let request = pages::build_request(&form)?;
            let (record, warnings) = state.builds.start(&tool, request).await?;
            let mut msg = format!("Build {} queued.", record.id);
            for w in warnings {
                msg.push(' ');
                msg.push_str(&w);
            }
            flash_to(&msg, &format!("/ui/tools/{tool}/builds/{}", record.id)).await
        }
        UiOp::Build(tool, id) => {
            let tool = tool_owner(&tool)?;
            let id = validate_build_id(&id)?;
            page(pages::build(state, ctx, &tool, &id).await?)
        }
        UiOp::BuildLog(tool, id) => {
            let tool = tool_owner(&tool)?;
            let id = validate_build_id(&id)?;
            // The page shows the log as it is written, not the API's
            // JSON lines.
            let mut plain = http::HeaderMap::new();
            plain.insert(header::ACCEPT, HeaderValue::from_static("text/plain"));
            Ok(handlers::builds::logs(state, &tool, &id, query, &plain).await?)
        }
        UiOp::CancelBuild(tool, id) => {
            let tool = tool_writer(&tool)?;
            let id = validate_build_id(&id)?;
            let b = state.builds.cancel(&tool, &id).await?;
            flash_to(
                &format!("Build {} is {}.", b.id, b.status),
                &format!("/ui/tools/{tool}/builds/{}", b.id),
            )
            .await
        }
        UiOp::Clean(tool) => {
            let tool = tool_writer(&tool)?;
            let info = state.builds.clean(&tool).await?;
            flash_to(
                &info.join(" "),
                &format!("/ui/namespaces/{}", state.builds.namespace(&tool)),
            )
            .await
        }
        UiOp::SetTrigger(tool) => {
            let tool = tool_writer(&tool)?;
            let request = pages::trigger_request(&form)?;
            let (_, shown) = handlers::triggers::set(state, &tool, request).await?;
            match shown.secret {
                Some(_) => page(pages::trigger_shown(ctx, &tool, &shown)),
                None => {
                    flash_to(
                        "The build trigger is updated; its hook URL and secret are unchanged.",
                        &format!("/ui/tools/{tool}/builds"),
                    )
                    .await
                }
            }
        }
        UiOp::RotateTrigger(tool) => {
            let tool = tool_writer(&tool)?;
            let shown = handlers::triggers::rotate_secret(state, &tool).await?;
            page(pages::trigger_shown(ctx, &tool, &shown))
        }
        UiOp::DeleteTrigger(tool) => {
            let tool = tool_writer(&tool)?;
            handlers::triggers::remove(state, &tool).await?;
            flash_to(
                "The build trigger is deleted; remove the webhook from the forge too.",
                &format!("/ui/tools/{tool}/builds"),
            )
            .await
        }
        UiOp::Storage => {
            admin("storage over time")?;
            page(pages::storage(state, ctx).await?)
        }
        UiOp::Root
        | UiOp::Asset(_)
        | UiOp::NotFound
        | UiOp::MethodNotAllowed(_)
        | UiOp::LoginForm
        | UiOp::Login => Err(ApiError::internal("answered above").into()),
    }
}

fn page(markup: Markup) -> UiResult<Response<Body>> {
    Ok(html(StatusCode::OK, markup))
}

/// A console page with the console's security headers.
pub fn html(status: StatusCode, markup: Markup) -> Response<Body> {
    let mut resp = Response::new(body::full(markup.into_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    security_headers(h);
    resp
}

fn security_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// 303 See Other to a path of the console.
fn redirect(location: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/ui/")),
    );
    security_headers(h);
    resp
}

fn add_cookie(resp: &mut Response<Body>, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Where a signed-out visitor goes: the sign-in form, then back here.
fn to_login(parts: &Parts) -> Response<Body> {
    if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
        return html(
            StatusCode::FORBIDDEN,
            views::error_page(
                None,
                StatusCode::FORBIDDEN,
                "your session has ended: sign in again and repeat the action",
            ),
        );
    }
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/ui/");
    if here.contains("/log") {
        // The log stream a script follows: a page would be no use.
        let mut resp = body::status_only(StatusCode::UNAUTHORIZED);
        security_headers(resp.headers_mut());
        return resp;
    }
    redirect(&format!("/ui/login?next={}", views::q(here)))
}

/// Only paths of the console are places to return to after sign-in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && n.len() <= 512
                && !n.contains("//")
                && !n.contains('\\')
                && !n.starts_with("/ui/logout")
                && n.chars().all(|c| !c.is_control()) =>
        {
            n.to_owned()
        }
        _ => "/ui/".to_owned(),
    }
}

fn asset(name: &str) -> UiResult<Response<Body>> {
    let (text, kind) = match name {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => {
            return Err(ApiError::not_found(Code::NameUnknown, format!("no asset {name:?}")).into())
        }
    };
    let mut resp = Response::new(body::full(text));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Pages name assets with berth's version, so a new berth is a new URL.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    Ok(resp)
}

/// A POST body as form fields, at most `FORM_BYTES`, from a page of this
/// console: a browser's `Origin` (sent with every form POST) must name
/// this host, and `Sec-Fetch-Site` must not say another site.
async fn read_form(parts: &Parts, body: RequestBody) -> UiResult<Vec<(String, String)>> {
    if let Some(site) = parts
        .headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
    {
        if site != "same-origin" && site != "none" {
            return Err(forbidden(
                "forms are only taken from the console's own pages",
            ));
        }
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
        if host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return Err(forbidden(
                "forms are only taken from the console's own pages",
            ));
        }
    }
    let bytes = http_body_util::Limited::new(body, FORM_BYTES)
        .collect()
        .await
        .map_err(|e| {
            ApiError::bad_request(
                Code::SizeInvalid,
                format!("cannot read the form (at most {FORM_BYTES} bytes): {e}"),
            )
        })?
        .to_bytes();
    Ok(form_urlencoded::parse(&bytes).into_owned().collect())
}

fn login_form(
    state: &State,
    parts: &Parts,
    next: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response<Body> {
    let token = crate::auth::secrets::generate_secret();
    let mut resp = html(
        status,
        views::login_page(&token, next, error, state.auth.enabled()),
    );
    add_cookie(
        &mut resp,
        &set_cookie(
            LOGIN_COOKIE,
            &token,
            "/ui/login",
            LOGIN_TOKEN_TTL,
            state.ui.secure(parts),
        ),
    );
    resp
}

/// `POST /ui/login`: the form's own token must match its cookie; then the
/// same `Auth::login` as HTTP Basic (its throttle and caps included).
async fn login(
    state: &State,
    parts: &Parts,
    body: RequestBody,
    peer: IpAddr,
) -> UiResult<Response<Body>> {
    let form = read_form(parts, body).await?;
    let next = safe_next(query_get(&form, "next"));
    let sent = query_get(&form, "login_csrf").unwrap_or("");
    let expected = cookie(&parts.headers, LOGIN_COOKIE).unwrap_or("");
    if sent.is_empty() || !crate::auth::secrets::secrets_equal(sent, expected) {
        return Ok(login_form(
            state,
            parts,
            &next,
            Some("The sign-in form expired or came from elsewhere: please sign in again."),
            StatusCode::FORBIDDEN,
        ));
    }
    let user = query_get(&form, "username").unwrap_or("");
    let password = query_get(&form, "password").unwrap_or("");
    let identity = if !state.auth.enabled() {
        Identity::of(Principal::Unrestricted)
    } else {
        match state
            .auth
            .login(&state.storage.meta, user, password, peer)
            .await
        {
            Ok(p) => p,
            Err(LoginError::Invalid(_)) => {
                return Ok(login_form(
                    state,
                    parts,
                    &next,
                    Some("Wrong user name or password."),
                    StatusCode::UNAUTHORIZED,
                ))
            }
            Err(LoginError::Refused(e)) => {
                if let Some(limit) = e.limit {
                    state.metrics.limit_refused(limit);
                }
                let message = e.message.clone();
                let mut resp = login_form(state, parts, &next, Some(&message), e.status);
                for (name, value) in e.headers {
                    if name != header::WWW_AUTHENTICATE {
                        resp.headers_mut().insert(name, value);
                    }
                }
                return Ok(resp);
            }
        }
    };
    let principal = identity.principal.clone();
    let value = state.ui.sessions.create(identity).await?;
    tracing::info!(%peer, user = principal.name(), "console sign-in");
    let secure = state.ui.secure(parts);
    // A tool's account lands on its own namespace.
    let to = match &principal {
        Principal::Namespace(ns) if next == "/ui/" => format!("/ui/namespaces/{ns}"),
        _ => next,
    };
    let mut resp = redirect(&to);
    add_cookie(
        &mut resp,
        &set_cookie(COOKIE, &value, "/ui", state.ui.config.session_ttl, secure),
    );
    add_cookie(
        &mut resp,
        &set_cookie(LOGIN_COOKIE, "", "/ui/login", Duration::ZERO, secure),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_console_paths_are_returned_to() {
        assert_eq!(
            safe_next(Some("/ui/quotas?sort=name")),
            "/ui/quotas?sort=name"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/ui/\\evil",
            "/admin/v1/quotas",
            "/ui/logout",
            "/ui/a\nb",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }

    #[test]
    fn the_console_policy_allows_nothing_inline() {
        assert!(CSP.contains("script-src 'self';"));
        assert!(CSP.contains("frame-ancestors 'none'"));
        assert!(!CSP.contains("unsafe-inline"));
    }

    #[test]
    fn assets_are_compiled_in() {
        assert!(asset("console.css").is_ok());
        assert!(asset("console.js").is_ok());
        assert!(asset("../../etc/passwd").is_err());
    }

    #[test]
    fn session_cookies_are_strict() {
        let c = set_cookie(COOKIE, "x", "/ui", Duration::from_secs(5), false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
    }
}
