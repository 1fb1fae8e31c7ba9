//! Upload sessions in the database (`upload_sessions`, migration 12) and
//! the blob store's identity (`storage_identity`). Used when blobs are in
//! S3 (`[storage.s3]`), where one berth with SQLite keeps its sessions the
//! same way replicas on PostgreSQL do. Every check-then-write here is one
//! write transaction, which the single writer serialises.

use super::Sqlite;
use crate::meta::sessions::*;
use crate::{now_ms, StorageError};
use rusqlite::{params, OptionalExtension, Transaction};

const COLUMNS: &str = "id, repo, namespace, received, reserved, hash_state, multipart_id, parts, pending, claim, started_ms, updated_ms";

fn upload_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(UploadRow, String)> {
    Ok((
        UploadRow {
            id: r.get(0)?,
            repo: r.get(1)?,
            namespace: r.get(2)?,
            received: r.get::<_, i64>(3)?.max(0) as u64,
            reserved: r.get::<_, i64>(4)?.max(0) as u64,
            hash_state: r.get(5)?,
            multipart_id: r.get(6)?,
            parts: Vec::new(),
            pending: r.get(8)?,
            claim: r.get(9)?,
            started_ms: r.get(10)?,
            updated_ms: r.get(11)?,
        },
        r.get(7)?,
    ))
}

fn finish_row(row: Option<(UploadRow, String)>) -> Result<Option<UploadRow>, StorageError> {
    row.map(|(mut row, parts)| {
        row.parts = parts_from_json(&parts)?;
        Ok(row)
    })
    .transpose()
}

fn get(tx: &rusqlite::Connection, id: &str) -> Result<Option<UploadRow>, StorageError> {
    let row = tx
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM upload_sessions WHERE id = ?1"
        ))?
        .query_row([id], upload_row)
        .optional()?;
    finish_row(row)
}

fn staged(tx: &Transaction<'_>, ns: &str) -> Result<u64, StorageError> {
    let n: i64 = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(received + reserved), 0) FROM upload_sessions WHERE namespace = ?1",
        )?
        .query_row([ns], |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

fn big(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

impl Sqlite {
    /// Inserts a new session unless its namespace or the registry holds
    /// as many as allowed (counted in the inserting transaction).
    pub async fn create_upload(
        &self,
        row: UploadRow,
        per_namespace: usize,
        total: usize,
    ) -> Result<Option<StartRefused>, StorageError> {
        self.write(move |tx| {
            let all: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM upload_sessions")?
                .query_row([], |r| r.get(0))?;
            if all.max(0) as usize >= total {
                return Ok(Some(StartRefused::Total(total)));
            }
            let ns: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM upload_sessions WHERE namespace = ?1")?
                .query_row([&row.namespace], |r| r.get(0))?;
            if ns.max(0) as usize >= per_namespace {
                return Ok(Some(StartRefused::Namespace(per_namespace)));
            }
            tx.prepare_cached(&format!(
                "INSERT INTO upload_sessions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))?
            .execute(params![
                row.id,
                row.repo,
                row.namespace,
                big(row.received),
                big(row.reserved),
                row.hash_state,
                row.multipart_id,
                parts_to_json(&row.parts),
                row.pending,
                row.claim,
                row.started_ms,
                row.updated_ms
            ])?;
            Ok(None)
        })
        .await
    }

    /// The session `id`, if it exists.
    pub async fn upload(&self, id: &str) -> Result<Option<UploadRow>, StorageError> {
        let id = id.to_owned();
        self.read(move |c| get(c, &id)).await
    }

    /// Lets request `token` write session `id` if nobody else is, the
    /// session holds `expected` bytes, and `reserve` more bytes keep the
    /// namespace's staged bytes within `room` (None: unlimited).
    pub async fn claim_upload(
        &self,
        id: &str,
        expected: u64,
        token: &str,
        reserve: u64,
        room: Option<u64>,
    ) -> Result<Claim, StorageError> {
        let (id, token) = (id.to_owned(), token.to_owned());
        self.write(move |tx| {
            let Some(row) = get(tx, &id)? else {
                return Ok(Claim::Gone);
            };
            if row.claim.is_some() || row.received != expected {
                return Ok(Claim::Busy(row));
            }
            if let Some(room) = room {
                let staged = staged(tx, &row.namespace)?;
                if staged.saturating_add(reserve) > room {
                    return Ok(Claim::Full { staged, room });
                }
            }
            let now = now_ms();
            tx.prepare_cached(
                "UPDATE upload_sessions SET claim = ?2, reserved = ?3, updated_ms = ?4 WHERE id = ?1",
            )?
            .execute(params![id, token, big(reserve), now])?;
            Ok(Claim::Claimed(UploadRow {
                claim: Some(token),
                reserved: reserve,
                updated_ms: now,
                ..row
            }))
        })
        .await
    }

    /// Reserves `more` bytes for the claimant `token` of `id`, within `room`.
    pub async fn reserve_upload(
        &self,
        id: &str,
        token: &str,
        more: u64,
        room: Option<u64>,
    ) -> Result<Reserve, StorageError> {
        let (id, token) = (id.to_owned(), token.to_owned());
        self.write(move |tx| {
            let Some(row) = get(tx, &id)? else {
                return Ok(Reserve::Lost);
            };
            if row.claim.as_deref() != Some(token.as_str()) {
                return Ok(Reserve::Lost);
            }
            if let Some(room) = room {
                let staged = staged(tx, &row.namespace)?;
                if staged.saturating_add(more) > room {
                    return Ok(Reserve::Full { staged, room });
                }
            }
            tx.prepare_cached(
                "UPDATE upload_sessions SET reserved = reserved + ?2, updated_ms = ?3 WHERE id = ?1",
            )?
            .execute(params![id, big(more), now_ms()])?;
            Ok(Reserve::Reserved)
        })
        .await
    }

    /// Saves the claimant's progress; false when its claim is gone (the
    /// session was cancelled or expired meanwhile), and nothing changed.
    pub async fn save_upload(
        &self,
        id: &str,
        token: &str,
        p: UploadProgress,
    ) -> Result<bool, StorageError> {
        let (id, token) = (id.to_owned(), token.to_owned());
        self.write(move |tx| {
            let n = tx
                .prepare_cached(
                    "UPDATE upload_sessions SET received = ?3, reserved = ?4, hash_state = ?5,
                         multipart_id = ?6, parts = ?7, pending = ?8,
                         claim = CASE WHEN ?9 THEN NULL ELSE claim END, updated_ms = ?10
                     WHERE id = ?1 AND claim = ?2",
                )?
                .execute(params![
                    id,
                    token,
                    big(p.received),
                    big(if p.release { 0 } else { p.reserved }),
                    p.hash_state,
                    p.multipart_id,
                    parts_to_json(&p.parts),
                    p.pending,
                    p.release,
                    now_ms()
                ])?;
            Ok(n == 1)
        })
        .await
    }

    /// Gives up `token`'s claim on `id` (and what it reserved) without
    /// saving anything.
    pub async fn release_upload(&self, id: &str, token: &str) -> Result<(), StorageError> {
        let (id, token) = (id.to_owned(), token.to_owned());
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE upload_sessions SET claim = NULL, reserved = 0 WHERE id = ?1 AND claim = ?2",
            )?
            .execute(params![id, token])?;
            Ok(())
        })
        .await
    }

    /// Deletes session `id` (when `idle_before` is set, only if it was not
    /// written to since); the row it was, for its objects to be removed.
    pub async fn delete_upload(
        &self,
        id: &str,
        idle_before: Option<i64>,
    ) -> Result<Option<UploadRow>, StorageError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let Some(row) = get(tx, &id)? else {
                return Ok(None);
            };
            if idle_before.is_some_and(|cutoff| row.updated_ms >= cutoff) {
                return Ok(None);
            }
            tx.prepare_cached("DELETE FROM upload_sessions WHERE id = ?1")?
                .execute([&id])?;
            Ok(Some(row))
        })
        .await
    }

    /// Ids of sessions not written to since `cutoff`.
    pub async fn idle_uploads(&self, cutoff: i64) -> Result<Vec<String>, StorageError> {
        self.read(move |c| {
            let ids = c
                .prepare_cached("SELECT id FROM upload_sessions WHERE updated_ms < ?1")?
                .query_map([cutoff], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
    }

    /// Bytes the namespace's sessions hold or have reserved.
    pub async fn staged_upload_bytes(&self, ns: &str) -> Result<u64, StorageError> {
        let ns = ns.to_owned();
        self.read(move |c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT COALESCE(SUM(received + reserved), 0) FROM upload_sessions WHERE namespace = ?1",
                )?
                .query_row([ns], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// How many sessions exist.
    pub async fn upload_count(&self) -> Result<u64, StorageError> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM upload_sessions")?
                .query_row([], |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// Which of `ids` are sessions.
    pub async fn uploads_present(&self, ids: Vec<String>) -> Result<Vec<bool>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM upload_sessions WHERE id = ?1")?;
            ids.iter()
                .map(|id| Ok(stmt.exists([id])?))
                .collect::<Result<Vec<bool>, StorageError>>()
        })
        .await
    }

    /// Records `value` as the store `name` if none is recorded; returns
    /// what is recorded (this value, or another process's).
    pub async fn storage_identity(&self, name: &str, value: &str) -> Result<String, StorageError> {
        let (name, value) = (name.to_owned(), value.to_owned());
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO storage_identity (name, value) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?
            .execute(params![name, value])?;
            Ok(tx
                .prepare_cached("SELECT value FROM storage_identity WHERE name = ?1")?
                .query_row([name], |r| r.get(0))?)
        })
        .await
    }
}
