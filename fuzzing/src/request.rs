//! Target `request`: the whole request handler, in-process. One registry
//! `State` per process (built by `berth::app::build_state` on a temporary
//! data dir, builds off, GC graces at zero) answers short sequences of
//! structured random requests: plausible paths and raw ones, odd methods,
//! Basic and Bearer credentials (the admin's, issued, forged with the real
//! key, garbage, API tokens as bearer tokens and as passwords), ranges,
//! and bodies that include blobs and manifests built from fragments.
//! Later requests of a sequence can use what earlier answers gave (upload
//! locations, secrets, tokens and API token ids, manifest digests). New
//! vocabulary goes at the end of each enum.
//!
//! Every answer must keep berth's promises (`check`): no panic, no 5xx, the
//! OCI error shape with a spec code on every error, nosniff and CSP on
//! every answer, consistent lengths, digests and ranges, manifests served
//! byte-for-byte with a manifest media type; after writes, the quota ledger
//! must reconcile without drift.

use crate::manifest::{blob, DigestSpec, Known, ManifestSpec, Text};
use crate::token::ClaimsSpec;
use arbitrary::{Arbitrary, Unstructured};
use base64::Engine as _;
use berth_registry::request_body::RequestBody;
use berth_registry::routes::{OciOp, Route};
use berth_registry::State;
use berth_storage::Digest;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const ADMIN_PASSWORD: &str = "fuzz-admin-password";
/// Most requests in one input.
const MAX_STEPS: usize = 12;
/// A request (or its body) taking longer than this is a hang.
const HANG: Duration = Duration::from_secs(60);

/// The spec's error codes (registry/src/error.rs `Code::as_str`).
const CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
    "RANGE_INVALID",
    "UNKNOWN",
    "UNAVAILABLE",
];

/// The fuzzed registry's config: small limits so that refusals are
/// reachable, zero GC graces so that GC deletes, builds off (no git, no
/// lifecycle: a build request is refused before anything runs).
fn config_text(dir: &std::path::Path) -> String {
    format!(
        r#"
[storage]
data_dir = "{}"
sqlite_synchronous = "normal"

[auth]
admin_password = "{ADMIN_PASSWORD}"
private_namespaces = ["tool-private"]

[quota]
default_limit = "1MiB"
unlimited = ["library"]

[gc]
enabled = false
untagged_grace = "0s"
blob_grace = "0s"

[builds]
enabled = false

[limits]
uploads_per_namespace = 8
uploads_total = 32
token_max_scopes = 8
api_tokens_per_namespace = 4
"#,
        dir.display()
    )
}

struct Harness {
    rt: tokio::runtime::Runtime,
    state: Arc<State>,
    token_key: Vec<u8>,
}

static DATA_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_data_dir() {
    if let Some(dir) = DATA_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("berth-fuzz-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        DATA_DIR.set(dir.clone()).expect("set once");
        // libFuzzer ends with exit(): remove the store then.
        // SAFETY: registers a plain function without captures.
        unsafe { libc::atexit(remove_data_dir) };
        let cfg = berth::config::Config::parse(&config_text(&dir)).expect("fuzz config parses");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let state = rt
            .block_on(berth::app::build_state(&cfg, None))
            .expect("fuzz registry starts");
        let token_key = std::fs::read_to_string(dir.join("token-key"))
            .expect("token key written at start")
            .trim()
            .as_bytes()
            .to_vec();
        Harness {
            rt,
            state,
            token_key,
        }
    })
}

/// A distinct client address per request, so the login throttle (which
/// delays repeated failures per address and account) never sleeps.
fn next_peer() -> IpAddr {
    static PEER: AtomicU64 = AtomicU64::new(1);
    let n = PEER.fetch_add(1, Ordering::Relaxed);
    IpAddr::V6(Ipv6Addr::from(
        0xfd00_0000_0000_0000_0000_0000_0000_0000u128 | n as u128,
    ))
}

const REPOS: &[&str] = &[
    "tool-a/web",
    "tool-a",
    "tool-b/app",
    "library/alpine",
    "tool-private/secret",
    "tool-a/web/nested/deep",
    "manifests",
];
const TAGS: &[&str] = &["latest", "v1", "1.0.0", "_x", "v1-beta.2", "sha256"];
const NAMESPACES: &[&str] = &[
    "tool-a",
    "tool-b",
    "library",
    "tool-private",
    "admin",
    "anonymous",
];
const TOOLS: &[&str] = &["a", "b", "private", "x_y-z"];

#[derive(Arbitrary, Debug)]
pub enum Repo {
    Known(u8),
    Raw(String),
}

impl Repo {
    pub fn text(&self) -> String {
        match self {
            Repo::Known(i) => REPOS[*i as usize % REPOS.len()].to_owned(),
            Repo::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(String),
}

impl Name {
    fn pick(&self, list: &[&str]) -> String {
        match self {
            Name::Known(i) => list[*i as usize % list.len()].to_owned(),
            Name::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Reference {
    Tag(Name),
    Digest(DigestSpec),
}

#[derive(Arbitrary, Debug)]
enum ToolPath {
    Quotas,
    Builds,
    Build(Name),
    Logs(Name),
    Cancel(Name),
    Clean,
    Other(String),
    Trigger,
    TriggerRotate,
}

#[derive(Arbitrary, Debug)]
enum PathSpec {
    Base,
    BaseNoSlash,
    Catalog,
    Tags(Repo),
    Manifest(Repo, Reference),
    Blob(Repo, DigestSpec),
    UploadStart(Repo, bool),
    Upload(Repo, String),
    /// An upload URL an earlier answer gave.
    Location(u8),
    Referrers(Repo, DigestSpec),
    Token,
    Healthz,
    Metrics,
    Credentials(Name),
    Quotas,
    Quota(Name),
    Reconcile,
    Gc(u8),
    GcRuns,
    Pins,
    Pin(String),
    Retention,
    RetentionNamespace(Name),
    Admin(String),
    Tool(Name, ToolPath),
    Raw(String),
    /// `/admin/v1/tokens`
    ApiTokens,
    /// `/admin/v1/tokens/{id}`: an id an earlier answer gave, or raw.
    ApiToken(u8, Option<String>),
    /// `/v1/namespaces/{ns}/tokens`
    NamespaceTokens(Name),
    /// `/v1/namespaces/{ns}/tokens/{id}`
    NamespaceToken(Name, u8, Option<String>),
    /// A build trigger's hook (`/v1/hooks/{id}`).
    Hook(Name),
}

#[derive(Arbitrary, Debug)]
struct Scope {
    registry: bool,
    repo: Repo,
    actions: Vec<u8>,
    raw: Option<String>,
}

impl Scope {
    fn text(&self) -> String {
        if let Some(r) = &self.raw {
            return r.clone();
        }
        if self.registry {
            return "registry:catalog:*".into();
        }
        let actions: Vec<&str> = self
            .actions
            .iter()
            .map(|a| ["pull", "push", "delete", "*", "pull,push", ""][*a as usize % 6])
            .collect();
        format!("repository:{}:{}", self.repo.text(), actions.join(","))
    }
}

#[derive(Arbitrary, Debug)]
enum Query {
    Digest(DigestSpec),
    /// `?digest=` of this request's own body.
    DigestOfBody,
    /// `?digest=` of everything this input sent to uploads since the last
    /// one started, and this body.
    DigestOfUpload,
    Mount(DigestSpec, Repo),
    Tag(Name),
    N(Option<u32>, String),
    Last(String),
    Scope(Scope),
    Service(String),
    DryRun(Option<bool>),
    ArtifactType(Text),
    Follow,
    DeleteImage,
    OverPercent(String),
    Limit(String),
    Raw(String, String),
}

#[derive(Arbitrary, Debug)]
enum Credentials {
    None,
    Admin,
    AdminWrong(String),
    /// A namespace secret an earlier answer showed.
    Secret(u8),
    Basic(String, String),
    BasicRaw(String),
    /// A token an earlier `/token` answer issued.
    Issued(u8),
    Forged(ClaimsSpec),
    ForgedWrongKey(ClaimsSpec),
    Bearer(String),
    Raw(Vec<u8>),
    /// An API token an earlier answer showed, as the password of Basic.
    TokenAsPassword(u8, String),
}

#[derive(Arbitrary, Debug)]
enum RangeSpec {
    /// The next chunk of the current upload, as far as answers told.
    Next,
    Pair(u64, u64),
    From(u64),
    Suffix(u64),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Body {
    Empty,
    Blob(u8),
    Manifest(Box<ManifestSpec>),
    Raw(Vec<u8>),
    Form {
        admin: bool,
        user: Option<(String, String)>,
        scopes: Vec<Scope>,
    },
    Quota {
        limit: Option<u64>,
        unlimited: bool,
    },
    Pin {
        repo: Repo,
        digest: DigestSpec,
        reason: String,
    },
    Retention {
        keep_last: Option<u32>,
        protected_tags: Vec<String>,
        max_age: Option<String>,
        keep_pattern: Option<String>,
    },
    Build {
        source_url: String,
        reference: Option<String>,
        image_name: Option<String>,
        envvars: Vec<(String, String)>,
    },
    /// An API token to create (`POST .../tokens`).
    ApiToken {
        namespace: Option<Name>,
        admin: bool,
        name: Name,
        expires_in: Option<Name>,
        scope: Option<u8>,
    },
}

const EXTRA_HEADERS: &[&str] = &[
    "accept",
    "host",
    "user-agent",
    "docker-content-digest",
    "if-none-match",
    "x-forwarded-for",
    "oci-chunk-min-length",
    "expect",
];

#[derive(Arbitrary, Debug)]
struct Step {
    method: u8,
    custom_method: String,
    path: PathSpec,
    query: Vec<Query>,
    raw_query: Option<String>,
    /// Most steps come from the admin (everything is allowed, so the
    /// handlers behind the access check get exercised); the rest use
    /// `credentials`.
    as_admin: u8,
    credentials: Credentials,
    content_type: Option<Text>,
    content_length: bool,
    content_range: Option<RangeSpec>,
    range: Option<RangeSpec>,
    headers: Vec<(u8, String)>,
    body: Body,
}

/// What earlier answers of this input gave.
#[derive(Default)]
struct Context {
    locations: Vec<String>,
    /// Bytes the newest upload holds, from its last `Range` answer.
    offset: u64,
    secrets: Vec<(String, String)>,
    tokens: Vec<String>,
    /// Ids of API tokens earlier answers created.
    token_ids: Vec<String>,
    manifests: Vec<String>,
    wrote: bool,
    /// Bytes sent to upload sessions since the last one started.
    uploaded: Vec<u8>,
}

impl Known for Context {
    fn manifest(&self, i: u8) -> Option<String> {
        (!self.manifests.is_empty())
            .then(|| self.manifests[i as usize % self.manifests.len()].clone())
    }
}

fn pick<T: Clone>(list: &[T], i: u8) -> Option<T> {
    (!list.is_empty()).then(|| list[i as usize % list.len()].clone())
}

fn method(step: &Step) -> Method {
    match step.method % 10 {
        0 | 1 => Method::GET,
        2 => Method::HEAD,
        3 => Method::PUT,
        4 => Method::POST,
        5 => Method::PATCH,
        6 => Method::DELETE,
        7 => Method::OPTIONS,
        8 => Method::TRACE,
        _ => Method::from_bytes(step.custom_method.as_bytes()).unwrap_or(Method::GET),
    }
}

fn path(spec: &PathSpec, ctx: &Context) -> String {
    let digest = |d: &DigestSpec| d.resolve(ctx);
    match spec {
        PathSpec::Base => "/v2/".into(),
        PathSpec::BaseNoSlash => "/v2".into(),
        PathSpec::Catalog => "/v2/_catalog".into(),
        PathSpec::Tags(r) => format!("/v2/{}/tags/list", r.text()),
        PathSpec::Manifest(r, reference) => {
            let reference = match reference {
                Reference::Tag(t) => t.pick(TAGS),
                Reference::Digest(d) => digest(d),
            };
            format!("/v2/{}/manifests/{reference}", r.text())
        }
        PathSpec::Blob(r, d) => format!("/v2/{}/blobs/{}", r.text(), digest(d)),
        PathSpec::UploadStart(r, slash) => {
            format!(
                "/v2/{}/blobs/uploads{}",
                r.text(),
                if *slash { "/" } else { "" }
            )
        }
        PathSpec::Upload(r, id) => format!("/v2/{}/blobs/uploads/{id}", r.text()),
        PathSpec::Location(i) => {
            pick(&ctx.locations, *i).unwrap_or_else(|| "/v2/tool-a/web/blobs/uploads/".into())
        }
        PathSpec::Referrers(r, d) => format!("/v2/{}/referrers/{}", r.text(), digest(d)),
        PathSpec::Token => "/token".into(),
        PathSpec::Healthz => "/healthz".into(),
        PathSpec::Metrics => "/metrics".into(),
        PathSpec::Credentials(ns) => {
            format!("/admin/v1/namespaces/{}/credentials", ns.pick(NAMESPACES))
        }
        PathSpec::Quotas => "/admin/v1/quotas".into(),
        PathSpec::Quota(ns) => format!("/admin/v1/quotas/{}", ns.pick(NAMESPACES)),
        PathSpec::Reconcile => "/admin/v1/quotas/_reconcile".into(),
        PathSpec::Gc(j) => format!(
            "/admin/v1/gc/{}",
            ["untagged", "tag-cleanup", "everything"][*j as usize % 3]
        ),
        PathSpec::GcRuns => "/admin/v1/gc/runs".into(),
        PathSpec::Pins => "/admin/v1/pins".into(),
        PathSpec::Pin(id) => format!("/admin/v1/pins/{id}"),
        PathSpec::Retention => "/admin/v1/retention".into(),
        PathSpec::RetentionNamespace(ns) => {
            format!("/admin/v1/retention/{}", ns.pick(NAMESPACES))
        }
        PathSpec::Admin(rest) => format!("/admin/{rest}"),
        PathSpec::Tool(tool, p) => {
            let t = tool.pick(TOOLS);
            match p {
                ToolPath::Quotas => format!("/v1/tool/{t}/quotas"),
                ToolPath::Builds => format!("/v1/tool/{t}/builds"),
                ToolPath::Build(id) => format!("/v1/tool/{t}/builds/{}", id.pick(&["latest"])),
                ToolPath::Logs(id) => {
                    format!("/v1/tool/{t}/builds/{}/logs", id.pick(&["latest"]))
                }
                ToolPath::Cancel(id) => {
                    format!("/v1/tool/{t}/builds/{}/cancel", id.pick(&["latest"]))
                }
                ToolPath::Clean => format!("/v1/tool/{t}/clean"),
                ToolPath::Other(rest) => format!("/v1/tool/{t}/{rest}"),
                ToolPath::Trigger => format!("/v1/tool/{t}/trigger"),
                ToolPath::TriggerRotate => format!("/v1/tool/{t}/trigger/rotate"),
            }
        }
        PathSpec::Raw(p) => p.clone(),
        PathSpec::ApiTokens => "/admin/v1/tokens".into(),
        PathSpec::ApiToken(i, raw) => format!("/admin/v1/tokens/{}", token_id(ctx, *i, raw)),
        PathSpec::NamespaceTokens(ns) => format!("/v1/namespaces/{}/tokens", ns.pick(NAMESPACES)),
        PathSpec::NamespaceToken(ns, i, raw) => format!(
            "/v1/namespaces/{}/tokens/{}",
            ns.pick(NAMESPACES),
            token_id(ctx, *i, raw)
        ),
        PathSpec::Hook(id) => format!(
            "/v1/hooks/{}",
            id.pick(&["0123456789abcdef0123456789abcdef", "x"])
        ),
    }
}

/// An API token id an earlier answer gave, else `raw` (or a made-up one).
fn token_id(ctx: &Context, i: u8, raw: &Option<String>) -> String {
    match raw {
        Some(r) => r.clone(),
        None => pick(&ctx.token_ids, i).unwrap_or_else(|| "0123456789abcdef".into()),
    }
}

fn query(step: &Step, ctx: &Context, body: &[u8]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for part in &step.query {
        match part {
            Query::Digest(d) => q.append_pair("digest", &d.resolve(ctx)),
            Query::DigestOfBody => q.append_pair("digest", &Digest::sha256_of(body).to_string()),
            Query::DigestOfUpload => {
                let all = [ctx.uploaded.as_slice(), body].concat();
                q.append_pair("digest", &Digest::sha256_of(&all).to_string())
            }
            Query::Mount(d, from) => q
                .append_pair("mount", &d.resolve(ctx))
                .append_pair("from", &from.text()),
            Query::Tag(t) => q.append_pair("tag", &t.pick(TAGS)),
            Query::N(n, raw) => match n {
                Some(n) => q.append_pair("n", &n.to_string()),
                None => q.append_pair("n", raw),
            },
            Query::Last(l) => q.append_pair("last", l),
            Query::Scope(s) => q.append_pair("scope", &s.text()),
            Query::Service(s) => q.append_pair("service", s),
            Query::DryRun(b) => q.append_pair(
                "dry_run",
                match b {
                    Some(true) => "true",
                    Some(false) => "false",
                    None => "maybe",
                },
            ),
            Query::ArtifactType(t) => q.append_pair("artifactType", &t.media_type()),
            Query::Follow => q.append_pair("follow", "true"),
            Query::DeleteImage => q.append_pair("delete_image", "true"),
            Query::OverPercent(p) => q.append_pair("over_percent", p),
            Query::Limit(l) => q.append_pair("limit", l),
            Query::Raw(k, v) => q.append_pair(k, v),
        };
    }
    let mut text = q.finish();
    if let Some(raw) = &step.raw_query {
        if !text.is_empty() {
            text.push('&');
        }
        text.push_str(raw);
    }
    text
}

fn body(spec: &Body, ctx: &Context) -> Vec<u8> {
    let json = |v: serde_json::Value| serde_json::to_vec(&v).expect("JSON values serialize");
    match spec {
        Body::Empty => Vec::new(),
        Body::Blob(i) => blob(*i).to_vec(),
        Body::Manifest(m) => m.to_bytes(ctx),
        Body::Raw(b) => b.clone(),
        Body::Form {
            admin,
            user,
            scopes,
        } => {
            let mut f = form_urlencoded::Serializer::new(String::new());
            f.append_pair("grant_type", "password");
            if *admin {
                f.append_pair("username", "admin")
                    .append_pair("password", ADMIN_PASSWORD);
            } else if let Some((u, p)) = user {
                f.append_pair("username", u).append_pair("password", p);
            }
            for s in scopes {
                f.append_pair("scope", &s.text());
            }
            f.finish().into_bytes()
        }
        Body::Quota { limit, unlimited } => {
            if *unlimited {
                json(serde_json::json!({ "unlimited": true }))
            } else {
                json(serde_json::json!({ "limit_bytes": limit }))
            }
        }
        Body::Pin {
            repo,
            digest,
            reason,
        } => json(serde_json::json!({
            "repository": repo.text(), "digest": digest.resolve(ctx), "reason": reason,
        })),
        Body::Retention {
            keep_last,
            protected_tags,
            max_age,
            keep_pattern,
        } => json(serde_json::json!({
            "keep_last": keep_last, "protected_tags": protected_tags,
            "max_age": max_age, "keep_pattern": keep_pattern,
        })),
        Body::Build {
            source_url,
            reference,
            image_name,
            envvars,
        } => json(serde_json::json!({
            "source_url": source_url, "ref": reference, "image_name": image_name,
            "envvars": envvars.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        })),
        Body::ApiToken {
            namespace,
            admin,
            name,
            expires_in,
            scope,
        } => {
            let mut v = serde_json::json!({ "name": name.pick(&["ci", "reader", "a.b-c_d"]) });
            if let Some(ns) = namespace {
                v["namespace"] = ns.pick(NAMESPACES).into();
            }
            if *admin {
                v["admin"] = true.into();
            }
            if let Some(e) = expires_in {
                v["expires_in"] = e.pick(&["90d", "2s", "1h", "0s", "400d"]).into();
            }
            if let Some(sc) = scope {
                v["scope"] = ["pull", "push", "admin", "none"][*sc as usize % 4].into();
            }
            json(v)
        }
    }
}

fn range_text(spec: &RangeSpec, ctx: &Context, len: usize, prefix: &str) -> String {
    match spec {
        RangeSpec::Next => format!(
            "{prefix}{}-{}",
            ctx.offset,
            (ctx.offset + len as u64).saturating_sub(1)
        ),
        RangeSpec::Pair(a, b) => format!("{prefix}{a}-{b}"),
        RangeSpec::From(a) => format!("{prefix}{a}-"),
        RangeSpec::Suffix(n) => format!("{prefix}-{n}"),
        RangeSpec::Raw(s) => s.clone(),
    }
}

fn authorization(c: &Credentials, ctx: &Context, key: &[u8]) -> Option<Vec<u8>> {
    let basic = |u: &str, p: &str| {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!("Basic {enc}").into_bytes()
    };
    match c {
        Credentials::None => None,
        Credentials::Admin => Some(basic("admin", ADMIN_PASSWORD)),
        Credentials::AdminWrong(p) => Some(basic("admin", p)),
        Credentials::Secret(i) => pick(&ctx.secrets, *i).map(|(u, p)| basic(&u, &p)),
        Credentials::Basic(u, p) => Some(basic(u, p)),
        Credentials::BasicRaw(s) => Some(format!("Basic {s}").into_bytes()),
        Credentials::Issued(i) => pick(&ctx.tokens, *i).map(|t| format!("Bearer {t}").into_bytes()),
        Credentials::Forged(spec) => Some(format!("Bearer {}", spec.sign(key)).into_bytes()),
        Credentials::ForgedWrongKey(spec) => {
            Some(format!("Bearer {}", spec.sign(b"not the key")).into_bytes())
        }
        Credentials::Bearer(s) => Some(format!("Bearer {s}").into_bytes()),
        Credentials::Raw(b) => Some(b.clone()),
        Credentials::TokenAsPassword(i, user) => pick(&ctx.tokens, *i).map(|t| basic(user, &t)),
    }
}

/// Builds the request of `step`; `None` when the fuzzer's text cannot be a
/// request hyper would hand to berth (invalid URI or header bytes).
fn build(step: &Step, ctx: &Context, key: &[u8]) -> Option<(Request<RequestBody>, String, Bytes)> {
    let body = body(&step.body, ctx);
    let path = path(&step.path, ctx);
    let query = query(step, ctx, &body);
    let uri = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let uri: http::Uri = uri.parse().ok()?;
    // hyper hands berth origin-form paths only.
    if !uri.path().starts_with('/') || uri.scheme().is_some() {
        return None;
    }
    let mut req = Request::builder().method(method(step)).uri(uri);
    let headers = req.headers_mut().expect("builder is fine so far");
    let mut put = |name: HeaderName, value: &[u8]| -> Option<()> {
        headers.append(name, HeaderValue::from_bytes(value).ok()?);
        Some(())
    };
    let credentials = if !step.as_admin.is_multiple_of(4) {
        &Credentials::Admin
    } else {
        &step.credentials
    };
    if let Some(a) = authorization(credentials, ctx, key) {
        put(header::AUTHORIZATION, &a)?;
    }
    if let Some(ct) = &step.content_type {
        put(header::CONTENT_TYPE, ct.media_type().as_bytes())?;
    }
    if step.content_length {
        // hyper reads exactly Content-Length bytes: it is always true.
        put(header::CONTENT_LENGTH, body.len().to_string().as_bytes())?;
    }
    if let Some(r) = &step.content_range {
        put(
            header::CONTENT_RANGE,
            range_text(r, ctx, body.len(), "").as_bytes(),
        )?;
    }
    if let Some(r) = &step.range {
        put(header::RANGE, range_text(r, ctx, 16, "bytes=").as_bytes())?;
    }
    for (name, value) in &step.headers {
        let name = HeaderName::from_static(EXTRA_HEADERS[*name as usize % EXTRA_HEADERS.len()]);
        put(name, value.as_bytes())?;
    }
    let body = Bytes::from(body);
    let req = req.body(RequestBody::full(body.clone())).ok()?;
    Some((req, path, body))
}

/// What one input does: single requests, whole pushes the way clients
/// make them (so that later requests find images, tags, indexes and
/// referrers to work on), and API tokens made the way the CLI makes them
/// (so that later requests can use and revoke them).
#[derive(Arbitrary, Debug)]
enum Action {
    Request(Box<Step>),
    Push(Push),
    MakeToken(MakeToken),
}

/// A well-formed `POST .../tokens`: through the admin API, or through the
/// namespace's own path with its secret when an earlier answer showed it.
#[derive(Arbitrary, Debug)]
struct MakeToken {
    /// `None`: an admin token.
    namespace: Option<u8>,
    own_path: bool,
    name: u8,
    scope: u8,
    expires: u8,
}

async fn make_token(h: &Harness, t: &MakeToken, ctx: &mut Context) {
    // The namespaces that can own tokens (not "admin", "anonymous").
    let ns = t.namespace.map(|i| NAMESPACES[i as usize % 4]);
    let name = ["ci", "reader", "deploy"][t.name as usize % 3];
    let expires_in = ["90d", "1h", "2s"][t.expires as usize % 3];
    let mut body = serde_json::json!({ "name": name, "expires_in": expires_in });
    if ns.is_some() {
        body["scope"] = ["push", "pull"][t.scope as usize % 2].into();
    }
    let own = ns.and_then(|ns| {
        t.own_path
            .then(|| ctx.secrets.iter().find(|(u, _)| u == ns).cloned())
            .flatten()
    });
    let (uri, authorization) = match (ns, own) {
        (Some(ns), Some((user, password))) => (
            format!("/v1/namespaces/{ns}/tokens"),
            authorization(&Credentials::Basic(user, password), ctx, &h.token_key),
        ),
        (ns, _) => {
            match ns {
                Some(ns) => body["namespace"] = ns.into(),
                None => body["admin"] = true.into(),
            }
            (
                "/admin/v1/tokens".to_owned(),
                authorization(&Credentials::Admin, ctx, &h.token_key),
            )
        }
    };
    let Some(authorization) = authorization else {
        return;
    };
    let Ok(req) = Request::builder()
        .method(Method::POST)
        .uri(&uri)
        .header(header::AUTHORIZATION, authorization)
        .header(header::CONTENT_TYPE, "application/json")
        .body(RequestBody::full(
            serde_json::to_vec(&body).expect("JSON values serialize"),
        ))
    else {
        return;
    };
    send(h, req, &uri, ctx).await;
}

/// Blobs uploaded monolithically, then an image manifest (or, with
/// `index`, an index of the manifests pushed so far) referring to them.
#[derive(Arbitrary, Debug)]
struct Push {
    repo: u8,
    /// Blobs go up in two PATCHed chunks instead of one POST.
    chunked: bool,
    config: u8,
    layers: Vec<u8>,
    tag: Option<Name>,
    by_digest: bool,
    docker: bool,
    index: bool,
    /// Refers to an earlier manifest (a referrer, e.g. a signature).
    subject: Option<u8>,
    artifact_type: Option<Text>,
    annotations: Vec<(String, String)>,
}

pub fn request(data: &[u8]) {
    let h = harness();
    let mut u = Unstructured::new(data);
    let mut actions = Vec::new();
    while actions.len() < MAX_STEPS && !u.is_empty() {
        match Action::arbitrary(&mut u) {
            Ok(a) => actions.push(a),
            Err(_) => break,
        }
    }
    h.rt.block_on(run(h, &actions));
}

fn admin_request(method: Method, uri: &str, ctx: &Context, key: &[u8]) -> http::request::Builder {
    Request::builder().method(method).uri(uri).header(
        header::AUTHORIZATION,
        authorization(&Credentials::Admin, ctx, key).expect("admin"),
    )
}

/// POST, two PATCHes with Content-Range, PUT with the digest.
async fn upload_in_chunks(h: &Harness, repo: &str, bytes: &'static [u8], ctx: &mut Context) {
    let start = format!("/v2/{repo}/blobs/uploads/");
    let Ok(req) = admin_request(Method::POST, &start, ctx, &h.token_key).body(RequestBody::empty())
    else {
        return;
    };
    if send(h, req, &start, ctx).await != StatusCode::ACCEPTED {
        return;
    }
    let Some(mut location) = ctx.locations.last().cloned() else {
        return;
    };
    let half = bytes.len() / 2;
    for (from, chunk) in [(0, &bytes[..half]), (half, &bytes[half..])] {
        if chunk.is_empty() {
            continue;
        }
        let Ok(req) = admin_request(Method::PATCH, &location, ctx, &h.token_key)
            .header(
                header::CONTENT_RANGE,
                format!("{from}-{}", from + chunk.len() - 1),
            )
            .header(header::CONTENT_LENGTH, chunk.len())
            .body(RequestBody::full(chunk))
        else {
            return;
        };
        if send(h, req, &location, ctx).await != StatusCode::ACCEPTED {
            return;
        }
        location = ctx.locations.last().cloned().unwrap_or(location);
    }
    let uri = format!("{location}?digest={}", Digest::sha256_of(bytes));
    if let Ok(req) = admin_request(Method::PUT, &uri, ctx, &h.token_key).body(RequestBody::empty())
    {
        send(h, req, &location, ctx).await;
    }
}

async fn push(h: &Harness, p: &Push, ctx: &mut Context) {
    let repo = REPOS[p.repo as usize % REPOS.len()];
    let mut blobs = vec![p.config];
    blobs.extend(p.layers.iter().take(4));
    for &b in &blobs {
        if p.chunked {
            upload_in_chunks(h, repo, blob(b), ctx).await;
            continue;
        }
        let uri = format!(
            "/v2/{repo}/blobs/uploads/?digest={}",
            crate::manifest::blob_digest(b)
        );
        let Ok(req) = admin_request(Method::POST, &uri, ctx, &h.token_key)
            .header(header::CONTENT_LENGTH, blob(b).len())
            .body(RequestBody::full(blob(b)))
        else {
            return;
        };
        send(h, req, &uri, ctx).await;
    }
    let descriptor = |media_type: &str, digest: String, size: usize| serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size });
    let blob_descriptor = |media_type: &str, b: u8| {
        descriptor(
            media_type,
            crate::manifest::blob_digest(b).to_string(),
            blob(b).len(),
        )
    };
    let (media_type, mut manifest) = if p.index {
        let children: Vec<_> = ctx
            .manifests
            .iter()
            .take(4)
            .map(|d| descriptor(berth_storage::manifest::OCI_MANIFEST, d.clone(), 2))
            .collect();
        (
            berth_storage::manifest::OCI_INDEX,
            serde_json::json!({ "schemaVersion": 2, "manifests": children }),
        )
    } else if p.docker {
        (
            berth_storage::manifest::DOCKER_MANIFEST,
            serde_json::json!({
                "schemaVersion": 2,
                "config": blob_descriptor("application/vnd.docker.container.image.v1+json", p.config),
                "layers": p.layers.iter().take(4).map(|&b| blob_descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", b)).collect::<Vec<_>>(),
            }),
        )
    } else {
        (
            berth_storage::manifest::OCI_MANIFEST,
            serde_json::json!({
                "schemaVersion": 2,
                "config": blob_descriptor("application/vnd.oci.image.config.v1+json", p.config),
                "layers": p.layers.iter().take(4).map(|&b| blob_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", b)).collect::<Vec<_>>(),
            }),
        )
    };
    manifest["mediaType"] = media_type.into();
    if let Some(t) = &p.artifact_type {
        manifest["artifactType"] = t.media_type().into();
    }
    if let Some(d) = p.subject.and_then(|i| ctx.manifest(i)) {
        manifest["subject"] = descriptor(berth_storage::manifest::OCI_MANIFEST, d, 2);
    }
    if !p.annotations.is_empty() {
        manifest["annotations"] = p
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let bytes = serde_json::to_vec(&manifest).expect("JSON values serialize");
    let reference = match (&p.tag, p.by_digest) {
        (Some(t), false) => t.pick(TAGS),
        _ => Digest::sha256_of(&bytes).to_string(),
    };
    let uri = format!("/v2/{repo}/manifests/{reference}");
    let Ok(req) = admin_request(Method::PUT, &uri, ctx, &h.token_key)
        .header(header::CONTENT_TYPE, media_type)
        .body(RequestBody::full(bytes))
    else {
        return;
    };
    send(h, req, &uri, ctx).await;
}

async fn run(h: &Harness, actions: &[Action]) {
    let mut ctx = Context::default();
    for action in actions {
        let step = match action {
            Action::Request(step) => step,
            Action::Push(p) => {
                push(h, p, &mut ctx).await;
                continue;
            }
            Action::MakeToken(t) => {
                make_token(h, t, &mut ctx).await;
                continue;
            }
        };
        let Some((req, path, sent)) = build(step, &ctx, &h.token_key) else {
            continue;
        };
        let method = req.method().clone();
        let status = send(h, req, &path, &mut ctx).await;
        match (method, status) {
            (Method::POST, StatusCode::ACCEPTED) => ctx.uploaded.clear(),
            (Method::PATCH, StatusCode::ACCEPTED) => ctx.uploaded.extend_from_slice(&sent),
            _ => {}
        }
    }
    // Leave no session behind: sessions are capped per namespace and overall.
    for location in std::mem::take(&mut ctx.locations) {
        let req = admin_request(Method::DELETE, &location, &ctx, &h.token_key)
            .body(RequestBody::empty())
            .expect("a location is a URI");
        send(h, req, &location, &mut ctx).await;
    }
    // Nor a token: tokens are capped per namespace, and names must be free
    // for the next input.
    for id in std::mem::take(&mut ctx.token_ids) {
        let uri = format!("/admin/v1/tokens/{id}");
        let Ok(req) =
            admin_request(Method::DELETE, &uri, &ctx, &h.token_key).body(RequestBody::empty())
        else {
            continue;
        };
        send(h, req, &uri, &mut ctx).await;
    }
    if ctx.wrote {
        let drift = h
            .state
            .storage
            .meta
            .reconcile_quota()
            .await
            .expect("reconcile runs");
        assert!(drift.is_empty(), "the quota ledger drifted: {drift:?}");
    }
}

/// Sends one request and checks the answer.
async fn send(h: &Harness, req: Request<RequestBody>, path: &str, ctx: &mut Context) -> StatusCode {
    let method = req.method().clone();
    let described = format!("{method} {}", req.uri());
    let resp = tokio::time::timeout(HANG, berth_registry::handle(&h.state, req, next_peer()))
        .await
        .unwrap_or_else(|_| panic!("{described}: no answer in {HANG:?}"));
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(HANG, body.collect())
        .await
        .unwrap_or_else(|_| panic!("{described}: body did not end in {HANG:?}"))
        .map(|b| b.to_bytes())
        .unwrap_or_else(|e| panic!("{described}: body failed: {e}"));
    if std::env::var_os("BERTH_FUZZ_TRACE").is_some() {
        eprintln!("berth-fuzz: {described} -> {}", parts.status);
    }
    check(&described, &method, path, &parts, &body);
    learn(ctx, &method, path, &parts, &body);
    parts.status
}

/// What later steps may use from an answer.
fn learn(
    ctx: &mut Context,
    method: &Method,
    path: &str,
    parts: &http::response::Parts,
    body: &Bytes,
) {
    let status = parts.status;
    let get = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    if status.is_success() && !matches!(*method, Method::GET | Method::HEAD) {
        ctx.wrote = true;
    }
    if let Some(l) = get("location") {
        if l.contains("/blobs/uploads/") && !ctx.locations.iter().any(|x| x == l) {
            ctx.locations.push(l.to_owned());
        }
    }
    if let Some(r) = get("range") {
        if let Some((_, end)) = r.split_once('-') {
            ctx.offset = end.parse::<u64>().map(|e| e + 1).unwrap_or(0);
            if r == "0-0" {
                ctx.offset = 0;
            }
        }
    }
    if matches!(
        berth_registry::routes::parse(method, path),
        Ok(Some(Route::Oci(
            OciOp::GetManifest { .. } | OciOp::PutManifest { .. }
        )))
    ) {
        if let Some(d) = get("docker-content-digest") {
            if !ctx.manifests.iter().any(|x| x == d) {
                ctx.manifests.push(d.to_owned());
            }
        }
    }
    if status.is_success() && !body.is_empty() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            if let Some(t) = v["token"].as_str() {
                ctx.tokens.push(t.to_owned());
                if let Some(id) = v["id"].as_str().filter(|_| t.starts_with("berth_")) {
                    ctx.token_ids.push(id.to_owned());
                }
            }
            if let (Some(u), Some(p)) = (v["username"].as_str(), v["password"].as_str()) {
                ctx.secrets.push((u.to_owned(), p.to_owned()));
            }
        }
    }
}

/// The promises every answer keeps.
fn check(req: &str, method: &Method, path: &str, parts: &http::response::Parts, body: &Bytes) {
    let status = parts.status;
    let headers = &parts.headers;
    let get = |n: &str| headers.get(n).map(|v| v.to_str().unwrap_or("<not text>"));
    let fail = |what: String| -> ! {
        panic!(
            "{req} -> {status}: {what}\nheaders: {headers:?}\nbody: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(2048)])
        )
    };
    let head = *method == Method::HEAD;

    if get("x-content-type-options") != Some("nosniff") {
        fail("no X-Content-Type-Options: nosniff".into());
    }
    if get("content-security-policy").is_none() {
        fail("no Content-Security-Policy".into());
    }
    if path.starts_with("/v2") && get("docker-distribution-api-version") != Some("registry/2.0") {
        fail("a /v2 answer without Docker-Distribution-API-Version".into());
    }
    // The fuzzed store never fails (a temporary dir, nothing else uses it):
    // any 5xx is berth's own fault.
    if status.is_server_error() {
        fail("server error".into());
    }
    if status.is_client_error() || status.is_informational() {
        if get("content-type") != Some("application/json") {
            fail("an error that is not application/json".into());
        }
        let v: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| fail(format!("error body is not JSON: {e}")));
        let errors = v["errors"]
            .as_array()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| fail("error body has no errors array".into()));
        for e in errors {
            let code = e["code"].as_str().unwrap_or_default();
            if !CODES.contains(&code) {
                fail(format!("error code {code:?} is not a spec code"));
            }
            if !e["message"].is_string() {
                fail("error without a message".into());
            }
        }
        match status {
            StatusCode::UNAUTHORIZED if get("www-authenticate").is_none() => {
                fail("401 without WWW-Authenticate".into())
            }
            StatusCode::TOO_MANY_REQUESTS if get("retry-after").is_none() => {
                fail("429 without Retry-After".into())
            }
            StatusCode::METHOD_NOT_ALLOWED if errors[0]["code"] != "UNSUPPORTED" => {
                fail("405 that is not UNSUPPORTED".into())
            }
            _ => {}
        }
    } else if get("content-type") == Some("application/json") && !head {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
            fail(format!("a JSON answer that is not JSON: {e}"));
        }
    }
    if let Some(len) = get("content-length") {
        let len: u64 = len
            .parse()
            .unwrap_or_else(|_| fail("Content-Length is not a number".into()));
        if !head && len != body.len() as u64 {
            fail(format!("Content-Length {len} but {} bytes", body.len()));
        }
    }
    let digest = get("docker-content-digest").map(|d| {
        d.parse::<Digest>()
            .unwrap_or_else(|e| fail(format!("Docker-Content-Digest: {e}")))
    });
    if let Some(l) = get("location") {
        if !l.starts_with('/') {
            fail(format!("Location {l:?} is not a path of this registry"));
        }
        let p = l.split('?').next().unwrap_or(l);
        // A Location is followed with GET (uploads: PATCH/PUT, same route).
        if !matches!(berth_registry::routes::parse(&Method::GET, p), Ok(Some(_))) {
            fail(format!("Location {l:?} is not a route"));
        }
    }
    let route = berth_registry::routes::parse(method, path).ok().flatten();
    let is_manifest = matches!(
        route,
        Some(Route::Oci(
            OciOp::GetManifest { .. } | OciOp::PutManifest { .. } | OciOp::DeleteManifest { .. }
        ))
    );
    let is_blob = matches!(
        route,
        Some(Route::Oci(OciOp::GetBlob { .. } | OciOp::DeleteBlob { .. }))
    );
    if status == StatusCode::OK && *method == Method::GET && (is_manifest || is_blob) {
        let d = digest.unwrap_or_else(|| fail("no Docker-Content-Digest".into()));
        if Digest::compute(d.algorithm(), body) != d {
            fail(format!("the body does not have digest {d}"));
        }
    }
    if is_manifest && status == StatusCode::OK {
        let ct = get("content-type").unwrap_or_default();
        if !berth_storage::manifest::MANIFEST_TYPES.contains(&ct) {
            fail(format!("a manifest served as {ct:?}"));
        }
    }
    if is_blob
        && status.is_success()
        && *method != Method::DELETE
        && get("content-type") != Some("application/octet-stream")
    {
        fail("a blob not served as application/octet-stream".into());
    }
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = get("content-range").unwrap_or_else(|| fail("206 without Content-Range".into()));
        let parsed = cr.strip_prefix("bytes ").and_then(|r| {
            let (range, total) = r.split_once('/')?;
            let (a, b) = range.split_once('-')?;
            Some((
                a.parse::<u64>().ok()?,
                b.parse::<u64>().ok()?,
                total.parse::<u64>().ok()?,
            ))
        });
        let (a, b, total) = parsed.unwrap_or_else(|| fail(format!("Content-Range {cr:?}")));
        if a > b || b >= total || (!head && body.len() as u64 != b - a + 1) {
            fail(format!("Content-Range {cr:?} with {} bytes", body.len()));
        }
    }
    // Manifest content types come from what clients stored; they must
    // never make a page.
    if let Some(ct) = get("content-type") {
        if ct.contains("html") || ct.contains("javascript") {
            fail(format!("served as {ct:?}"));
        }
    }
}
