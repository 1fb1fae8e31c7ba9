//! The change feed: events recorded inside the transactions that make the
//! changes (a push, a delete, a quota crossing) or on their own (a GC run, a
//! finished build), each endpoint's cursor in it, and the log of delivery
//! attempts. Recording is off unless notifications are configured, so a
//! registry without endpoints keeps no feed.

use super::Sqlite;
use crate::meta::types::{DeliveryAttempt, EndpointState, Event, NewEvent};
use crate::{now_ms, StorageError};
use rusqlite::{params, Connection, OptionalExtension};
use std::sync::atomic::Ordering;

/// Attempts kept per endpoint in the delivery log.
const ATTEMPTS_KEPT: i64 = 1000;

/// Records `e` in the feed, inside the caller's transaction, when the feed
/// is on.
pub(super) fn record(conn: &Connection, on: bool, e: &NewEvent) -> rusqlite::Result<()> {
    if !on {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO events (at_ms, action, repository, digest, tag, media_type, size, actor, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        now_ms(),
        e.action,
        e.repository,
        e.digest,
        e.tag,
        e.media_type,
        e.size.map(|s| s.min(i64::MAX as u64) as i64),
        e.actor,
        e.detail.as_ref().map(|d| d.to_string()),
    ])?;
    Ok(())
}

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let detail: Option<String> = r.get(9)?;
    Ok(Event {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        event: NewEvent {
            action: r.get(2)?,
            repository: r.get(3)?,
            digest: r.get(4)?,
            tag: r.get(5)?,
            media_type: r.get(6)?,
            size: r.get::<_, Option<i64>>(7)?.map(|s| s.max(0) as u64),
            actor: r.get(8)?,
            // Written by berth as JSON; anything else reads as absent.
            detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        },
    })
}

fn endpoint_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EndpointState> {
    Ok(EndpointState {
        name: r.get(0)?,
        cursor: r.get(1)?,
        failures: r.get::<_, i64>(2)?.clamp(0, u32::MAX as i64) as u32,
        next_attempt_ms: r.get(3)?,
        pending: r.get::<_, i64>(4)?.max(0) as u64,
    })
}

const ENDPOINT: &str = "SELECT w.name, w.cursor, w.failures, w.next_attempt_ms,
    (SELECT COUNT(*) FROM events e WHERE e.id > w.cursor)
    FROM webhook_endpoints w";

impl Sqlite {
    /// Turns the feed on or off (on when notifications are configured).
    pub fn set_event_recording(&self, on: bool) {
        self.inner.events_on.store(on, Ordering::Relaxed);
    }

    pub(super) fn events_on(&self) -> bool {
        self.inner.events_on.load(Ordering::Relaxed)
    }

    /// Records an event on its own (for changes outside one transaction:
    /// a finished GC run or build).
    pub async fn record_event(&self, e: NewEvent) -> Result<(), StorageError> {
        if !self.events_on() {
            return Ok(());
        }
        self.write(move |tx| Ok(record(tx, true, &e)?)).await
    }

    /// Events after `cursor`, oldest first, at most `limit`.
    pub async fn events_after(&self, cursor: i64, limit: u32) -> Result<Vec<Event>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, at_ms, action, repository, digest, tag, media_type, size, actor, detail
                 FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![cursor, limit], event_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The endpoint's state, creating it at the end of the feed: a new
    /// endpoint hears of what happens from now on, not of the past.
    pub async fn endpoint(&self, name: &str) -> Result<EndpointState, StorageError> {
        let name = name.to_owned();
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO webhook_endpoints (name, cursor)
                 VALUES (?1, (SELECT COALESCE(MAX(id), 0) FROM events))
                 ON CONFLICT (name) DO NOTHING",
            )?
            .execute([&name])?;
            Ok(tx
                .prepare_cached(&format!("{ENDPOINT} WHERE w.name = ?1"))?
                .query_row([&name], endpoint_row)?)
        })
        .await
    }

    /// Every endpoint's state.
    pub async fn endpoints(&self) -> Result<Vec<EndpointState>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!("{ENDPOINT} ORDER BY w.name"))?;
            let rows = stmt
                .query_map([], endpoint_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Moves the endpoint's cursor to `upto` (events delivered, or passed
    /// over), logs the attempt if there was one, and clears its failures.
    pub async fn endpoint_advanced(
        &self,
        name: &str,
        upto: i64,
        attempt: Option<DeliveryAttempt>,
    ) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE webhook_endpoints SET cursor = MAX(cursor, ?2), failures = 0, next_attempt_ms = 0
                 WHERE name = ?1",
            )?
            .execute(params![name, upto])?;
            if let Some(a) = attempt {
                log_attempt(tx, &name, &a)?;
            }
            Ok(())
        })
        .await
    }

    /// Records a failed attempt: the endpoint waits until `next_attempt_ms`.
    pub async fn endpoint_failed(
        &self,
        name: &str,
        next_attempt_ms: i64,
        attempt: DeliveryAttempt,
    ) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE webhook_endpoints SET failures = failures + 1, next_attempt_ms = ?2 WHERE name = ?1",
            )?
            .execute(params![name, next_attempt_ms])?;
            log_attempt(tx, &name, &attempt)
        })
        .await
    }

    /// The endpoint's newest delivery attempts, newest first.
    pub async fn delivery_attempts(
        &self,
        name: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryAttempt>, StorageError> {
        let name = name.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT at_ms, first_event, last_event, events, status, error, duration_ms
                 FROM webhook_attempts WHERE endpoint = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt
                .query_map(params![name, limit], |r| {
                    Ok(DeliveryAttempt {
                        at_ms: r.get(0)?,
                        first_event: r.get(1)?,
                        last_event: r.get(2)?,
                        events: r.get::<_, i64>(3)?.clamp(0, u32::MAX as i64) as u32,
                        status: r
                            .get::<_, Option<i64>>(4)?
                            .map(|s| s.clamp(0, u16::MAX as i64) as u16),
                        error: r.get(5)?,
                        duration_ms: r.get::<_, i64>(6)?.max(0) as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Forgets events every endpoint in `keep_for` has passed and that are
    /// older than `before_ms` (events no endpoint needs any more), and the
    /// state of endpoints no longer configured. Returns events removed.
    pub async fn prune_events(
        &self,
        keep_for: Vec<String>,
        before_ms: i64,
    ) -> Result<usize, StorageError> {
        self.write(move |tx| {
            let placeholders = vec!["?"; keep_for.len()].join(",");
            let params = rusqlite::params_from_iter(keep_for.iter());
            let gone_sql = if keep_for.is_empty() {
                "DELETE FROM webhook_endpoints".to_owned()
            } else {
                format!("DELETE FROM webhook_endpoints WHERE name NOT IN ({placeholders})")
            };
            tx.execute(&gone_sql, params)?;
            let floor: Option<i64> = tx
                .query_row("SELECT MIN(cursor) FROM webhook_endpoints", [], |r| {
                    r.get(0)
                })
                .optional()?
                .flatten();
            let floor = floor.unwrap_or(i64::MAX);
            Ok(tx
                .prepare_cached("DELETE FROM events WHERE id <= ?1 AND at_ms < ?2")?
                .execute(params![floor, before_ms])?)
        })
        .await
    }
}

fn log_attempt(conn: &Connection, name: &str, a: &DeliveryAttempt) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO webhook_attempts (endpoint, at_ms, first_event, last_event, events, status, error, duration_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        name,
        a.at_ms,
        a.first_event,
        a.last_event,
        a.events,
        a.status,
        a.error,
        a.duration_ms.min(i64::MAX as u64) as i64
    ])?;
    // Bounded: only the newest attempts are kept.
    conn.prepare_cached(
        "DELETE FROM webhook_attempts WHERE endpoint = ?1 AND id <= (
             SELECT id FROM webhook_attempts WHERE endpoint = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![name, ATTEMPTS_KEPT])?;
    Ok(())
}
