//! Bulk loading of fixture worlds on PostgreSQL (`sqlite/fixture.rs` is
//! the reference): rows only, a few hundred repositories per transaction.

use super::{big, exec, one, transaction, Postgres};
use crate::meta::types::FixtureRepo;
use crate::StorageError;

const REPOS_PER_TRANSACTION: usize = 512;

impl Postgres {
    pub async fn bulk_load<I>(&self, repos: I) -> Result<u64, StorageError>
    where
        I: IntoIterator<Item = FixtureRepo>,
    {
        let mut loaded = 0u64;
        let mut repos = repos.into_iter().peekable();
        while repos.peek().is_some() {
            let chunk: Vec<FixtureRepo> = repos.by_ref().take(REPOS_PER_TRANSACTION).collect();
            loaded += chunk.len() as u64;
            transaction!(self, |tx| {
                for r in &chunk {
                    let namespace = r.name.split('/').next().unwrap_or_default();
                    let repo_id: i64 = super::col(
                        &one(
                            &tx,
                            "INSERT INTO repositories (name, namespace, created_ms) VALUES ($1, $2, $3) RETURNING id",
                            &[&r.name, &namespace, &r.created_ms],
                        )
                        .await?,
                        0,
                    )?;
                    for b in &r.links {
                        exec(
                            &tx,
                            "INSERT INTO blobs (digest, size, created_ms, touched_ms) VALUES ($1, $2, $3, $3)
                             ON CONFLICT (digest) DO NOTHING",
                            &[&b.digest, &big(b.size), &b.at_ms],
                        )
                        .await?;
                        exec(
                            &tx,
                            "INSERT INTO repo_blobs (repo_id, digest, linked_ms) VALUES ($1, $2, $3)",
                            &[&repo_id, &b.digest, &b.at_ms],
                        )
                        .await?;
                    }
                    for m in &r.manifests {
                        exec(
                            &tx,
                            "INSERT INTO manifests (repo_id, digest, media_type, size, bytes, pushed_ms)
                             VALUES ($1, $2, $3, $4, $5, $6)",
                            &[&repo_id, &m.digest, &m.media_type, &big(m.size), &m.bytes, &m.pushed_ms],
                        )
                        .await?;
                        for b in &m.blobs {
                            exec(
                                &tx,
                                "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, kind)
                                 VALUES ($1, $2, $3, 'blob')",
                                &[&repo_id, &m.digest, b],
                            )
                            .await?;
                        }
                        for t in &m.tags {
                            exec(
                                &tx,
                                "INSERT INTO tags (repo_id, name, digest, updated_ms) VALUES ($1, $2, $3, $4)",
                                &[&repo_id, t, &m.digest, &m.pushed_ms],
                            )
                            .await?;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(loaded)
    }
}
