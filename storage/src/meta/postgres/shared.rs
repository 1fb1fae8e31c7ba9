//! What several replicas sharing this database keep here instead of in one
//! process (issue 15; migration 13): the shared secrets, the jobs' leases,
//! the replica registry and its heartbeats, console sessions, and the
//! invalidation channel every per-process cache listens to.
//!
//! Cache invalidation: every change a replica's cache could hold stale
//! (credentials, API tokens, quota limits, retention) sends
//! `NOTIFY berth_invalidate, '<what>'` in its own transaction (PostgreSQL
//! delivers it at commit, to every listening session). Each replica keeps
//! one connection of its own listening (`listen`); every notification
//! bumps `epoch`, and caches keep an entry only for the epoch it was found
//! in. While that connection is down, `epoch()` is `None` and caches are
//! bypassed: what was cached might have been revoked meanwhile, unheard.

use super::{col, exec, keys, one, opt, rows, transaction, Inner, Postgres};
use crate::meta::types::*;
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

/// The channel of cache invalidations.
pub(super) const CHANNEL: &str = "berth_invalidate";

/// How often the listening connection is checked with a round trip: a
/// connection that died without a word (a network partition) is noticed
/// within this plus `LISTEN_PING_TIMEOUT`, and caches are bypassed from
/// then on.
const LISTEN_PING_EVERY: Duration = Duration::from_secs(2);
const LISTEN_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The listening connection's state, read by every cache lookup.
#[derive(Default)]
pub(super) struct Listening {
    /// Bumped by every notification and every (re)connection.
    epoch: AtomicU64,
    /// True while the connection is up and listening.
    live: AtomicBool,
}

/// Sends a cache invalidation inside `tx`: delivered when it commits, and
/// not at all when it rolls back.
pub(super) async fn notify(tx: &impl GenericClient, what: &str) -> Result<(), StorageError> {
    exec(tx, "SELECT pg_notify($1, $2)", &[&CHANNEL, &what]).await?;
    Ok(())
}

/// Keeps one connection listening on `CHANNEL` for as long as the handle
/// lives, reconnecting after a second when it drops.
pub(super) fn spawn_listener(
    config: tokio_postgres::Config,
    tls: super::tls::Tls,
    inner: Weak<Inner>,
) {
    tokio::spawn(async move {
        loop {
            let state = match inner.upgrade() {
                Some(i) if !i.pool.is_closed() => i,
                _ => return,
            };
            let listening = state.listening.clone();
            drop(state);
            if let Err(e) = listen_once(&config, &tls, &listening, &inner).await {
                tracing::warn!(error = %e, "cache invalidation channel lost; caches are bypassed until it is back");
            }
            listening.live.store(false, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &super::tls::Tls,
    listening: &Listening,
    inner: &Weak<Inner>,
) -> Result<(), StorageError> {
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    // The connection is driven by its own task, and every notification
    // forwarded; it ends when the server goes or the client is dropped.
    let (client, driver) = match tls {
        super::tls::Tls::Plain => {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            (client, tokio::spawn(forward_notifications(connection, tx)))
        }
        super::tls::Tls::Verified(connector) => {
            let (client, connection) = config.connect(connector.clone()).await?;
            (client, tokio::spawn(forward_notifications(connection, tx)))
        }
    };
    let result = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        // Anything cached before this point may have missed a notification.
        listening.epoch.fetch_add(1, Ordering::SeqCst);
        listening.live.store(true, Ordering::SeqCst);
        tracing::info!("listening for cache invalidations");
        let mut ping = tokio::time::interval(LISTEN_PING_EVERY);
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(what) => {
                        listening.epoch.fetch_add(1, Ordering::SeqCst);
                        tracing::debug!(what, "cache invalidation");
                    }
                    None => return Err(StorageError::Internal("the listening connection closed".into())),
                },
                _ = ping.tick() => {
                    if inner.upgrade().is_none_or(|i| i.pool.is_closed()) {
                        return Ok(());
                    }
                    match tokio::time::timeout(LISTEN_PING_TIMEOUT, client.batch_execute("SELECT 1")).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e.into()),
                        Err(_) => return Err(StorageError::Internal("the listening connection stopped answering".into())),
                    }
                }
            }
        }
    }
    .await;
    listening.live.store(false, Ordering::SeqCst);
    driver.abort();
    result
}

/// Drives a listening connection, sending each notification's payload to
/// `tx` until the connection ends or nobody receives.
async fn forward_notifications<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await;
        match message {
            Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                if tx.send(n.payload().to_owned()).is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cache invalidation connection failed");
                return;
            }
            None => return,
        }
    }
}

/// Beats this replica's heartbeat every `REPLICA_HEARTBEAT_MS` for as long
/// as the handle lives.
pub(super) fn spawn_heartbeat(inner: Weak<Inner>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(REPLICA_HEARTBEAT_MS as u64));
        loop {
            every.tick().await;
            let pg = match inner.upgrade() {
                Some(i) if !i.pool.is_closed() => Postgres { inner: i },
                _ => return,
            };
            if let Err(e) = pg.heartbeat().await {
                tracing::warn!(error = %e, "replica heartbeat failed");
            }
        }
    });
}

impl Postgres {
    /// This process's replica id (a UUID per start).
    pub fn replica_id(&self) -> &str {
        &self.inner.replica_id
    }

    /// The invalidation epoch caches check entries against; `None` while
    /// no invalidation can be heard (nothing cached may be used).
    pub fn cache_epoch(&self) -> Option<u64> {
        let l = &self.inner.listening;
        let epoch = l.epoch.load(Ordering::SeqCst);
        l.live.load(Ordering::SeqCst).then_some(epoch)
    }

    /// Records (or refreshes) this replica in `replicas`; replicas silent
    /// for a day are forgotten.
    pub async fn heartbeat(&self) -> Result<(), StorageError> {
        let c = self.client().await?;
        let now = now_ms();
        exec(
            &c,
            "INSERT INTO replicas (id, host, started_ms, heartbeat_ms) VALUES ($1, $2, $3, $3)
             ON CONFLICT (id) DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
            &[&self.inner.replica_id, &self.inner.host, &now],
        )
        .await?;
        exec(
            &c,
            "DELETE FROM replicas WHERE heartbeat_ms < $1",
            &[&(now - 86_400_000)],
        )
        .await?;
        Ok(())
    }

    /// The secret `name` every replica shares: `candidate` if none was
    /// stored yet (the first replica to get here wins; the others read
    /// back its value).
    pub async fn shared_secret(
        &self,
        name: &str,
        candidate: String,
    ) -> Result<String, StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO shared_secrets (name, value, created_ms) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
            &[&name, &candidate, &now_ms()],
        )
        .await?;
        let r = one(
            &c,
            "SELECT value FROM shared_secrets WHERE name = $1",
            &[&name],
        )
        .await?;
        col(&r, 0)
    }

    /// Takes the lease of `job` for `ttl_ms` unless another replica holds
    /// it unexpired, or (`slot`) that schedule slot was run already. The
    /// lease row is locked while deciding, so two replicas asking at once
    /// are ordered. Taking it also ends, as `interrupted`, GC runs of the
    /// job that another replica started and never finished: whoever held
    /// the lease before has lost it, so nothing is running them.
    pub async fn acquire_lease(
        &self,
        job: &str,
        ttl_ms: i64,
        slot: Option<i64>,
    ) -> Result<LeaseOutcome, StorageError> {
        let me = self.inner.replica_id.as_str();
        transaction!(self, |tx| {
            let now = now_ms();
            exec(
                &tx,
                "INSERT INTO job_leases (job, holder, expires_ms) VALUES ($1, '', 0)
                 ON CONFLICT (job) DO NOTHING",
                &[&job],
            )
            .await?;
            let r = one(
                &tx,
                "SELECT holder, expires_ms, last_slot_ms FROM job_leases WHERE job = $1 FOR UPDATE",
                &[&job],
            )
            .await?;
            let holder: String = col(&r, 0)?;
            let expires: i64 = col(&r, 1)?;
            let last_slot: Option<i64> = col(&r, 2)?;
            if expires > now && holder != me {
                return Ok(LeaseOutcome::Held { holder });
            }
            if let (Some(slot), Some(last)) = (slot, last_slot) {
                if last >= slot {
                    return Ok(LeaseOutcome::SlotDone);
                }
            }
            exec(
                &tx,
                "UPDATE job_leases SET holder = $2, expires_ms = $3,
                     last_slot_ms = COALESCE($4, last_slot_ms)
                 WHERE job = $1",
                &[&job, &me, &(now + ttl_ms), &slot],
            )
            .await?;
            let interrupted = exec(
                &tx,
                &format!(
                    "UPDATE gc_runs SET finished_ms = $1, report = {INTERRUPTED}
                     WHERE job = $2 AND finished_ms = 0 AND replica IS DISTINCT FROM $3"
                ),
                &[&now, &job, &me],
            )
            .await? as usize;
            Ok(LeaseOutcome::Acquired { interrupted })
        })
    }

    /// Extends this replica's lease of `job`; false when it no longer
    /// holds it (it expired and another replica took it).
    pub async fn renew_lease(&self, job: &str, ttl_ms: i64) -> Result<bool, StorageError> {
        let c = self.client().await?;
        Ok(exec(
            &c,
            "UPDATE job_leases SET expires_ms = $3 WHERE job = $1 AND holder = $2",
            &[&job, &self.inner.replica_id, &(now_ms() + ttl_ms)],
        )
        .await?
            == 1)
    }

    /// Gives the lease of `job` back (if this replica still holds it), so
    /// the next tick anywhere may take it at once.
    pub async fn release_lease(&self, job: &str) -> Result<(), StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE job_leases SET expires_ms = 0 WHERE job = $1 AND holder = $2",
            &[&job, &self.inner.replica_id],
        )
        .await?;
        Ok(())
    }

    // -------------------------------------------------- console sessions ----

    /// Stores a new console session within `bounds`: expired sessions go,
    /// the account's oldest make room for it, and a full table refuses
    /// (false) rather than evict other people. Under an advisory lock, so
    /// replicas creating sessions at once keep the bounds exact.
    pub async fn create_ui_session(
        &self,
        key: Vec<u8>,
        s: UiSessionRow,
        bounds: UiSessionBounds,
    ) -> Result<bool, StorageError> {
        transaction!(self, keep = |created: &bool| *created, |tx| {
            exec(
                &tx,
                "SELECT pg_advisory_xact_lock($1)",
                &[&keys::UI_SESSIONS],
            )
            .await?;
            let now = now_ms();
            exec(
                &tx,
                "DELETE FROM ui_sessions WHERE created_ms <= $1 OR last_seen_ms <= $2",
                &[&(now - bounds.ttl_ms), &(now - bounds.idle_ms)],
            )
            .await?;
            let keep_own = bounds.per_account.max(1) as i64 - 1;
            exec(
                &tx,
                "DELETE FROM ui_sessions WHERE principal = $1 AND key NOT IN
                     (SELECT key FROM ui_sessions WHERE principal = $1
                      ORDER BY last_seen_ms DESC LIMIT $2)",
                &[&s.principal, &keep_own],
            )
            .await?;
            let total: i64 = col(&one(&tx, "SELECT COUNT(*) FROM ui_sessions", &[]).await?, 0)?;
            if total as usize >= bounds.max {
                return Ok(false);
            }
            exec(
                &tx,
                "INSERT INTO ui_sessions (key, principal, token_id, token_scope, token_expires_ms,
                     csrf, created_ms, last_seen_ms, flash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, NULL)",
                &[
                    &key,
                    &s.principal,
                    &s.token_id,
                    &s.token_scope.map(|t| t.as_str()),
                    &s.token_expires_ms,
                    &s.csrf,
                    &now,
                ],
            )
            .await?;
            Ok(true)
        })
    }

    /// The live session of `key` (its use counts against the idle time,
    /// and its flash message is handed over once); an expired one is
    /// removed.
    pub async fn ui_session(
        &self,
        key: Vec<u8>,
        bounds: UiSessionBounds,
    ) -> Result<Option<UiSessionRow>, StorageError> {
        let c = self.client().await?;
        let now = now_ms();
        let found = opt(
            &c,
            "UPDATE ui_sessions s SET last_seen_ms = $2, flash = NULL
             FROM (SELECT key, flash FROM ui_sessions WHERE key = $1 FOR UPDATE) old
             WHERE s.key = old.key AND s.created_ms > $3 AND s.last_seen_ms > $4
             RETURNING s.principal, s.token_id, s.token_scope, s.token_expires_ms, s.csrf,
                       s.created_ms, s.last_seen_ms, old.flash",
            &[&key, &now, &(now - bounds.ttl_ms), &(now - bounds.idle_ms)],
        )
        .await?;
        let Some(r) = found else {
            exec(&c, "DELETE FROM ui_sessions WHERE key = $1", &[&key]).await?;
            return Ok(None);
        };
        let scope: Option<String> = col(&r, 2)?;
        Ok(Some(UiSessionRow {
            principal: col(&r, 0)?,
            token_id: col(&r, 1)?,
            token_scope: scope.as_deref().and_then(TokenScope::parse),
            token_expires_ms: col(&r, 3)?,
            csrf: col(&r, 4)?,
            created_ms: col(&r, 5)?,
            last_seen_ms: col(&r, 6)?,
            flash: col(&r, 7)?,
        }))
    }

    pub async fn set_ui_session_flash(
        &self,
        key: Vec<u8>,
        flash: String,
    ) -> Result<(), StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE ui_sessions SET flash = $2 WHERE key = $1",
            &[&key, &flash],
        )
        .await?;
        Ok(())
    }

    pub async fn end_ui_session(&self, key: Vec<u8>) -> Result<(), StorageError> {
        let c = self.client().await?;
        exec(&c, "DELETE FROM ui_sessions WHERE key = $1", &[&key]).await?;
        Ok(())
    }

    /// Ends every session of `principal` (its credentials changed).
    pub async fn end_ui_sessions_of(&self, principal: &str) -> Result<(), StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM ui_sessions WHERE principal = $1",
            &[&principal],
        )
        .await?;
        Ok(())
    }

    pub async fn ui_session_count(&self) -> Result<u64, StorageError> {
        let c = self.client().await?;
        let r = one(&c, "SELECT COUNT(*) FROM ui_sessions", &[]).await?;
        Ok(col::<i64>(&r, 0)?.max(0) as u64)
    }

    /// Replicas that beat within `REPLICA_STALE_MS` (for tests and the
    /// console).
    pub async fn live_replicas(&self) -> Result<Vec<String>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT id FROM replicas WHERE heartbeat_ms > $1 ORDER BY id",
            &[&(now_ms() - REPLICA_STALE_MS)],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect()
    }
}

/// A GC run's report marked `interrupted` (its other fields kept).
pub(super) const INTERRUPTED: &str = "jsonb_set(CASE WHEN jsonb_typeof(report::jsonb) = 'object' THEN report::jsonb ELSE '{}'::jsonb END, '{status}', '\"interrupted\"')::text";
