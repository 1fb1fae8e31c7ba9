//! Turns a request path into a route. Repository names contain slashes, so
//! `/v2/<name>/<kind>/<rest>` is parsed from the right; the name and every
//! reference then go through the spec grammar (berth_storage::names and
//! digest). Paths are never percent-decoded: `%2F` is simply not a valid
//! name character.

use crate::error::{ApiError, ApiResult, Code};
use berth_storage::{Digest, RepoName};
use http::Method;

/// Longest path berth will look at; anything longer is refused before parsing.
const MAX_PATH: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn as_string(&self) -> String {
        match self {
            Reference::Tag(t) => t.clone(),
            Reference::Digest(d) => d.to_string(),
        }
    }
}

/// What a request asks for: one operation of one surface. `parse` reads
/// the method and the path together, so each surface's module handles
/// operations, never methods. A known path with a method it does not take
/// becomes its surface's `MethodNotAllowed`, answered where that surface
/// answers its errors (the admin's and a tool's only after authorizing, so
/// they tell strangers nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/...`: the distribution API.
    Oci(OciOp),
    /// `/admin/v1/...`: the admin's API.
    Admin(AdminOp),
    /// `/v1/tool/<tool>/...`: a tool's own API, in Toolforge's shapes.
    Tool(String, ToolOp),
    /// `/v1/namespaces/<ns>/...`: what a namespace's own account manages
    /// (any namespace, tool or not). The name is as sent: validated after
    /// the caller is known to own it.
    Namespace(String, NamespaceOp),
    /// `/healthz`, `/metrics`, `/token`: for operators and clients' logins.
    Ops(OpsOp),
    /// `/ui/...` (and `/` for browsers): the web console.
    Ui(UiOp),
    /// `/v1/hooks/<hook id>`: forges' push deliveries to build triggers,
    /// authenticated by their signature only.
    Hook(HookOp),
}

/// A delivery to a build trigger's hook. The id is as sent: an id that
/// cannot be a hook's is answered as an unknown hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOp {
    Deliver(String),
    MethodNotAllowed(Method),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciOp {
    /// `GET /v2/`
    Base,
    Catalog,
    Tags(RepoName),
    GetManifest {
        repo: RepoName,
        reference: Reference,
        head: bool,
    },
    PutManifest {
        repo: RepoName,
        reference: Reference,
    },
    DeleteManifest {
        repo: RepoName,
        reference: Reference,
    },
    /// GET, HEAD or DELETE of a reference that is neither a tag nor a
    /// digest: no such manifest can exist (404 once the caller may pull).
    ImpossibleManifest {
        repo: RepoName,
        reference: String,
    },
    GetBlob {
        repo: RepoName,
        digest: Digest,
        head: bool,
    },
    DeleteBlob {
        repo: RepoName,
        digest: Digest,
    },
    StartUpload(RepoName),
    PatchUpload(RepoName, String),
    FinishUpload(RepoName, String),
    UploadStatus(RepoName, String),
    CancelUpload(RepoName, String),
    Referrers(RepoName, Digest),
    MethodNotAllowed(Method),
}

/// The admin's operations. Names and ids are as sent: they are validated
/// by the handlers, after the caller is known to be the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOp {
    CreateCredentials(String),
    RevokeCredentials(String),
    ListQuotas,
    ReconcileQuotas,
    ShowQuota(String),
    SetQuota(String),
    RunGc(String),
    ListGcRuns,
    ListPins,
    AddPin,
    DeletePin(String),
    ShowRetention,
    SetRetention(String),
    DeleteRetention(String),
    ListTokens,
    CreateToken,
    RevokeToken(String),
    ListNotifications,
    NotificationDeliveries(String),
    /// Any other `/admin/...` path.
    NotFound,
    MethodNotAllowed(Method),
}

/// A tool's operations (the tool is validated by `parse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolOp {
    Quota,
    ListBuilds,
    StartBuild,
    ShowBuild(String),
    DeleteBuild(String),
    BuildLogs(String),
    CancelBuild(String),
    Clean,
    MethodNotAllowed(Method),
    ShowTrigger,
    PutTrigger,
    DeleteTrigger,
    RotateTrigger,
}

impl ToolOp {
    /// Whether the operation changes the tool's things (a pull-only API
    /// token may not).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            ToolOp::StartBuild | ToolOp::DeleteBuild(_) | ToolOp::CancelBuild(_) | ToolOp::Clean
        )
    }
}

/// A namespace's own operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceOp {
    ListTokens,
    CreateToken,
    RevokeToken(String),
    MethodNotAllowed(Method),
}

/// The web console's pages and forms. Names and ids are as sent: the
/// surface validates them after it knows who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiOp {
    /// `GET /`: browsers are sent to the console.
    Root,
    /// `GET /ui/`: the overview (admin) or the tool's own namespace.
    Home,
    LoginForm,
    Login,
    Logout,
    Asset(String),
    Quotas,
    SetLimit(String),
    Namespace(String),
    DeleteTag(String),
    RotateCredentials(String),
    RevokeCredentials(String),
    /// `POST /ui/namespaces/{ns}/tokens`: a new API token, shown once.
    CreateToken(String),
    /// `POST /ui/namespaces/{ns}/tokens/{id}/revoke`
    RevokeToken(String, String),
    Gc,
    GcRun(String),
    RunGc(String),
    Builds,
    ToolBuilds(String),
    StartBuild(String),
    /// `POST /ui/tools/{tool}/trigger`: set the build trigger.
    SetTrigger(String),
    /// `POST /ui/tools/{tool}/trigger/rotate`
    RotateTrigger(String),
    /// `POST /ui/tools/{tool}/trigger/delete`
    DeleteTrigger(String),
    Build(String, String),
    BuildLog(String, String),
    CancelBuild(String, String),
    Clean(String),
    Storage,
    NotFound,
    MethodNotAllowed(Method),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpsOp {
    Healthz,
    Metrics,
    Token,
    MethodNotAllowed(Method),
}

/// Parses a request's method and path. `Ok(None)` means "not a route
/// berth has" (404); an error is a malformed name or reference (400).
pub fn parse(method: &Method, path: &str) -> ApiResult<Option<Route>> {
    if path.len() > MAX_PATH {
        return Err(ApiError::not_found(
            Code::NameInvalid,
            format!(
                "request path is {} bytes long; the limit is {MAX_PATH}",
                path.len()
            ),
        ));
    }
    let m = method.clone();
    let ops = |op: OpsOp, allowed: &[Method]| {
        Route::Ops(if allowed.is_empty() || allowed.contains(&m) {
            op
        } else {
            OpsOp::MethodNotAllowed(m.clone())
        })
    };
    match path {
        "/healthz" => return Ok(Some(ops(OpsOp::Healthz, &[]))),
        "/metrics" => return Ok(Some(ops(OpsOp::Metrics, &[]))),
        "/token" => return Ok(Some(ops(OpsOp::Token, &[Method::GET, Method::POST]))),
        "/" => return Ok(Some(Route::Ui(parse_ui(method, "")))),
        "/ui" => return Ok(Some(Route::Ui(parse_ui(method, "/")))),
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("/ui/") {
        return Ok(Some(Route::Ui(parse_ui(method, &format!("/{rest}")))));
    }
    if let Some(rest) = path.strip_prefix("/v1/tool/") {
        return parse_tool(method, rest);
    }
    if let Some(rest) = path.strip_prefix("/v1/namespaces/") {
        return Ok(parse_namespace(method, rest));
    }
    if let Some(id) = path.strip_prefix("/v1/hooks/") {
        if id.is_empty() || id.contains('/') {
            return Ok(None);
        }
        return Ok(Some(Route::Hook(if method == Method::POST {
            HookOp::Deliver(id.to_owned())
        } else {
            HookOp::MethodNotAllowed(method.clone())
        })));
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        return Ok(Some(Route::Admin(parse_admin(method, rest))));
    }
    let Some(rest) = path.strip_prefix("/v2") else {
        return Ok(None);
    };
    Ok(parse_oci(method, rest)?.map(Route::Oci))
}

fn parse_tool(method: &Method, rest: &str) -> ApiResult<Option<Route>> {
    use Method as M;
    let parts: Vec<&str> = rest.split('/').collect();
    let (tool, op) = match (parts.as_slice(), method) {
        ([tool, "quotas"], &M::GET) => (tool, ToolOp::Quota),
        ([tool, "builds"], &M::GET) => (tool, ToolOp::ListBuilds),
        ([tool, "builds"], &M::POST) => (tool, ToolOp::StartBuild),
        ([tool, "builds", id], &M::GET) => (tool, ToolOp::ShowBuild(validate_build_id(id)?)),
        ([tool, "builds", id], &M::DELETE) => (tool, ToolOp::DeleteBuild(validate_build_id(id)?)),
        ([tool, "builds", id, "logs"], &M::GET) => {
            (tool, ToolOp::BuildLogs(validate_build_id(id)?))
        }
        ([tool, "builds", id, "cancel"], &M::PUT | &M::POST) => {
            (tool, ToolOp::CancelBuild(validate_build_id(id)?))
        }
        ([tool, "clean"], &M::POST) => (tool, ToolOp::Clean),
        ([tool, "trigger"], &M::GET) => (tool, ToolOp::ShowTrigger),
        ([tool, "trigger"], &M::PUT) => (tool, ToolOp::PutTrigger),
        ([tool, "trigger"], &M::DELETE) => (tool, ToolOp::DeleteTrigger),
        ([tool, "trigger", "rotate"], &M::POST) => (tool, ToolOp::RotateTrigger),
        ([tool, "quotas" | "builds" | "clean" | "trigger"], _)
        | ([tool, "trigger", "rotate"], _)
        | ([tool, "builds", _], _)
        | ([tool, "builds", _, "logs" | "cancel"], _) => {
            (tool, ToolOp::MethodNotAllowed(method.clone()))
        }
        _ => return Ok(None),
    };
    Ok(Some(Route::Tool(validate_tool(tool)?, op)))
}

fn parse_namespace(method: &Method, rest: &str) -> Option<Route> {
    use Method as M;
    let parts: Vec<&str> = rest.split('/').collect();
    let (ns, op) = match (parts.as_slice(), method) {
        ([ns, "tokens"], &M::GET) => (ns, NamespaceOp::ListTokens),
        ([ns, "tokens"], &M::POST) => (ns, NamespaceOp::CreateToken),
        ([ns, "tokens", id], &M::DELETE) => (ns, NamespaceOp::RevokeToken((*id).to_owned())),
        ([ns, "tokens"], _) | ([ns, "tokens", _], _) => {
            (ns, NamespaceOp::MethodNotAllowed(method.clone()))
        }
        _ => return None,
    };
    Some(Route::Namespace((*ns).to_owned(), op))
}

fn parse_admin(method: &Method, rest: &str) -> AdminOp {
    use Method as M;
    let parts: Vec<&str> = rest.split('/').collect();
    let own = |s: &&str| (*s).to_owned();
    match (parts.as_slice(), method) {
        (["v1", "namespaces", ns, "credentials"], &M::POST) => AdminOp::CreateCredentials(own(ns)),
        (["v1", "namespaces", ns, "credentials"], &M::DELETE) => {
            AdminOp::RevokeCredentials(own(ns))
        }
        (["v1", "quotas"], &M::GET) => AdminOp::ListQuotas,
        (["v1", "quotas", "_reconcile"], &M::POST) => AdminOp::ReconcileQuotas,
        (["v1", "quotas", "_reconcile"], _) => AdminOp::MethodNotAllowed(method.clone()),
        (["v1", "quotas", ns], &M::GET) => AdminOp::ShowQuota(own(ns)),
        (["v1", "quotas", ns], &M::PUT) => AdminOp::SetQuota(own(ns)),
        (["v1", "gc", "runs"], &M::GET) => AdminOp::ListGcRuns,
        (["v1", "gc", "runs"], _) => AdminOp::MethodNotAllowed(method.clone()),
        (["v1", "gc", job], &M::POST) => AdminOp::RunGc(own(job)),
        (["v1", "pins"], &M::GET) => AdminOp::ListPins,
        (["v1", "pins"], &M::POST) => AdminOp::AddPin,
        (["v1", "pins", id], &M::DELETE) => AdminOp::DeletePin(own(id)),
        (["v1", "retention"], &M::GET) => AdminOp::ShowRetention,
        (["v1", "retention", ns], &M::PUT) => AdminOp::SetRetention(own(ns)),
        (["v1", "retention", ns], &M::DELETE) => AdminOp::DeleteRetention(own(ns)),
        (["v1", "tokens"], &M::GET) => AdminOp::ListTokens,
        (["v1", "tokens"], &M::POST) => AdminOp::CreateToken,
        (["v1", "tokens", id], &M::DELETE) => AdminOp::RevokeToken(own(id)),
        (["v1", "notifications"], &M::GET) => AdminOp::ListNotifications,
        (["v1", "notifications", name, "deliveries"], &M::GET) => {
            AdminOp::NotificationDeliveries(own(name))
        }
        (["v1", "notifications"], _) | (["v1", "notifications", _, "deliveries"], _) => {
            AdminOp::MethodNotAllowed(method.clone())
        }
        (["v1", "namespaces", _, "credentials"], _)
        | (["v1", "quotas" | "gc" | "pins" | "retention" | "tokens"], _)
        | (["v1", "quotas" | "gc" | "pins" | "retention" | "tokens", _], _) => {
            AdminOp::MethodNotAllowed(method.clone())
        }
        _ => AdminOp::NotFound,
    }
}

/// `rest` is the path after `/ui` (`""` stands for `/` itself).
fn parse_ui(method: &Method, rest: &str) -> UiOp {
    use Method as M;
    let own = |s: &&str| (*s).to_owned();
    if rest.is_empty() {
        return match *method {
            M::GET | M::HEAD => UiOp::Root,
            _ => UiOp::MethodNotAllowed(method.clone()),
        };
    }
    let parts: Vec<&str> = rest[1..].split('/').collect();
    let get = matches!(*method, M::GET | M::HEAD);
    let post = *method == M::POST;
    match parts.as_slice() {
        [""] if get => UiOp::Home,
        ["login"] if get => UiOp::LoginForm,
        ["login"] if post => UiOp::Login,
        ["logout"] if post => UiOp::Logout,
        ["assets", name] if get => UiOp::Asset(own(name)),
        ["quotas"] if get => UiOp::Quotas,
        ["quotas", ns] if post => UiOp::SetLimit(own(ns)),
        ["namespaces", ns] if get => UiOp::Namespace(own(ns)),
        ["namespaces", ns, "tags", "delete"] if post => UiOp::DeleteTag(own(ns)),
        ["namespaces", ns, "credentials"] if post => UiOp::RotateCredentials(own(ns)),
        ["namespaces", ns, "credentials", "revoke"] if post => UiOp::RevokeCredentials(own(ns)),
        ["namespaces", ns, "tokens"] if post => UiOp::CreateToken(own(ns)),
        ["namespaces", ns, "tokens", id, "revoke"] if post => UiOp::RevokeToken(own(ns), own(id)),
        ["gc"] if get => UiOp::Gc,
        ["gc", "runs", id] if get => UiOp::GcRun(own(id)),
        ["gc", job] if post => UiOp::RunGc(own(job)),
        ["builds"] if get => UiOp::Builds,
        ["tools", tool, "builds"] if get => UiOp::ToolBuilds(own(tool)),
        ["tools", tool, "builds"] if post => UiOp::StartBuild(own(tool)),
        ["tools", tool, "builds", id] if get => UiOp::Build(own(tool), own(id)),
        ["tools", tool, "builds", id, "log"] if get => UiOp::BuildLog(own(tool), own(id)),
        ["tools", tool, "builds", id, "cancel"] if post => UiOp::CancelBuild(own(tool), own(id)),
        ["tools", tool, "clean"] if post => UiOp::Clean(own(tool)),
        ["tools", tool, "trigger"] if post => UiOp::SetTrigger(own(tool)),
        ["tools", tool, "trigger", "rotate"] if post => UiOp::RotateTrigger(own(tool)),
        ["tools", tool, "trigger", "delete"] if post => UiOp::DeleteTrigger(own(tool)),
        ["storage"] if get => UiOp::Storage,
        [""]
        | ["login" | "logout" | "quotas" | "gc" | "builds" | "storage"]
        | ["assets" | "quotas" | "namespaces", _]
        | ["gc", _]
        | ["gc", "runs", _]
        | ["namespaces", _, "credentials" | "tokens"]
        | ["namespaces", _, "tags" | "credentials", _]
        | ["namespaces", _, "tokens", _, "revoke"]
        | ["tools", _, "builds" | "clean" | "trigger"]
        | ["tools", _, "trigger", "rotate" | "delete"]
        | ["tools", _, "builds", _]
        | ["tools", _, "builds", _, "log" | "cancel"] => UiOp::MethodNotAllowed(method.clone()),
        _ => UiOp::NotFound,
    }
}

fn parse_oci(method: &Method, rest: &str) -> ApiResult<Option<OciOp>> {
    use Method as M;
    let not_allowed = || Ok(Some(OciOp::MethodNotAllowed(method.clone())));
    if rest.is_empty() || rest == "/" {
        return Ok(Some(OciOp::Base));
    }
    // `/v2` must be a whole segment: `/v2x/...` is no route, and slicing
    // past a multi-byte character would panic.
    let Some(rest) = rest.strip_prefix('/') else {
        return Ok(None);
    };
    if rest == "_catalog" {
        return if method == M::GET {
            Ok(Some(OciOp::Catalog))
        } else {
            not_allowed()
        };
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let repo = RepoName::parse(name)?;
        return if method == M::GET {
            Ok(Some(OciOp::Tags(repo)))
        } else {
            not_allowed()
        };
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        let repo = RepoName::parse(name)?;
        return if method == M::POST {
            Ok(Some(OciOp::StartUpload(repo)))
        } else {
            not_allowed()
        };
    }
    if let Some((name, id)) = rsplit_marker(rest, "/blobs/uploads/") {
        if id.contains('/') || id.is_empty() {
            return Ok(None);
        }
        let (repo, id) = (RepoName::parse(name)?, id.to_owned());
        return Ok(Some(match *method {
            M::PATCH => OciOp::PatchUpload(repo, id),
            M::PUT => OciOp::FinishUpload(repo, id),
            M::GET => OciOp::UploadStatus(repo, id),
            M::DELETE => OciOp::CancelUpload(repo, id),
            _ => OciOp::MethodNotAllowed(method.clone()),
        }));
    }
    if let Some((name, reference)) = rsplit_marker(rest, "/manifests/") {
        let repo = RepoName::parse(name)?;
        let parsed = parse_reference(reference);
        return Ok(Some(match (method, parsed) {
            (&M::GET | &M::HEAD | &M::DELETE, Err(_)) => OciOp::ImpossibleManifest {
                repo,
                reference: reference.to_owned(),
            },
            (&M::GET | &M::HEAD, Ok(reference)) => OciOp::GetManifest {
                repo,
                reference,
                head: method == M::HEAD,
            },
            (&M::PUT, Ok(reference)) => OciOp::PutManifest { repo, reference },
            (&M::DELETE, Ok(reference)) => OciOp::DeleteManifest { repo, reference },
            (&M::PUT, Err(e)) => return Err(e),
            _ => OciOp::MethodNotAllowed(method.clone()),
        }));
    }
    if let Some((name, digest)) = rsplit_marker(rest, "/blobs/") {
        let (repo, digest) = (RepoName::parse(name)?, digest.parse()?);
        return Ok(Some(match *method {
            M::GET | M::HEAD => OciOp::GetBlob {
                repo,
                digest,
                head: method == M::HEAD,
            },
            M::DELETE => OciOp::DeleteBlob { repo, digest },
            _ => OciOp::MethodNotAllowed(method.clone()),
        }));
    }
    if let Some((name, digest)) = rsplit_marker(rest, "/referrers/") {
        let (repo, digest) = (RepoName::parse(name)?, digest.parse()?);
        return if method == M::GET {
            Ok(Some(OciOp::Referrers(repo, digest)))
        } else {
            not_allowed()
        };
    }
    Ok(None)
}

/// A Toolforge tool name: `^[a-z]([-_a-z0-9]{0,254}[a-z0-9])?$`.
pub fn validate_tool(tool: &str) -> ApiResult<String> {
    if berth_builds::valid_tool(tool) {
        Ok(tool.to_owned())
    } else {
        Err(ApiError::bad_request(
            Code::NameInvalid,
            format!(
                "invalid tool name {:?}: it must match ^[a-z]([-_a-z0-9]{{0,254}}[a-z0-9])?$",
                tool.chars().take(64).collect::<String>()
            ),
        ))
    }
}

/// Build ids are `<tool>-buildpacks-<hex>` or `latest`: no path tricks.
pub fn validate_build_id(id: &str) -> ApiResult<String> {
    if !id.is_empty()
        && id.len() <= 300
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(id.to_owned())
    } else {
        Err(ApiError::not_found(Code::NameUnknown, "no such build"))
    }
}

/// Splits at the last occurrence of `marker`, whose right side must not
/// contain another path segment.
fn rsplit_marker<'a>(s: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let i = s.rfind(marker)?;
    let (name, right) = (&s[..i], &s[i + marker.len()..]);
    if right.contains('/') {
        return None;
    }
    Some((name, right))
}

/// A reference is a digest when it contains ':' and a tag otherwise.
pub fn parse_reference(s: &str) -> ApiResult<Reference> {
    if s.contains(':') {
        return Ok(Reference::Digest(s.parse()?));
    }
    berth_storage::names::validate_tag(s)
        .map_err(|e| ApiError::bad_request(Code::ManifestInvalid, e.to_string()))?;
    Ok(Reference::Tag(s.to_owned()))
}

/// Decoded query parameters, in order, repeated keys kept.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

pub fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    fn oci(method: Method, path: &str) -> OciOp {
        match parse(&method, path).unwrap() {
            Some(Route::Oci(op)) => op,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn routes_nested_names() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(oci(Method::GET, "/v2/"), OciOp::Base);
        assert_eq!(oci(Method::GET, "/v2"), OciOp::Base);
        assert_eq!(
            oci(Method::GET, "/v2/tool-a/web/manifests/latest"),
            OciOp::GetManifest {
                repo: repo("tool-a/web"),
                reference: Reference::Tag("latest".into()),
                head: false
            }
        );
        assert_eq!(
            oci(Method::HEAD, &format!("/v2/a/blobs/{d}")),
            OciOp::GetBlob {
                repo: repo("a"),
                digest: d.clone(),
                head: true
            }
        );
        assert_eq!(
            oci(Method::POST, "/v2/a/b/blobs/uploads/"),
            OciOp::StartUpload(repo("a/b"))
        );
        assert_eq!(
            oci(Method::PATCH, "/v2/a/b/blobs/uploads/123"),
            OciOp::PatchUpload(repo("a/b"), "123".into())
        );
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            oci(Method::PUT, "/v2/manifests/manifests/v1"),
            OciOp::PutManifest {
                repo: repo("manifests"),
                reference: Reference::Tag("v1".into())
            }
        );
        assert_eq!(oci(Method::GET, "/v2/a/tags/list"), OciOp::Tags(repo("a")));
        assert_eq!(parse(&Method::GET, "/other").unwrap(), None);
    }

    #[test]
    fn methods_pick_the_operation() {
        assert_eq!(
            oci(Method::POST, "/v2/a/tags/list"),
            OciOp::MethodNotAllowed(Method::POST)
        );
        assert_eq!(
            parse(&Method::PUT, "/admin/v1/quotas/tool-a").unwrap(),
            Some(Route::Admin(AdminOp::SetQuota("tool-a".into())))
        );
        assert_eq!(
            parse(&Method::PATCH, "/admin/v1/quotas").unwrap(),
            Some(Route::Admin(AdminOp::MethodNotAllowed(Method::PATCH)))
        );
        assert_eq!(
            parse(&Method::GET, "/admin/v1/nothing/here").unwrap(),
            Some(Route::Admin(AdminOp::NotFound))
        );
        assert_eq!(
            parse(&Method::PUT, "/v1/tool/foo/builds/foo-buildpacks-1/cancel").unwrap(),
            Some(Route::Tool(
                "foo".into(),
                ToolOp::CancelBuild("foo-buildpacks-1".into())
            ))
        );
        assert_eq!(
            parse(&Method::POST, "/v1/tool/foo/trigger/rotate").unwrap(),
            Some(Route::Tool("foo".into(), ToolOp::RotateTrigger))
        );
        assert_eq!(
            parse(&Method::POST, "/v1/tool/foo/trigger").unwrap(),
            Some(Route::Tool(
                "foo".into(),
                ToolOp::MethodNotAllowed(Method::POST)
            ))
        );
        assert_eq!(
            parse(&Method::POST, "/v1/hooks/0123abc").unwrap(),
            Some(Route::Hook(HookOp::Deliver("0123abc".into())))
        );
        assert_eq!(
            parse(&Method::GET, "/v1/hooks/0123abc").unwrap(),
            Some(Route::Hook(HookOp::MethodNotAllowed(Method::GET)))
        );
        assert_eq!(parse(&Method::POST, "/v1/hooks/").unwrap(), None);
        assert_eq!(parse(&Method::POST, "/v1/hooks/a/b").unwrap(), None);
        assert_eq!(
            parse(&Method::PATCH, "/token").unwrap(),
            Some(Route::Ops(OpsOp::MethodNotAllowed(Method::PATCH)))
        );
    }

    #[test]
    fn token_routes() {
        let route = |m: Method, p: &str| parse(&m, p).unwrap();
        assert_eq!(
            route(Method::POST, "/admin/v1/tokens"),
            Some(Route::Admin(AdminOp::CreateToken))
        );
        assert_eq!(
            route(Method::GET, "/admin/v1/tokens"),
            Some(Route::Admin(AdminOp::ListTokens))
        );
        assert_eq!(
            route(Method::DELETE, "/admin/v1/tokens/abc"),
            Some(Route::Admin(AdminOp::RevokeToken("abc".into())))
        );
        assert_eq!(
            route(Method::PUT, "/admin/v1/tokens/abc"),
            Some(Route::Admin(AdminOp::MethodNotAllowed(Method::PUT)))
        );
        let ns = |op| Some(Route::Namespace("toolforge".into(), op));
        assert_eq!(
            route(Method::GET, "/v1/namespaces/toolforge/tokens"),
            ns(NamespaceOp::ListTokens)
        );
        assert_eq!(
            route(Method::POST, "/v1/namespaces/toolforge/tokens"),
            ns(NamespaceOp::CreateToken)
        );
        assert_eq!(
            route(Method::DELETE, "/v1/namespaces/toolforge/tokens/x1"),
            ns(NamespaceOp::RevokeToken("x1".into()))
        );
        assert_eq!(
            route(Method::GET, "/v1/namespaces/toolforge/tokens/x1"),
            ns(NamespaceOp::MethodNotAllowed(Method::GET))
        );
        assert_eq!(route(Method::GET, "/v1/namespaces/toolforge"), None);
        assert_eq!(route(Method::GET, "/v1/namespaces/a/b/tokens"), None);
        assert!(ToolOp::StartBuild.writes() && !ToolOp::Quota.writes());
    }

    #[test]
    fn console_paths() {
        let ui = |m: Method, p: &str| match parse(&m, p).unwrap() {
            Some(Route::Ui(op)) => op,
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(ui(Method::GET, "/"), UiOp::Root);
        assert_eq!(ui(Method::GET, "/ui"), UiOp::Home);
        assert_eq!(ui(Method::GET, "/ui/"), UiOp::Home);
        assert_eq!(ui(Method::POST, "/ui/login"), UiOp::Login);
        assert_eq!(
            ui(Method::POST, "/ui/quotas/tool-a"),
            UiOp::SetLimit("tool-a".into())
        );
        assert_eq!(
            ui(Method::GET, "/ui/tools/foo/builds/foo-buildpacks-1/log"),
            UiOp::BuildLog("foo".into(), "foo-buildpacks-1".into())
        );
        assert_eq!(
            ui(Method::GET, "/ui/logout"),
            UiOp::MethodNotAllowed(Method::GET)
        );
        assert_eq!(
            ui(Method::DELETE, "/ui/quotas"),
            UiOp::MethodNotAllowed(Method::DELETE)
        );
        assert_eq!(
            ui(Method::POST, "/ui/namespaces/tool-a/tokens/x1/revoke"),
            UiOp::RevokeToken("tool-a".into(), "x1".into())
        );
        assert_eq!(
            ui(Method::GET, "/ui/namespaces/tool-a/tokens"),
            UiOp::MethodNotAllowed(Method::GET)
        );
        assert_eq!(ui(Method::GET, "/ui/nothing/here"), UiOp::NotFound);
        assert_eq!(parse(&Method::GET, "/uix").unwrap(), None);
    }

    #[test]
    fn an_impossible_reference_is_unknown_to_readers_and_invalid_to_writers() {
        assert_eq!(
            oci(Method::GET, "/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            OciOp::ImpossibleManifest {
                repo: repo("a"),
                reference: ".INVALID_MANIFEST_NAME".into()
            }
        );
        assert!(parse(&Method::PUT, "/v2/a/manifests/.INVALID_MANIFEST_NAME").is_err());
    }

    #[test]
    fn rejects_tricks() {
        let get = |p: &str| parse(&Method::GET, p);
        assert!(get("/v2/../etc/manifests/latest").is_err());
        assert!(get("/v2/a%2Fb/manifests/latest").is_err());
        assert!(get("/v2/a/blobs/sha256:..%2F..%2Fx").is_err());
        assert!(get(&format!("/v2/{}/tags/list", "a".repeat(5000))).is_err());
        assert!(parse(&Method::PUT, "/v2/a/manifests/bad!tag").is_err());
        assert!(get("/v1/tool/Bad/builds").is_err());
        // Found by fuzzing (fuzz/regressions/route/v2-then-multibyte):
        // a multi-byte character right after /v2 panicked, and any other
        // character was taken for the slash.
        assert_eq!(get("/v2\u{b7}tool-a/web/blobs/x").unwrap(), None);
        assert_eq!(get("/v2xtool-a/manifests/latest").unwrap(), None);
        assert_eq!(get("/v2_catalog").unwrap(), None);
    }
}
