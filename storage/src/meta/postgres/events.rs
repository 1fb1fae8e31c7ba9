//! The change feed on PostgreSQL (`sqlite/events.rs` is the reference).
//!
//! Endpoints read `events WHERE id > cursor`, so ids must become visible in
//! increasing order: with SQLite's single writer they do; with concurrent
//! writers an identity value taken by a transaction that commits later
//! than one with a higher value would be skipped by a cursor that already
//! passed it. So `record` takes a transaction-level advisory lock before it
//! takes an id, held until its transaction ends: transactions that record
//! events commit one at a time from that point on, in id order. Recording
//! is the last step of the writes that record, so the lock is short.

use super::{big, col, exec, keys, opt, rows, transaction, Postgres};
use crate::meta::types::{DeliveryAttempt, EndpointState, Event, NewEvent};
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;

/// Attempts kept per endpoint in the delivery log.
const ATTEMPTS_KEPT: i64 = 1000;

/// Records `e` in the feed, inside the caller's transaction, when the feed
/// is on.
pub(super) async fn record(
    c: &impl GenericClient,
    on: bool,
    e: &NewEvent,
) -> Result<(), StorageError> {
    if !on {
        return Ok(());
    }
    exec(c, "SELECT pg_advisory_xact_lock($1)", &[&keys::EVENTS]).await?;
    exec(
        c,
        "INSERT INTO events (at_ms, action, repository, digest, tag, media_type, size, actor, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &now_ms(),
            &e.action,
            &e.repository,
            &e.digest,
            &e.tag,
            &e.media_type,
            &e.size.map(big),
            &e.actor,
            &e.detail.as_ref().map(|d| d.to_string()),
        ],
    )
    .await?;
    Ok(())
}

fn event_row(r: &tokio_postgres::Row) -> Result<Event, StorageError> {
    let detail: Option<String> = col(r, 9)?;
    Ok(Event {
        id: col(r, 0)?,
        at_ms: col(r, 1)?,
        event: NewEvent {
            action: col(r, 2)?,
            repository: col(r, 3)?,
            digest: col(r, 4)?,
            tag: col(r, 5)?,
            media_type: col(r, 6)?,
            size: col::<Option<i64>>(r, 7)?.map(|s| s.max(0) as u64),
            actor: col(r, 8)?,
            detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
        },
    })
}

fn endpoint_row(r: &tokio_postgres::Row) -> Result<EndpointState, StorageError> {
    Ok(EndpointState {
        name: col(r, 0)?,
        cursor: col(r, 1)?,
        failures: col::<i64>(r, 2)?.clamp(0, u32::MAX as i64) as u32,
        next_attempt_ms: col(r, 3)?,
        pending: super::unsigned(r, 4)?,
    })
}

const ENDPOINT: &str = "SELECT w.name, w.cursor, w.failures, w.next_attempt_ms,
    (SELECT COUNT(*) FROM events e WHERE e.id > w.cursor)
    FROM webhook_endpoints w";

impl Postgres {
    pub async fn record_event(&self, e: NewEvent) -> Result<(), StorageError> {
        if !self.events_on() {
            return Ok(());
        }
        transaction!(self, |tx| { record(&tx, true, &e).await })
    }

    pub async fn events_after(&self, cursor: i64, limit: u32) -> Result<Vec<Event>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT id, at_ms, action, repository, digest, tag, media_type, size, actor, detail
             FROM events WHERE id > $1 ORDER BY id LIMIT $2",
            &[&cursor, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(event_row)
        .collect()
    }

    pub async fn endpoint(&self, name: &str) -> Result<EndpointState, StorageError> {
        transaction!(self, |tx| {
            // Behind the feed's lock, the newest id is the end of the feed
            // as every later commit will see it.
            exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&keys::EVENTS]).await?;
            exec(
                &tx,
                "INSERT INTO webhook_endpoints (name, cursor)
                 VALUES ($1, (SELECT COALESCE(MAX(id), 0) FROM events))
                 ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await?;
            let r = super::one(&tx, &format!("{ENDPOINT} WHERE w.name = $1"), &[&name]).await?;
            endpoint_row(&r)
        })
    }

    pub async fn endpoints(&self) -> Result<Vec<EndpointState>, StorageError> {
        let c = self.client().await?;
        rows(&c, &format!("{ENDPOINT} ORDER BY w.name"), &[])
            .await?
            .iter()
            .map(endpoint_row)
            .collect()
    }

    pub async fn endpoint_advanced(
        &self,
        name: &str,
        upto: i64,
        attempt: Option<DeliveryAttempt>,
    ) -> Result<(), StorageError> {
        transaction!(self, |tx| {
            exec(
                &tx,
                "UPDATE webhook_endpoints SET cursor = GREATEST(cursor, $2), failures = 0, next_attempt_ms = 0
                 WHERE name = $1",
                &[&name, &upto],
            )
            .await?;
            if let Some(a) = &attempt {
                log_attempt(&tx, name, a).await?;
            }
            Ok(())
        })
    }

    pub async fn endpoint_failed(
        &self,
        name: &str,
        next_attempt_ms: i64,
        attempt: DeliveryAttempt,
    ) -> Result<(), StorageError> {
        transaction!(self, |tx| {
            exec(
                &tx,
                "UPDATE webhook_endpoints SET failures = failures + 1, next_attempt_ms = $2 WHERE name = $1",
                &[&name, &next_attempt_ms],
            )
            .await?;
            log_attempt(&tx, name, &attempt).await
        })
    }

    pub async fn delivery_attempts(
        &self,
        name: &str,
        limit: u32,
    ) -> Result<Vec<DeliveryAttempt>, StorageError> {
        let c = self.client().await?;
        let mut out = Vec::new();
        for r in rows(
            &c,
            "SELECT at_ms, first_event, last_event, events, status, error, duration_ms
             FROM webhook_attempts WHERE endpoint = $1 ORDER BY id DESC LIMIT $2",
            &[&name, &i64::from(limit)],
        )
        .await?
        {
            out.push(DeliveryAttempt {
                at_ms: col(&r, 0)?,
                first_event: col(&r, 1)?,
                last_event: col(&r, 2)?,
                events: col::<i64>(&r, 3)?.clamp(0, u32::MAX as i64) as u32,
                status: col::<Option<i64>>(&r, 4)?.map(|s| s.clamp(0, u16::MAX as i64) as u16),
                error: col(&r, 5)?,
                duration_ms: super::unsigned(&r, 6)?,
            });
        }
        Ok(out)
    }

    pub async fn prune_events(
        &self,
        keep_for: Vec<String>,
        before_ms: i64,
    ) -> Result<usize, StorageError> {
        transaction!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM webhook_endpoints WHERE name <> ALL($1)",
                &[&keep_for],
            )
            .await?;
            let floor: Option<i64> =
                match opt(&tx, "SELECT MIN(cursor) FROM webhook_endpoints", &[]).await? {
                    Some(r) => col(&r, 0)?,
                    None => None,
                };
            let floor = floor.unwrap_or(i64::MAX);
            Ok(exec(
                &tx,
                "DELETE FROM events WHERE id <= $1 AND at_ms < $2",
                &[&floor, &before_ms],
            )
            .await? as usize)
        })
    }
}

async fn log_attempt(
    c: &impl GenericClient,
    name: &str,
    a: &DeliveryAttempt,
) -> Result<(), StorageError> {
    exec(
        c,
        "INSERT INTO webhook_attempts (endpoint, at_ms, first_event, last_event, events, status, error, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &name,
            &a.at_ms,
            &a.first_event,
            &a.last_event,
            &i64::from(a.events),
            &a.status.map(i64::from),
            &a.error,
            &big(a.duration_ms),
        ],
    )
    .await?;
    // Bounded: only the newest attempts are kept.
    exec(
        c,
        "DELETE FROM webhook_attempts WHERE endpoint = $1 AND id <= (
             SELECT id FROM webhook_attempts WHERE endpoint = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
        &[&name, &ATTEMPTS_KEPT],
    )
    .await?;
    Ok(())
}
