//! The SQL of garbage collection: what may go (planned on a read snapshot,
//! so planning never holds the writer) and checked deletions (each item
//! re-checked inside the write transaction that removes it, so a push that
//! raced the plan wins). Also pins, retention overrides and run reports.
//! The rule of what lives is in `liveness`; this module applies it.

use super::liveness;
use super::quota;
use super::Sqlite;
use crate::meta::types::*;
use crate::{now_ms, StorageError};
use rusqlite::{named_params, params, Connection, OptionalExtension, Transaction};
use std::collections::BTreeMap;

fn reset_temp(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS gc_live (repo_id INTEGER, digest TEXT, PRIMARY KEY (repo_id, digest)) WITHOUT ROWID;
         CREATE TEMP TABLE IF NOT EXISTS gc_doomed (repo_id INTEGER, digest TEXT, PRIMARY KEY (repo_id, digest)) WITHOUT ROWID;
         CREATE TEMP TABLE IF NOT EXISTS gc_doomed_links (repo_id INTEGER, digest TEXT, PRIMARY KEY (repo_id, digest)) WITHOUT ROWID;
         DELETE FROM temp.gc_live; DELETE FROM temp.gc_doomed; DELETE FROM temp.gc_doomed_links;",
    )
}

fn plan_on(c: &Connection, manifest_cutoff: i64, blob_cutoff: i64) -> rusqlite::Result<GcPlan> {
    reset_temp(c)?;
    c.execute("BEGIN", [])?; // one snapshot for the whole plan
    let result = (|| {
        let mut names = RepoNames::default();
        c.execute(
            &liveness::MARK_LIVE,
            named_params! {":manifest_cutoff": manifest_cutoff},
        )?;
        c.execute(
            "INSERT INTO temp.gc_doomed (repo_id, digest)
             SELECT m.repo_id, m.digest FROM main.manifests m
             WHERE NOT EXISTS (SELECT 1 FROM temp.gc_live l WHERE l.repo_id = m.repo_id AND l.digest = m.digest)",
            [],
        )?;
        let manifests = c
            .prepare(
                "SELECT d.repo_id, r.name, r.namespace, d.digest, m.size FROM temp.gc_doomed d
                 JOIN main.repositories r ON r.id = d.repo_id
                 JOIN main.manifests m ON m.repo_id = d.repo_id AND m.digest = d.digest
                 ORDER BY r.name, d.digest",
            )?
            .query_map([], |r| {
                let repo_id = r.get(0)?;
                let (repository, namespace) =
                    names.get(repo_id, r.get_ref(1)?.as_str()?, r.get_ref(2)?.as_str()?);
                Ok(DoomedManifest {
                    repo_id,
                    repository,
                    namespace,
                    digest: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // Links no surviving manifest of the repository needs.
        c.execute(
            &liveness::PLAN_LINKS,
            named_params! {":blob_cutoff": blob_cutoff},
        )?;
        let links = c
            .prepare(
                "SELECT l.repo_id, r.name, r.namespace, l.digest, b.size FROM temp.gc_doomed_links l
                 JOIN main.repositories r ON r.id = l.repo_id JOIN main.blobs b ON b.digest = l.digest
                 ORDER BY r.name, l.digest",
            )?
            .query_map([], |r| {
                let repo_id = r.get(0)?;
                let (repository, namespace) =
                    names.get(repo_id, r.get_ref(1)?.as_str()?, r.get_ref(2)?.as_str()?);
                Ok(DoomedLink {
                    repo_id,
                    repository,
                    namespace,
                    digest: r.get(3)?,
                    size: r.get::<_, i64>(4)? as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // Blobs that no link will hold once the doomed links are gone.
        let blobs = c
            .prepare(&liveness::PLAN_BLOBS)?
            .query_map(named_params! {":blob_cutoff": blob_cutoff}, blob_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // Quota returned: doomed manifests, plus blobs whose every link in
        // the namespace is doomed.
        let mut freed: BTreeMap<String, u64> = BTreeMap::new();
        for m in &manifests {
            *freed.entry(m.namespace.to_string()).or_default() += m.size;
        }
        let mut stmt = c.prepare(
            "SELECT r.namespace, l.digest, b.size, COUNT(*) AS doomed,
                    (SELECT nb.repos FROM main.namespace_blobs nb WHERE nb.namespace = r.namespace AND nb.digest = l.digest)
             FROM temp.gc_doomed_links l JOIN main.repositories r ON r.id = l.repo_id JOIN main.blobs b ON b.digest = l.digest
             GROUP BY r.namespace, l.digest",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        for row in rows {
            let (ns, size, doomed, repos) = row?;
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
    })();
    c.execute("COMMIT", [])?;
    reset_temp(c)?;
    result
}

/// Whether (`:repo_id`, `:digest`) is pinned (named for liveness's test of
/// statements prepared once).
pub(super) const PINNED: &str = "SELECT 1 FROM pins p JOIN repositories r ON r.name = p.repository
    WHERE r.id = :repo_id AND p.digest = :digest";

fn pinned(tx: &Connection, repo_id: i64, digest: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached(PINNED)?
        .exists(named_params! {":repo_id": repo_id, ":digest": digest})
}

/// Deletes one manifest if, inside this transaction, it is still garbage.
/// Returns its size when deleted.
fn delete_manifest_if_garbage(
    tx: &Transaction<'_>,
    repo_id: i64,
    ns: &str,
    digest: &str,
    cutoff: i64,
) -> rusqlite::Result<Option<u64>> {
    let Some(size) = liveness::manifest_still_garbage(tx, repo_id, digest, cutoff)? else {
        return Ok(None);
    };
    super::queries::delete_manifest_rows(tx, repo_id, digest)?;
    quota::release(tx, ns, size)?;
    Ok(Some(size))
}

impl Sqlite {
    /// The tags of the next `repositories` repositories (by id) after
    /// `after_repo_id` that have tags, in `namespace` if given, with what
    /// retention needs, newest first per repository. Cleanup pages
    /// through the whole registry this way, a bounded page at a time.
    pub async fn gc_tags(
        &self,
        namespace: Option<String>,
        after_repo_id: i64,
        repositories: u32,
    ) -> Result<Vec<TagRow>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT t.repo_id, r.name, r.namespace, t.name, t.digest, t.updated_ms,
                        EXISTS (SELECT 1 FROM pins p WHERE p.repository = r.name AND p.digest = t.digest)
                 FROM tags t JOIN repositories r ON r.id = t.repo_id
                 WHERE t.repo_id IN (
                     SELECT pr.id FROM repositories pr
                     WHERE pr.id > ?1 AND (?3 IS NULL OR pr.namespace = ?3)
                       AND EXISTS (SELECT 1 FROM tags pt WHERE pt.repo_id = pr.id)
                     ORDER BY pr.id LIMIT ?2)
                 ORDER BY t.repo_id, t.updated_ms DESC, t.name",
            )?;
            let rows = stmt
                .query_map(params![after_repo_id, repositories, namespace], |r| {
                    Ok(TagRow {
                        repo_id: r.get(0)?,
                        repository: r.get(1)?,
                        namespace: r.get(2)?,
                        tag: r.get(3)?,
                        digest: r.get(4)?,
                        updated_ms: r.get(5)?,
                        pinned: r.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deletes tags that still point where cleanup saw them point and whose
    /// digest is not pinned; returns those deleted. The manifests that lost
    /// a tag start their untagged grace period now.
    pub async fn delete_tags_checked(
        &self,
        tags: Vec<TagRow>,
    ) -> Result<Vec<TagRow>, StorageError> {
        self.write(move |tx| {
            let now = now_ms();
            let mut deleted = Vec::new();
            for t in tags {
                if pinned(tx, t.repo_id, &t.digest)? {
                    continue;
                }
                let n = tx
                    .prepare_cached("DELETE FROM tags WHERE repo_id = ?1 AND name = ?2 AND digest = ?3 AND updated_ms = ?4")?
                    .execute(params![t.repo_id, t.tag, t.digest, t.updated_ms])?;
                if n > 0 {
                    super::queries::released(tx, t.repo_id, &t.digest, now)?;
                    deleted.push(t);
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// Plans an untagged GC: manifests not live (see the module doc) and
    /// older than `manifest_cutoff`, blob links and blobs not touched since
    /// `blob_cutoff` that nothing surviving needs. Changes nothing.
    pub async fn gc_plan(
        &self,
        manifest_cutoff: i64,
        blob_cutoff: i64,
    ) -> Result<GcPlan, StorageError> {
        self.read(move |c| Ok(plan_on(c, manifest_cutoff, blob_cutoff)?))
            .await
    }

    /// Deletes those of the given manifests that are still garbage, in one
    /// pass; returns what was deleted. A manifest still held by one that is
    /// doomed too (an index, a subject) is skipped until its holder is
    /// gone: the caller retries what was skipped (see berth-gc's jobs).
    pub async fn delete_manifests_checked(
        &self,
        batch: Vec<DoomedManifest>,
        cutoff: i64,
    ) -> Result<Vec<DoomedManifest>, StorageError> {
        self.delete_each(batch, move |tx, m| {
            Ok(
                delete_manifest_if_garbage(tx, m.repo_id, &m.namespace, &m.digest, cutoff)?
                    .is_some(),
            )
        })
        .await
    }

    /// Runs `delete` (which re-checks, then deletes) on each item inside
    /// one write transaction; returns the items it deleted.
    async fn delete_each<T: Send + 'static>(
        &self,
        batch: Vec<T>,
        delete: impl Fn(&Transaction<'_>, &T) -> rusqlite::Result<bool> + Send + 'static,
    ) -> Result<Vec<T>, StorageError> {
        self.write(move |tx| {
            let mut deleted = Vec::new();
            for item in batch {
                if delete(tx, &item)? {
                    deleted.push(item);
                }
            }
            Ok(deleted)
        })
        .await
    }

    /// Removes blob links that are still unneeded and untouched since
    /// `cutoff`, releasing quota where a namespace loses its last link of a
    /// blob. Returns the links removed and the bytes each namespace got back.
    pub async fn delete_links_checked(
        &self,
        batch: Vec<DoomedLink>,
        cutoff: i64,
    ) -> Result<(Vec<DoomedLink>, BTreeMap<String, u64>), StorageError> {
        self.write(move |tx| {
            let mut deleted = Vec::new();
            let mut freed: BTreeMap<String, u64> = BTreeMap::new();
            for l in batch {
                if !liveness::link_still_garbage(tx, l.repo_id, &l.digest, cutoff)? {
                    continue;
                }
                let released = super::queries::remove_link(tx, l.repo_id, &l.namespace, &l.digest)?
                    .unwrap_or(0);
                if released > 0 {
                    *freed.entry(l.namespace.to_string()).or_default() += released;
                }
                deleted.push(l);
            }
            // One ledger update per namespace, not per link.
            for (ns, bytes) in &freed {
                quota::release(tx, ns, *bytes)?;
            }
            Ok((deleted, freed))
        })
        .await
    }

    /// Deletes blob rows that no repository links and that were not touched
    /// since `cutoff`; returns those deleted. The caller deletes their
    /// objects afterwards (rows before objects), holding the blob locks.
    pub async fn delete_blob_rows_checked(
        &self,
        batch: Vec<DoomedBlob>,
        cutoff: i64,
    ) -> Result<Vec<DoomedBlob>, StorageError> {
        self.delete_each(batch, move |tx, b| {
            liveness::delete_blob_if_garbage(tx, &b.digest, cutoff)
        })
        .await
    }

    /// Which of `digests` have a blob row.
    pub async fn blob_rows_present(&self, digests: Vec<String>) -> Result<Vec<bool>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")?;
            digests.iter().map(|d| Ok(stmt.exists([d])?)).collect()
        })
        .await
    }

    // ------------------------------------------------------------ pins ----

    pub async fn add_pin(
        &self,
        repository: &str,
        digest: &str,
        reason: &str,
    ) -> Result<Pin, StorageError> {
        let (repository, digest, reason) =
            (repository.to_owned(), digest.to_owned(), reason.to_owned());
        self.write(move |tx| {
            let now = now_ms();
            tx.prepare_cached(
                "INSERT INTO pins (repository, digest, reason, created_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repository, digest) DO UPDATE SET reason = excluded.reason",
            )?
            .execute(params![repository, digest, reason, now])?;
            Ok(tx
                .prepare_cached("SELECT id, repository, digest, reason, created_ms FROM pins WHERE repository = ?1 AND digest = ?2")?
                .query_row(params![repository, digest], pin_row)?)
        })
        .await
    }

    pub async fn list_pins(&self) -> Result<Vec<Pin>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, repository, digest, reason, created_ms FROM pins ORDER BY id",
            )?;
            let pins = stmt
                .query_map([], pin_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(pins)
        })
        .await
    }

    /// Removes a pin; the manifest it held starts its grace period now.
    pub async fn delete_pin(&self, id: i64) -> Result<bool, StorageError> {
        self.write(move |tx| {
            let pin: Option<(String, String)> = tx
                .prepare_cached("SELECT repository, digest FROM pins WHERE id = ?1")?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((repository, digest)) = pin else {
                return Ok(false);
            };
            tx.prepare_cached("DELETE FROM pins WHERE id = ?1")?
                .execute([id])?;
            let held: Option<i64> = tx
                .prepare_cached(
                    "SELECT m.repo_id FROM manifests m JOIN repositories r ON r.id = m.repo_id
                     WHERE r.name = ?1 AND m.digest = ?2",
                )?
                .query_row(params![repository, digest], |r| r.get(0))
                .optional()?;
            if let Some(repo_id) = held {
                super::queries::released(tx, repo_id, &digest, now_ms())?;
            }
            Ok(true)
        })
        .await
    }

    // ------------------------------------------------------- retention ----

    pub async fn retention_overrides(
        &self,
    ) -> Result<BTreeMap<String, RetentionOverride>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT namespace, keep_last, protected_tags, max_age_ms, keep_pattern FROM retention")?;
            let rows = stmt
                .query_map([], |r| {
                    let protected: Option<String> = r.get(2)?;
                    Ok((
                        r.get::<_, String>(0)?,
                        RetentionOverride {
                            keep_last: r.get::<_, Option<i64>>(1)?.map(|k| k.max(0) as u32),
                            protected_tags: protected.and_then(|p| serde_json::from_str(&p).ok()),
                            max_age_ms: r.get(3)?,
                            keep_pattern: r.get(4)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Sets (`Some`) or removes (`None`) a namespace's retention override.
    pub async fn set_retention_override(
        &self,
        namespace: &str,
        value: Option<RetentionOverride>,
    ) -> Result<(), StorageError> {
        let namespace = namespace.to_owned();
        self.write(move |tx| {
            match value {
                None => {
                    tx.prepare_cached("DELETE FROM retention WHERE namespace = ?1")?.execute([namespace])?;
                }
                Some(o) => {
                    tx.prepare_cached(
                        "INSERT INTO retention (namespace, keep_last, protected_tags, max_age_ms, keep_pattern, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (namespace) DO UPDATE SET keep_last = excluded.keep_last,
                             protected_tags = excluded.protected_tags, max_age_ms = excluded.max_age_ms,
                             keep_pattern = excluded.keep_pattern, updated_ms = excluded.updated_ms",
                    )?
                    .execute(params![
                        namespace,
                        o.keep_last.map(i64::from),
                        o.protected_tags.map(|p| serde_json::to_string(&p).expect("strings serialize")),
                        o.max_age_ms,
                        o.keep_pattern,
                        now_ms()
                    ])?;
                }
            }
            Ok(())
        })
        .await
    }

    // ------------------------------------------------------------ runs ----

    /// Records that a run started; returns its id. `finished_ms` stays 0
    /// until `finish_gc_run`, so a run cut short by a crash is visible.
    pub async fn start_gc_run(
        &self,
        job: &str,
        dry_run: bool,
        trigger: &str,
        started_ms: i64,
        report: serde_json::Value,
    ) -> Result<i64, StorageError> {
        let (job, trigger) = (job.to_owned(), trigger.to_owned());
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT INTO gc_runs (job, dry_run, trigger, started_ms, finished_ms, report) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
            )?
            .execute(params![job, dry_run, trigger, started_ms, report.to_string()])?;
            Ok(tx.last_insert_rowid())
        })
        .await
    }

    pub async fn finish_gc_run(
        &self,
        id: i64,
        finished_ms: i64,
        report: serde_json::Value,
    ) -> Result<(), StorageError> {
        self.write(move |tx| {
            tx.prepare_cached("UPDATE gc_runs SET finished_ms = ?2, report = ?3 WHERE id = ?1")?
                .execute(params![id, finished_ms, report.to_string()])?;
            Ok(())
        })
        .await
    }

    /// Marks runs that never finished (the process died) as interrupted.
    pub async fn interrupt_unfinished_gc_runs(&self) -> Result<usize, StorageError> {
        self.write(|tx| {
            Ok(tx.execute(
                "UPDATE gc_runs SET finished_ms = ?1, report = json_set(report, '$.status', 'interrupted') WHERE finished_ms = 0",
                [now_ms()],
            )?)
        })
        .await
    }

    pub async fn gc_runs(&self, limit: u32) -> Result<Vec<GcRunRecord>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, job, dry_run, trigger, started_ms, finished_ms, report FROM gc_runs ORDER BY id DESC LIMIT ?1",
            )?;
            let runs = stmt
                .query_map([limit], |r| {
                    let report: String = r.get(6)?;
                    Ok(GcRunRecord {
                        id: r.get(0)?,
                        job: r.get(1)?,
                        dry_run: r.get(2)?,
                        trigger: r.get(3)?,
                        started_ms: r.get(4)?,
                        finished_ms: r.get(5)?,
                        report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(runs)
        })
        .await
    }
}

fn blob_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DoomedBlob> {
    Ok(DoomedBlob {
        digest: r.get(0)?,
        size: r.get::<_, i64>(1)?.max(0) as u64,
    })
}

fn pin_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Pin> {
    Ok(Pin {
        id: r.get(0)?,
        repository: r.get(1)?,
        digest: r.get(2)?,
        reason: r.get(3)?,
        created_ms: r.get(4)?,
    })
}
