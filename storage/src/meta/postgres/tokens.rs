//! API tokens on PostgreSQL (`sqlite/tokens.rs` is the reference).
//! Creation counts the owner's tokens and looks for a live one of the same
//! name before inserting: a transaction-level advisory lock on the owner
//! makes concurrent creations for one owner take turns, so the cap and
//! name uniqueness hold across replicas.

use super::{col, exec, keys, opt, rows, transaction, Postgres};
use crate::meta::{ApiToken, CreateTokenOutcome, TokenOwner, TokenScope, TOKEN_USE_INTERVAL_MS};
use crate::{now_ms, StorageError};

const COLUMNS: &str =
    "id, name, namespace, scope, secret_hash, created_ms, expires_ms, last_used_ms, created_by";

fn token(r: &tokio_postgres::Row) -> Result<ApiToken, StorageError> {
    let scope: String = col(r, 3)?;
    Ok(ApiToken {
        id: col(r, 0)?,
        name: col(r, 1)?,
        namespace: col(r, 2)?,
        // The table's CHECK allows nothing else; a newer berth's scope
        // reads as the narrowest one.
        scope: TokenScope::parse(&scope).unwrap_or(TokenScope::Pull),
        secret_hash: col(r, 4)?,
        created_ms: col(r, 5)?,
        expires_ms: col(r, 6)?,
        last_used_ms: col(r, 7)?,
        created_by: col(r, 8)?,
    })
}

impl Postgres {
    pub async fn create_api_token(
        &self,
        t: ApiToken,
        cap: usize,
        purge_before_ms: i64,
    ) -> Result<CreateTokenOutcome, StorageError> {
        // The owner's lock: the admin's tokens are owner "".
        let owner = t.namespace.clone().unwrap_or_default();
        transaction!(self, |tx| {
            let now = now_ms();
            exec(
                &tx,
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&keys::TOKEN_OWNER, &owner],
            )
            .await?;
            exec(
                &tx,
                "DELETE FROM api_tokens WHERE namespace IS NOT DISTINCT FROM $1 AND expires_ms < $2",
                &[&t.namespace, &purge_before_ms],
            )
            .await?;
            if super::exists(&tx, "SELECT 1 FROM api_tokens WHERE id = $1", &[&t.id]).await? {
                return Ok(CreateTokenOutcome::IdTaken);
            }
            if let Some(r) = opt(
                &tx,
                "SELECT id FROM api_tokens
                 WHERE namespace IS NOT DISTINCT FROM $1 AND name = $2 AND expires_ms > $3",
                &[&t.namespace, &t.name, &now],
            )
            .await?
            {
                return Ok(CreateTokenOutcome::NameTaken(col(&r, 0)?));
            }
            let count: i64 = col(
                &super::one(
                    &tx,
                    "SELECT COUNT(*) FROM api_tokens WHERE namespace IS NOT DISTINCT FROM $1",
                    &[&t.namespace],
                )
                .await?,
                0,
            )?;
            let count = count.max(0) as usize;
            if count >= cap {
                return Ok(CreateTokenOutcome::LimitReached(count));
            }
            // A concurrent creation with the same id (another owner, so
            // another lock) loses on the primary key: DO NOTHING says so.
            let n = exec(
                &tx,
                &format!(
                    "INSERT INTO api_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    &t.id,
                    &t.name,
                    &t.namespace,
                    &t.scope.as_str(),
                    &t.secret_hash,
                    &t.created_ms,
                    &t.expires_ms,
                    &t.last_used_ms,
                    &t.created_by,
                ],
            )
            .await?;
            Ok(if n == 1 {
                CreateTokenOutcome::Created
            } else {
                CreateTokenOutcome::IdTaken
            })
        })
    }

    pub async fn api_token(&self, id: &str) -> Result<Option<ApiToken>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            &format!("SELECT {COLUMNS} FROM api_tokens WHERE id = $1"),
            &[&id],
        )
        .await?
        {
            Some(r) => Ok(Some(token(&r)?)),
            None => Ok(None),
        }
    }

    pub async fn api_tokens(
        &self,
        owner: TokenOwner,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<ApiToken>, StorageError> {
        let c = self.client().await?;
        let after = after.unwrap_or_default();
        let limit = limit.min(i64::MAX as usize) as i64;
        let order = "id COLLATE \"C\" > $1 ORDER BY id COLLATE \"C\" LIMIT $2";
        let found = match owner {
            TokenOwner::All => {
                rows(
                    &c,
                    &format!("SELECT {COLUMNS} FROM api_tokens WHERE {order}"),
                    &[&after, &limit],
                )
                .await?
            }
            TokenOwner::Admin => {
                rows(
                    &c,
                    &format!(
                        "SELECT {COLUMNS} FROM api_tokens WHERE namespace IS NULL AND {order}"
                    ),
                    &[&after, &limit],
                )
                .await?
            }
            TokenOwner::Namespace(ns) => {
                rows(
                    &c,
                    &format!("SELECT {COLUMNS} FROM api_tokens WHERE namespace = $3 AND {order}"),
                    &[&after, &limit, &ns],
                )
                .await?
            }
        };
        found.iter().map(token).collect()
    }

    pub async fn delete_api_token(
        &self,
        id: &str,
        namespace: Option<Option<String>>,
    ) -> Result<bool, StorageError> {
        transaction!(self, |tx| {
            let n = match &namespace {
                None => exec(&tx, "DELETE FROM api_tokens WHERE id = $1", &[&id]).await?,
                Some(ns) => exec(
                    &tx,
                    "DELETE FROM api_tokens WHERE id = $1 AND namespace IS NOT DISTINCT FROM $2",
                    &[&id, ns],
                )
                .await?,
            };
            if n > 0 {
                super::shared::notify(&tx, "credentials").await?;
            }
            Ok(n > 0)
        })
    }

    pub async fn api_token_used(
        &self,
        id: &str,
        last_used_ms: Option<i64>,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        if last_used_ms.is_some_and(|t| now - t < TOKEN_USE_INTERVAL_MS) {
            return Ok(());
        }
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE api_tokens SET last_used_ms = $2
             WHERE id = $1 AND (last_used_ms IS NULL OR last_used_ms < $3)",
            &[&id, &now, &(now - TOKEN_USE_INTERVAL_MS)],
        )
        .await?;
        Ok(())
    }
}
