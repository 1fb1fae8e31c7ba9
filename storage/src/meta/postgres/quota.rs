//! The quota ledger on PostgreSQL (`sqlite/quota.rs` is the reference).
//! Charges and releases run inside the write transaction of the change
//! they account for, after `lock_namespace` has locked the namespace's row:
//! concurrent pushes into one namespace, from any replica, take turns at
//! the ledger, so no two of them can both take the last free bytes.

use super::{big, col, exec, one, opt, rows, snapshot, transaction, Postgres};
use crate::meta::types::*;
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;

/// A namespace row, as read under its lock.
pub(super) struct Row {
    limit_bytes: Option<i64>,
    unlimited: bool,
    used: i64,
}

async fn row(c: &impl GenericClient, ns: &str) -> Result<Option<Row>, StorageError> {
    let Some(r) = opt(
        c,
        "SELECT limit_bytes, unlimited, used_bytes FROM namespaces WHERE name = $1",
        &[&ns],
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Row {
        limit_bytes: col(&r, 0)?,
        unlimited: col(&r, 1)?,
        used: col(&r, 2)?,
    }))
}

pub(super) async fn ensure_namespace(
    c: &impl GenericClient,
    ns: &str,
    now: i64,
) -> Result<(), StorageError> {
    exec(
        c,
        "INSERT INTO namespaces (name, updated_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&ns, &now],
    )
    .await?;
    Ok(())
}

/// Creates `ns`'s row if needed and locks it until the transaction ends:
/// every write that reads a namespace's links, manifests or ledger and
/// then changes them holds this lock first.
pub(super) async fn lock_namespace(c: &impl GenericClient, ns: &str) -> Result<(), StorageError> {
    ensure_namespace(c, ns, now_ms()).await?;
    exec(
        c,
        "SELECT 1 FROM namespaces WHERE name = $1 FOR UPDATE",
        &[&ns],
    )
    .await?;
    Ok(())
}

/// Locks several namespaces, in name order (every multi-namespace writer
/// uses this order, so none waits on another in a cycle).
pub(super) async fn lock_namespaces<'a>(
    c: &impl GenericClient,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), StorageError> {
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    for ns in names {
        lock_namespace(c, ns).await?;
    }
    Ok(())
}

/// Adds `delta` bytes to `ns`'s usage unless that would pass its limit.
/// The caller holds `ns`'s lock.
pub(super) async fn charge(
    c: &impl GenericClient,
    policy: &QuotaPolicy,
    ns: &str,
    delta: u64,
) -> Result<Result<(), QuotaExceeded>, StorageError> {
    if delta == 0 {
        return Ok(Ok(()));
    }
    let now = now_ms();
    ensure_namespace(c, ns, now).await?;
    let r = row(c, ns)
        .await?
        .ok_or_else(|| StorageError::Internal(format!("namespace {ns} has no row")))?;
    let used = r.used.max(0) as u64;
    let limit = effective_limit(policy, ns, r.limit_bytes, r.unlimited).0;
    if let Some(limit) = limit {
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
    exec(
        c,
        "UPDATE namespaces SET used_bytes = used_bytes + $2, updated_ms = $3 WHERE name = $1",
        &[&ns, &big(delta), &now],
    )
    .await?;
    if let (Some(alert), Some(limit)) = (policy.alert_percent, limit) {
        let percent = |bytes: u64| bytes as f64 * 100.0 / limit.max(1) as f64;
        let after = used + delta;
        if percent(used) < alert && percent(after) >= alert {
            // The policy asks for alerts only with notifications on.
            super::events::record(
                c,
                true,
                &NewEvent {
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
            )
            .await?;
        }
    }
    Ok(Ok(()))
}

/// Gives `delta` bytes back to `ns`.
pub(super) async fn release(
    c: &impl GenericClient,
    ns: &str,
    delta: u64,
) -> Result<(), StorageError> {
    if delta > 0 {
        exec(
            c,
            "UPDATE namespaces SET used_bytes = GREATEST(0, used_bytes - $2), updated_ms = $3 WHERE name = $1",
            &[&ns, &big(delta), &now_ms()],
        )
        .await?;
    }
    Ok(())
}

/// Whether `ns` already holds `digest` in some repository.
pub(super) async fn namespace_has_blob(
    c: &impl GenericClient,
    ns: &str,
    digest: &str,
) -> Result<bool, StorageError> {
    super::exists(
        c,
        "SELECT 1 FROM namespace_blobs WHERE namespace = $1 AND digest = $2",
        &[&ns, &digest],
    )
    .await
}

/// Counts one more repository of `ns` linking `digest`.
pub(super) async fn count_link(
    c: &impl GenericClient,
    ns: &str,
    digest: &str,
) -> Result<(), StorageError> {
    exec(
        c,
        "INSERT INTO namespace_blobs (namespace, digest, repos) VALUES ($1, $2, 1)
         ON CONFLICT (namespace, digest) DO UPDATE SET repos = namespace_blobs.repos + 1",
        &[&ns, &digest],
    )
    .await?;
    Ok(())
}

/// Counts one repository fewer; true when it was the last one in the
/// namespace (so the blob's size is released).
pub(super) async fn count_unlink(
    c: &impl GenericClient,
    ns: &str,
    digest: &str,
) -> Result<bool, StorageError> {
    let repos: Option<i64> = match opt(
        c,
        "SELECT repos FROM namespace_blobs WHERE namespace = $1 AND digest = $2",
        &[&ns, &digest],
    )
    .await?
    {
        Some(r) => Some(col(&r, 0)?),
        None => None,
    };
    match repos {
        Some(n) if n > 1 => {
            exec(
                c,
                "UPDATE namespace_blobs SET repos = repos - 1 WHERE namespace = $1 AND digest = $2",
                &[&ns, &digest],
            )
            .await?;
            Ok(false)
        }
        Some(_) => {
            exec(
                c,
                "DELETE FROM namespace_blobs WHERE namespace = $1 AND digest = $2",
                &[&ns, &digest],
            )
            .await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

pub(super) fn quota_row(
    policy: &QuotaPolicy,
    r: &tokio_postgres::Row,
) -> Result<NamespaceQuota, StorageError> {
    Ok(quota_of(
        policy,
        col(r, 0)?,
        col(r, 1)?,
        col(r, 2)?,
        col(r, 3)?,
        col(r, 4)?,
    ))
}

impl Postgres {
    pub async fn quota_list(&self) -> Result<Vec<NamespaceQuota>, StorageError> {
        let policy = self.quota_policy();
        let c = self.client().await?;
        rows(
            &c,
            "SELECT n.name, n.limit_bytes, n.unlimited, n.used_bytes,
                    (SELECT COUNT(*) FROM repositories r WHERE r.namespace = n.name)
             FROM namespaces n ORDER BY n.used_bytes DESC, n.name",
            &[],
        )
        .await?
        .iter()
        .map(|r| quota_row(&policy, r))
        .collect()
    }

    pub async fn quota(&self, ns: &str) -> Result<Option<NamespaceQuota>, StorageError> {
        let policy = self.quota_policy();
        let c = self.client().await?;
        Ok(
            match opt(
                &c,
                "SELECT n.name, n.limit_bytes, n.unlimited, n.used_bytes,
                    (SELECT COUNT(*) FROM repositories r WHERE r.namespace = n.name)
             FROM namespaces n WHERE n.name = $1",
                &[&ns],
            )
            .await?
            {
                Some(r) => Some(quota_row(&policy, &r)?),
                None => None,
            },
        )
    }

    pub async fn quota_detail(
        &self,
        ns: &str,
        top: u32,
    ) -> Result<Option<NamespaceDetail>, StorageError> {
        let Some(quota) = self.quota(ns).await? else {
            return Ok(None);
        };
        let c = self.client().await?;
        let mut usage = Vec::new();
        for r in rows(
            &c,
            "SELECT r.name,
                    COALESCE(SUM(CASE WHEN nb.repos = 1 THEN b.size ELSE 0 END), 0)::bigint,
                    COALESCE(SUM(CASE WHEN nb.repos > 1 THEN b.size ELSE 0 END), 0)::bigint,
                    (SELECT COALESCE(SUM(m.size), 0)::bigint FROM manifests m WHERE m.repo_id = r.id),
                    (SELECT COUNT(*) FROM manifests m WHERE m.repo_id = r.id),
                    (SELECT COUNT(*) FROM tags t WHERE t.repo_id = r.id)
             FROM repositories r
             LEFT JOIN repo_blobs rb ON rb.repo_id = r.id
             LEFT JOIN blobs b ON b.digest = rb.digest
             LEFT JOIN namespace_blobs nb ON nb.namespace = r.namespace AND nb.digest = rb.digest
             WHERE r.namespace = $1
             GROUP BY r.id ORDER BY r.name",
            &[&ns],
        )
        .await?
        {
            usage.push(RepositoryUsage {
                repository: col(&r, 0)?,
                unique_bytes: (col::<i64>(&r, 1)? + col::<i64>(&r, 3)?).max(0) as u64,
                shared_bytes: super::unsigned(&r, 2)?,
                manifests: super::unsigned(&r, 4)?,
                tags: super::unsigned(&r, 5)?,
            });
        }
        usage.sort_by_key(|u| std::cmp::Reverse(u.unique_bytes + u.shared_bytes));
        let mut largest = Vec::new();
        for r in rows(
            &c,
            "SELECT r.name, m.digest,
                    m.size + COALESCE((SELECT SUM(b.size) FROM manifest_refs mr JOIN blobs b ON b.digest = mr.child_digest
                                       WHERE mr.repo_id = m.repo_id AND mr.manifest_digest = m.digest AND mr.kind = 'blob'), 0)::bigint AS total,
                    (SELECT string_agg(t.name, ',' ORDER BY t.name) FROM tags t WHERE t.repo_id = m.repo_id AND t.digest = m.digest)
             FROM manifests m JOIN repositories r ON r.id = m.repo_id
             WHERE r.namespace = $1 ORDER BY total DESC, m.digest LIMIT $2",
            &[&ns, &i64::from(top)],
        )
        .await?
        {
            let tags: Option<String> = col(&r, 3)?;
            largest.push(ImageSize {
                repository: col(&r, 0)?,
                digest: col(&r, 1)?,
                bytes: super::unsigned(&r, 2)?,
                tags: tags
                    .map(|t| t.split(',').map(str::to_owned).collect())
                    .unwrap_or_default(),
            });
        }
        Ok(Some(NamespaceDetail {
            quota,
            repositories_usage: usage,
            largest_images: largest,
        }))
    }

    pub async fn set_quota_limit(
        &self,
        ns: &str,
        setting: LimitSetting,
    ) -> Result<NamespaceQuota, StorageError> {
        let (limit, unlimited): (Option<i64>, bool) = match setting {
            LimitSetting::Default => (None, false),
            LimitSetting::Bytes(b) => (Some(big(b)), false),
            LimitSetting::Unlimited => (None, true),
        };
        transaction!(self, |tx| {
            let now = now_ms();
            ensure_namespace(&tx, ns, now).await?;
            exec(
                &tx,
                "UPDATE namespaces SET limit_bytes = $2, unlimited = $3, updated_ms = $4 WHERE name = $1",
                &[&ns, &limit, &unlimited, &now],
            )
            .await?;
            super::shared::notify(&tx, "quota").await?;
            Ok(())
        })?;
        self.quota(ns).await?.ok_or_else(|| {
            StorageError::Internal(format!("namespace {ns} vanished while its limit was set"))
        })
    }

    /// Finds drift on one snapshot, then recomputes each drifted namespace
    /// under its lock (so no push into it interleaves with the recount).
    pub async fn reconcile_quota(&self) -> Result<Vec<Drift>, StorageError> {
        let suspects = snapshot!(self, |tx| {
            let recorded = rows(
                &tx,
                "WITH ns AS (SELECT DISTINCT namespace AS name FROM repositories UNION SELECT name FROM namespaces),
                      blob_use AS (SELECT x.namespace, SUM(b.size)::bigint AS bytes
                                   FROM (SELECT DISTINCT r.namespace, rb.digest FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id) x
                                   JOIN blobs b ON b.digest = x.digest GROUP BY x.namespace),
                      manifest_use AS (SELECT r.namespace, SUM(m.size)::bigint AS bytes FROM manifests m
                                       JOIN repositories r ON r.id = m.repo_id GROUP BY r.namespace)
                 SELECT ns.name, COALESCE(n.used_bytes, -1),
                        COALESCE((SELECT bytes FROM blob_use WHERE blob_use.namespace = ns.name), 0)
                      + COALESCE((SELECT bytes FROM manifest_use WHERE manifest_use.namespace = ns.name), 0)
                 FROM ns LEFT JOIN namespaces n ON n.name = ns.name",
                &[],
            )
            .await?;
            let counts = rows(
                &tx,
                "SELECT DISTINCT namespace FROM (
                    (SELECT r.namespace, rb.digest, COUNT(*) AS n FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                     GROUP BY r.namespace, rb.digest
                     EXCEPT SELECT namespace, digest, repos FROM namespace_blobs)
                    UNION ALL
                    (SELECT namespace, digest, repos FROM namespace_blobs
                     EXCEPT SELECT r.namespace, rb.digest, COUNT(*) FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                     GROUP BY r.namespace, rb.digest)) d",
                &[],
            )
            .await?;
            let mut suspects = std::collections::BTreeSet::new();
            for r in &recorded {
                if col::<i64>(r, 1)? != col::<i64>(r, 2)? {
                    suspects.insert(col::<String>(r, 0)?);
                }
            }
            for r in &counts {
                suspects.insert(col::<String>(r, 0)?);
            }
            Ok(suspects)
        })?;
        let mut drifts = Vec::new();
        for ns in suspects {
            let fixed = transaction!(self, |tx| {
                let now = now_ms();
                lock_namespace(&tx, &ns).await?;
                exec(
                    &tx,
                    "DELETE FROM namespace_blobs WHERE namespace = $1",
                    &[&ns],
                )
                .await?;
                exec(
                    &tx,
                    "INSERT INTO namespace_blobs (namespace, digest, repos)
                     SELECT r.namespace, rb.digest, COUNT(*) FROM repo_blobs rb JOIN repositories r ON r.id = rb.repo_id
                     WHERE r.namespace = $1 GROUP BY r.namespace, rb.digest",
                    &[&ns],
                )
                .await?;
                let recorded: i64 = col(
                    &one(
                        &tx,
                        "SELECT used_bytes FROM namespaces WHERE name = $1",
                        &[&ns],
                    )
                    .await?,
                    0,
                )?;
                let actual: i64 = col(
                    &one(
                        &tx,
                        "SELECT COALESCE((SELECT SUM(b.size) FROM namespace_blobs nb JOIN blobs b ON b.digest = nb.digest WHERE nb.namespace = $1), 0)::bigint
                              + COALESCE((SELECT SUM(m.size) FROM manifests m JOIN repositories r ON r.id = m.repo_id WHERE r.namespace = $1), 0)::bigint",
                        &[&ns],
                    )
                    .await?,
                    0,
                )?;
                if recorded == actual {
                    return Ok(None);
                }
                exec(
                    &tx,
                    "UPDATE namespaces SET used_bytes = $2, updated_ms = $3 WHERE name = $1",
                    &[&ns, &actual, &now],
                )
                .await?;
                Ok(Some(Drift {
                    namespace: ns.clone(),
                    recorded_bytes: recorded.max(0) as u64,
                    actual_bytes: actual.max(0) as u64,
                }))
            })?;
            drifts.extend(fixed);
        }
        Ok(drifts)
    }

    pub async fn quota_available(&self, ns: &str) -> Result<Option<u64>, StorageError> {
        let policy = self.quota_policy();
        let c = self.client().await?;
        let (limit_bytes, unlimited, used) = match row(&c, ns).await? {
            Some(r) => (r.limit_bytes, r.unlimited, r.used.max(0) as u64),
            None => (None, false, 0),
        };
        Ok(effective_limit(&policy, ns, limit_bytes, unlimited)
            .0
            .map(|l| l.saturating_sub(used)))
    }

    pub async fn namespace_holds_blob(&self, ns: &str, digest: &str) -> Result<bool, StorageError> {
        let c = self.client().await?;
        namespace_has_blob(&c, ns, digest).await
    }
}
