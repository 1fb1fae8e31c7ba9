//! The JSON contracts of berth's own APIs (`/admin/v1/...` and the
//! Toolforge-shaped `/v1/tool/...`), as types: handlers build responses from
//! them and read requests into them with `json_body`, and the admin CLI
//! reads the same types back, so a renamed field fails to compile or to
//! parse instead of silently printing nothing. Storage's own types convert
//! into these with `From`, so the wire shape does not move when storage
//! does.

use crate::error::{ApiError, ApiResult, Code};
use crate::request_body::RequestBody;
use berth_storage::meta;
use http::Request;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest JSON request body any of these APIs accepts.
pub const MAX_JSON_BODY: usize = 256 * 1024;

/// Reads a JSON request body of at most `MAX_JSON_BODY` bytes into `T`.
/// Unknown fields are errors where `T` says so (`deny_unknown_fields`).
pub async fn json_body<T: serde::de::DeserializeOwned>(req: Request<RequestBody>) -> ApiResult<T> {
    let bytes = read_body(req, MAX_JSON_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            Code::Unsupported,
            format!("the request body is not what this endpoint takes: {e}"),
        )
    })
}

/// Reads a whole request body of at most `limit` bytes: 413 when it is
/// longer (declared or sent; the rest is drained so the client reads the
/// answer), 400 when it cannot be read.
pub async fn read_body(req: Request<RequestBody>, limit: usize) -> ApiResult<bytes::Bytes> {
    let too_big = |n: String| {
        ApiError::new(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            Code::SizeInvalid,
            format!("the request body is {n} bytes; the limit is {limit} bytes"),
        )
    };
    if let Some(len) = crate::handlers::content_length(req.headers())? {
        if len > limit as u64 {
            crate::handlers::drain(req.into_body()).await;
            return Err(too_big(len.to_string()));
        }
    }
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                Code::SizeInvalid,
                format!("cannot read the request body: {e}"),
            )
        })?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > limit {
                crate::handlers::drain(body).await;
                return Err(too_big(format!("more than {limit}")));
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

// ------------------------------------------------------------- quotas ----

/// One namespace's quota.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NamespaceQuota {
    pub namespace: String,
    /// `None` when unlimited.
    pub limit_bytes: Option<u64>,
    pub used_bytes: u64,
    pub available_bytes: Option<u64>,
    /// Used as a percentage of the limit (0 when unlimited).
    pub percent: f64,
    pub repositories: u64,
    /// Where the limit comes from: `default`, `override` or `unlimited`.
    pub limit_source: String,
}

impl From<meta::NamespaceQuota> for NamespaceQuota {
    fn from(q: meta::NamespaceQuota) -> Self {
        NamespaceQuota {
            namespace: q.namespace,
            limit_bytes: q.limit_bytes,
            used_bytes: q.used_bytes,
            available_bytes: q.available_bytes,
            percent: q.percent,
            repositories: q.repositories,
            limit_source: q.limit_source.to_owned(),
        }
    }
}

/// `GET /admin/v1/quotas`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuotaList {
    pub namespaces: Vec<NamespaceQuota>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepositoryUsage {
    pub repository: String,
    /// Blobs no other repository of the namespace links, plus manifests.
    pub unique_bytes: u64,
    /// Blobs also linked by another repository of the namespace.
    pub shared_bytes: u64,
    pub manifests: u64,
    pub tags: u64,
}

impl From<meta::RepositoryUsage> for RepositoryUsage {
    fn from(r: meta::RepositoryUsage) -> Self {
        RepositoryUsage {
            repository: r.repository,
            unique_bytes: r.unique_bytes,
            shared_bytes: r.shared_bytes,
            manifests: r.manifests,
            tags: r.tags,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageSize {
    pub repository: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub bytes: u64,
}

impl From<meta::ImageSize> for ImageSize {
    fn from(i: meta::ImageSize) -> Self {
        ImageSize {
            repository: i.repository,
            digest: i.digest,
            tags: i.tags,
            bytes: i.bytes,
        }
    }
}

/// `GET /admin/v1/quotas/{ns}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespaceDetail {
    #[serde(flatten)]
    pub quota: NamespaceQuota,
    pub repositories_usage: Vec<RepositoryUsage>,
    pub largest_images: Vec<ImageSize>,
}

impl From<meta::NamespaceDetail> for NamespaceDetail {
    fn from(d: meta::NamespaceDetail) -> Self {
        NamespaceDetail {
            quota: d.quota.into(),
            repositories_usage: d.repositories_usage.into_iter().map(Into::into).collect(),
            largest_images: d.largest_images.into_iter().map(Into::into).collect(),
        }
    }
}

/// `PUT /admin/v1/quotas/{ns}`: `{"limit_bytes": N}`, `{"limit_bytes":
/// null}` (back to the default) or `{"unlimited": true}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SetQuota {
    /// Absent: not given; `null`: the default; a number: that many bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_or_null"
    )]
    pub limit_bytes: Option<Option<u64>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unlimited: bool,
}

/// Tells `{"x": null}` (Some(None)) from a missing field (None).
fn present_or_null<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl SetQuota {
    pub fn bytes(n: u64) -> SetQuota {
        SetQuota {
            limit_bytes: Some(Some(n)),
            unlimited: false,
        }
    }

    pub fn default_limit() -> SetQuota {
        SetQuota {
            limit_bytes: Some(None),
            unlimited: false,
        }
    }

    pub fn unlimited() -> SetQuota {
        SetQuota {
            limit_bytes: None,
            unlimited: true,
        }
    }

    pub fn setting(&self) -> ApiResult<meta::LimitSetting> {
        match (self.unlimited, self.limit_bytes) {
            (true, None) => Ok(meta::LimitSetting::Unlimited),
            (false, Some(None)) => Ok(meta::LimitSetting::Default),
            (false, Some(Some(n))) => Ok(meta::LimitSetting::Bytes(n)),
            (true, Some(_)) | (false, None) => Err(ApiError::bad_request(
                Code::Unsupported,
                "send one of {\"limit_bytes\": N}, {\"limit_bytes\": null} (the default) or {\"unlimited\": true}",
            )),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drift {
    pub namespace: String,
    pub recorded_bytes: u64,
    pub actual_bytes: u64,
}

impl From<meta::Drift> for Drift {
    fn from(d: meta::Drift) -> Self {
        Drift {
            namespace: d.namespace,
            recorded_bytes: d.recorded_bytes,
            actual_bytes: d.actual_bytes,
        }
    }
}

/// `POST /admin/v1/quotas/_reconcile`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reconciled {
    pub drift: Vec<Drift>,
}

// ----------------------------------------------------------------- gc ----

pub use berth_gc::report::{JobKind, RunReport};

/// One stored run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRun {
    pub id: i64,
    pub job: String,
    pub dry_run: bool,
    pub trigger: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub report: RunReport,
}

/// `GET /admin/v1/gc/runs`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRuns {
    pub runs: Vec<GcRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub id: i64,
    pub repository: String,
    pub digest: String,
    pub reason: String,
    pub created_ms: i64,
}

impl From<meta::Pin> for Pin {
    fn from(p: meta::Pin) -> Self {
        Pin {
            id: p.id,
            repository: p.repository,
            digest: p.digest,
            reason: p.reason,
            created_ms: p.created_ms,
        }
    }
}

/// `GET /admin/v1/pins`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pins {
    pub pins: Vec<Pin>,
}

/// `POST /admin/v1/pins`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPin {
    pub repository: String,
    pub digest: String,
    #[serde(default)]
    pub reason: String,
}

/// The default retention policy as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionDefault {
    pub keep_last: u32,
    pub protected_tags: Vec<String>,
    pub max_age_ms: Option<u64>,
    pub keep_pattern: Option<String>,
}

/// A namespace's override; absent fields inherit the default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetentionOverride {
    pub keep_last: Option<u32>,
    pub protected_tags: Option<Vec<String>>,
    pub max_age_ms: Option<i64>,
    pub keep_pattern: Option<String>,
}

impl From<meta::RetentionOverride> for RetentionOverride {
    fn from(o: meta::RetentionOverride) -> Self {
        RetentionOverride {
            keep_last: o.keep_last,
            protected_tags: o.protected_tags,
            max_age_ms: o.max_age_ms,
            keep_pattern: o.keep_pattern,
        }
    }
}

impl From<RetentionOverride> for meta::RetentionOverride {
    fn from(o: RetentionOverride) -> Self {
        meta::RetentionOverride {
            keep_last: o.keep_last,
            protected_tags: o.protected_tags,
            max_age_ms: o.max_age_ms,
            keep_pattern: o.keep_pattern,
        }
    }
}

/// `GET /admin/v1/retention`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Retention {
    pub default: RetentionDefault,
    pub overrides: BTreeMap<String, RetentionOverride>,
}

/// `PUT /admin/v1/retention/{ns}`: absent or null fields inherit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRetention {
    #[serde(default)]
    pub keep_last: Option<u32>,
    #[serde(default)]
    pub protected_tags: Option<Vec<String>>,
    /// A duration such as "30d".
    #[serde(default)]
    pub max_age: Option<String>,
    /// A regular expression of tags never removed.
    #[serde(default)]
    pub keep_pattern: Option<String>,
}

/// The answer to `PUT /admin/v1/retention/{ns}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetentionSet {
    pub namespace: String,
    #[serde(rename = "override")]
    pub value: RetentionOverride,
}

// -------------------------------------------------------- credentials ----

/// `POST /admin/v1/namespaces/{ns}/credentials`: shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub namespace: String,
    /// True when an existing secret was replaced.
    pub rotated: bool,
}

// --------------------------------------------------------- api tokens ----

pub use berth_storage::meta::TokenScope;

/// `POST /admin/v1/tokens` (with `namespace`, or `admin: true`) and
/// `POST /v1/namespaces/{ns}/tokens` (neither: the path names the
/// namespace).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// An admin token (admin API only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Unique among the owner's live tokens.
    pub name: String,
    /// A duration such as "90d"; absent: `[auth] api_token_default_lifetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    /// `pull` or `push` (the default) for a namespace's token; `admin`
    /// (or absent) for an admin token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<TokenScope>,
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    /// `None` for an admin token.
    pub namespace: Option<String>,
    pub scope: TokenScope,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// RFC 3339.
    pub expires_at: String,
    /// Recorded at most once a minute; `None` if never used.
    pub last_used_ms: Option<i64>,
    pub expired: bool,
    pub created_by: String,
}

impl TokenInfo {
    /// The listed form of a stored token, `expired` as of `now_ms`.
    pub fn new(t: &meta::ApiToken, now_ms: i64) -> TokenInfo {
        TokenInfo {
            id: t.id.clone(),
            name: t.name.clone(),
            namespace: t.namespace.clone(),
            scope: t.scope,
            created_ms: t.created_ms,
            expires_ms: t.expires_ms,
            expires_at: rfc3339(t.expires_ms),
            last_used_ms: t.last_used_ms,
            expired: t.expires_ms <= now_ms,
            created_by: t.created_by.clone(),
        }
    }
}

/// The answer to a create: the token itself, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// `GET /admin/v1/tokens` and `GET /v1/namespaces/{ns}/tokens`: by id;
/// `next` is the `last` to ask for the next page, when there is one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
    pub next: Option<String>,
}

// ------------------------------------------------- Toolforge's shapes ----

/// Toolforge's `messages` block, on every Toolforge-shaped answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Messages {
    #[serde(default)]
    pub info: Vec<String>,
    #[serde(default)]
    pub warning: Vec<String>,
    #[serde(default)]
    pub error: Vec<String>,
}

/// `GET /v1/tool/{tool}/quotas`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolQuota {
    pub quota: ToolQuotaCategories,
    pub messages: Messages,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolQuotaCategories {
    pub categories: Vec<ToolQuotaCategory>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolQuotaCategory {
    pub name: String,
    pub items: Vec<ToolQuotaItem>,
}

/// One quota figure as Toolforge shows it: its CLI prints every key but
/// `name` as is, so the values are for people ("1.0 GiB", "12.3%");
/// `*_bytes` carry the exact numbers for programs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolQuotaItem {
    pub name: String,
    pub limit: String,
    pub used: String,
    pub available: String,
    pub capacity: String,
    pub limit_bytes: Option<u64>,
    pub used_bytes: u64,
    pub available_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_quota_tells_null_from_absent() {
        let parse = |s: &str| serde_json::from_str::<SetQuota>(s);
        assert_eq!(
            parse(r#"{"limit_bytes": 5}"#).unwrap().setting().unwrap(),
            meta::LimitSetting::Bytes(5)
        );
        assert_eq!(
            parse(r#"{"limit_bytes": null}"#)
                .unwrap()
                .setting()
                .unwrap(),
            meta::LimitSetting::Default
        );
        assert_eq!(
            parse(r#"{"unlimited": true}"#).unwrap().setting().unwrap(),
            meta::LimitSetting::Unlimited
        );
        assert!(parse(r#"{}"#).unwrap().setting().is_err());
        assert!(parse(r#"{"limit_bytes": -1}"#).is_err());
        assert!(
            parse(r#"{"limit": 5}"#).is_err(),
            "a misspelt field is an error"
        );
        for s in [
            SetQuota::bytes(7),
            SetQuota::default_limit(),
            SetQuota::unlimited(),
        ] {
            let back: SetQuota = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(back, s);
        }
    }
}

/// A build in Toolforge's shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolBuild {
    pub build_id: String,
    pub status: berth_storage::meta::builds::BuildStatus,
    pub message: String,
    /// RFC 3339.
    pub start_time: Option<String>,
    pub end_time: Option<String>,
    pub parameters: berth_storage::meta::builds::BuildParams,
    pub destination_image: String,
    pub resolved_ref: String,
    /// What started the build (berth's addition; Toolforge's CLI ignores
    /// it, and `show` tells it in `messages.info`, which the CLI prints).
    #[serde(default)]
    pub trigger: ToolBuildTrigger,
}

/// What started a build: `{"kind": "manual"}` or `{"kind": "push",
/// "commit": ..., "ref": ..., "pusher": ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ToolBuildTrigger {
    #[default]
    Manual,
    Push {
        commit: String,
        #[serde(rename = "ref")]
        reference: String,
        pusher: String,
    },
}

impl From<&meta::builds::BuildTrigger> for ToolBuildTrigger {
    fn from(t: &meta::builds::BuildTrigger) -> Self {
        match t {
            meta::builds::BuildTrigger::Manual => ToolBuildTrigger::Manual,
            meta::builds::BuildTrigger::Push {
                commit,
                reference,
                pusher,
            } => ToolBuildTrigger::Push {
                commit: commit.clone(),
                reference: reference.clone(),
                pusher: pusher.clone(),
            },
        }
    }
}

impl ToolBuildTrigger {
    /// For people: who or what started the build.
    pub fn describe(&self) -> String {
        match self {
            ToolBuildTrigger::Manual => "started by hand".into(),
            ToolBuildTrigger::Push {
                commit,
                reference,
                pusher,
            } => format!("triggered by a push of {commit} to {reference} by {pusher:?}"),
        }
    }
}

fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

impl From<&berth_storage::meta::builds::BuildRecord> for ToolBuild {
    fn from(b: &berth_storage::meta::builds::BuildRecord) -> Self {
        ToolBuild {
            build_id: b.id.clone(),
            status: b.status,
            message: b.message.clone(),
            start_time: Some(rfc3339(b.start_ms.unwrap_or(b.created_ms))),
            end_time: b.end_ms.map(rfc3339),
            parameters: b.params.clone(),
            destination_image: b.destination_image.clone(),
            resolved_ref: b.resolved_ref.clone(),
            trigger: ToolBuildTrigger::from(&b.trigger),
        }
    }
}

/// `GET /v1/tool/{tool}/builds`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolBuilds {
    pub builds: Vec<ToolBuild>,
    pub messages: Messages,
}

/// `GET .../builds/{id}`, and the answer to a cancel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolBuildShown {
    pub build: ToolBuild,
    pub messages: Messages,
}

/// `POST .../builds`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolBuildStarted {
    pub new_build: NewBuild,
    pub messages: Messages,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewBuild {
    pub name: String,
    pub resolved_ref: String,
    pub parameters: berth_storage::meta::builds::BuildParams,
}

/// The answer to a cancel: Toolforge's client reads `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolBuildCancelled {
    pub id: String,
    pub build: ToolBuild,
    pub messages: Messages,
}

/// The answer to a delete: Toolforge's client reads `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolBuildDeleted {
    pub id: String,
    pub messages: Messages,
}

/// Answers that carry only Toolforge's `messages` (clean).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolMessages {
    pub messages: Messages,
}

impl Messages {
    pub fn info(info: Vec<String>) -> Messages {
        Messages {
            info,
            ..Messages::default()
        }
    }
}

// ----------------------------------------------------- notifications ----

/// One notification endpoint and its place in the change feed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationEndpoint {
    pub name: String,
    pub url: String,
    pub events: Vec<crate::notify::EventKind>,
    /// The last event delivered (or passed over).
    pub cursor: i64,
    /// Events recorded after the cursor.
    pub pending: u64,
    /// Failed attempts in a row.
    pub failures: u32,
    pub next_attempt_ms: i64,
    pub last_attempt: Option<Delivery>,
}

/// `GET /admin/v1/notifications`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notifications {
    pub endpoints: Vec<NotificationEndpoint>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub at_ms: i64,
    pub first_event: i64,
    pub last_event: i64,
    pub events: u32,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl From<meta::DeliveryAttempt> for Delivery {
    fn from(a: meta::DeliveryAttempt) -> Self {
        Delivery {
            at_ms: a.at_ms,
            first_event: a.first_event,
            last_event: a.last_event,
            events: a.events,
            status: a.status,
            error: a.error,
            duration_ms: a.duration_ms,
        }
    }
}

// ----------------------------------------------------- build triggers ----

/// `PUT /v1/tool/{tool}/trigger`: what a push to the repository builds.
/// `ref` is a branch, a full ref or a pattern of them with `*`; absent:
/// the repository's default branch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutTrigger {
    pub source_url: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    #[serde(default)]
    pub envvars: BTreeMap<String, String>,
}

/// A tool's build trigger as its API shows it (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolTrigger {
    pub tool: String,
    /// Where the forge delivers pushes: absolute with `[server]
    /// public_url`, else a path on this registry.
    pub hook_url: String,
    pub source_url: String,
    /// The ref pattern; null: the repository's default branch.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub image_name: Option<String>,
    pub envvars: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_time: String,
    pub updated_time: String,
}

impl ToolTrigger {
    pub fn new(t: &meta::builds::TriggerRecord, hook_url: String) -> ToolTrigger {
        ToolTrigger {
            tool: t.tool.clone(),
            hook_url,
            source_url: t.source_url.clone(),
            reference: t.ref_pattern.clone(),
            image_name: t.image_name.clone(),
            envvars: t.envvars.clone(),
            created_time: rfc3339(t.created_ms),
            updated_time: rfc3339(t.updated_ms),
        }
    }
}

/// `GET /admin/v1/notifications/{name}/deliveries`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deliveries {
    pub endpoint: String,
    pub attempts: Vec<Delivery>,
}

/// The answer to `GET`, `PUT` and `POST .../trigger/rotate`: `secret` only
/// when it is new (created or rotated), shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ToolTriggerShown {
    pub trigger: ToolTrigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub messages: Messages,
}

/// The answer to a delivery the hook accepted or acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookAnswer {
    /// `queued` (a new build), `coalesced` (a waiting build now builds
    /// this commit), `ignored` (see `reason`) or `pong` (GitHub's ping).
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// For `coalesced`: the commit the build no longer builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub messages: Messages,
}
