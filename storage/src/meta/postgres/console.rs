//! The web console's questions on PostgreSQL (`sqlite/console.rs` is the
//! reference): the quota list a page at a time, sorted and filtered here;
//! a namespace's tags with image sizes; builds across tools; storage over
//! time (sampling reads on one snapshot, then short writes).

use super::{big, col, exec, one, opt, rows, snapshot, transaction, unsigned, Postgres};
use crate::meta::builds::{BuildRecord, BuildStatus};
use crate::meta::console::*;
use crate::StorageError;

/// Rows deleted per write transaction when pruning samples.
const PRUNE_BATCH: i64 = 5_000;

fn totals_row(r: &tokio_postgres::Row) -> Result<UsageTotals, StorageError> {
    Ok(UsageTotals {
        at_ms: col(r, 0)?,
        used_bytes: unsigned(r, 1)?,
        stored_bytes: unsigned(r, 2)?,
        linked_bytes: unsigned(r, 3)?,
        blobs: unsigned(r, 4)?,
        manifests: unsigned(r, 5)?,
        namespaces: unsigned(r, 6)?,
    })
}

impl Postgres {
    pub async fn quota_page(&self, q: QuotaQuery) -> Result<QuotaPage, StorageError> {
        let policy = self.quota_policy();
        let unlimited: Vec<String> = policy.unlimited.iter().cloned().collect();
        let default_limit = policy.default_limit.map(big);
        let dir = if q.descending { "DESC" } else { "ASC" };
        let name = "name COLLATE \"C\"";
        let order = match q.sort {
            QuotaSort::Name => format!("{name} {dir}"),
            QuotaSort::Used => format!("used_bytes {dir}, {name}"),
            // Unlimited is larger than any limit.
            QuotaSort::Limit => format!("(eff IS NULL) {dir}, eff {dir}, {name}"),
            QuotaSort::Percent => format!("pct {dir}, used_bytes {dir}, {name}"),
            QuotaSort::Repositories => format!("repos {dir}, {name}"),
        };
        let repos = "(SELECT COUNT(*) FROM repositories r WHERE r.namespace = p.name)";
        let (inner_repos, outer_repos) = if q.sort == QuotaSort::Repositories {
            (format!(", {repos} AS repos"), "repos".to_owned())
        } else {
            (String::new(), repos.to_owned())
        };
        let base = "WITH q AS (
                SELECT n.name, n.limit_bytes, n.unlimited, n.used_bytes,
                       CASE WHEN n.unlimited OR n.name = ANY($1::text[]) THEN NULL
                            WHEN n.limit_bytes IS NOT NULL THEN GREATEST(n.limit_bytes, 0)
                            ELSE $2::bigint END AS eff
                FROM namespaces n
                WHERE ($3::text IS NULL OR strpos(n.name, $3::text) > 0)
            ), p AS (
                SELECT *, CASE WHEN eff IS NULL THEN 0.0::float8 WHEN eff = 0 THEN 100.0::float8
                               ELSE round(GREATEST(used_bytes, 0) * 100.0 / eff, 2)::float8 END AS pct
                FROM q
            )";
        let filter = "WHERE ($4::float8 IS NULL OR (eff IS NOT NULL AND pct >= $4::float8))";
        let c = self.client().await?;
        let matching: i64 = col(
            &one(
                &c,
                &format!("{base} SELECT COUNT(*) FROM p {filter}"),
                &[&unlimited, &default_limit, &q.name_contains, &q.min_percent],
            )
            .await?,
            0,
        )?;
        let total: i64 = col(&one(&c, "SELECT COUNT(*) FROM namespaces", &[]).await?, 0)?;
        let sql = format!(
            "{base}, s AS (SELECT *{inner_repos} FROM p {filter} ORDER BY {order} LIMIT $5 OFFSET $6)
             SELECT name, limit_bytes, unlimited, used_bytes, {outer_repos} FROM s p ORDER BY {order}"
        );
        let limit = i64::from(q.limit);
        let offset = big(q.offset);
        let found = rows(
            &c,
            &sql,
            &[
                &unlimited,
                &default_limit,
                &q.name_contains,
                &q.min_percent,
                &limit,
                &offset,
            ],
        )
        .await?;
        let rows = found
            .iter()
            .map(|r| super::quota::quota_row(&policy, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QuotaPage {
            total: total.max(0) as u64,
            matching: matching.max(0) as u64,
            rows,
        })
    }

    pub async fn namespace_tags(
        &self,
        ns: &str,
        offset: u64,
        limit: u32,
    ) -> Result<(u64, Vec<TagInfo>), StorageError> {
        let c = self.client().await?;
        let total: i64 = col(
            &one(
                &c,
                "SELECT COUNT(*) FROM tags t JOIN repositories r ON r.id = t.repo_id WHERE r.namespace = $1",
                &[&ns],
            )
            .await?,
            0,
        )?;
        let mut out = Vec::new();
        for r in rows(
            &c,
            "SELECT r.name, t.name, t.digest, t.updated_ms, COALESCE(m.pushed_ms, t.updated_ms),
                    COALESCE(m.size, 0) + COALESCE((SELECT SUM(b.size) FROM manifest_refs mr JOIN blobs b ON b.digest = mr.child_digest
                                                   WHERE mr.repo_id = t.repo_id AND mr.manifest_digest = t.digest AND mr.kind = 'blob'), 0)::bigint
             FROM tags t JOIN repositories r ON r.id = t.repo_id
             LEFT JOIN manifests m ON m.repo_id = t.repo_id AND m.digest = t.digest
             WHERE r.namespace = $1
             ORDER BY r.name COLLATE \"C\", t.updated_ms DESC, t.name COLLATE \"C\" LIMIT $2 OFFSET $3",
            &[&ns, &i64::from(limit), &big(offset)],
        )
        .await?
        {
            out.push(TagInfo {
                repository: col(&r, 0)?,
                tag: col(&r, 1)?,
                digest: col(&r, 2)?,
                updated_ms: col(&r, 3)?,
                pushed_ms: col(&r, 4)?,
                bytes: unsigned(&r, 5)?,
            });
        }
        Ok((total.max(0) as u64, out))
    }

    pub async fn active_builds(&self) -> Result<Vec<BuildRecord>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            &format!(
                "SELECT {} FROM builds WHERE status IN ($1, $2) ORDER BY created_ms, id COLLATE \"C\"",
                super::builds::COLUMNS
            ),
            &[&BuildStatus::Pending.as_str(), &BuildStatus::Running.as_str()],
        )
        .await?
        .iter()
        .map(super::builds::record)
        .collect()
    }

    pub async fn recent_builds(&self, limit: u32) -> Result<Vec<BuildRecord>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            &format!(
                "SELECT {} FROM builds ORDER BY created_ms DESC, id COLLATE \"C\" DESC LIMIT $1",
                super::builds::COLUMNS
            ),
            &[&i64::from(limit)],
        )
        .await?
        .iter()
        .map(super::builds::record)
        .collect()
    }

    pub async fn sample_usage(
        &self,
        now_ms: i64,
        keep: SampleRetention,
    ) -> Result<SampleReport, StorageError> {
        let (totals, changed) = snapshot!(self, |tx| {
            let used: i64 = col(
                &one(
                    &tx,
                    "SELECT COALESCE(SUM(GREATEST(used_bytes, 0)), 0)::bigint FROM namespaces",
                    &[],
                )
                .await?,
                0,
            )?;
            let namespaces: i64 = col(&one(&tx, "SELECT COUNT(*) FROM namespaces", &[]).await?, 0)?;
            let r = one(
                &tx,
                "SELECT COUNT(*), COALESCE(SUM(size), 0)::bigint FROM blobs",
                &[],
            )
            .await?;
            let (blobs, blob_bytes): (i64, i64) = (col(&r, 0)?, col(&r, 1)?);
            let r = one(
                &tx,
                "SELECT COUNT(*), COALESCE(SUM(size), 0)::bigint FROM manifests",
                &[],
            )
            .await?;
            let (manifests, manifest_bytes): (i64, i64) = (col(&r, 0)?, col(&r, 1)?);
            let linked_blob_bytes: i64 = col(
                &one(
                    &tx,
                    "SELECT COALESCE(SUM(b.size), 0)::bigint FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest",
                    &[],
                )
                .await?,
                0,
            )?;
            let mut changed = Vec::new();
            for r in rows(
                &tx,
                "SELECT n.name, GREATEST(n.used_bytes, 0) FROM namespaces n
                 WHERE NOT EXISTS (SELECT 1 FROM usage_samples s
                                   WHERE s.namespace = n.name
                                     AND s.at_ms = (SELECT MAX(at_ms) FROM usage_samples l WHERE l.namespace = n.name)
                                     AND s.used_bytes = GREATEST(n.used_bytes, 0))",
                &[],
            )
            .await?
            {
                changed.push((col::<String>(&r, 0)?, col::<i64>(&r, 1)?));
            }
            let totals = UsageTotals {
                at_ms: now_ms,
                used_bytes: used.max(0) as u64,
                stored_bytes: (blob_bytes + manifest_bytes).max(0) as u64,
                linked_bytes: (linked_blob_bytes + manifest_bytes).max(0) as u64,
                blobs: blobs.max(0) as u64,
                manifests: manifests.max(0) as u64,
                namespaces: namespaces.max(0) as u64,
            };
            Ok((totals, changed))
        })?;
        let recorded = changed.len();
        for chunk in changed.chunks(1_000) {
            transaction!(self, |tx| {
                for (ns, used) in chunk {
                    exec(
                        &tx,
                        "INSERT INTO usage_samples (namespace, at_ms, used_bytes) VALUES ($1, $2, $3)
                         ON CONFLICT (namespace, at_ms) DO UPDATE SET used_bytes = excluded.used_bytes",
                        &[ns, &now_ms, used],
                    )
                    .await?;
                }
                Ok(())
            })?;
        }
        let cutoff = now_ms.saturating_sub(keep.keep_ms);
        let max_rows = big(keep.max_rows);
        transaction!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO usage_totals (at_ms, used_bytes, stored_bytes, linked_bytes, blobs, manifests, namespaces)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (at_ms) DO UPDATE SET used_bytes = excluded.used_bytes, stored_bytes = excluded.stored_bytes,
                     linked_bytes = excluded.linked_bytes, blobs = excluded.blobs, manifests = excluded.manifests,
                     namespaces = excluded.namespaces",
                &[
                    &totals.at_ms,
                    &big(totals.used_bytes),
                    &big(totals.stored_bytes),
                    &big(totals.linked_bytes),
                    &big(totals.blobs),
                    &big(totals.manifests),
                    &big(totals.namespaces),
                ],
            )
            .await?;
            exec(&tx, "DELETE FROM usage_totals WHERE at_ms < $1", &[&cutoff]).await?;
            Ok(())
        })?;
        let mut pruned = 0usize;
        loop {
            let n = transaction!(self, |tx| {
                let old = exec(
                    &tx,
                    "DELETE FROM usage_samples WHERE (namespace, at_ms) IN (
                        SELECT s.namespace, s.at_ms FROM usage_samples s
                        WHERE s.at_ms < $1
                          AND s.at_ms < (SELECT MAX(at_ms) FROM usage_samples l WHERE l.namespace = s.namespace)
                        LIMIT $2)",
                    &[&cutoff, &PRUNE_BATCH],
                )
                .await?;
                if old > 0 {
                    return Ok(old as usize);
                }
                let count: i64 = col(
                    &one(&tx, "SELECT COUNT(*) FROM usage_samples", &[]).await?,
                    0,
                )?;
                let excess = (count - max_rows).clamp(0, PRUNE_BATCH);
                if excess == 0 {
                    return Ok(0);
                }
                Ok(exec(
                    &tx,
                    "DELETE FROM usage_samples WHERE (namespace, at_ms) IN (
                        SELECT namespace, at_ms FROM usage_samples ORDER BY at_ms LIMIT $1)",
                    &[&excess],
                )
                .await? as usize)
            })?;
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

    pub async fn usage_series(
        &self,
        ns: &str,
        since_ms: i64,
    ) -> Result<Vec<UsagePoint>, StorageError> {
        let c = self.client().await?;
        let mut points = Vec::new();
        if let Some(r) = opt(
            &c,
            "SELECT used_bytes FROM usage_samples WHERE namespace = $1 AND at_ms < $2 ORDER BY at_ms DESC LIMIT 1",
            &[&ns, &since_ms],
        )
        .await?
        {
            points.push(UsagePoint {
                at_ms: since_ms,
                bytes: unsigned(&r, 0)?,
            });
        }
        for r in rows(
            &c,
            "SELECT at_ms, used_bytes FROM usage_samples WHERE namespace = $1 AND at_ms >= $2 ORDER BY at_ms",
            &[&ns, &since_ms],
        )
        .await?
        {
            points.push(UsagePoint {
                at_ms: col(&r, 0)?,
                bytes: unsigned(&r, 1)?,
            });
        }
        Ok(points)
    }

    pub async fn usage_totals(&self, since_ms: i64) -> Result<Vec<UsageTotals>, StorageError> {
        let c = self.client().await?;
        rows(
            &c,
            "SELECT at_ms, used_bytes, stored_bytes, linked_bytes, blobs, manifests, namespaces
             FROM usage_totals WHERE at_ms >= $1 ORDER BY at_ms",
            &[&since_ms],
        )
        .await?
        .iter()
        .map(totals_row)
        .collect()
    }

    pub async fn latest_usage_totals(&self) -> Result<Option<UsageTotals>, StorageError> {
        let c = self.client().await?;
        match opt(
            &c,
            "SELECT at_ms, used_bytes, stored_bytes, linked_bytes, blobs, manifests, namespaces
             FROM usage_totals ORDER BY at_ms DESC LIMIT 1",
            &[],
        )
        .await?
        {
            Some(r) => Ok(Some(totals_row(&r)?)),
            None => Ok(None),
        }
    }

    pub async fn usage_sample_rows(&self) -> Result<u64, StorageError> {
        let c = self.client().await?;
        unsigned(
            &one(&c, "SELECT COUNT(*) FROM usage_samples", &[]).await?,
            0,
        )
    }
}
