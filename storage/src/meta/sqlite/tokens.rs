//! API tokens: creating one (cap and name checked in the inserting
//! transaction), the one-row read a login needs, listings, revocation and
//! the rate-limited record of use.

use super::Sqlite;
use crate::meta::{ApiToken, CreateTokenOutcome, TokenOwner, TokenScope, TOKEN_USE_INTERVAL_MS};
use crate::{now_ms, StorageError};
use rusqlite::{params, OptionalExtension};

const COLUMNS: &str =
    "id, name, namespace, scope, secret_hash, created_ms, expires_ms, last_used_ms, created_by";

fn token(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    let scope: String = r.get(3)?;
    Ok(ApiToken {
        id: r.get(0)?,
        name: r.get(1)?,
        namespace: r.get(2)?,
        // The table's CHECK allows nothing else; a newer berth's scope
        // reads as the narrowest one.
        scope: TokenScope::parse(&scope).unwrap_or(TokenScope::Pull),
        secret_hash: r.get(4)?,
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        last_used_ms: r.get(7)?,
        created_by: r.get(8)?,
    })
}

impl Sqlite {
    /// Stores a new token unless its owner (namespace, or the admin)
    /// already has `cap` tokens or a live token named the same. Tokens of
    /// the owner that expired before `purge_before_ms` are deleted first,
    /// so expired tokens stay listed for a while but never fill the cap
    /// for good. All in one transaction: concurrent creations cannot pass
    /// the cap.
    pub async fn create_api_token(
        &self,
        t: ApiToken,
        cap: usize,
        purge_before_ms: i64,
    ) -> Result<CreateTokenOutcome, StorageError> {
        self.write(move |tx| {
            let now = now_ms();
            tx.prepare_cached("DELETE FROM api_tokens WHERE namespace IS ?1 AND expires_ms < ?2")?
                .execute(params![t.namespace, purge_before_ms])?;
            if tx
                .prepare_cached("SELECT 1 FROM api_tokens WHERE id = ?1")?
                .exists([&t.id])?
            {
                return Ok(CreateTokenOutcome::IdTaken);
            }
            let same_name: Option<String> = tx
                .prepare_cached(
                    "SELECT id FROM api_tokens
                     WHERE namespace IS ?1 AND name = ?2 AND expires_ms > ?3",
                )?
                .query_row(params![t.namespace, t.name, now], |r| r.get(0))
                .optional()?;
            if let Some(id) = same_name {
                return Ok(CreateTokenOutcome::NameTaken(id));
            }
            let count: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM api_tokens WHERE namespace IS ?1")?
                .query_row([&t.namespace], |r| r.get(0))?;
            if count as usize >= cap {
                return Ok(CreateTokenOutcome::LimitReached(count as usize));
            }
            tx.prepare_cached(&format!(
                "INSERT INTO api_tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                t.id,
                t.name,
                t.namespace,
                t.scope.as_str(),
                t.secret_hash,
                t.created_ms,
                t.expires_ms,
                t.last_used_ms,
                t.created_by
            ])?;
            Ok(CreateTokenOutcome::Created)
        })
        .await
    }

    /// One token by id (a login's one indexed read).
    pub async fn api_token(&self, id: &str) -> Result<Option<ApiToken>, StorageError> {
        let id = id.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached(&format!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?1"))?
                    .query_row([id], token)
                    .optional()?,
            )
        })
        .await
    }

    /// Tokens of `owner` by id, at most `limit`, after the id `after`
    /// (paging); expired ones included.
    pub async fn api_tokens(
        &self,
        owner: TokenOwner,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<ApiToken>, StorageError> {
        self.read(move |c| {
            let (filter, namespace) = match owner {
                TokenOwner::All => ("1", None),
                TokenOwner::Admin => ("namespace IS NULL", None),
                TokenOwner::Namespace(ns) => ("namespace = ?3", Some(ns)),
            };
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM api_tokens
                 WHERE {filter} AND id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            let after = after.unwrap_or_default();
            let limit = limit.min(i64::MAX as usize) as i64;
            let rows = match namespace {
                Some(ns) => stmt.query_map(params![after, limit, ns], token)?,
                None => stmt.query_map(params![after, limit], token)?,
            };
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// Revokes a token: deletes it. With `namespace`, only a token of
    /// that namespace (`Some(None)`: only an admin token). False when
    /// there was no such token.
    pub async fn delete_api_token(
        &self,
        id: &str,
        namespace: Option<Option<String>>,
    ) -> Result<bool, StorageError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let n = match namespace {
                None => tx
                    .prepare_cached("DELETE FROM api_tokens WHERE id = ?1")?
                    .execute([id])?,
                Some(ns) => tx
                    .prepare_cached("DELETE FROM api_tokens WHERE id = ?1 AND namespace IS ?2")?
                    .execute(params![id, ns])?,
            };
            Ok(n > 0)
        })
        .await
    }

    /// Records that a token was used, when its last recorded use
    /// (`last_used_ms`, as read) is older than `TOKEN_USE_INTERVAL_MS`:
    /// at most one write a minute per token.
    pub async fn api_token_used(
        &self,
        id: &str,
        last_used_ms: Option<i64>,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        if last_used_ms.is_some_and(|t| now - t < TOKEN_USE_INTERVAL_MS) {
            return Ok(());
        }
        let id = id.to_owned();
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE api_tokens SET last_used_ms = ?2
                 WHERE id = ?1 AND (last_used_ms IS NULL OR last_used_ms < ?3)",
            )?
            .execute(params![id, now, now - TOKEN_USE_INTERVAL_MS])?;
            Ok(())
        })
        .await
    }
}
