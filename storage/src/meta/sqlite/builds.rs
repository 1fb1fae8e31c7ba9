//! Build records: the queue's state. Status transitions are conditional
//! updates (`... WHERE status = <expected>`), so a cancel and a finish
//! racing each other cannot both win.

use super::Sqlite;
use crate::meta::builds::*;
use crate::{now_ms, StorageError};
use rusqlite::{params, OptionalExtension};

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

pub(super) fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<BuildRecord> {
    let params: String = r.get(5)?;
    let status: String = r.get(3)?;
    Ok(BuildRecord {
        id: r.get(0)?,
        tool: r.get(1)?,
        image_name: r.get(2)?,
        // A status this version does not know (a newer one wrote it) reads
        // as a failure rather than breaking every listing.
        status: BuildStatus::parse(&status).unwrap_or(BuildStatus::Failure),
        message: r.get(4)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        resolved_ref: r.get(6)?,
        destination_image: r.get(7)?,
        log_path: r.get(8)?,
        created_ms: r.get(9)?,
        start_ms: r.get(10)?,
        end_ms: r.get(11)?,
        // A trigger this version cannot read shows as manual rather than
        // breaking every listing.
        trigger: r
            .get::<_, Option<String>>(12)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default(),
        trigger_id: r.get(13)?,
    })
}

/// Inserts `b` inside the caller's transaction.
pub(super) fn insert(tx: &rusqlite::Transaction<'_>, b: &BuildRecord) -> Result<(), StorageError> {
    tx.prepare_cached(&format!(
        "INSERT INTO builds ({COLUMNS}, trigger_ref) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        b.id,
        b.tool,
        b.image_name,
        b.status.as_str(),
        b.message,
        serde_json::to_string(&b.params).map_err(|e| StorageError::Internal(e.to_string()))?,
        b.resolved_ref,
        b.destination_image,
        b.log_path,
        b.created_ms,
        b.start_ms,
        b.end_ms,
        trigger_json(&b.trigger)?,
        b.trigger_id,
        trigger_ref(&b.trigger),
    ])?;
    Ok(())
}

impl Sqlite {
    pub async fn insert_build(&self, b: BuildRecord) -> Result<(), StorageError> {
        self.write(move |tx| insert(tx, &b)).await
    }

    pub async fn build(&self, id: &str) -> Result<Option<BuildRecord>, StorageError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM builds WHERE id = ?1"))?
                    .query_row([id], record)
                    .optional()?,
            )
        })
        .await
    }

    /// A tool's builds, newest first.
    pub async fn builds_of(&self, tool: &str) -> Result<Vec<BuildRecord>, StorageError> {
        let tool = tool.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM builds WHERE tool = ?1 ORDER BY created_ms DESC, id DESC"
            ))?;
            let rows = stmt
                .query_map([tool], record)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Pending builds in arrival order.
    pub async fn pending_builds(&self) -> Result<Vec<BuildRecord>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM builds WHERE status = ?1 ORDER BY created_ms, id"
            ))?;
            let rows = stmt
                .query_map([BuildStatus::Pending.as_str()], record)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Moves a build from `from` to `to` (with a message; `end_ms` set for
    /// final states, `start_ms` for running). False if it was not in `from`.
    pub async fn transition_build(
        &self,
        id: &str,
        from: BuildStatus,
        to: BuildStatus,
        message: String,
        destination: Option<String>,
    ) -> Result<bool, StorageError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let now = now_ms();
            let n = tx
                .prepare_cached(
                    "UPDATE builds SET status = ?3, message = ?4,
                         destination_image = COALESCE(?5, destination_image),
                         start_ms = CASE WHEN ?3 = 'BUILD_RUNNING' THEN ?6 ELSE start_ms END,
                         end_ms = CASE WHEN ?3 IN ('BUILD_PENDING', 'BUILD_RUNNING') THEN end_ms ELSE ?6 END
                     WHERE id = ?1 AND status = ?2",
                )?
                .execute(params![id, from.as_str(), to.as_str(), message, destination, now])?;
            Ok(n == 1)
        })
        .await
    }

    /// Marks builds left running by a previous process as failed.
    pub async fn fail_orphaned_builds(&self, message: &str) -> Result<usize, StorageError> {
        let message = message.to_owned();
        self.write(move |tx| {
            Ok(tx.execute(
                "UPDATE builds SET status = ?1, message = ?2, end_ms = ?3 WHERE status = ?4",
                params![
                    BuildStatus::Failure.as_str(),
                    message,
                    now_ms(),
                    BuildStatus::Running.as_str()
                ],
            )?)
        })
        .await
    }

    /// The tool's build user number (its uid is `uid_base + n`),
    /// allocated on first use as the next free one; None when `limit`
    /// numbers are taken.
    pub async fn build_user(&self, tool: &str, limit: u32) -> Result<Option<u32>, StorageError> {
        let tool = tool.to_owned();
        self.write(move |tx| {
            let found: Option<i64> = tx
                .prepare_cached("SELECT n FROM build_users WHERE tool = ?1")?
                .query_row([&tool], |r| r.get(0))
                .optional()?;
            let n = match found {
                Some(n) => n,
                None => {
                    let next: i64 =
                        tx.query_row("SELECT COALESCE(MAX(n) + 1, 0) FROM build_users", [], |r| {
                            r.get(0)
                        })?;
                    if next >= i64::from(limit) {
                        return Ok(None);
                    }
                    tx.execute(
                        "INSERT INTO build_users (tool, n, created_ms) VALUES (?1, ?2, ?3)",
                        params![tool, next, now_ms()],
                    )?;
                    next
                }
            };
            Ok(u32::try_from(n).ok().filter(|n| *n < limit))
        })
        .await
    }

    /// Builds of `tool` waiting or running.
    pub async fn unfinished_builds(&self, tool: &str) -> Result<usize, StorageError> {
        let tool = tool.to_owned();
        self.read(move |c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM builds WHERE tool = ?1 AND status IN (?2, ?3)",
                )?
                .query_row(
                    params![
                        tool,
                        BuildStatus::Pending.as_str(),
                        BuildStatus::Running.as_str()
                    ],
                    |r| r.get(0),
                )?;
            Ok(n as usize)
        })
        .await
    }

    pub async fn delete_build(&self, id: &str) -> Result<bool, StorageError> {
        let id = id.to_owned();
        self.write(move |tx| Ok(tx.execute("DELETE FROM builds WHERE id = ?1", [id])? > 0))
            .await
    }
}
