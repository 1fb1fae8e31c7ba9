//! Bulk loading of fixture worlds (benchmarks, scale tests): many rows per
//! transaction through prepared statements, so a million manifests load
//! in seconds without anyone outside this layer writing SQL.

use super::Sqlite;
use crate::meta::types::FixtureRepo;
use crate::StorageError;
use rusqlite::params;

/// Repositories per write transaction.
const REPOS_PER_TRANSACTION: usize = 512;

impl Sqlite {
    /// Inserts the given repositories with their links, manifests, blob
    /// references and tags, in transactions of a few hundred repositories;
    /// returns how many repositories were loaded. The quota ledger is not
    /// touched: call `reconcile_quota` afterwards.
    pub async fn bulk_load<I>(&self, repos: I) -> Result<u64, StorageError>
    where
        I: IntoIterator<Item = FixtureRepo>,
    {
        let mut loaded = 0u64;
        let mut repos = repos.into_iter().peekable();
        while repos.peek().is_some() {
            let chunk: Vec<FixtureRepo> = repos.by_ref().take(REPOS_PER_TRANSACTION).collect();
            loaded += chunk.len() as u64;
            self.write(move |tx| {
                let mut blob = tx.prepare_cached(
                    "INSERT INTO blobs (digest, size, created_ms, touched_ms) VALUES (?1, ?2, ?3, ?3)
                     ON CONFLICT (digest) DO NOTHING",
                )?;
                let mut repo = tx.prepare_cached(
                    "INSERT INTO repositories (name, namespace, created_ms) VALUES (?1, ?2, ?3)",
                )?;
                let mut link = tx.prepare_cached(
                    "INSERT INTO repo_blobs (repo_id, digest, linked_ms) VALUES (?1, ?2, ?3)",
                )?;
                let mut manifest = tx.prepare_cached(
                    "INSERT INTO manifests (repo_id, digest, media_type, size, bytes, pushed_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                let mut reference = tx.prepare_cached(
                    "INSERT INTO manifest_refs (repo_id, manifest_digest, child_digest, kind)
                     VALUES (?1, ?2, ?3, 'blob')",
                )?;
                let mut tag = tx.prepare_cached(
                    "INSERT INTO tags (repo_id, name, digest, updated_ms) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for r in chunk {
                    let namespace = r.name.split('/').next().unwrap_or_default().to_owned();
                    repo.execute(params![r.name, namespace, r.created_ms])?;
                    let repo_id = tx.last_insert_rowid();
                    for b in &r.links {
                        blob.execute(params![b.digest, b.size as i64, b.at_ms])?;
                        link.execute(params![repo_id, b.digest, b.at_ms])?;
                    }
                    for m in &r.manifests {
                        manifest.execute(params![
                            repo_id,
                            m.digest,
                            m.media_type,
                            m.size as i64,
                            m.bytes,
                            m.pushed_ms
                        ])?;
                        for b in &m.blobs {
                            reference.execute(params![repo_id, m.digest, b])?;
                        }
                        for t in &m.tags {
                            tag.execute(params![repo_id, t, m.digest, m.pushed_ms])?;
                        }
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(loaded)
    }
}
