//! The SQL of garbage collection on PostgreSQL (`sqlite/gc.rs` is the
//! reference): the plan on one REPEATABLE READ snapshot, and checked
//! deletions, each item re-checked after the transaction has locked what
//! the writers that could revive it lock: the namespace row for manifests
//! and links (pushes hold it while they check and insert), the blob row
//! for blob rows (links and mounts hold it). A push that raced the plan
//! therefore either committed before the re-check (which sees it) or waits
//! for the deletion to commit (and then sees its result).

use super::liveness;
use super::quota;
use super::shared::INTERRUPTED;
use super::{col, exec, opt, rows, snapshot, transaction, unsigned, Postgres};
use crate::meta::types::*;
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;
use std::collections::BTreeMap;

async fn pinned(c: &impl GenericClient, repo_id: i64, digest: &str) -> Result<bool, StorageError> {
    super::exists(
        c,
        "SELECT 1 FROM pins p JOIN repositories r ON r.name = p.repository WHERE r.id = $1 AND p.digest = $2",
        &[&repo_id, &digest],
    )
    .await
}

/// Deletes one manifest if it is still garbage; its size when deleted.
/// The caller holds the namespace's lock.
async fn delete_manifest_if_garbage(
    c: &impl GenericClient,
    repo_id: i64,
    ns: &str,
    digest: &str,
    cutoff: i64,
) -> Result<Option<u64>, StorageError> {
    let Some(size) = liveness::manifest_still_garbage(c, repo_id, digest, cutoff).await? else {
        return Ok(None);
    };
    exec(
        c,
        "DELETE FROM manifests WHERE repo_id = $1 AND digest = $2",
        &[&repo_id, &digest],
    )
    .await?;
    super::queries::delete_manifest_dependents(c, repo_id, digest).await?;
    quota::release(c, ns, size).await?;
    Ok(Some(size))
}

fn pin_row(r: &tokio_postgres::Row) -> Result<Pin, StorageError> {
    Ok(Pin {
        id: col(r, 0)?,
        repository: col(r, 1)?,
        digest: col(r, 2)?,
        reason: col(r, 3)?,
        created_ms: col(r, 4)?,
    })
}

pub(super) fn run_row(r: &tokio_postgres::Row) -> Result<GcRunRecord, StorageError> {
    let report: String = col(r, 6)?;
    Ok(GcRunRecord {
        id: col(r, 0)?,
        job: col(r, 1)?,
        dry_run: col(r, 2)?,
        trigger: col(r, 3)?,
        started_ms: col(r, 4)?,
        finished_ms: col(r, 5)?,
        report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
    })
}

impl Postgres {
    pub async fn gc_tags(
        &self,
        namespace: Option<String>,
        after_repo_id: i64,
        repositories: u32,
    ) -> Result<Vec<TagRow>, StorageError> {
        let c = self.client().await?;
        let mut out = Vec::new();
        for r in rows(
            &c,
            "SELECT t.repo_id, r.name, r.namespace, t.name, t.digest, t.updated_ms,
                    EXISTS (SELECT 1 FROM pins p WHERE p.repository = r.name AND p.digest = t.digest)
             FROM tags t JOIN repositories r ON r.id = t.repo_id
             WHERE t.repo_id IN (
                 SELECT pr.id FROM repositories pr
                 WHERE pr.id > $1 AND ($3::text IS NULL OR pr.namespace = $3)
                   AND EXISTS (SELECT 1 FROM tags pt WHERE pt.repo_id = pr.id)
                 ORDER BY pr.id LIMIT $2)
             ORDER BY t.repo_id, t.updated_ms DESC, t.name",
            &[&after_repo_id, &i64::from(repositories), &namespace],
        )
        .await?
        {
            out.push(TagRow {
                repo_id: col(&r, 0)?,
                repository: col(&r, 1)?,
                namespace: col(&r, 2)?,
                tag: col(&r, 3)?,
                digest: col(&r, 4)?,
                updated_ms: col(&r, 5)?,
                pinned: col(&r, 6)?,
            });
        }
        Ok(out)
    }

    /// The `DELETE ... WHERE digest AND updated_ms` re-checks by itself: a
    /// tag moved concurrently is waited for, then no longer matches.
    pub async fn delete_tags_checked(
        &self,
        tags: Vec<TagRow>,
    ) -> Result<Vec<TagRow>, StorageError> {
        transaction!(self, |tx| {
            let now = now_ms();
            let mut deleted = Vec::new();
            for t in &tags {
                if pinned(&tx, t.repo_id, &t.digest).await? {
                    continue;
                }
                let n = exec(
                    &tx,
                    "DELETE FROM tags WHERE repo_id = $1 AND name = $2 AND digest = $3 AND updated_ms = $4",
                    &[&t.repo_id, &t.tag, &t.digest, &t.updated_ms],
                )
                .await?;
                if n > 0 {
                    super::queries::released(&tx, t.repo_id, &t.digest, now).await?;
                    deleted.push(t.clone());
                }
            }
            Ok(deleted)
        })
    }

    /// The plan, on one snapshot: the living manifests marked into a
    /// temporary table, then what is doomed. Temporary tables go with the
    /// transaction.
    pub async fn gc_plan(
        &self,
        manifest_cutoff: i64,
        blob_cutoff: i64,
    ) -> Result<GcPlan, StorageError> {
        snapshot!(self, |tx| {
            tx.batch_execute(
                "CREATE TEMP TABLE gc_live (repo_id BIGINT, digest TEXT, PRIMARY KEY (repo_id, digest)) ON COMMIT DROP;
                 CREATE TEMP TABLE gc_doomed (repo_id BIGINT, digest TEXT, PRIMARY KEY (repo_id, digest)) ON COMMIT DROP;
                 CREATE TEMP TABLE gc_doomed_links (repo_id BIGINT, digest TEXT, PRIMARY KEY (repo_id, digest)) ON COMMIT DROP;",
            )
            .await?;
            // Not through the statement cache: the temporary tables are new
            // in every plan, so a cached plan would name dropped tables.
            tx.execute(liveness::MARK_LIVE.as_str(), &[&manifest_cutoff])
                .await?;
            tx.batch_execute(
                "ANALYZE gc_live;
                 INSERT INTO gc_doomed (repo_id, digest)
                 SELECT m.repo_id, m.digest FROM manifests m
                 WHERE NOT EXISTS (SELECT 1 FROM gc_live l WHERE l.repo_id = m.repo_id AND l.digest = m.digest);
                 ANALYZE gc_doomed;",
            )
            .await?;
            let mut names = RepoNames::default();
            let mut manifests = Vec::new();
            for r in tx
                .query(
                    "SELECT d.repo_id, r.name, r.namespace, d.digest, m.size FROM gc_doomed d
                     JOIN repositories r ON r.id = d.repo_id
                     JOIN manifests m ON m.repo_id = d.repo_id AND m.digest = d.digest
                     ORDER BY r.name, d.digest",
                    &[],
                )
                .await?
            {
                let repo_id = col(&r, 0)?;
                let (repository, namespace) = names.get(repo_id, col(&r, 1)?, col(&r, 2)?);
                manifests.push(DoomedManifest {
                    repo_id,
                    repository,
                    namespace,
                    digest: col(&r, 3)?,
                    size: unsigned(&r, 4)?,
                });
            }
            tx.execute(liveness::PLAN_LINKS.as_str(), &[&blob_cutoff])
                .await?;
            tx.batch_execute("ANALYZE gc_doomed_links").await?;
            let mut links = Vec::new();
            for r in tx
                .query(
                    "SELECT l.repo_id, r.name, r.namespace, l.digest, b.size FROM gc_doomed_links l
                     JOIN repositories r ON r.id = l.repo_id JOIN blobs b ON b.digest = l.digest
                     ORDER BY r.name, l.digest",
                    &[],
                )
                .await?
            {
                let repo_id = col(&r, 0)?;
                let (repository, namespace) = names.get(repo_id, col(&r, 1)?, col(&r, 2)?);
                links.push(DoomedLink {
                    repo_id,
                    repository,
                    namespace,
                    digest: col(&r, 3)?,
                    size: unsigned(&r, 4)?,
                });
            }
            let mut blobs = Vec::new();
            for r in tx
                .query(liveness::PLAN_BLOBS.as_str(), &[&blob_cutoff])
                .await?
            {
                blobs.push(DoomedBlob {
                    digest: col(&r, 0)?,
                    size: unsigned(&r, 1)?,
                });
            }
            let mut freed: BTreeMap<String, u64> = BTreeMap::new();
            for m in &manifests {
                *freed.entry(m.namespace.to_string()).or_default() += m.size;
            }
            for r in tx
                .query(
                    "SELECT r.namespace, l.digest, MAX(b.size), COUNT(*) AS doomed,
                            (SELECT nb.repos FROM namespace_blobs nb WHERE nb.namespace = r.namespace AND nb.digest = l.digest)
                     FROM gc_doomed_links l JOIN repositories r ON r.id = l.repo_id JOIN blobs b ON b.digest = l.digest
                     GROUP BY r.namespace, l.digest",
                    &[],
                )
                .await?
            {
                let ns: String = col(&r, 0)?;
                let size: i64 = col(&r, 2)?;
                let doomed: i64 = col(&r, 3)?;
                let repos: Option<i64> = col(&r, 4)?;
                if repos.unwrap_or(0) <= doomed {
                    *freed.entry(ns).or_default() += size.max(0) as u64;
                }
            }
            Ok(GcPlan {
                manifests,
                links,
                blobs,
                freed_per_namespace: freed,
            })
        })
    }

    /// Each manifest re-checked and deleted under its namespace's lock.
    pub async fn delete_manifests_checked(
        &self,
        batch: Vec<DoomedManifest>,
        cutoff: i64,
    ) -> Result<Vec<DoomedManifest>, StorageError> {
        transaction!(self, |tx| {
            quota::lock_namespaces(&tx, batch.iter().map(|m| &*m.namespace)).await?;
            let mut deleted = Vec::new();
            for m in &batch {
                if delete_manifest_if_garbage(&tx, m.repo_id, &m.namespace, &m.digest, cutoff)
                    .await?
                    .is_some()
                {
                    deleted.push(m.clone());
                }
            }
            Ok(deleted)
        })
    }

    /// Each link re-checked and removed under its namespace's lock.
    pub async fn delete_links_checked(
        &self,
        batch: Vec<DoomedLink>,
        cutoff: i64,
    ) -> Result<(Vec<DoomedLink>, BTreeMap<String, u64>), StorageError> {
        transaction!(self, |tx| {
            quota::lock_namespaces(&tx, batch.iter().map(|l| &*l.namespace)).await?;
            let mut deleted = Vec::new();
            let mut freed: BTreeMap<String, u64> = BTreeMap::new();
            for l in &batch {
                if !liveness::link_still_garbage(&tx, l.repo_id, &l.digest, cutoff).await? {
                    continue;
                }
                let released = super::queries::remove_link(&tx, l.repo_id, &l.namespace, &l.digest)
                    .await?
                    .unwrap_or(0);
                if released > 0 {
                    *freed.entry(l.namespace.to_string()).or_default() += released;
                }
                deleted.push(l.clone());
            }
            for (ns, bytes) in &freed {
                quota::release(&tx, ns, *bytes).await?;
            }
            Ok((deleted, freed))
        })
    }

    /// Blob rows deleted in digest order (as every batch is sorted, two
    /// collectors never lock two rows in opposite orders).
    pub async fn delete_blob_rows_checked(
        &self,
        mut batch: Vec<DoomedBlob>,
        cutoff: i64,
    ) -> Result<Vec<DoomedBlob>, StorageError> {
        batch.sort_by(|a, b| a.digest.cmp(&b.digest));
        transaction!(self, |tx| {
            let mut deleted = Vec::new();
            for b in &batch {
                if liveness::delete_blob_if_garbage(&tx, &b.digest, cutoff).await? {
                    deleted.push(b.clone());
                }
            }
            Ok(deleted)
        })
    }

    pub async fn blob_rows_present(&self, digests: Vec<String>) -> Result<Vec<bool>, StorageError> {
        let c = self.client().await?;
        let present: std::collections::HashSet<String> = rows(
            &c,
            "SELECT digest FROM blobs WHERE digest = ANY($1)",
            &[&digests],
        )
        .await?
        .iter()
        .map(|r| col::<String>(r, 0))
        .collect::<Result<_, _>>()?;
        Ok(digests.iter().map(|d| present.contains(d)).collect())
    }

    // ------------------------------------------------------------ pins ----

    /// Under the lock of the repository's namespace, like a push: a pin
    /// and GC's re-check of the manifest it names take turns.
    pub async fn add_pin(
        &self,
        repository: &str,
        digest: &str,
        reason: &str,
    ) -> Result<Pin, StorageError> {
        let ns = repository.split('/').next().unwrap_or_default();
        transaction!(self, |tx| {
            quota::lock_namespace(&tx, ns).await?;
            exec(
                &tx,
                "INSERT INTO pins (repository, digest, reason, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (repository, digest) DO UPDATE SET reason = excluded.reason",
                &[&repository, &digest, &reason, &now_ms()],
            )
            .await?;
            let r = super::one(
                &tx,
                "SELECT id, repository, digest, reason, created_ms FROM pins WHERE repository = $1 AND digest = $2",
                &[&repository, &digest],
            )
            .await?;
            pin_row(&r)
        })
    }

    pub async fn list_pins(&self) -> Result<Vec<Pin>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT id, repository, digest, reason, created_ms FROM pins ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(pin_row)
        .collect()
    }

    pub async fn delete_pin(&self, id: i64) -> Result<bool, StorageError> {
        transaction!(self, |tx| {
            let Some(r) = opt(
                &tx,
                "DELETE FROM pins WHERE id = $1 RETURNING repository, digest",
                &[&id],
            )
            .await?
            else {
                return Ok(false);
            };
            let (repository, digest): (String, String) = (col(&r, 0)?, col(&r, 1)?);
            if let Some(r) = opt(
                &tx,
                "SELECT m.repo_id FROM manifests m JOIN repositories r ON r.id = m.repo_id
                 WHERE r.name = $1 AND m.digest = $2",
                &[&repository, &digest],
            )
            .await?
            {
                super::queries::released(&tx, col(&r, 0)?, &digest, now_ms()).await?;
            }
            Ok(true)
        })
    }

    // ------------------------------------------------------- retention ----

    pub async fn retention_overrides(
        &self,
    ) -> Result<BTreeMap<String, RetentionOverride>, StorageError> {
        let c = self.client().await?;
        let mut out = BTreeMap::new();
        for r in rows(
            &c,
            "SELECT namespace, keep_last, protected_tags, max_age_ms, keep_pattern FROM retention",
            &[],
        )
        .await?
        {
            let protected: Option<String> = col(&r, 2)?;
            out.insert(
                col::<String>(&r, 0)?,
                RetentionOverride {
                    keep_last: col::<Option<i64>>(&r, 1)?
                        .map(|k| k.clamp(0, u32::MAX as i64) as u32),
                    protected_tags: protected.and_then(|p| serde_json::from_str(&p).ok()),
                    max_age_ms: col(&r, 3)?,
                    keep_pattern: col(&r, 4)?,
                },
            );
        }
        Ok(out)
    }

    pub async fn set_retention_override(
        &self,
        namespace: &str,
        value: Option<RetentionOverride>,
    ) -> Result<(), StorageError> {
        let protected = match value.as_ref().and_then(|o| o.protected_tags.as_ref()) {
            Some(p) => {
                Some(serde_json::to_string(p).map_err(|e| StorageError::Internal(e.to_string()))?)
            }
            None => None,
        };
        transaction!(self, |tx| {
            match &value {
                None => {
                    exec(
                        &tx,
                        "DELETE FROM retention WHERE namespace = $1",
                        &[&namespace],
                    )
                    .await?;
                }
                Some(o) => {
                    exec(
                        &tx,
                        "INSERT INTO retention (namespace, keep_last, protected_tags, max_age_ms, keep_pattern, updated_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (namespace) DO UPDATE SET keep_last = excluded.keep_last,
                             protected_tags = excluded.protected_tags, max_age_ms = excluded.max_age_ms,
                             keep_pattern = excluded.keep_pattern, updated_ms = excluded.updated_ms",
                        &[
                            &namespace,
                            &o.keep_last.map(i64::from),
                            &protected,
                            &o.max_age_ms,
                            &o.keep_pattern,
                            &now_ms(),
                        ],
                    )
                    .await?;
                }
            }
            super::shared::notify(&tx, "retention").await?;
            Ok(())
        })
    }

    // ------------------------------------------------------------ runs ----

    pub async fn start_gc_run(
        &self,
        job: &str,
        dry_run: bool,
        trigger: &str,
        started_ms: i64,
        report: serde_json::Value,
    ) -> Result<i64, StorageError> {
        let report = report.to_string();
        transaction!(self, |tx| {
            let r = super::one(
                &tx,
                "INSERT INTO gc_runs (job, dry_run, trigger, started_ms, finished_ms, report, replica)
                 VALUES ($1, $2, $3, $4, 0, $5, $6) RETURNING id",
                &[&job, &dry_run, &trigger, &started_ms, &report, &self.replica_id()],
            )
            .await?;
            col(&r, 0)
        })
    }

    pub async fn finish_gc_run(
        &self,
        id: i64,
        finished_ms: i64,
        report: serde_json::Value,
    ) -> Result<(), StorageError> {
        let report = report.to_string();
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE gc_runs SET finished_ms = $2, report = $3 WHERE id = $1",
            &[&id, &finished_ms, &report],
        )
        .await?;
        Ok(())
    }

    /// Marks runs that never finished as interrupted, except those of a
    /// job whose lease is held unexpired by the replica running them: a
    /// replica starting next to live ones leaves their runs alone (the
    /// lease holder renews while it runs; `shared::acquire_lease` marks
    /// the runs of a holder that lost its lease).
    pub async fn interrupt_unfinished_gc_runs(&self) -> Result<usize, StorageError> {
        let c = self.client().await?;
        Ok(exec(
            &c,
            &format!(
                "UPDATE gc_runs SET finished_ms = $1, report = {INTERRUPTED}
                 WHERE finished_ms = 0 AND NOT EXISTS (
                     SELECT 1 FROM job_leases l
                     WHERE l.job = gc_runs.job AND l.holder = gc_runs.replica AND l.expires_ms > $1)"
            ),
            &[&now_ms()],
        )
        .await? as usize)
    }

    pub async fn gc_runs(&self, limit: u32) -> Result<Vec<GcRunRecord>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT id, job, dry_run, trigger, started_ms, finished_ms, report FROM gc_runs ORDER BY id DESC LIMIT $1",
            &[&i64::from(limit)],
        )
        .await?
        .iter()
        .map(run_row)
        .collect()
    }

    pub async fn gc_run(&self, id: i64) -> Result<Option<GcRunRecord>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            "SELECT id, job, dry_run, trigger, started_ms, finished_ms, report FROM gc_runs WHERE id = $1",
            &[&id],
        )
        .await?
        {
            Some(r) => Ok(Some(run_row(&r)?)),
            None => Ok(None),
        }
    }
}
