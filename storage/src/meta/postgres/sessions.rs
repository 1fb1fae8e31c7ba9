//! Upload sessions shared by replicas (`sqlite/sessions.rs` is the
//! reference). Concurrency, per write:
//!
//! - `create_upload` counts and inserts under a transaction-level advisory
//!   lock (`keys::UPLOADS`): the overall cap has no row to lock, and
//!   session creation is one short transaction.
//! - `claim_upload` and `reserve_upload` read the namespace's staged bytes
//!   and then write: both hold the namespace's row lock
//!   (`quota::lock_namespace`), as every quota decision does, and read the
//!   session `FOR UPDATE`, so two claims of one session are ordered and
//!   the second sees the first's claim.
//! - `save_upload`, `release_upload`: one conditional UPDATE each (`WHERE
//!   claim = $token`): a request whose claim was taken away (the session
//!   cancelled or expired) changes nothing.
//! - `delete_upload`: one DELETE ... RETURNING, conditional on idleness
//!   for the expiry, so a session written to meanwhile survives.
//!
//! No transaction is held while a request body streams: a claim is a
//! column, taken and given back by short statements.

use super::{col, exec, keys, opt, rows, transaction, unsigned, Postgres};
use crate::meta::sessions::*;
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

const COLUMNS: &str = "id, repo, namespace, received, reserved, hash_state, multipart_id, parts, pending, claim, started_ms, updated_ms";

fn upload_row(r: &Row) -> Result<UploadRow, StorageError> {
    Ok(UploadRow {
        id: col(r, 0)?,
        repo: col(r, 1)?,
        namespace: col(r, 2)?,
        received: unsigned(r, 3)?,
        reserved: unsigned(r, 4)?,
        hash_state: col(r, 5)?,
        multipart_id: col(r, 6)?,
        parts: parts_from_json(&col::<String>(r, 7)?)?,
        pending: col(r, 8)?,
        claim: col(r, 9)?,
        started_ms: col(r, 10)?,
        updated_ms: col(r, 11)?,
    })
}

fn big(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

async fn staged(c: &impl GenericClient, ns: &str) -> Result<u64, StorageError> {
    let row = super::one(
        c,
        "SELECT COALESCE(SUM(received + reserved), 0)::BIGINT FROM upload_sessions WHERE namespace = $1",
        &[&ns],
    )
    .await?;
    unsigned(&row, 0)
}

impl Postgres {
    pub async fn create_upload(
        &self,
        row: UploadRow,
        per_namespace: usize,
        total: usize,
    ) -> Result<Option<StartRefused>, StorageError> {
        let parts = parts_to_json(&row.parts);
        let (received, reserved) = (big(row.received), big(row.reserved));
        transaction!(self, |tx| {
            exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&keys::UPLOADS]).await?;
            let all = super::one(&tx, "SELECT COUNT(*) FROM upload_sessions", &[]).await?;
            if unsigned(&all, 0)? as usize >= total {
                return Ok(Some(StartRefused::Total(total)));
            }
            let ns = super::one(
                &tx,
                "SELECT COUNT(*) FROM upload_sessions WHERE namespace = $1",
                &[&row.namespace],
            )
            .await?;
            if unsigned(&ns, 0)? as usize >= per_namespace {
                return Ok(Some(StartRefused::Namespace(per_namespace)));
            }
            exec(
                &tx,
                &format!("INSERT INTO upload_sessions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"),
                &[
                    &row.id,
                    &row.repo,
                    &row.namespace,
                    &received,
                    &reserved,
                    &row.hash_state,
                    &row.multipart_id,
                    &parts,
                    &row.pending,
                    &row.claim,
                    &row.started_ms,
                    &row.updated_ms,
                ],
            )
            .await?;
            Ok(None)
        })
    }

    pub async fn upload(&self, id: &str) -> Result<Option<UploadRow>, StorageError> {
        let c = self.client().await?;
        opt(
            &c,
            &format!("SELECT {COLUMNS} FROM upload_sessions WHERE id = $1"),
            &[&id],
        )
        .await?
        .map(|r| upload_row(&r))
        .transpose()
    }

    pub async fn claim_upload(
        &self,
        id: &str,
        expected: u64,
        token: &str,
        reserve: u64,
        room: Option<u64>,
    ) -> Result<Claim, StorageError> {
        transaction!(self, |tx| {
            // The namespace first (every quota decision's lock, always
            // before a session row, so lock order is one everywhere); it
            // is known only from the row, read once unlocked.
            let Some(peek) = opt(
                &tx,
                "SELECT namespace FROM upload_sessions WHERE id = $1",
                &[&id],
            )
            .await?
            else {
                return Ok(Claim::Gone);
            };
            let ns: String = col(&peek, 0)?;
            super::quota::lock_namespace(&tx, &ns).await?;
            let Some(row) = opt(
                &tx,
                &format!("SELECT {COLUMNS} FROM upload_sessions WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?
            else {
                return Ok(Claim::Gone);
            };
            let row = upload_row(&row)?;
            if row.claim.is_some() || row.received != expected {
                return Ok(Claim::Busy(row));
            }
            if let Some(room) = room {
                let staged = staged(&tx, &ns).await?;
                if staged.saturating_add(reserve) > room {
                    return Ok(Claim::Full { staged, room });
                }
            }
            let now = now_ms();
            exec(
                &tx,
                "UPDATE upload_sessions SET claim = $2, reserved = $3, updated_ms = $4 WHERE id = $1",
                &[&id, &token, &big(reserve), &now],
            )
            .await?;
            Ok(Claim::Claimed(UploadRow {
                claim: Some(token.to_owned()),
                reserved: reserve,
                updated_ms: now,
                ..row
            }))
        })
    }

    pub async fn reserve_upload(
        &self,
        id: &str,
        token: &str,
        more: u64,
        room: Option<u64>,
    ) -> Result<Reserve, StorageError> {
        transaction!(self, |tx| {
            let Some(peek) = opt(
                &tx,
                "SELECT namespace FROM upload_sessions WHERE id = $1 AND claim = $2",
                &[&id, &token],
            )
            .await?
            else {
                return Ok(Reserve::Lost);
            };
            let ns: String = col(&peek, 0)?;
            super::quota::lock_namespace(&tx, &ns).await?;
            if let Some(room) = room {
                let staged = staged(&tx, &ns).await?;
                if staged.saturating_add(more) > room {
                    return Ok(Reserve::Full { staged, room });
                }
            }
            let n = exec(
                &tx,
                "UPDATE upload_sessions SET reserved = reserved + $3, updated_ms = $4 WHERE id = $1 AND claim = $2",
                &[&id, &token, &big(more), &now_ms()],
            )
            .await?;
            Ok(if n == 1 {
                Reserve::Reserved
            } else {
                Reserve::Lost
            })
        })
    }

    pub async fn save_upload(
        &self,
        id: &str,
        token: &str,
        p: UploadProgress,
    ) -> Result<bool, StorageError> {
        let c = self.client().await?;
        let reserved = big(if p.release { 0 } else { p.reserved });
        let n = exec(
            &c,
            "UPDATE upload_sessions SET received = $3, reserved = $4, hash_state = $5,
                 multipart_id = $6, parts = $7, pending = $8,
                 claim = CASE WHEN $9 THEN NULL ELSE claim END, updated_ms = $10
             WHERE id = $1 AND claim = $2",
            &[
                &id,
                &token,
                &big(p.received),
                &reserved,
                &p.hash_state,
                &p.multipart_id,
                &parts_to_json(&p.parts),
                &p.pending,
                &p.release,
                &now_ms(),
            ],
        )
        .await?;
        Ok(n == 1)
    }

    pub async fn release_upload(&self, id: &str, token: &str) -> Result<(), StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE upload_sessions SET claim = NULL, reserved = 0 WHERE id = $1 AND claim = $2",
            &[&id, &token],
        )
        .await?;
        Ok(())
    }

    pub async fn delete_upload(
        &self,
        id: &str,
        idle_before: Option<i64>,
    ) -> Result<Option<UploadRow>, StorageError> {
        let c = self.client().await?;
        let row = match idle_before {
            None => {
                opt(
                    &c,
                    &format!("DELETE FROM upload_sessions WHERE id = $1 RETURNING {COLUMNS}"),
                    &[&id],
                )
                .await?
            }
            Some(cutoff) => {
                opt(
                    &c,
                    &format!("DELETE FROM upload_sessions WHERE id = $1 AND updated_ms < $2 RETURNING {COLUMNS}"),
                    &[&id, &cutoff],
                )
                .await?
            }
        };
        row.map(|r| upload_row(&r)).transpose()
    }

    pub async fn idle_uploads(&self, cutoff: i64) -> Result<Vec<String>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT id FROM upload_sessions WHERE updated_ms < $1",
            &[&cutoff],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect()
    }

    pub async fn staged_upload_bytes(&self, ns: &str) -> Result<u64, StorageError> {
        let c = self.client().await?;
        staged(&c, ns).await
    }

    pub async fn upload_count(&self) -> Result<u64, StorageError> {
        let c = self.client().await?;
        unsigned(
            &super::one(&c, "SELECT COUNT(*) FROM upload_sessions", &[]).await?,
            0,
        )
    }

    pub async fn uploads_present(&self, ids: Vec<String>) -> Result<Vec<bool>, StorageError> {
        let c = self.client().await?;
        let found: std::collections::HashSet<String> = rows(
            &c,
            "SELECT id FROM upload_sessions WHERE id = ANY($1)",
            &[&ids],
        )
        .await?
        .iter()
        .map(|r| col(r, 0))
        .collect::<Result<_, _>>()?;
        Ok(ids.iter().map(|id| found.contains(id)).collect())
    }

    pub async fn storage_identity(&self, name: &str, value: &str) -> Result<String, StorageError> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO storage_identity (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &value],
        )
        .await?;
        col(
            &super::one(
                &c,
                "SELECT value FROM storage_identity WHERE name = $1",
                &[&name],
            )
            .await?,
            0,
        )
    }
}
