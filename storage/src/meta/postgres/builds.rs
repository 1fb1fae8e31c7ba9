//! Build records on PostgreSQL (`sqlite/builds.rs` is the reference).
//! Status changes are conditional updates (`WHERE status = <expected>`): a
//! concurrent change of the same row is waited for and then re-checked, so
//! a cancel and a finish cannot both win, and a pending build moves to
//! running once, whichever replica tries.

use super::{col, exec, keys, opt, rows, transaction, Postgres};
use crate::meta::builds::*;
use crate::meta::types::REPLICA_STALE_MS;
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;

pub(super) const COLUMNS: &str =
    "id, tool, image_name, status, message, params, resolved_ref, destination_image, log_path, created_ms, start_ms, end_ms, trigger, trigger_id";

/// A build's `trigger` column: JSON, NULL for manual builds (and for rows
/// older than the column).
pub(super) fn trigger_json(t: &BuildTrigger) -> Result<Option<String>, StorageError> {
    match t {
        BuildTrigger::Manual => Ok(None),
        push => serde_json::to_string(push)
            .map(Some)
            .map_err(|e| StorageError::Internal(e.to_string())),
    }
}

/// The ref a push build was pushed to (what coalescing matches on).
fn trigger_ref(t: &BuildTrigger) -> Option<&str> {
    match t {
        BuildTrigger::Manual => None,
        BuildTrigger::Push { reference, .. } => Some(reference),
    }
}

pub(super) fn record(r: &tokio_postgres::Row) -> Result<BuildRecord, StorageError> {
    let params: String = col(r, 5)?;
    let status: String = col(r, 3)?;
    Ok(BuildRecord {
        id: col(r, 0)?,
        tool: col(r, 1)?,
        image_name: col(r, 2)?,
        // A status this version does not know reads as a failure.
        status: BuildStatus::parse(&status).unwrap_or(BuildStatus::Failure),
        message: col(r, 4)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        resolved_ref: col(r, 6)?,
        destination_image: col(r, 7)?,
        log_path: col(r, 8)?,
        created_ms: col(r, 9)?,
        start_ms: col(r, 10)?,
        end_ms: col(r, 11)?,
        // A trigger this version cannot read shows as manual rather than
        // breaking every listing.
        trigger: col::<Option<String>>(r, 12)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        trigger_id: col(r, 13)?,
    })
}

/// Inserts `b` on `c` (a connection or the caller's transaction).
pub(super) async fn insert(c: &impl GenericClient, b: &BuildRecord) -> Result<(), StorageError> {
    let params =
        serde_json::to_string(&b.params).map_err(|e| StorageError::Internal(e.to_string()))?;
    exec(
        c,
        &format!(
            "INSERT INTO builds ({COLUMNS}, trigger_ref)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ),
        &[
            &b.id,
            &b.tool,
            &b.image_name,
            &b.status.as_str(),
            &b.message,
            &params,
            &b.resolved_ref,
            &b.destination_image,
            &b.log_path,
            &b.created_ms,
            &b.start_ms,
            &b.end_ms,
            &trigger_json(&b.trigger)?,
            &b.trigger_id,
            &trigger_ref(&b.trigger),
        ],
    )
    .await?;
    Ok(())
}

impl Postgres {
    pub async fn insert_build(&self, b: BuildRecord) -> Result<(), StorageError> {
        let c = self.client().await?;
        insert(&c, &b).await
    }

    pub async fn build(&self, id: &str) -> Result<Option<BuildRecord>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            &format!("SELECT {COLUMNS} FROM builds WHERE id = $1"),
            &[&id],
        )
        .await?
        {
            Some(r) => Ok(Some(record(&r)?)),
            None => Ok(None),
        }
    }

    pub async fn builds_of(&self, tool: &str) -> Result<Vec<BuildRecord>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            &format!("SELECT {COLUMNS} FROM builds WHERE tool = $1 ORDER BY created_ms DESC, id COLLATE \"C\" DESC"),
            &[&tool],
        )
        .await?
        .iter()
        .map(record)
        .collect()
    }

    pub async fn pending_builds(&self) -> Result<Vec<BuildRecord>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            &format!("SELECT {COLUMNS} FROM builds WHERE status = $1 ORDER BY created_ms, id COLLATE \"C\""),
            &[&BuildStatus::Pending.as_str()],
        )
        .await?
        .iter()
        .map(record)
        .collect()
    }

    pub async fn transition_build(
        &self,
        id: &str,
        from: BuildStatus,
        to: BuildStatus,
        message: String,
        destination: Option<String>,
    ) -> Result<bool, StorageError> {
        let c = self.client().await?;
        let n = exec(
            &c,
            "UPDATE builds SET status = $3, message = $4,
                 destination_image = COALESCE($5, destination_image),
                 start_ms = CASE WHEN $3 = 'BUILD_RUNNING' THEN $6 ELSE start_ms END,
                 end_ms = CASE WHEN $3 IN ('BUILD_PENDING', 'BUILD_RUNNING') THEN end_ms ELSE $6 END
             WHERE id = $1 AND status = $2",
            &[
                &id,
                &from.as_str(),
                &to.as_str(),
                &message,
                &destination,
                &now_ms(),
            ],
        )
        .await?;
        Ok(n == 1)
    }

    /// Marks as failed the running builds whose replica stopped: its
    /// heartbeat is older than `REPLICA_STALE_MS` (or it never had one: a
    /// build claimed before replicas were recorded). A live replica's
    /// builds are never touched, so every replica may run this at start and
    /// periodically.
    pub async fn fail_orphaned_builds(&self, message: &str) -> Result<usize, StorageError> {
        let c = self.client().await?;
        let now = now_ms();
        Ok(exec(
            &c,
            "UPDATE builds SET status = $1, message = $2, end_ms = $3
             WHERE status = $4 AND NOT EXISTS (
                 SELECT 1 FROM replicas r WHERE r.id = builds.replica AND r.heartbeat_ms > $5)",
            &[
                &BuildStatus::Failure.as_str(),
                &message,
                &now,
                &BuildStatus::Running.as_str(),
                &(now - REPLICA_STALE_MS),
            ],
        )
        .await? as usize)
    }

    /// Claims the oldest queued build this replica may start: fewer than
    /// `max_parallel` builds running on this replica, fewer than
    /// `per_tool_parallel` of its tool running on any replica. Moves it to
    /// running, recording this replica, and returns it as it now stands.
    /// Claims are serialised by an advisory lock held to the commit (so
    /// the per-tool count read holds until the claim is visible), and the
    /// candidate row is locked with `SKIP LOCKED` (a build being cancelled
    /// or coalesced onto is passed over, not waited for).
    pub async fn claim_build(
        &self,
        max_parallel: usize,
        per_tool_parallel: usize,
    ) -> Result<Option<BuildRecord>, StorageError> {
        let me = self.replica_id();
        transaction!(self, |tx| {
            exec(
                &tx,
                "SELECT pg_advisory_xact_lock($1)",
                &[&keys::BUILD_CLAIMS],
            )
            .await?;
            let claimed = opt(
                &tx,
                &format!(
                    "UPDATE builds SET status = 'BUILD_RUNNING', message = 'running', start_ms = $1,
                         replica = $2, cancel_requested = FALSE
                     WHERE id = (
                         SELECT b.id FROM builds b
                         WHERE b.status = 'BUILD_PENDING'
                           AND (SELECT COUNT(*) FROM builds r
                                WHERE r.status = 'BUILD_RUNNING' AND r.replica = $2) < $3
                           AND (SELECT COUNT(*) FROM builds r
                                WHERE r.status = 'BUILD_RUNNING' AND r.tool = b.tool) < $4
                         ORDER BY b.created_ms, b.id COLLATE \"C\"
                         LIMIT 1
                         FOR UPDATE SKIP LOCKED)
                       AND status = 'BUILD_PENDING'
                     RETURNING {COLUMNS}"
                ),
                &[
                    &now_ms(),
                    &me,
                    &(max_parallel.min(i64::MAX as usize) as i64),
                    &(per_tool_parallel.min(i64::MAX as usize) as i64),
                ],
            )
            .await?;
            claimed.as_ref().map(record).transpose()
        })
    }

    /// Asks the replica running build `id` to cancel it (it polls
    /// `cancel_requested_builds`); false when it is not running.
    pub async fn request_build_cancel(&self, id: &str) -> Result<bool, StorageError> {
        let c = self.client().await?;
        Ok(exec(
            &c,
            "UPDATE builds SET cancel_requested = TRUE WHERE id = $1 AND status = 'BUILD_RUNNING'",
            &[&id],
        )
        .await?
            == 1)
    }

    /// This replica's running builds someone asked to cancel.
    pub async fn cancel_requested_builds(&self) -> Result<Vec<String>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT id FROM builds WHERE status = 'BUILD_RUNNING' AND replica = $1 AND cancel_requested",
            &[&self.replica_id()],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect()
    }

    /// Appends a piece of build `id`'s log (what its log file got), so
    /// every replica can serve the log. One writer per build flushes in
    /// order (`BuildLog`), so its pieces' `seq` follow their commits.
    pub async fn append_build_log(&self, id: &str, data: Vec<u8>) -> Result<(), StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO build_log_chunks (build_id, at_ms, data) VALUES ($1, $2, $3)",
            &[&id, &now_ms(), &data],
        )
        .await?;
        Ok(())
    }

    /// Pieces of build `id`'s log after `after` (a `seq`), oldest first, at
    /// most `limit`.
    pub async fn build_log_after(
        &self,
        id: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Vec<u8>)>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT seq, data FROM build_log_chunks WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&id, &after, &i64::from(limit)],
        )
        .await?
        .iter()
        .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
        .collect()
    }

    /// Forgets log pieces written before `before_ms` (the logs' retention;
    /// idempotent, so every replica may run it).
    pub async fn expire_build_logs(&self, before_ms: i64) -> Result<u64, StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "DELETE FROM build_log_chunks WHERE at_ms < $1",
            &[&before_ms],
        )
        .await
    }

    /// Allocation reads `MAX(n)` then inserts: behind an advisory lock, so
    /// two tools never get the same number from two replicas.
    pub async fn build_user(&self, tool: &str, limit: u32) -> Result<Option<u32>, StorageError> {
        transaction!(self, |tx| {
            let found: Option<i64> =
                match opt(&tx, "SELECT n FROM build_users WHERE tool = $1", &[&tool]).await? {
                    Some(r) => Some(col(&r, 0)?),
                    None => None,
                };
            let n = match found {
                Some(n) => n,
                None => {
                    exec(
                        &tx,
                        "SELECT pg_advisory_xact_lock($1)",
                        &[&keys::BUILD_USERS],
                    )
                    .await?;
                    if let Some(r) =
                        opt(&tx, "SELECT n FROM build_users WHERE tool = $1", &[&tool]).await?
                    {
                        col(&r, 0)?
                    } else {
                        let next: i64 = col(
                            &super::one(
                                &tx,
                                "SELECT COALESCE(MAX(n) + 1, 0) FROM build_users",
                                &[],
                            )
                            .await?,
                            0,
                        )?;
                        if next >= i64::from(limit) {
                            return Ok(None);
                        }
                        exec(
                            &tx,
                            "INSERT INTO build_users (tool, n, created_ms) VALUES ($1, $2, $3)",
                            &[&tool, &next, &now_ms()],
                        )
                        .await?;
                        next
                    }
                }
            };
            Ok(u32::try_from(n).ok().filter(|n| *n < limit))
        })
    }

    pub async fn unfinished_builds(&self, tool: &str) -> Result<usize, StorageError> {
        let c = self.client().await?;
        let n: i64 = col(
            &super::one(
                &c,
                "SELECT COUNT(*) FROM builds WHERE tool = $1 AND status IN ($2, $3)",
                &[
                    &tool,
                    &BuildStatus::Pending.as_str(),
                    &BuildStatus::Running.as_str(),
                ],
            )
            .await?,
            0,
        )?;
        Ok(n.max(0) as usize)
    }

    pub async fn delete_build(&self, id: &str) -> Result<bool, StorageError> {
        let c = self.client().await?;
        Ok(exec(&c, "DELETE FROM builds WHERE id = $1", &[&id]).await? > 0)
    }
}
