//! What the metadata store holds and answers, as types shared by every
//! backend (`sqlite/` and `postgres/`). Nothing here knows SQL.

use crate::digest::Digest;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A manifest as stored: bytes verbatim, with the type it was pushed as.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Empty when only metadata was asked for (HEAD).
    pub bytes: Vec<u8>,
}

/// A blob linked into a repository.
#[derive(Debug, Clone, Copy)]
pub struct LinkedBlob {
    pub size: u64,
    pub touched_ms: i64,
    /// The blob's bytes are in the database (`blob_data`), not the blob
    /// store.
    pub inline: bool,
}

/// One entry of the referrers API.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// Result of storing a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutManifestOutcome {
    Stored,
    /// The namespace has no room for the manifest.
    QuotaExceeded(QuotaExceeded),
    /// A config or layer is not linked into the repository.
    MissingBlob(Digest),
    /// A child of an index is not a manifest of the repository.
    MissingManifest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteManifestOutcome {
    Deleted,
    NotFound,
    /// Deleting it would break an index of the same repository.
    ReferencedByIndex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlinkBlobOutcome {
    Unlinked,
    NotFound,
    /// A manifest of the repository still needs the blob.
    ReferencedByManifest(String),
}

/// A namespace account as stored (the secret only as its hash).
#[derive(Debug, Clone)]
pub struct NamespaceAccount {
    pub name: String,
    pub namespace: String,
    pub secret_hash: String,
    pub created_ms: i64,
    pub rotated_ms: i64,
}

// ------------------------------------------------------- api tokens ----

/// What an API token may do. A namespace's token is `Pull` (pull only) or
/// `Push` (everything its namespace's account may do); an admin token is
/// `Admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    Pull,
    Push,
    Admin,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Pull => "pull",
            TokenScope::Push => "push",
            TokenScope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<TokenScope> {
        match s {
            "pull" => Some(TokenScope::Pull),
            "push" => Some(TokenScope::Push),
            "admin" => Some(TokenScope::Admin),
            _ => None,
        }
    }
}

/// An API token as stored: the secret only as its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// The public part of the token, unique.
    pub id: String,
    /// Unique among the live tokens of its owner.
    pub name: String,
    /// The namespace it acts for; `None` for an admin token.
    pub namespace: Option<String>,
    pub scope: TokenScope,
    pub secret_hash: Vec<u8>,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// Recorded at most once a minute.
    pub last_used_ms: Option<i64>,
    /// Who created it (`admin` or the namespace's account).
    pub created_by: String,
}

/// How often a token's use is written down: a token sent on every request
/// of a push must not make each request a write.
pub const TOKEN_USE_INTERVAL_MS: i64 = 60_000;

/// Which tokens a listing shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    All,
    Namespace(String),
    Admin,
}

/// What `create_api_token` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateTokenOutcome {
    Created,
    /// The id is in use (chance): draw another.
    IdTaken,
    /// A live token of the same owner has this name; its id.
    NameTaken(String),
    /// The owner already has this many tokens (the cap).
    LimitReached(usize),
}

// ------------------------------------------------------------ quota ----

/// Limits that come from configuration rather than the database.
#[derive(Debug, Clone, Default)]
pub struct QuotaPolicy {
    /// Limit of namespaces without an override; `None` is unlimited.
    pub default_limit: Option<u64>,
    /// Namespaces that are never limited (e.g. the platform's own).
    pub unlimited: HashSet<String>,
    /// A `quota` event is recorded when a charge takes a namespace's
    /// usage to this percentage of its limit or past it (from below).
    pub alert_percent: Option<f64>,
}

/// The limit that applies to `ns` (`None`: unlimited) and where it comes
/// from (`default`, `override` or `unlimited`), given its row's override.
pub(crate) fn effective_limit(
    policy: &QuotaPolicy,
    ns: &str,
    limit_bytes: Option<i64>,
    unlimited: bool,
) -> (Option<u64>, &'static str) {
    if unlimited || policy.unlimited.contains(ns) {
        (None, "unlimited")
    } else if let Some(l) = limit_bytes {
        (Some(l.max(0) as u64), "override")
    } else {
        (policy.default_limit, "default")
    }
}

/// A namespace's quota as the admin API shows it, from its row.
pub(crate) fn quota_of(
    policy: &QuotaPolicy,
    ns: String,
    limit_bytes: Option<i64>,
    unlimited: bool,
    used: i64,
    repositories: i64,
) -> NamespaceQuota {
    let (limit, source) = effective_limit(policy, &ns, limit_bytes, unlimited);
    let used = used.max(0) as u64;
    NamespaceQuota {
        namespace: ns,
        limit_bytes: limit,
        used_bytes: used,
        available_bytes: limit.map(|l| l.saturating_sub(used)),
        percent: match limit {
            Some(0) => 100.0,
            Some(l) => (used as f64 * 10000.0 / l as f64).round() / 100.0,
            None => 0.0,
        },
        repositories: repositories.max(0) as u64,
        limit_source: source,
    }
}

/// A refused charge, with the figures the client's error message needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub namespace: String,
    pub used: u64,
    pub limit: u64,
    /// Bytes the refused write would have added.
    pub needed: u64,
    /// Bytes the namespace holds in unfinished uploads, which count too.
    pub staged: u64,
}

/// One namespace's quota as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
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
    pub limit_source: &'static str,
}

/// A repository's share of its namespace's usage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepositoryUsage {
    pub repository: String,
    /// Blobs no other repository of the namespace links, plus manifests.
    pub unique_bytes: u64,
    /// Blobs also linked by another repository of the namespace.
    pub shared_bytes: u64,
    pub manifests: u64,
    pub tags: u64,
}

/// An image and what it occupies: its manifest plus the blobs it names.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSize {
    pub repository: String,
    pub digest: String,
    pub tags: Vec<String>,
    pub bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NamespaceDetail {
    #[serde(flatten)]
    pub quota: NamespaceQuota,
    pub repositories_usage: Vec<RepositoryUsage>,
    pub largest_images: Vec<ImageSize>,
}

/// A namespace whose ledger disagreed with the tables.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Drift {
    pub namespace: String,
    pub recorded_bytes: u64,
    pub actual_bytes: u64,
}

/// A limit change from the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSetting {
    /// Back to the configured default.
    Default,
    Bytes(u64),
    Unlimited,
}

// --------------------------------------------------------------- gc ----

/// A tag, as tag cleanup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRow {
    pub repo_id: i64,
    pub repository: String,
    pub namespace: String,
    pub tag: String,
    pub digest: String,
    pub updated_ms: i64,
    pub pinned: bool,
}

/// One shared copy of each repository's name and namespace for a GC
/// plan's items: a plan at platform scale holds a million links of ten
/// thousand repositories, and two strings each were a fifth of its memory.
#[derive(Default)]
pub struct RepoNames(HashMap<i64, (Arc<str>, Arc<str>)>);

impl RepoNames {
    /// The shared (repository, namespace) of `repo_id`.
    pub fn get(&mut self, repo_id: i64, repository: &str, namespace: &str) -> (Arc<str>, Arc<str>) {
        self.0
            .entry(repo_id)
            .or_insert_with(|| (Arc::from(repository), Arc::from(namespace)))
            .clone()
    }
}

/// A manifest the plan would delete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DoomedManifest {
    #[serde(skip)]
    pub repo_id: i64,
    pub repository: Arc<str>,
    #[serde(skip)]
    pub namespace: Arc<str>,
    pub digest: String,
    pub size: u64,
}

/// A blob link the plan would remove.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DoomedLink {
    #[serde(skip)]
    pub repo_id: i64,
    pub repository: Arc<str>,
    #[serde(skip)]
    pub namespace: Arc<str>,
    pub digest: String,
    pub size: u64,
}

/// A blob (row and object) the plan would delete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DoomedBlob {
    pub digest: String,
    pub size: u64,
}

/// What an untagged GC run would remove, computed on one snapshot.
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    pub manifests: Vec<DoomedManifest>,
    pub links: Vec<DoomedLink>,
    pub blobs: Vec<DoomedBlob>,
    /// Quota each namespace gets back (manifests plus its last links of blobs).
    pub freed_per_namespace: BTreeMap<String, u64>,
}

/// A pin: the platform says a workload runs this digest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pin {
    pub id: i64,
    pub repository: String,
    pub digest: String,
    pub reason: String,
    pub created_ms: i64,
}

/// A namespace's retention override; `None` fields inherit the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetentionOverride {
    pub keep_last: Option<u32>,
    pub protected_tags: Option<Vec<String>>,
    pub max_age_ms: Option<i64>,
    pub keep_pattern: Option<String>,
}

/// A stored GC run report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcRunRecord {
    pub id: i64,
    pub job: String,
    pub dry_run: bool,
    pub trigger: String,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub report: serde_json::Value,
}

// --------------------------------------------------- bulk and integrity ----

/// A repository for `Metadata::bulk_load`: benchmarks and tests build large
/// worlds with it without writing SQL. Rows only: run `reconcile_quota`
/// afterwards to fill the quota ledger.
#[derive(Debug, Clone)]
pub struct FixtureRepo {
    pub name: String,
    pub created_ms: i64,
    /// Blobs linked into the repository (rows are made for new digests).
    pub links: Vec<FixtureBlob>,
    pub manifests: Vec<FixtureManifest>,
}

#[derive(Debug, Clone)]
pub struct FixtureBlob {
    pub digest: String,
    pub size: u64,
    /// When it was linked and last used.
    pub at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct FixtureManifest {
    pub digest: String,
    pub media_type: String,
    /// The stored bytes (may be a stand-in; `size` is what quota counts).
    pub bytes: Vec<u8>,
    pub size: u64,
    pub pushed_ms: i64,
    /// Blobs it references; they must be among the repository's links.
    pub blobs: Vec<String>,
    /// Tags pointing at it (updated at `pushed_ms`).
    pub tags: Vec<String>,
}

/// What `Storage::check_integrity` found: rows against objects.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IntegrityReport {
    /// Blob rows whose bytes are in the blob store.
    pub blob_rows: usize,
    pub objects: usize,
    /// Blobs whose bytes are in the database (`[storage] inline_blob_max`).
    pub inline_blobs: usize,
    /// Inline blobs whose bytes do not match their digest or size: damage.
    pub inline_damaged: Vec<String>,
    /// Blob rows whose object is missing: data loss.
    pub rows_without_object: Vec<String>,
    /// Objects without a blob row (a sweep removes them).
    pub orphan_objects: Vec<String>,
    /// Blob links no manifest of their repository references.
    pub unreferenced_links: u64,
    /// Blob rows no repository links.
    pub unlinked_blob_rows: u64,
}

/// The metadata's half of an integrity check, from one snapshot.
#[derive(Debug, Clone, Default)]
pub struct IntegrityRows {
    /// Blob rows whose bytes are in the blob store, by digest.
    pub blob_digests: Vec<String>,
    pub inline_blobs: usize,
    pub inline_damaged: Vec<String>,
    pub unreferenced_links: u64,
    pub unlinked_blob_rows: u64,
}

impl IntegrityReport {
    /// Nothing is lost (orphans and unreferenced rows are GC's business).
    pub fn is_sound(&self) -> bool {
        self.rows_without_object.is_empty() && self.inline_damaged.is_empty()
    }

    /// Nothing is lost and nothing is left for GC.
    pub fn is_clean(&self) -> bool {
        self.is_sound()
            && self.orphan_objects.is_empty()
            && self.unreferenced_links == 0
            && self.unlinked_blob_rows == 0
    }
}

// ------------------------------------------------------------ events ----

/// A change worth telling the world about, as recorded in the feed
/// notifications are delivered from. `action` is registry:2's (`push`,
/// `delete`) or berth's own (`tag-cleanup`, `gc`, `build`, `quota`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct NewEvent {
    pub action: String,
    pub repository: Option<String>,
    pub digest: Option<String>,
    pub tag: Option<String>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    /// Who did it (an account name, `gc`, `build:<id>`).
    pub actor: Option<String>,
    /// Anything else, as JSON (a GC report's counts, a build's status).
    pub detail: Option<serde_json::Value>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Event {
    pub id: i64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Where one notification endpoint is in the feed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointState {
    pub name: String,
    /// The last event delivered (or passed over: not subscribed).
    pub cursor: i64,
    /// Failed attempts in a row.
    pub failures: u32,
    pub next_attempt_ms: i64,
    /// Events after the cursor.
    pub pending: u64,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryAttempt {
    pub at_ms: i64,
    pub first_event: i64,
    pub last_event: i64,
    pub events: u32,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One value of a row moved between backends (`berth migrate`), as SQLite
/// holds it; the importer converts it to the target column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Some rows of one table, each in the order of `columns`.
#[derive(Debug, Clone)]
pub struct RowBatch {
    pub table: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

// ------------------------------------------------------------ replicas ----
// What several replicas sharing a PostgreSQL database keep there (issue 15):
// leases on jobs, console sessions. SQLite (one process per data dir) keeps
// these in the process.

/// What asking for a job's lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This replica holds it until it renews or releases it; `interrupted`
    /// GC runs of the job another replica left unfinished were marked so.
    Acquired { interrupted: usize },
    /// Another replica holds it, unexpired.
    Held { holder: String },
    /// The schedule slot asked for has been run already (by any replica).
    SlotDone,
}

/// A console session as stored (found by the SHA-256 of its cookie).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSessionRow {
    /// `admin`, or the namespace account's name.
    pub principal: String,
    /// The API token signed in with, if one was the password.
    pub token_id: Option<String>,
    pub token_scope: Option<TokenScope>,
    pub token_expires_ms: Option<i64>,
    pub csrf: String,
    pub created_ms: i64,
    pub last_seen_ms: i64,
    /// Shown once (handed over by the read that finds it).
    pub flash: Option<String>,
}

/// The bounds a console session is kept within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UiSessionBounds {
    pub max: usize,
    pub per_account: usize,
    pub ttl_ms: i64,
    pub idle_ms: i64,
}

/// How long a replica's heartbeat may be silent before what it was running
/// counts as abandoned (it beats every `REPLICA_HEARTBEAT_MS`).
pub const REPLICA_STALE_MS: i64 = 30_000;
pub const REPLICA_HEARTBEAT_MS: i64 = 5_000;
