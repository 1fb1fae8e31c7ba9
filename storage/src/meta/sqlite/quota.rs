//! The quota ledger: what each namespace uses and may use. Charges and
//! releases run inside the write transaction of the change they account
//! for (a blob link, a manifest insert, their removal), so the ledger and
//! the tables cannot disagree, and because writes are serialised no two
//! pushes can both take the last free bytes.

use super::Sqlite;
use crate::meta::types::*;
use crate::{now_ms, StorageError};
use rusqlite::{params, Connection, OptionalExtension};

struct Row {
    limit_bytes: Option<i64>,
    unlimited: bool,
    used: i64,
}

fn row(conn: &Connection, ns: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT limit_bytes, unlimited, used_bytes FROM namespaces WHERE name = ?1",
    )?
    .query_row([ns], |r| {
        Ok(Row {
            limit_bytes: r.get(0)?,
            unlimited: r.get::<_, i64>(1)? != 0,
            used: r.get(2)?,
        })
    })
    .optional()
}

use crate::meta::types::effective_limit;

pub(super) fn ensure_namespace(conn: &Connection, ns: &str, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO namespaces (name, updated_ms) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
    )?
    .execute(params![ns, now])?;
    Ok(())
}

/// Adds `delta` bytes to `ns`'s usage unless that would pass its limit.
pub(super) fn charge(
    conn: &Connection,
    policy: &QuotaPolicy,
    ns: &str,
    delta: u64,
) -> rusqlite::Result<Result<(), QuotaExceeded>> {
    if delta == 0 {
        return Ok(Ok(()));
    }
    let now = now_ms();
    ensure_namespace(conn, ns, now)?;
    let r = row(conn, ns)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    let used = r.used.max(0) as u64;
    if let (Some(limit), _) = effective_limit(policy, ns, r.limit_bytes, r.unlimited) {
        if used + delta > limit {
            return Ok(Err(QuotaExceeded {
                namespace: ns.to_owned(),
                used,
                limit,
                needed: delta,
                staged: 0,
            }));
        }
    }
    conn.prepare_cached(
        "UPDATE namespaces SET used_bytes = used_bytes + ?2, updated_ms = ?3 WHERE name = ?1",
    )?
    .execute(params![ns, delta as i64, now])?;
    if let (Some(alert), (Some(limit), _)) = (
        policy.alert_percent,
        effective_limit(policy, ns, r.limit_bytes, r.unlimited),
    ) {
        let percent = |bytes: u64| bytes as f64 * 100.0 / limit.max(1) as f64;
        let after = used + delta;
        if percent(used) < alert && percent(after) >= alert {
            super::events::record(
                conn,
                true,
                &crate::meta::types::NewEvent {
                    action: "quota".into(),
                    detail: Some(serde_json::json!({
                        "namespace": ns,
                        "used_bytes": after,
                        "limit_bytes": limit,
                        "percent": (percent(after) * 10.0).round() / 10.0,
                        "threshold_percent": alert,
                    })),
                    ..Default::default()
                },
            )?;
        }
    }
    Ok(Ok(()))
}

/// Gives `delta` bytes back to `ns`.
pub(super) fn release(conn: &Connection, ns: &str, delta: u64) -> rusqlite::Result<()> {
    if delta > 0 {
        conn.prepare_cached(
            "UPDATE namespaces SET used_bytes = MAX(0, used_bytes - ?2), updated_ms = ?3 WHERE name = ?1",
        )?
        .execute(params![ns, delta as i64, now_ms()])?;
    }
    Ok(())
}

/// Whether `ns` already holds `digest` in some repository.
pub(super) fn namespace_has_blob(
    conn: &Connection,
    ns: &str,
    digest: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM namespace_blobs WHERE namespace = ?1 AND digest = ?2")?
        .exists(params![ns, digest])
}

/// Counts one more repository of `ns` linking `digest`.
pub(super) fn count_link(conn: &Connection, ns: &str, digest: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO namespace_blobs (namespace, digest, repos) VALUES (?1, ?2, 1)
         ON CONFLICT (namespace, digest) DO UPDATE SET repos = repos + 1",
    )?
    .execute(params![ns, digest])?;
    Ok(())
}

/// Counts one repository fewer; returns true when it was the last one in
/// the namespace (so the blob's size is released).
pub(super) fn count_unlink(conn: &Connection, ns: &str, digest: &str) -> rusqlite::Result<bool> {
    let repos: Option<i64> = conn
        .prepare_cached("SELECT repos FROM namespace_blobs WHERE namespace = ?1 AND digest = ?2")?
        .query_row(params![ns, digest], |r| r.get(0))
        .optional()?;
    match repos {
        Some(n) if n > 1 => {
            conn.prepare_cached(
                "UPDATE namespace_blobs SET repos = repos - 1 WHERE namespace = ?1 AND digest = ?2",
            )?
            .execute(params![ns, digest])?;
            Ok(false)
        }
        Some(_) => {
            conn.prepare_cached(
                "DELETE FROM namespace_blobs WHERE namespace = ?1 AND digest = ?2",
            )?
            .execute(params![ns, digest])?;
            Ok(true)
        }
        None => Ok(false),
    }
}

pub(super) use crate::meta::types::quota_of;

impl Sqlite {
    /// Every namespace with its quota, largest usage first.
    pub async fn quota_list(&self) -> Result<Vec<NamespaceQuota>, StorageError> {
        let policy = self.quota_policy();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT n.name, n.limit_bytes, n.unlimited, n.used_bytes,
                        (SELECT COUNT(*) FROM repositories r WHERE r.namespace = n.name)
                 FROM namespaces n ORDER BY n.used_bytes DESC, n.name",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(quota_of(
                        &policy,
                        r.get(0)?,
                        r.get(1)?,
                        r.get::<_, i64>(2)? != 0,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// One namespace's quota (`None` if the registry has never seen it).
    pub async fn quota(&self, ns: &str) -> Result<Option<NamespaceQuota>, StorageError> {
        let policy = self.quota_policy();
        let ns = ns.to_owned();
        self.read(move |c| {
            let Some(r) = row(c, &ns)? else {
                return Ok(None);
            };
            let repos: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM repositories WHERE namespace = ?1")?
                .query_row([&ns], |x| x.get(0))?;
            Ok(Some(quota_of(
                &policy,
                ns,
                r.limit_bytes,
                r.unlimited,
                r.used,
                repos,
            )))
        })
        .await
    }

    /// One namespace's quota with its per-repository breakdown and its
    /// `top` largest images.
    pub async fn quota_detail(
        &self,
        ns: &str,
        top: u32,
    ) -> Result<Option<NamespaceDetail>, StorageError> {
        let Some(quota) = self.quota(ns).await? else {
            return Ok(None);
        };
        let ns = ns.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT r.name,
                        COALESCE(SUM(CASE WHEN nb.repos = 1 THEN b.size ELSE 0 END), 0),
                        COALESCE(SUM(CASE WHEN nb.repos > 1 THEN b.size ELSE 0 END), 0),
                        (SELECT COALESCE(SUM(m.size), 0) FROM manifests m WHERE m.repo_id = r.id),
                        (SELECT COUNT(*) FROM manifests m WHERE m.repo_id = r.id),
                        (SELECT COUNT(*) FROM tags t WHERE t.repo_id = r.id)
                 FROM repositories r
                 LEFT JOIN repo_blobs rb ON rb.repo_id = r.id
                 LEFT JOIN blobs b ON b.digest = rb.digest
                 LEFT JOIN namespace_blobs nb ON nb.namespace = r.namespace AND nb.digest = rb.digest
                 WHERE r.namespace = ?1
                 GROUP BY r.id ORDER BY 2 + 3 DESC, r.name",
            )?;
            let mut usage = stmt
                .query_map([&ns], |r| {
                    Ok(RepositoryUsage {
                        repository: r.get(0)?,
                        unique_bytes: (r.get::<_, i64>(1)? + r.get::<_, i64>(3)?) as u64,
                        shared_bytes: r.get::<_, i64>(2)? as u64,
                        manifests: r.get::<_, i64>(4)? as u64,
                        tags: r.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            usage.sort_by_key(|u| std::cmp::Reverse(u.unique_bytes + u.shared_bytes));
            let mut stmt = c.prepare_cached(
                "SELECT r.name, m.digest,
                        m.size + COALESCE((SELECT SUM(b.size) FROM manifest_refs mr JOIN blobs b ON b.digest = mr.child_digest
                                           WHERE mr.repo_id = m.repo_id AND mr.manifest_digest = m.digest AND mr.kind = 'blob'), 0) AS total,
                        (SELECT group_concat(t.name, ',') FROM tags t WHERE t.repo_id = m.repo_id AND t.digest = m.digest)
                 FROM manifests m JOIN repositories r ON r.id = m.repo_id
                 WHERE r.namespace = ?1 ORDER BY total DESC, m.digest LIMIT ?2",
            )?;
            let largest = stmt
                .query_map(params![ns, top], |r| {
                    let tags: Option<String> = r.get(3)?;
                    Ok(ImageSize {
                        repository: r.get(0)?,
                        digest: r.get(1)?,
                        bytes: r.get::<_, i64>(2)? as u64,
                        tags: tags.map(|t| t.split(',').map(str::to_owned).collect()).unwrap_or_default(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(NamespaceDetail { quota, repositories_usage: usage, largest_images: largest }))
        })
        .await
    }

    /// Sets or clears `ns`'s limit; takes effect for the next write.
    pub async fn set_quota_limit(
        &self,
        ns: &str,
        setting: LimitSetting,
    ) -> Result<NamespaceQuota, StorageError> {
        let name = ns.to_owned();
        self.write(move |tx| {
            let now = now_ms();
            ensure_namespace(tx, &name, now)?;
            let (limit, unlimited): (Option<i64>, i64) = match setting {
                LimitSetting::Default => (None, 0),
                LimitSetting::Bytes(b) => (Some(b as i64), 0),
                LimitSetting::Unlimited => (None, 1),
            };
            tx.prepare_cached("UPDATE namespaces SET limit_bytes = ?2, unlimited = ?3, updated_ms = ?4 WHERE name = ?1")?
                .execute(params![name, limit, unlimited, now])?;
            Ok(())
        })
        .await?;
        // The row was just written; if it is gone (deleted meanwhile),
        // that is an error to report, not a reason to panic.
        self.quota(ns).await?.ok_or_else(|| {
            StorageError::Internal(format!("namespace {ns} vanished while its limit was set"))
        })
    }

    /// Recomputes every namespace's usage from the tables and fixes the
    /// ledger where it drifted; returns what it fixed. Drift is found on a
    /// read snapshot (the ledger changes in the same transactions as the
    /// data, so a snapshot comparison is exact); only drifted namespaces
    /// are then recomputed, each in a short write transaction, so pushes
    /// never wait behind a whole-registry recount.
    pub async fn reconcile_quota(&self) -> Result<Vec<Drift>, StorageError> {
        let suspects = self
            .read(|c| {
                c.execute("BEGIN", [])?;
                let result = (|| {
                    let mut stmt = c.prepare(
                        "WITH ns AS (SELECT DISTINCT namespace AS name FROM repositories UNION SELECT name FROM namespaces),
                              blob_use AS (SELECT x.namespace, SUM(b.size) AS bytes
                                           FROM (SELECT DISTINCT r.namespace, rb.digest FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id) x
                                           JOIN blobs b ON b.digest = x.digest GROUP BY x.namespace),
                              manifest_use AS (SELECT r.namespace, SUM(m.size) AS bytes FROM manifests m
                                               JOIN repositories r ON r.id = m.repo_id GROUP BY r.namespace)
                         SELECT ns.name, COALESCE(n.used_bytes, -1),
                                COALESCE((SELECT bytes FROM blob_use WHERE blob_use.namespace = ns.name), 0)
                              + COALESCE((SELECT bytes FROM manifest_use WHERE manifest_use.namespace = ns.name), 0)
                         FROM ns LEFT JOIN namespaces n ON n.name = ns.name",
                    )?;
                    let rows = stmt
                        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    // Blob counts per namespace that disagree with the links.
                    let mut stmt = c.prepare(
                        "SELECT DISTINCT namespace FROM (
                            SELECT r.namespace, rb.digest, COUNT(*) AS n FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                            GROUP BY r.namespace, rb.digest
                            EXCEPT SELECT namespace, digest, repos FROM namespace_blobs
                            UNION ALL
                            SELECT * FROM (SELECT namespace, digest, repos FROM namespace_blobs
                            EXCEPT SELECT r.namespace, rb.digest, COUNT(*) FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                            GROUP BY r.namespace, rb.digest))",
                    )?;
                    let counts = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
                    Ok::<_, rusqlite::Error>((rows, counts))
                })();
                c.execute("COMMIT", [])?;
                let (rows, counts) = result?;
                let mut suspects: std::collections::BTreeSet<String> =
                    rows.into_iter().filter(|(_, recorded, actual)| recorded != actual).map(|(n, _, _)| n).collect();
                suspects.extend(counts);
                Ok(suspects)
            })
            .await?;
        let mut drifts = Vec::new();
        for ns in suspects {
            let fixed = self
                .write(move |tx| {
                    let now = now_ms();
                    ensure_namespace(tx, &ns, now)?;
                    tx.execute("DELETE FROM namespace_blobs WHERE namespace = ?1", [&ns])?;
                    tx.execute(
                        "INSERT INTO namespace_blobs (namespace, digest, repos)
                         SELECT r.namespace, rb.digest, COUNT(*) FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                         WHERE r.namespace = ?1 GROUP BY r.namespace, rb.digest",
                        [&ns],
                    )?;
                    let recorded: i64 = tx.query_row("SELECT used_bytes FROM namespaces WHERE name = ?1", [&ns], |r| r.get(0))?;
                    let actual: i64 = tx.query_row(
                        "SELECT COALESCE((SELECT SUM(b.size) FROM namespace_blobs nb JOIN blobs b ON b.digest = nb.digest WHERE nb.namespace = ?1), 0)
                              + COALESCE((SELECT SUM(m.size) FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE r.namespace = ?1), 0)",
                        [&ns],
                        |r| r.get(0),
                    )?;
                    if recorded == actual {
                        return Ok(None);
                    }
                    tx.execute("UPDATE namespaces SET used_bytes = ?2, updated_ms = ?3 WHERE name = ?1", params![ns, actual, now])?;
                    Ok(Some(Drift { namespace: ns, recorded_bytes: recorded.max(0) as u64, actual_bytes: actual.max(0) as u64 }))
                })
                .await?;
            drifts.extend(fixed);
        }
        Ok(drifts)
    }

    /// Bytes `ns` may still take, `None` when unlimited (for refusing an
    /// upload early; the binding check happens when the blob is linked).
    /// A primary-key lookup on every blob upload, so a point read.
    pub async fn quota_available(&self, ns: &str) -> Result<Option<u64>, StorageError> {
        let policy = self.quota_policy();
        let ns = ns.to_owned();
        self.read_point(move |c| {
            let (limit_bytes, unlimited, used) = match row(c, &ns)? {
                Some(r) => (r.limit_bytes, r.unlimited, r.used.max(0) as u64),
                None => (None, false, 0),
            };
            Ok(effective_limit(&policy, &ns, limit_bytes, unlimited)
                .0
                .map(|l| l.saturating_sub(used)))
        })
        .await
    }

    /// Whether `ns` already holds `digest` (a re-upload costs nothing).
    pub async fn namespace_holds_blob(&self, ns: &str, digest: &str) -> Result<bool, StorageError> {
        let (ns, digest) = (ns.to_owned(), digest.to_owned());
        self.read_point(move |c| Ok(namespace_has_blob(c, &ns, &digest)?))
            .await
    }
}
