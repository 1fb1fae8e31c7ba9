//! A small blocking HTTP client for the suite: relative Location handling,
//! HTTP Basic, and the distribution token flow (401 + `WWW-Authenticate:
//! Bearer realm=...` -> GET realm with Basic credentials -> retry).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;
use ureq::http::{self, HeaderMap};

/// The Accept header docker and go-containerregistry send for manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

pub struct Client {
    agent: ureq::Agent,
    base: String,
    credentials: Option<(String, String)>,
    /// Bearer tokens by the scope they were issued for.
    tokens: RefCell<HashMap<String, String>>,
}

/// A response with its whole body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body's first 500 bytes as text (for messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(500)]).into_owned()
    }

    /// The whole body as text.
    pub fn text_all(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first OCI error code in the body, if the body is the error shape.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        v["errors"][0]["code"].as_str().map(str::to_owned)
    }

    pub fn describe(&self) -> String {
        format!("HTTP {} {}", self.status, self.text())
    }
}

impl Client {
    pub fn new(base: &str, credentials: Option<(String, String)>) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Client {
            agent: ureq::Agent::new_with_config(config),
            base: base.trim_end_matches('/').to_owned(),
            credentials,
            tokens: RefCell::new(HashMap::new()),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Resolves a path or a (possibly relative) Location into a full URL.
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{}", self.base, path_or_url)
        }
    }

    pub fn get(&self, path: &str) -> Result<Resp, String> {
        self.send("GET", path, &[], Vec::new())
    }

    pub fn head(&self, path: &str) -> Result<Resp, String> {
        self.send("HEAD", path, &[], Vec::new())
    }

    pub fn delete(&self, path: &str) -> Result<Resp, String> {
        self.send("DELETE", path, &[], Vec::new())
    }

    /// `POST /v2/<repo>/blobs/uploads/`: starts an upload session.
    pub fn start_upload(&self, repo: &str) -> Result<Resp, String> {
        self.send(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Vec::new(),
        )
    }

    /// The one-request blob push: POST a session (which must answer 202),
    /// then PUT the whole blob with `?digest=`. Returns the PUT's answer,
    /// whatever its status (201 is success).
    pub fn push_blob(&self, repo: &str, digest: &str, bytes: Vec<u8>) -> Result<Resp, String> {
        let post = self.start_upload(repo)?;
        if post.status != 202 {
            return Err(format!(
                "POST upload: expected 202, got {}",
                post.describe()
            ));
        }
        let location = post.header("location").ok_or("POST upload: no Location")?;
        self.send(
            "PUT",
            &crate::fixtures::with_query(location, &format!("digest={digest}")),
            &[("content-type", "application/octet-stream")],
            bytes,
        )
    }

    /// Sends a request, answering an auth challenge once if one comes back.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Resp, String> {
        let url = self.url(path);
        let first = self.raw(method, &url, headers, body.clone(), self.cached_auth())?;
        if first.status != 401 {
            return Ok(first);
        }
        let Some(challenge) = first.header("www-authenticate").map(str::to_owned) else {
            return Ok(first);
        };
        let auth = if let Some(params) = challenge.strip_prefix("Bearer ") {
            match self.fetch_token(params, &mount_scope(&url))? {
                Some(t) => format!("Bearer {t}"),
                None => return Ok(first),
            }
        } else if challenge.starts_with("Basic") {
            match self.basic() {
                Some(b) => b,
                None => return Ok(first),
            }
        } else {
            return Ok(first);
        };
        self.raw(method, &url, headers, body, Some(auth))
    }

    fn cached_auth(&self) -> Option<String> {
        // The most recently issued token is tried first; a scope mismatch
        // just costs one more challenge round.
        self.tokens.borrow().get("").map(|t| format!("Bearer {t}"))
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine as _;
        self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    fn fetch_token(&self, params: &str, extra_scopes: &[String]) -> Result<Option<String>, String> {
        let params = parse_challenge(params);
        let Some(realm) = params.get("realm") else {
            return Ok(None);
        };
        let mut query = form_urlencoded::Serializer::new(String::new());
        for key in ["service", "scope"] {
            if let Some(v) = params.get(key) {
                query.append_pair(key, v);
            }
        }
        for scope in extra_scopes {
            query.append_pair("scope", scope);
        }
        let url = format!("{realm}?{}", query.finish());
        let auth = self.basic();
        let resp = self.raw("GET", &url, &[], Vec::new(), auth)?;
        if resp.status != 200 {
            return Ok(None);
        }
        let v = resp.json()?;
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .map(str::to_owned);
        if let Some(t) = &token {
            self.tokens.borrow_mut().insert(String::new(), t.clone());
        }
        Ok(token)
    }

    fn raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        auth: Option<String>,
    ) -> Result<Resp, String> {
        let mut builder = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        // Real clients always say which manifest types they take; registries
        // such as registry:2 refuse OCI types to a client that does not.
        let has_accept = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"));
        if !has_accept && url.contains("/manifests/") {
            builder = builder.header("accept", MANIFEST_ACCEPT);
        }
        if let Some(a) = auth {
            builder = builder.header("authorization", a);
        }
        let req = builder
            .body(body)
            .map_err(|e| format!("cannot build request {method} {url}: {e}"))?;
        let mut resp = self
            .agent
            .run(req)
            .map_err(|e| format!("{method} {url} failed: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            resp.body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_vec()
                .map_err(|e| format!("reading body of {method} {url} failed: {e}"))?
        };
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// A cross-repository mount also needs pull on the source repository;
/// clients such as docker and go-containerregistry ask for both at once.
fn mount_scope(url: &str) -> Vec<String> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let has_mount = pairs.iter().any(|(k, _)| k == "mount");
    pairs
        .into_iter()
        .filter(|(k, _)| has_mount && k == "from")
        .map(|(_, from)| format!("repository:{from}:pull"))
        .collect()
}

/// The parameters of a `WWW-Authenticate: Bearer` challenge (what follows
/// `Bearer `): `realm`, `service`, `scope`, `error`.
pub fn parse_challenge(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            value = r[..end].to_owned();
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].to_owned();
            rest = &rest[end..];
        }
        out.insert(key, value);
        rest = rest.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let p = parse_challenge(
            r#"realm="http://h:5000/token",service="berth",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "http://h:5000/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }
}
