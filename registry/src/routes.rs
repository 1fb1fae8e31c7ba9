//! Turns a request path into a route. Repository names contain slashes, so
//! `/v2/<name>/<kind>/<rest>` is parsed from the right; the name and every
//! reference then go through the spec grammar (berth_storage::names and
//! digest). Paths are never percent-decoded: `%2F` is simply not a valid
//! name character.

use crate::error::{ApiError, ApiResult, Code};
use berth_storage::{Digest, RepoName};

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Tags(RepoName),
    Manifest(RepoName, Reference),
    Blob(RepoName, Digest),
    UploadStart(RepoName),
    Upload(RepoName, String),
    Referrers(RepoName, Digest),
    Healthz,
    Token,
    Metrics,
    /// `/admin/v1/namespaces/<ns>/credentials`
    NamespaceCredentials(String),
    /// `/admin/v1/quotas`
    Quotas,
    /// `/admin/v1/quotas/_reconcile`
    QuotaReconcile,
    /// `/admin/v1/quotas/<ns>`
    Quota(String),
    /// `/v1/tool/<tool>/quotas` (Toolforge build API shape)
    ToolQuota(String),
    /// `/v1/tool/<tool>/builds`
    Builds(String),
    /// `/v1/tool/<tool>/builds/<id>`
    Build(String, String),
    /// `/v1/tool/<tool>/builds/<id>/logs`
    BuildLogs(String, String),
    /// `/v1/tool/<tool>/builds/<id>/cancel`
    BuildCancel(String, String),
    /// `/v1/tool/<tool>/clean`
    Clean(String),
    /// `/admin/v1/gc/runs`
    GcRuns,
    /// `/admin/v1/gc/<job>`
    GcRun(String),
    /// `/admin/v1/pins`
    Pins,
    /// `/admin/v1/pins/<id>`
    Pin(String),
    /// `/admin/v1/retention`
    Retention,
    /// `/admin/v1/retention/<ns>`
    RetentionNamespace(String),
    /// Any other `/admin/...` path (404 once the caller is known to be admin).
    AdminUnknown,
}

/// Parses a path. `Ok(None)` means "not a route berth has" (404).
pub fn parse(path: &str) -> ApiResult<Option<Route>> {
    if path.len() > MAX_PATH {
        return Err(ApiError::not_found(
            Code::NameInvalid,
            format!(
                "request path is {} bytes long; the limit is {MAX_PATH}",
                path.len()
            ),
        ));
    }
    if path == "/healthz" {
        return Ok(Some(Route::Healthz));
    }
    if path == "/token" {
        return Ok(Some(Route::Token));
    }
    if path == "/metrics" {
        return Ok(Some(Route::Metrics));
    }
    if let Some(rest) = path.strip_prefix("/v1/tool/") {
        let parts: Vec<&str> = rest.split('/').collect();
        return Ok(match parts.as_slice() {
            [tool, "quotas"] => Some(Route::ToolQuota(validate_tool(tool)?)),
            [tool, "builds"] => Some(Route::Builds(validate_tool(tool)?)),
            [tool, "builds", id] => {
                Some(Route::Build(validate_tool(tool)?, validate_build_id(id)?))
            }
            [tool, "builds", id, "logs"] => Some(Route::BuildLogs(
                validate_tool(tool)?,
                validate_build_id(id)?,
            )),
            [tool, "builds", id, "cancel"] => Some(Route::BuildCancel(
                validate_tool(tool)?,
                validate_build_id(id)?,
            )),
            [tool, "clean"] => Some(Route::Clean(validate_tool(tool)?)),
            _ => None,
        });
    }
    if let Some(rest) = path.strip_prefix("/admin/") {
        let parts: Vec<&str> = rest.split('/').collect();
        return Ok(Some(match parts.as_slice() {
            ["v1", "namespaces", ns, "credentials"] => {
                Route::NamespaceCredentials((*ns).to_owned())
            }
            ["v1", "quotas"] => Route::Quotas,
            ["v1", "quotas", "_reconcile"] => Route::QuotaReconcile,
            ["v1", "quotas", ns] => Route::Quota((*ns).to_owned()),
            ["v1", "gc", "runs"] => Route::GcRuns,
            ["v1", "gc", job] => Route::GcRun((*job).to_owned()),
            ["v1", "pins"] => Route::Pins,
            ["v1", "pins", id] => Route::Pin((*id).to_owned()),
            ["v1", "retention"] => Route::Retention,
            ["v1", "retention", ns] => Route::RetentionNamespace((*ns).to_owned()),
            _ => Route::AdminUnknown,
        }));
    }
    let Some(rest) = path.strip_prefix("/v2") else {
        return Ok(None);
    };
    if rest.is_empty() || rest == "/" {
        return Ok(Some(Route::Base));
    }
    // `/v2` must be a whole segment: `/v2x/...` is no route, and slicing
    // past a multi-byte character would panic.
    let Some(rest) = rest.strip_prefix('/') else {
        return Ok(None);
    };
    if rest == "_catalog" {
        return Ok(Some(Route::Catalog));
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Some(Route::Tags(RepoName::parse(name)?)));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Some(Route::UploadStart(RepoName::parse(name)?)));
    }
    if let Some((name, id)) = rsplit_marker(rest, "/blobs/uploads/") {
        if id.contains('/') || id.is_empty() {
            return Ok(None);
        }
        return Ok(Some(Route::Upload(RepoName::parse(name)?, id.to_owned())));
    }
    if let Some((name, reference)) = rsplit_marker(rest, "/manifests/") {
        let repo = RepoName::parse(name)?;
        return Ok(Some(Route::Manifest(repo, parse_reference(reference)?)));
    }
    if let Some((name, digest)) = rsplit_marker(rest, "/blobs/") {
        let repo = RepoName::parse(name)?;
        return Ok(Some(Route::Blob(repo, digest.parse()?)));
    }
    if let Some((name, digest)) = rsplit_marker(rest, "/referrers/") {
        let repo = RepoName::parse(name)?;
        return Ok(Some(Route::Referrers(repo, digest.parse()?)));
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
fn validate_build_id(id: &str) -> ApiResult<String> {
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

    #[test]
    fn routes_nested_names() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(parse("/v2/").unwrap(), Some(Route::Base));
        assert_eq!(parse("/v2").unwrap(), Some(Route::Base));
        assert_eq!(
            parse("/v2/tool-a/web/manifests/latest").unwrap(),
            Some(Route::Manifest(
                repo("tool-a/web"),
                Reference::Tag("latest".into())
            ))
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/{d}")).unwrap(),
            Some(Route::Blob(repo("a"), d.clone()))
        );
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/").unwrap(),
            Some(Route::UploadStart(repo("a/b")))
        );
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/123").unwrap(),
            Some(Route::Upload(repo("a/b"), "123".into()))
        );
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            parse("/v2/manifests/manifests/v1").unwrap(),
            Some(Route::Manifest(
                repo("manifests"),
                Reference::Tag("v1".into())
            ))
        );
        assert_eq!(
            parse("/v2/a/tags/list").unwrap(),
            Some(Route::Tags(repo("a")))
        );
        assert_eq!(parse("/other").unwrap(), None);
    }

    #[test]
    fn rejects_tricks() {
        assert!(parse("/v2/../etc/manifests/latest").is_err());
        assert!(parse("/v2/a%2Fb/manifests/latest").is_err());
        assert!(parse("/v2/a/blobs/sha256:..%2F..%2Fx").is_err());
        assert!(parse(&format!("/v2/{}/tags/list", "a".repeat(5000))).is_err());
        assert!(parse("/v2/a/manifests/bad!tag").is_err());
        // Found by fuzzing (fuzz/regressions/route/v2-then-multibyte):
        // a multi-byte character right after /v2 panicked, and any other
        // character was taken for the slash.
        assert_eq!(parse("/v2\u{b7}tool-a/web/blobs/x").unwrap(), None);
        assert_eq!(parse("/v2xtool-a/manifests/latest").unwrap(), None);
        assert_eq!(parse("/v2_catalog").unwrap(), None);
    }
}
