//! The metadata store: repositories, manifests, tags, blob links, quota,
//! GC bookkeeping, builds and accounts. `types` and `builds` are what it
//! holds and answers, for every backend. Two backends, each the only place
//! its SQL lives: `sqlite/` (the embedded default) and `postgres/`
//! (`[storage] database_url`, for several replicas sharing one database).
//! `Metadata` is the handle the rest of berth calls: an enum over the two,
//! so every call is a `match` and nothing else (no boxing, no trait
//! objects; ARCHITECTURE.md says why). ARCHITECTURE.md also states the
//! contract a backend must meet.

pub mod builds;
pub mod console;
mod postgres;
pub mod sessions;
mod sqlite;
mod types;

pub use postgres::DigestLock;
pub use sqlite::Synchronous;
pub(crate) use sqlite::{export_tables, Integrity};
pub use types::*;

use crate::digest::Digest;
use crate::manifest::ParsedManifest;
use crate::names::RepoName;
use crate::StorageError;
use builds::{BuildRecord, BuildStatus, PushQueued, TriggerRecord};
use console::*;
use sessions::*;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Handle to the metadata database, whichever backend holds it. Cheap to
/// clone.
#[derive(Clone)]
pub enum Metadata {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

/// Which backend a `Metadata` is (for logs and `/healthz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How to reach PostgreSQL (`[storage] database_url` and its pool).
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/dbname`, or with
    /// `?host=/run/postgresql` for a Unix socket directory.
    pub url: String,
    /// Connections this process keeps at most.
    pub max_connections: usize,
    /// With `sslmode=require`: the CA certificates (PEM) the server's
    /// certificate must chain to (default: the platform's roots).
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Metadata {
    /// Opens (creating if needed) the SQLite database at `path` and
    /// migrates it.
    pub fn open(
        path: &std::path::Path,
        synchronous: Synchronous,
    ) -> Result<Metadata, StorageError> {
        Ok(Metadata::Sqlite(sqlite::Sqlite::open(path, synchronous)?))
    }

    /// Connects to PostgreSQL and migrates the database (under an advisory
    /// lock, so replicas starting together migrate once).
    pub async fn connect_postgres(config: &PostgresConfig) -> Result<Metadata, StorageError> {
        Ok(Metadata::Postgres(
            postgres::Postgres::connect(config).await?,
        ))
    }

    pub fn backend(&self) -> Backend {
        match self {
            Metadata::Sqlite(_) => Backend::Sqlite,
            Metadata::Postgres(_) => Backend::Postgres,
        }
    }

    /// The newest schema version this berth knows (both backends number
    /// their migrations alike).
    pub fn schema_version() -> usize {
        let v = sqlite::Sqlite::schema_version();
        debug_assert_eq!(v, postgres::Postgres::schema_version());
        v
    }

    /// Replaces the configured quota limits; the next write uses them.
    pub fn set_quota_policy(&self, policy: QuotaPolicy) {
        match self {
            Metadata::Sqlite(m) => m.set_quota_policy(policy),
            Metadata::Postgres(m) => m.set_quota_policy(policy),
        }
    }

    pub fn quota_policy(&self) -> Arc<QuotaPolicy> {
        match self {
            Metadata::Sqlite(m) => m.quota_policy(),
            Metadata::Postgres(m) => m.quota_policy(),
        }
    }

    /// Turns the change feed on or off (on when notifications are configured).
    pub fn set_event_recording(&self, on: bool) {
        match self {
            Metadata::Sqlite(m) => m.set_event_recording(on),
            Metadata::Postgres(m) => m.set_event_recording(on),
        }
    }

    /// How often a blob's use by a HEAD is recorded follows from the blob
    /// grace period (see the backends' `liveness`).
    pub fn set_blob_grace(&self, grace: std::time::Duration) {
        match self {
            Metadata::Sqlite(m) => m.set_blob_grace(grace),
            Metadata::Postgres(m) => m.set_blob_grace(grace),
        }
    }

    /// Finishes queued writes, then closes every connection. Later calls
    /// fail with `StorageError::Closed`.
    pub async fn close(&self) {
        match self {
            Metadata::Sqlite(m) => m.close().await,
            Metadata::Postgres(m) => m.close().await,
        }
    }

    /// Links a blob whose object is already stored into `repo`, charging
    /// its namespace; the inner error is a quota refusal (nothing changed).
    /// `held` is dropped inside the write's transaction, just before it
    /// commits (what it reserves, an upload's staged bytes, is given back
    /// exactly as the charge becomes visible).
    pub async fn link_blob<H: Send + 'static>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        held: H,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        match self {
            Metadata::Sqlite(m) => m.link_blob(repo, digest, size, held).await,
            Metadata::Postgres(m) => m.link_blob(repo, digest, size, held).await,
        }
    }

    /// Links a small blob whose bytes the database keeps (`blob_data`):
    /// blob row, bytes and link with its charge in one transaction; `held`
    /// as in `link_blob`.
    pub async fn link_inline_blob<H: Send + 'static>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        data: bytes::Bytes,
        held: H,
    ) -> Result<Result<(), QuotaExceeded>, StorageError> {
        match self {
            Metadata::Sqlite(m) => m.link_inline_blob(repo, digest, data, held).await,
            Metadata::Postgres(m) => m.link_inline_blob(repo, digest, data, held).await,
        }
    }

    /// Inserts fixture repositories (see `FixtureRepo`); returns how many.
    pub async fn bulk_load<I>(&self, repos: I) -> Result<u64, StorageError>
    where
        I: IntoIterator<Item = FixtureRepo>,
    {
        match self {
            Metadata::Sqlite(m) => m.bulk_load(repos).await,
            Metadata::Postgres(m) => m.bulk_load(repos).await,
        }
    }
}

impl Metadata {
    /// This process's id among replicas sharing a PostgreSQL database;
    /// `None` with SQLite (one process per data dir).
    pub fn replica_id(&self) -> Option<&str> {
        match self {
            Metadata::Sqlite(_) => None,
            Metadata::Postgres(m) => Some(m.replica_id()),
        }
    }

    /// Whether what this process keeps in memory can go stale behind its
    /// back: true when other replicas may share the database.
    pub fn shared(&self) -> bool {
        matches!(self, Metadata::Postgres(_))
    }

    /// The invalidation epoch a cache entry must have been found in to be
    /// used: with PostgreSQL it moves with every credential, token, quota
    /// or retention change on any replica (NOTIFY), and is `None` while
    /// this replica cannot hear those (nothing cached may be used then).
    /// SQLite: always `Some(0)`; its one process clears its caches itself.
    pub fn cache_epoch(&self) -> Option<u64> {
        match self {
            Metadata::Sqlite(_) => Some(0),
            Metadata::Postgres(m) => m.cache_epoch(),
        }
    }
}

/// Writes `Metadata` methods that exist only with PostgreSQL (state that
/// replicas share; SQLite's one process keeps it in memory or files and
/// never calls these): with SQLite they fail rather than pretend.
macro_rules! postgres_only {
    ($( $(#[$attr:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Metadata {
            $(
                $(#[$attr])*
                pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StorageError> {
                    match self {
                        Metadata::Sqlite(_) => Err(StorageError::Internal(format!(
                            "{} is kept in the database only with PostgreSQL",
                            stringify!($name)
                        ))),
                        Metadata::Postgres(m) => m.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

postgres_only! {
    /// The secret `name` all replicas share: `candidate` unless one is
    /// stored already (then that one).
    fn shared_secret(&self, name: &str, candidate: String) -> String;
    /// Takes a job's lease unless another replica holds it or (`slot`) the
    /// schedule slot was run already.
    fn acquire_lease(&self, job: &str, ttl_ms: i64, slot: Option<i64>) -> LeaseOutcome;
    /// Extends this replica's lease; false when it lost it.
    fn renew_lease(&self, job: &str, ttl_ms: i64) -> bool;
    fn release_lease(&self, job: &str) -> ();
    fn heartbeat(&self) -> ();
    fn live_replicas(&self) -> Vec<String>;
    /// Claims the oldest queued build this replica may start under the caps.
    fn claim_build(&self, max_parallel: usize, per_tool_parallel: usize) -> Option<BuildRecord>;
    fn request_build_cancel(&self, id: &str) -> bool;
    fn cancel_requested_builds(&self) -> Vec<String>;
    /// Build logs every replica reads (each replica also writes its file).
    fn append_build_log(&self, id: &str, data: Vec<u8>) -> ();
    fn build_log_after(&self, id: &str, after: i64, limit: u32) -> Vec<(i64, Vec<u8>)>;
    fn expire_build_logs(&self, before_ms: i64) -> u64;
    /// A new console session within `bounds`; false when the table is full.
    fn create_ui_session(&self, key: Vec<u8>, s: UiSessionRow, bounds: UiSessionBounds) -> bool;
    fn ui_session(&self, key: Vec<u8>, bounds: UiSessionBounds) -> Option<UiSessionRow>;
    fn set_ui_session_flash(&self, key: Vec<u8>, flash: String) -> ();
    fn end_ui_session(&self, key: Vec<u8>) -> ();
    fn end_ui_sessions_of(&self, principal: &str) -> ();
    fn ui_session_count(&self) -> u64;
}

/// Writes, for each listed method, `Metadata`'s: a `match` calling the
/// backend's method of the same name and arguments. The documentation of
/// each is on the backends' methods (the SQLite one is the reference).
macro_rules! dispatch {
    ($( $(#[$attr:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Metadata {
            $(
                $(#[$attr])*
                pub async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StorageError> {
                    match self {
                        Metadata::Sqlite(m) => m.$name($($arg),*).await,
                        Metadata::Postgres(m) => m.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

dispatch! {
    // ---------------------------------------------------- pushes and pulls
    /// Answers when the database does (for `/healthz`).
    fn ping(&self) -> ();
    fn repository_exists(&self, repo: &RepoName) -> bool;
    /// The blob if it is linked into `repo`.
    fn linked_blob(&self, repo: &RepoName, digest: &Digest) -> Option<LinkedBlob>;
    /// Size of a blob known to the registry in any repository.
    fn blob_size(&self, digest: &Digest) -> Option<u64>;
    /// The bytes of a blob the database keeps inline, if it is one.
    fn inline_blob(&self, digest: &Digest) -> Option<bytes::Bytes>;
    /// Cross-repository mount: the blob's size when mounted, `None` when
    /// `from` does not link it, the inner error when `to` has no room.
    fn mount_blob(&self, from: &RepoName, to: &RepoName, digest: &Digest) -> Option<Result<u64, QuotaExceeded>>;
    /// Removes a blob link unless a manifest of the repository needs it.
    fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> UnlinkBlobOutcome;
    /// A manifest by tag or digest (`with_bytes == false`: no body, HEAD).
    fn get_manifest(&self, repo: &RepoName, reference: &str, by_digest: bool, with_bytes: bool) -> Option<StoredManifest>;
    /// Stores a manifest and points `tags` at it, after checking in the
    /// same transaction that everything it references is present.
    fn put_manifest(&self, repo: &RepoName, digest: &Digest, parsed: ParsedManifest, bytes: Vec<u8>, tags: Vec<String>, actor: &str) -> PutManifestOutcome;
    /// Deletes a manifest and every tag pointing at it.
    fn delete_manifest(&self, repo: &RepoName, digest: &Digest, actor: &str) -> DeleteManifestOutcome;
    /// Removes one tag; false if there was none.
    fn delete_tag(&self, repo: &RepoName, tag: &str, actor: &str) -> bool;
    /// Tags in lexical order after `last`; `None` when the repository does not exist.
    fn list_tags(&self, repo: &RepoName, last: Option<String>, limit: u32) -> Option<Vec<String>>;
    /// Repository names in lexical order after `last`.
    fn catalog(&self, last: Option<String>, limit: u32) -> Vec<String>;
    /// Manifests of `repo` whose subject is `subject`.
    fn referrers(&self, repo: &RepoName, subject: &Digest, artifact_type: Option<String>) -> Vec<Referrer>;
    /// Records a HEAD's use of a blob (at most once per touch interval).
    fn blob_used(&self, digest: &Digest, last_used_ms: i64) -> ();

    // ------------------------------------------------------------ accounts
    /// Creates or rotates the account of `namespace`; true when new.
    fn set_namespace_secret(&self, namespace: &str, secret_hash: String) -> bool;
    fn delete_namespace_account(&self, namespace: &str) -> bool;
    fn namespace_account(&self, name: &str) -> Option<NamespaceAccount>;
    /// Stores a new API token unless the owner's cap or a live name forbids.
    fn create_api_token(&self, t: ApiToken, cap: usize, purge_before_ms: i64) -> CreateTokenOutcome;
    fn api_token(&self, id: &str) -> Option<ApiToken>;
    fn api_tokens(&self, owner: TokenOwner, after: Option<String>, limit: usize) -> Vec<ApiToken>;
    fn delete_api_token(&self, id: &str, namespace: Option<Option<String>>) -> bool;
    fn api_token_used(&self, id: &str, last_used_ms: Option<i64>) -> ();

    // --------------------------------------------------------------- quota
    fn quota_list(&self) -> Vec<NamespaceQuota>;
    fn quota(&self, ns: &str) -> Option<NamespaceQuota>;
    fn quota_detail(&self, ns: &str, top: u32) -> Option<NamespaceDetail>;
    fn set_quota_limit(&self, ns: &str, setting: LimitSetting) -> NamespaceQuota;
    /// Recomputes usage from the tables, fixing drift; returns what it fixed.
    fn reconcile_quota(&self) -> Vec<Drift>;
    fn quota_available(&self, ns: &str) -> Option<u64>;
    fn namespace_holds_blob(&self, ns: &str, digest: &str) -> bool;

    // ------------------------------------------------------------------ gc
    /// Tags of the next `repositories` repositories with tags after
    /// `after_repo_id` (in `namespace` if given), newest first per repository.
    fn gc_tags(&self, namespace: Option<String>, after_repo_id: i64, repositories: u32) -> Vec<TagRow>;
    fn delete_tags_checked(&self, tags: Vec<TagRow>) -> Vec<TagRow>;
    fn gc_plan(&self, manifest_cutoff: i64, blob_cutoff: i64) -> GcPlan;
    fn delete_manifests_checked(&self, batch: Vec<DoomedManifest>, cutoff: i64) -> Vec<DoomedManifest>;
    fn delete_links_checked(&self, batch: Vec<DoomedLink>, cutoff: i64) -> (Vec<DoomedLink>, BTreeMap<String, u64>);
    fn delete_blob_rows_checked(&self, batch: Vec<DoomedBlob>, cutoff: i64) -> Vec<DoomedBlob>;
    fn blob_rows_present(&self, digests: Vec<String>) -> Vec<bool>;
    fn add_pin(&self, repository: &str, digest: &str, reason: &str) -> Pin;
    fn list_pins(&self) -> Vec<Pin>;
    fn delete_pin(&self, id: i64) -> bool;
    fn retention_overrides(&self) -> BTreeMap<String, RetentionOverride>;
    fn set_retention_override(&self, namespace: &str, value: Option<RetentionOverride>) -> ();
    fn start_gc_run(&self, job: &str, dry_run: bool, trigger: &str, started_ms: i64, report: serde_json::Value) -> i64;
    fn finish_gc_run(&self, id: i64, finished_ms: i64, report: serde_json::Value) -> ();
    fn interrupt_unfinished_gc_runs(&self) -> usize;
    fn gc_runs(&self, limit: u32) -> Vec<GcRunRecord>;
    fn gc_run(&self, id: i64) -> Option<GcRunRecord>;

    // -------------------------------------------------------------- builds
    fn insert_build(&self, b: BuildRecord) -> ();
    fn build(&self, id: &str) -> Option<BuildRecord>;
    fn builds_of(&self, tool: &str) -> Vec<BuildRecord>;
    fn pending_builds(&self) -> Vec<BuildRecord>;
    fn transition_build(&self, id: &str, from: BuildStatus, to: BuildStatus, message: String, destination: Option<String>) -> bool;
    fn fail_orphaned_builds(&self, message: &str) -> usize;
    fn build_user(&self, tool: &str, limit: u32) -> Option<u32>;
    fn unfinished_builds(&self, tool: &str) -> usize;
    fn delete_build(&self, id: &str) -> bool;

    // ------------------------------------------------------------ triggers
    /// Creates the tool's trigger, or changes its settings keeping its id,
    /// generation and creation time; the stored trigger and whether it is new.
    fn put_trigger(&self, t: TriggerRecord) -> (TriggerRecord, bool);
    fn trigger_of_tool(&self, tool: &str) -> Option<TriggerRecord>;
    fn trigger_by_hook(&self, id: &str) -> Option<TriggerRecord>;
    /// A new secret generation; `None` when the tool has no trigger.
    fn rotate_trigger(&self, tool: &str) -> Option<TriggerRecord>;
    /// Removes the tool's trigger and the commits it saw.
    fn delete_trigger(&self, tool: &str) -> bool;
    /// Queues a push's build in one transaction: replay check, coalescing
    /// onto a waiting build of the same trigger and ref, the per-tool
    /// limit, the insert.
    fn queue_push_build(&self, b: BuildRecord, max_unfinished: usize) -> PushQueued;

    // ------------------------------------------------------------- console
    fn quota_page(&self, q: QuotaQuery) -> QuotaPage;
    fn namespace_tags(&self, ns: &str, offset: u64, limit: u32) -> (u64, Vec<TagInfo>);
    fn active_builds(&self) -> Vec<BuildRecord>;
    fn recent_builds(&self, limit: u32) -> Vec<BuildRecord>;
    fn sample_usage(&self, now_ms: i64, keep: SampleRetention) -> SampleReport;
    fn usage_series(&self, ns: &str, since_ms: i64) -> Vec<UsagePoint>;
    fn usage_totals(&self, since_ms: i64) -> Vec<UsageTotals>;
    fn latest_usage_totals(&self) -> Option<UsageTotals>;
    fn usage_sample_rows(&self) -> u64;

    // -------------------------------------------------------------- events
    fn record_event(&self, e: NewEvent) -> ();
    fn events_after(&self, cursor: i64, limit: u32) -> Vec<Event>;
    fn endpoint(&self, name: &str) -> EndpointState;
    fn endpoints(&self) -> Vec<EndpointState>;
    fn endpoint_advanced(&self, name: &str, upto: i64, attempt: Option<DeliveryAttempt>) -> ();
    fn endpoint_failed(&self, name: &str, next_attempt_ms: i64, attempt: DeliveryAttempt) -> ();
    fn delivery_attempts(&self, name: &str, limit: u32) -> Vec<DeliveryAttempt>;
    fn prune_events(&self, keep_for: Vec<String>, before_ms: i64) -> usize;

    // ------------------------------------------- shared upload sessions
    /// Links a finished shared upload (`data`: a small one's bytes) and
    /// deletes its session row in the charging transaction.
    fn link_uploaded_blob(&self, repo: &RepoName, digest: &Digest, size: u64, data: Option<bytes::Bytes>, session: &str) -> Result<(), QuotaExceeded>;
    /// Inserts a session unless a cap refuses it.
    fn create_upload(&self, row: UploadRow, per_namespace: usize, total: usize) -> Option<StartRefused>;
    fn upload(&self, id: &str) -> Option<UploadRow>;
    fn claim_upload(&self, id: &str, expected: u64, token: &str, reserve: u64, room: Option<u64>) -> Claim;
    fn reserve_upload(&self, id: &str, token: &str, more: u64, room: Option<u64>) -> Reserve;
    fn save_upload(&self, id: &str, token: &str, p: UploadProgress) -> bool;
    fn release_upload(&self, id: &str, token: &str) -> ();
    fn delete_upload(&self, id: &str, idle_before: Option<i64>) -> Option<UploadRow>;
    fn idle_uploads(&self, cutoff: i64) -> Vec<String>;
    fn staged_upload_bytes(&self, ns: &str) -> u64;
    fn upload_count(&self) -> u64;
    fn uploads_present(&self, ids: Vec<String>) -> Vec<bool>;
    /// Records the blob store's identity unless one is; what is recorded.
    fn storage_identity(&self, name: &str, value: &str) -> String;
}

#[cfg(test)]
mod tests {
    /// Migration N makes the same tables on both backends, so both know
    /// as many.
    #[test]
    fn both_backends_number_their_migrations_alike() {
        assert_eq!(
            super::sqlite::Sqlite::schema_version(),
            super::postgres::Postgres::schema_version()
        );
        assert_eq!(super::Metadata::schema_version(), 14);
    }
}
