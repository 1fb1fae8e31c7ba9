//! Registry metadata in PostgreSQL (`[storage] database_url`), for several
//! berth processes sharing one database. All of this backend's SQL lives in
//! this directory; the methods mirror `sqlite/`'s one for one, with the
//! same meaning.
//!
//! SQLite serialises every write on one writer thread; here writers are
//! concurrent (other tasks, other replicas), so each write that reads and
//! then writes says how it stays correct (ARCHITECTURE.md, "The storage
//! contract"). The rule used throughout: transactions run at READ
//! COMMITTED, and a write that decides from what it read first takes a
//! row lock that every conflicting write takes too:
//!
//! - the namespace row (`SELECT ... FOR UPDATE`, `lock_namespace`) for
//!   everything that changes a namespace's links, manifests or quota: blob
//!   links and mounts, manifest puts and deletes, blob unlinks, and GC's
//!   checked deletions of manifests and links (several namespaces in name
//!   order, so two writers never wait on each other in a cycle);
//! - the blob row (`FOR SHARE`) where a mount reads another repository's
//!   link, so GC cannot delete the blob row under it;
//! - transaction-level advisory locks where there is no row to lock: an
//!   API token's owner, build uid allocation, a tool's push builds
//!   (`queue_push_build`), the change feed's order, and migrations (a
//!   session lock).
//!
//! Each statement after the lock sees every commit before it, so a check
//! made after the lock holds until the commit. Deadlocks and serialization
//! failures (SQLSTATE 40P01, 40001) are retried a bounded number of times.

mod builds;
mod console;
mod events;
mod fixture;
mod gc;
mod import;
mod integrity;
mod liveness;
mod queries;
mod quota;
mod schema;
mod sessions;
mod shared;
mod tls;
mod tokens;
mod triggers;

use super::types::*;
use super::PostgresConfig;
use crate::{DatabaseError, StorageError};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// Handle to the PostgreSQL metadata database. Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Connections that hold digest locks (see `DigestLock`).
    lock_pool: Pool,
    quota: RwLock<Arc<QuotaPolicy>>,
    /// See `liveness`: how often a HEAD records a blob's use.
    touch_interval_ms: AtomicU64,
    /// See `events`: whether changes are recorded in the feed.
    events_on: AtomicBool,
    /// This process's id among the replicas (a UUID per start): lease
    /// holder, the replica a build or GC run belongs to.
    replica_id: String,
    /// The host name, for the `replicas` table (operators' eyes only).
    host: String,
    /// See `shared`: whether cache invalidations are being heard.
    listening: Arc<shared::Listening>,
}

/// Parameters of a statement, as tokio-postgres takes them.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A write is tried this many times when PostgreSQL reports a deadlock or a
/// serialization failure (each is the database choosing a victim; a retry
/// runs against the winner's commit).
pub(super) const ATTEMPTS: u32 = 8;

impl Postgres {
    pub async fn connect(config: &PostgresConfig) -> Result<Postgres, StorageError> {
        let pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
            StorageError::Internal(format!(
                "[storage] database_url is not a PostgreSQL URL: {e}"
            ))
        })?;
        let tls = tls::for_config(&pg, config.tls_ca.as_deref())?;
        let pg_config = pg.clone();
        let host = tokio::fs::read_to_string("/proc/sys/kernel/hostname")
            .await
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let pool = |size: usize| {
            let manager_config = ManagerConfig {
                // A connection is checked (a round trip) only when it
                // failed before: a broken one errors and is dropped.
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                tls::Tls::Plain => {
                    Manager::from_config(pg.clone(), tokio_postgres::NoTls, manager_config)
                }
                tls::Tls::Verified(connector) => {
                    Manager::from_config(pg.clone(), connector.clone(), manager_config)
                }
            };
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(30)))
                .create_timeout(Some(Duration::from_secs(10)))
                .build()
                .map_err(|e| StorageError::Internal(format!("PostgreSQL pool: {e}")))
        };
        let max = config.max_connections.max(2);
        // A quarter of the connections (at least one) hold digest locks.
        let locks = (max / 4).max(1);
        let lock_pool = pool(locks)?;
        let pool = pool(max - locks.min(max - 1))?;
        let pg = Postgres {
            inner: Arc::new(Inner {
                pool,
                lock_pool,
                quota: RwLock::new(Arc::new(QuotaPolicy::default())),
                touch_interval_ms: AtomicU64::new(60_000),
                events_on: AtomicBool::new(false),
                replica_id: uuid::Uuid::new_v4().to_string(),
                host,
                listening: Arc::default(),
            }),
        };
        {
            let mut client = pg.client().await?;
            schema::migrate(&mut client).await?;
        }
        // Registered before anything can be claimed in its name, so a
        // replica starting up is never taken for a dead one.
        pg.heartbeat().await?;
        shared::spawn_heartbeat(Arc::downgrade(&pg.inner));
        shared::spawn_listener(pg_config, tls, Arc::downgrade(&pg.inner));
        Ok(pg)
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        self.inner.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Closed => StorageError::Closed,
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StorageError::Database(DatabaseError(Box::new(other))),
        })
    }

    pub fn set_quota_policy(&self, policy: QuotaPolicy) {
        *self.inner.quota.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    pub fn quota_policy(&self) -> Arc<QuotaPolicy> {
        self.inner
            .quota
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn schema_version() -> usize {
        schema::latest_version()
    }

    pub fn set_event_recording(&self, on: bool) {
        self.inner.events_on.store(on, Ordering::Relaxed);
    }

    pub(super) fn events_on(&self) -> bool {
        self.inner.events_on.load(Ordering::Relaxed)
    }

    /// Closes the pool: connections in use finish their work and are then
    /// closed; later calls fail with `StorageError::Closed`.
    pub async fn close(&self) {
        self.inner.pool.close();
        self.inner.lock_pool.close();
    }
}

/// Whether `e` is PostgreSQL choosing this transaction as the victim of a
/// deadlock or a serialization conflict: trying again is the remedy.
pub(super) fn retryable(e: &StorageError) -> bool {
    let StorageError::Database(DatabaseError(inner)) = e else {
        return false;
    };
    inner
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
}

/// Waits a little before attempt `n` (1-based), longer each time, with
/// jitter so that two victims do not collide again.
pub(super) async fn backoff(n: u32) {
    let base = 2u64.saturating_pow(n.min(8)) * 2;
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % base.max(1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// Runs a block as one READ COMMITTED transaction on a pooled connection,
/// retried (from the start, on a fresh transaction) when PostgreSQL
/// reports a deadlock or a serialization failure. The block sees the
/// transaction as `$tx` and evaluates to `Result<T, StorageError>`; a
/// `return` in it ends the block with that value. With `keep = f`, the
/// transaction commits only when `f(&value)` approves, like SQLite's
/// `write_if`: a refused write leaves no trace.
macro_rules! transaction {
    ($pg:expr, |$tx:ident| $body:block) => {
        transaction!($pg, keep = |_| true, |$tx| $body)
    };
    ($pg:expr, keep = $keep:expr, |$tx:ident| $body:block) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result: Result<_, $crate::StorageError> = async {
                let mut client = $pg.client().await?;
                let $tx = client.transaction().await?;
                let value: Result<_, $crate::StorageError> = async { $body }.await;
                let value = value?;
                if ($keep)(&value) {
                    $tx.commit().await?;
                } else {
                    $tx.rollback().await?;
                }
                Ok(value)
            }
            .await;
            match result {
                Err(e) if attempt < $crate::meta::postgres::ATTEMPTS
                    && $crate::meta::postgres::retryable(&e) =>
                {
                    tracing::debug!(attempt, error = %e, "retrying a PostgreSQL transaction");
                    $crate::meta::postgres::backoff(attempt).await;
                }
                other => break other,
            }
        }
    }};
}
pub(super) use transaction;

/// Runs a block in one REPEATABLE READ transaction (one snapshot for every
/// statement in it): for reads that must agree with each other.
macro_rules! snapshot {
    ($pg:expr, |$tx:ident| $body:block) => {{
        let result: Result<_, $crate::StorageError> = async {
            let mut client = $pg.client().await?;
            let $tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .start()
                .await?;
            let value: Result<_, $crate::StorageError> = async { $body }.await;
            let value = value?;
            $tx.commit().await?;
            Ok(value)
        }
        .await;
        result
    }};
}
pub(super) use snapshot;

// ------------------------------------------------------- query helpers ----
//
// Each prepares its statement through the connection's cache (one round
// trip per call after the first), and turns errors into `StorageError`.

pub(super) async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StorageError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

pub(super) async fn opt(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StorageError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

pub(super) async fn one(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, StorageError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, params).await?)
}

pub(super) async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, StorageError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

pub(super) async fn exists(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<bool, StorageError> {
    Ok(opt(c, sql, params).await?.is_some())
}

/// Column `i` of `row` as `T`; a type mismatch is an error, not a panic.
pub(super) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    i: usize,
) -> Result<T, StorageError> {
    Ok(row.try_get(i)?)
}

/// A non-negative count or size column as `u64`.
pub(super) fn unsigned(row: &Row, i: usize) -> Result<u64, StorageError> {
    Ok(col::<i64>(row, i)?.max(0) as u64)
}

/// A size or count for a BIGINT column.
pub(super) fn big(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

/// Advisory lock keys: distinct 64-bit numbers per purpose, so berth's
/// locks never collide with each other's (or, likely, anyone else's).
pub(super) mod keys {
    /// Held (session level) while migrations run.
    pub const MIGRATE: i64 = 0x6265_7274_6801;
    /// Held (transaction level) while a build uid is allocated.
    pub const BUILD_USERS: i64 = 0x6265_7274_6802;
    /// Held (transaction level) from an event's insertion to its commit, so
    /// event ids are assigned in commit order (see `events`).
    pub const EVENTS: i64 = 0x6265_7274_6803;
    /// API token owners: `hashtext` of the owner in the second key space.
    pub const TOKEN_OWNER: i32 = 0x6274_6b6e;
    /// Blob digests (`digest_key`) in the second key space.
    pub const DIGEST: i32 = 0x6264_6774;
    /// A tool's push builds (`hashtext` of the tool) in the second key
    /// space: held by `queue_push_build` from its replay check to its commit.
    pub const TOOL_PUSHES: i32 = 0x6274_7267;
    /// Held (transaction level) while a console session is created, so
    /// the overall and per-account bounds hold across replicas.
    pub const UI_SESSIONS: i64 = 0x6265_7274_6804;
    /// Held (transaction level) while a replica claims a queued build, so
    /// the per-tool count it checks holds until its claim commits.
    pub const BUILD_CLAIMS: i64 = 0x6265_7274_6805;
    /// Held (transaction level) while an upload session is counted and
    /// created, so the overall cap holds across replicas.
    pub const UPLOADS: i64 = 0x6265_7274_6806;
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> StorageError {
        StorageError::Database(DatabaseError(Box::new(e)))
    }
}

// ------------------------------------------------------- digest locks ----

/// Per-digest locks held across processes: transaction-level advisory
/// locks in a transaction kept open on a connection of their own (from a
/// small pool apart from the queries', so lock holders waiting for a query
/// connection can never exhaust it). Upload completion holds a digest's
/// lock from placing the object to committing its row; GC from deleting
/// the row to deleting the object (`crate::locks` says why). A replica that
/// dies holding one loses its connection, and PostgreSQL releases it.
pub struct DigestLock {
    client: Option<deadpool_postgres::Object>,
}

impl DigestLock {
    /// Ends the transaction, releasing every lock it holds.
    pub async fn release(mut self) {
        if let Some(c) = self.client.take() {
            if c.batch_execute("COMMIT").await.is_err() {
                // Not back to the pool in an unknown state: closing the
                // connection releases the locks as surely.
                drop(deadpool_postgres::Object::take(c));
            }
        }
    }
}

impl Drop for DigestLock {
    fn drop(&mut self) {
        // Dropped without `release` (a panic, a cancelled request): the
        // connection is closed rather than pooled mid-transaction, which
        // ends the transaction and its locks on the server.
        if let Some(c) = self.client.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

/// A digest's advisory key: the first 32 bits of its hex (digests are
/// uniformly random, so this spreads like the in-process stripes do).
fn digest_key(digest: &str) -> i32 {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    u32::from_str_radix(hex.get(..8).unwrap_or("0"), 16).unwrap_or(0) as i32
}

impl Postgres {
    /// Locks every digest, in key order (so two lockers never wait on each
    /// other in a cycle); held until the guard is released or dropped.
    pub async fn lock_digests(&self, digests: &[&str]) -> Result<DigestLock, StorageError> {
        let mut keys: Vec<i32> = digests.iter().map(|d| digest_key(d)).collect();
        keys.sort_unstable();
        keys.dedup();
        let client = self.inner.lock_pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Closed => StorageError::Closed,
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StorageError::Database(DatabaseError(Box::new(other))),
        })?;
        let mut guard = DigestLock {
            client: Some(client),
        };
        let Some(c) = guard.client.as_mut() else {
            return Err(StorageError::Closed);
        };
        c.batch_execute("BEGIN").await?;
        // unnest keeps the array's (sorted) order, and a plain scan takes
        // the locks in it.
        let stmt = c
            .prepare_cached(
                "SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) WITH ORDINALITY AS u(k, n)",
            )
            .await?;
        c.query(&stmt, &[&keys::DIGEST, &keys]).await?;
        Ok(guard)
    }
}
