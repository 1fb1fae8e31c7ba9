//! The web console's questions: the quota list a page at a time (sorted
//! and filtered here, so 10,000 namespaces cost one indexed scan and the
//! repository counts of one page), a namespace's tags with image sizes,
//! builds across tools, and storage over time.
//!
//! Sampling (`sample_usage`) reads on a reader connection (the totals scan
//! every blob row, which must not hold the writer) and then writes only
//! the namespaces whose usage changed, and prunes, in short write
//! transactions.

use super::quota::quota_of;
use super::Sqlite;
use crate::meta::builds::{BuildRecord, BuildStatus};
use crate::meta::console::*;
use crate::StorageError;
use rusqlite::{params, OptionalExtension};

/// Rows deleted per write transaction when pruning samples.
const PRUNE_BATCH: i64 = 5_000;

impl Sqlite {
    /// One page of the quota list, sorted and filtered in SQL. The
    /// effective limit and percentage are computed the way `quota_list`
    /// computes them (config default, config `unlimited`, overrides).
    pub async fn quota_page(&self, q: QuotaQuery) -> Result<QuotaPage, StorageError> {
        let policy = self.quota_policy();
        self.read(move |c| {
            let unlimited = serde_json::to_string(&policy.unlimited.iter().collect::<Vec<_>>())
                .map_err(|e| StorageError::Internal(e.to_string()))?;
            let default_limit = policy.default_limit.map(|l| l.min(i64::MAX as u64) as i64);
            let dir = if q.descending { "DESC" } else { "ASC" };
            let order = match q.sort {
                QuotaSort::Name => format!("name {dir}"),
                QuotaSort::Used => format!("used_bytes {dir}, name"),
                // Unlimited is larger than any limit.
                QuotaSort::Limit => format!("(eff IS NULL) {dir}, eff {dir}, name"),
                QuotaSort::Percent => format!("pct {dir}, used_bytes {dir}, name"),
                QuotaSort::Repositories => format!("repos {dir}, name"),
            };
            // Counting repositories for every row is only needed to sort
            // by it; otherwise only the page's rows are counted.
            let repos = "(SELECT COUNT(*) FROM repositories r WHERE r.namespace = p.name)";
            let (inner_repos, outer_repos) = if q.sort == QuotaSort::Repositories {
                (format!(", {repos} AS repos"), "repos".to_owned())
            } else {
                (String::new(), repos.to_owned())
            };
            let base = "WITH q AS (
                    SELECT n.name, n.limit_bytes, n.unlimited, n.used_bytes,
                           CASE WHEN n.unlimited != 0 OR n.name IN (SELECT value FROM json_each(?1)) THEN NULL
                                WHEN n.limit_bytes IS NOT NULL THEN MAX(n.limit_bytes, 0)
                                ELSE ?2 END AS eff
                    FROM namespaces n
                    WHERE (?3 IS NULL OR instr(n.name, ?3) > 0)
                ), p AS (
                    SELECT *, CASE WHEN eff IS NULL THEN 0.0 WHEN eff = 0 THEN 100.0
                                   ELSE round(MAX(used_bytes, 0) * 100.0 / eff, 2) END AS pct
                    FROM q
                )";
            let filter = "WHERE (?4 IS NULL OR (eff IS NOT NULL AND pct >= ?4))";
            let matching: i64 = c
                .prepare_cached(&format!("{base} SELECT COUNT(*) FROM p {filter}"))?
                .query_row(
                    params![unlimited, default_limit, q.name_contains, q.min_percent],
                    |r| r.get(0),
                )?;
            let total: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM namespaces")?
                .query_row([], |r| r.get(0))?;
            let sql = format!(
                "{base}, s AS (SELECT *{inner_repos} FROM p {filter} ORDER BY {order} LIMIT ?5 OFFSET ?6)
                 SELECT name, limit_bytes, unlimited, used_bytes, {} FROM s p ORDER BY {order}",
                outer_repos
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(
                    params![
                        unlimited,
                        default_limit,
                        q.name_contains,
                        q.min_percent,
                        q.limit as i64,
                        q.offset.min(i64::MAX as u64) as i64
                    ],
                    |r| {
                        Ok(quota_of(
                            &policy,
                            r.get(0)?,
                            r.get(1)?,
                            r.get::<_, i64>(2)? != 0,
                            r.get(3)?,
                            r.get(4)?,
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(QuotaPage {
                total: total.max(0) as u64,
                matching: matching.max(0) as u64,
                rows,
            })
        })
        .await
    }

    /// A namespace's tags, by repository and newest first, at most
    /// `limit` from `offset`; with the number of tags in all.
    pub async fn namespace_tags(
        &self,
        ns: &str,
        offset: u64,
        limit: u32,
    ) -> Result<(u64, Vec<TagInfo>), StorageError> {
        let ns = ns.to_owned();
        self.read(move |c| {
            let total: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.namespace = ?1",
                )?
                .query_row([&ns], |r| r.get(0))?;
            let mut stmt = c.prepare_cached(
                "SELECT r.name, t.name, t.digest, t.updated_ms, COALESCE(m.pushed_ms, t.updated_ms),
                        COALESCE(m.size, 0) + COALESCE((SELECT SUM(b.size) FROM manifest_refs mr JOIN blobs b ON b.digest = mr.child_digest
                                                       WHERE mr.repo_id = t.repo_id AND mr.manifest_digest = t.digest AND mr.kind = 'blob'), 0)
                 FROM tags t JOIN repositories r ON r.id = t.repo_id
                 LEFT JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
                 WHERE r.namespace = ?1
                 ORDER BY r.name, t.updated_ms DESC, t.name LIMIT ?2 OFFSET ?3",
            )?;
            let rows = stmt
                .query_map(
                    params![ns, limit as i64, offset.min(i64::MAX as u64) as i64],
                    |r| {
                        Ok(TagInfo {
                            repository: r.get(0)?,
                            tag: r.get(1)?,
                            digest: r.get(2)?,
                            updated_ms: r.get(3)?,
                            pushed_ms: r.get(4)?,
                            bytes: r.get::<_, i64>(5)?.max(0) as u64,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((total.max(0) as u64, rows))
        })
        .await
    }

    /// Builds of every tool that are waiting or running, oldest first.
    pub async fn active_builds(&self) -> Result<Vec<BuildRecord>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM builds WHERE status IN (?1, ?2) ORDER BY created_ms, id",
                super::builds::COLUMNS
            ))?;
            let rows = stmt
                .query_map(
                    params![BuildStatus::Pending.as_str(), BuildStatus::Running.as_str()],
                    super::builds::record,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The newest builds of every tool, at most `limit`.
    pub async fn recent_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM builds ORDER BY created_ms DESC, id DESC LIMIT ?1",
                super::builds::COLUMNS
            ))?;
            let rows = stmt
                .query_map([limit as i64], super::builds::record)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Records the registry's totals and every namespace whose usage
    /// changed since its last sample, then prunes what `keep` no longer
    /// keeps. The scans run on a reader; the writer only inserts and
    /// deletes, in short transactions.
    pub async fn sample_usage(
        &self,
        now_ms: i64,
        keep: SampleRetention,
    ) -> Result<SampleReport, StorageError> {
        let (totals, changed) = self
            .read(move |c| {
                c.execute("BEGIN", [])?;
                let result = (|| {
                    let used: i64 = c.query_row(
                        "SELECT COALESCE(SUM(MAX(used_bytes, 0)), 0) FROM namespaces",
                        [],
                        |r| r.get(0),
                    )?;
                    let namespaces: i64 =
                        c.query_row("SELECT COUNT(*) FROM namespaces", [], |r| r.get(0))?;
                    let (blobs, blob_bytes): (i64, i64) = c.query_row(
                        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    let (manifests, manifest_bytes): (i64, i64) = c.query_row(
                        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM manifests",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    let linked_blob_bytes: i64 = c.query_row(
                        "SELECT COALESCE(SUM(b.size), 0) FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest",
                        [],
                        |r| r.get(0),
                    )?;
                    let mut stmt = c.prepare(
                        "SELECT n.name, MAX(n.used_bytes, 0) FROM namespaces n
                         WHERE NOT EXISTS (SELECT 1 FROM usage_samples s
                                           WHERE s.namespace = n.name
                                             AND s.at_ms = (SELECT MAX(at_ms) FROM usage_samples l WHERE l.namespace = n.name)
                                             AND s.used_bytes = MAX(n.used_bytes, 0))",
                    )?;
                    let changed = stmt
                        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    let totals = UsageTotals {
                        at_ms: now_ms,
                        used_bytes: used.max(0) as u64,
                        stored_bytes: (blob_bytes + manifest_bytes).max(0) as u64,
                        linked_bytes: (linked_blob_bytes + manifest_bytes).max(0) as u64,
                        blobs: blobs.max(0) as u64,
                        manifests: manifests.max(0) as u64,
                        namespaces: namespaces.max(0) as u64,
                    };
                    Ok::<_, rusqlite::Error>((totals, changed))
                })();
                c.execute("COMMIT", [])?;
                Ok(result?)
            })
            .await?;
        let recorded = changed.len();
        for chunk in changed.chunks(1_000) {
            let chunk = chunk.to_vec();
            self.write(move |tx| {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO usage_samples (namespace, at_ms, used_bytes) VALUES (?1, ?2, ?3)",
                )?;
                for (ns, used) in chunk {
                    stmt.execute(params![ns, now_ms, used])?;
                }
                Ok(())
            })
            .await?;
        }
        let cutoff = now_ms.saturating_sub(keep.keep_ms);
        let max_rows = keep.max_rows.min(i64::MAX as u64) as i64;
        self.write(move |tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO usage_totals (at_ms, used_bytes, stored_bytes, linked_bytes, blobs, manifests, namespaces)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                totals.at_ms,
                totals.used_bytes.min(i64::MAX as u64) as i64,
                totals.stored_bytes.min(i64::MAX as u64) as i64,
                totals.linked_bytes.min(i64::MAX as u64) as i64,
                totals.blobs as i64,
                totals.manifests as i64,
                totals.namespaces as i64
            ])?;
            tx.prepare_cached("DELETE FROM usage_totals WHERE at_ms < ?1")?
                .execute([cutoff])?;
            Ok(())
        })
        .await?;
        let mut pruned = 0usize;
        loop {
            // Old samples go, except each namespace's newest (where its
            // chart starts); past the row cap, the oldest go regardless.
            let n = self
                .write(move |tx| {
                    let old = tx
                        .prepare_cached(
                            "DELETE FROM usage_samples WHERE (namespace, at_ms) IN (
                                SELECT s.namespace, s.at_ms FROM usage_samples s
                                WHERE s.at_ms < ?1
                                  AND s.at_ms < (SELECT MAX(at_ms) FROM usage_samples l WHERE l.namespace = s.namespace)
                                LIMIT ?2)",
                        )?
                        .execute(params![cutoff, PRUNE_BATCH])?;
                    if old > 0 {
                        return Ok(old);
                    }
                    let rows: i64 = tx
                        .prepare_cached("SELECT COUNT(*) FROM usage_samples")?
                        .query_row([], |r| r.get(0))?;
                    let excess = (rows - max_rows).clamp(0, PRUNE_BATCH);
                    if excess == 0 {
                        return Ok(0);
                    }
                    Ok(tx
                        .prepare_cached(
                            "DELETE FROM usage_samples WHERE (namespace, at_ms) IN (
                                SELECT namespace, at_ms FROM usage_samples ORDER BY at_ms LIMIT ?1)",
                        )?
                        .execute([excess])?)
                })
                .await?;
            pruned += n;
            if n == 0 {
                break;
            }
        }
        Ok(SampleReport {
            recorded,
            pruned,
            totals,
        })
    }

    /// A namespace's usage since `since_ms`, oldest first, starting with
    /// the value it had then (its newest sample before, if any).
    pub async fn usage_series(
        &self,
        ns: &str,
        since_ms: i64,
    ) -> Result<Vec<UsagePoint>, StorageError> {
        let ns = ns.to_owned();
        self.read(move |c| {
            let before: Option<i64> = c
                .prepare_cached(
                    "SELECT used_bytes FROM usage_samples WHERE namespace = ?1 AND at_ms < ?2 ORDER BY at_ms DESC LIMIT 1",
                )?
                .query_row(params![ns, since_ms], |r| r.get(0))
                .optional()?;
            let mut points: Vec<UsagePoint> = before
                .map(|b| UsagePoint {
                    at_ms: since_ms,
                    bytes: b.max(0) as u64,
                })
                .into_iter()
                .collect();
            let mut stmt = c.prepare_cached(
                "SELECT at_ms, used_bytes FROM usage_samples WHERE namespace = ?1 AND at_ms >= ?2 ORDER BY at_ms",
            )?;
            points.extend(
                stmt.query_map(params![ns, since_ms], |r| {
                    Ok(UsagePoint {
                        at_ms: r.get(0)?,
                        bytes: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            );
            Ok(points)
        })
        .await
    }

    /// The registry's totals since `since_ms`, oldest first.
    pub async fn usage_totals(&self, since_ms: i64) -> Result<Vec<UsageTotals>, StorageError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT at_ms, used_bytes, stored_bytes, linked_bytes, blobs, manifests, namespaces
                 FROM usage_totals WHERE at_ms >= ?1 ORDER BY at_ms",
            )?;
            let rows = stmt
                .query_map([since_ms], totals_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// The newest totals sample, if any.
    pub async fn latest_usage_totals(&self) -> Result<Option<UsageTotals>, StorageError> {
        self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT at_ms, used_bytes, stored_bytes, linked_bytes, blobs, manifests, namespaces
                 FROM usage_totals ORDER BY at_ms DESC LIMIT 1",
            )?
            .query_row([], totals_row)
            .optional()?)
        })
        .await
    }

    /// One stored GC run.
    pub async fn gc_run(&self, id: i64) -> Result<Option<crate::meta::GcRunRecord>, StorageError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT id, job, dry_run, trigger, started_ms, finished_ms, report FROM gc_runs WHERE id = ?1",
            )?
            .query_row([id], |r| {
                let report: String = r.get(6)?;
                Ok(crate::meta::GcRunRecord {
                    id: r.get(0)?,
                    job: r.get(1)?,
                    dry_run: r.get(2)?,
                    trigger: r.get(3)?,
                    started_ms: r.get(4)?,
                    finished_ms: r.get(5)?,
                    report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
                })
            })
            .optional()?)
        })
        .await
    }

    /// How many namespace samples are kept (for tests and the console).
    pub async fn usage_sample_rows(&self) -> Result<u64, StorageError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT COUNT(*) FROM usage_samples")?
                .query_row([], |r| r.get::<_, i64>(0))?
                .max(0) as u64)
        })
        .await
    }
}

fn totals_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UsageTotals> {
    let u = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
    Ok(UsageTotals {
        at_ms: r.get(0)?,
        used_bytes: u(1)?,
        stored_bytes: u(2)?,
        linked_bytes: u(3)?,
        blobs: u(4)?,
        manifests: u(5)?,
        namespaces: u(6)?,
    })
}
