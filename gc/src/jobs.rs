//! The two jobs. Each plans from a read snapshot, then (unless dry) deletes
//! in small batches, every item re-checked in the deleting transaction, so
//! pushes keep flowing and a push that raced the plan always wins.

use crate::report::{RemovedItem, RemovedTag, RunReport};
use crate::retention::RetentionPolicy;
use crate::GcConfig;
use berth_storage::meta::TagRow;
use berth_storage::{now_ms, Storage, StorageError};
use std::collections::BTreeMap;

/// Items per write transaction: small enough that a push waiting for the
/// writer waits milliseconds, large enough to amortise the commit. A
/// manifest costs several statements (its references go with it), so its
/// batches are smaller.
const BATCH: usize = 256;
const MANIFEST_BATCH: usize = 64;

/// Records how long a phase took, for the report (and for operators
/// wondering where a slow run spent its time).
struct Phases {
    at: std::time::Instant,
}

impl Phases {
    fn start() -> Phases {
        Phases {
            at: std::time::Instant::now(),
        }
    }

    /// Adds the time since the last mark to `phase`: a phase marked
    /// several times (tag cleanup's, page by page) adds up.
    fn mark(&mut self, report: &mut RunReport, phase: &str) {
        *report.phases_ms.entry(phase.to_owned()).or_default() +=
            self.at.elapsed().as_millis() as u64;
        self.at = std::time::Instant::now();
    }
}

/// Repositories whose tags cleanup reads at a time: the whole registry's
/// tags (900,000 at platform scale) never sit in memory at once.
const TAG_PAGE_REPOSITORIES: u32 = 256;

/// Tag cleanup: applies each namespace's retention policy to every
/// repository, a page of repositories at a time.
pub async fn tag_cleanup(
    storage: &Storage,
    config: &GcConfig,
    report: &mut RunReport,
) -> Result<(), StorageError> {
    let now = now_ms();
    let mut phases = Phases::start();
    let overrides = storage.meta.retention_overrides().await?;
    // `None`: the namespace's override is bad, so it is skipped (a bad
    // override must not make cleanup remove more); said once.
    let mut policies: BTreeMap<String, Option<RetentionPolicy>> = BTreeMap::new();
    let mut after_repo_id = 0;
    loop {
        let tags = storage
            .meta
            .gc_tags(None, after_repo_id, TAG_PAGE_REPOSITORIES)
            .await?;
        phases.mark(report, "read");
        let Some(last) = tags.last() else { break };
        after_repo_id = last.repo_id;
        let mut doomed: Vec<TagRow> = Vec::new();
        for repo in tags.chunk_by(|a, b| a.repo_id == b.repo_id) {
            let ns = &repo[0].namespace;
            let policy = policies
                .entry(ns.clone())
                .or_insert_with(|| match overrides.get(ns) {
                    Some(o) => match config.retention.with_override(o) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            report.errors.push(format!("{ns}: {e}; namespace skipped"));
                            None
                        }
                    },
                    None => Some(config.retention.clone()),
                });
            if let Some(policy) = policy {
                doomed.extend(policy.select(repo, now).into_iter().cloned());
            }
        }
        phases.mark(report, "select");
        let removed = if report.dry_run {
            doomed
        } else {
            let mut removed = Vec::new();
            for batch in doomed.chunks(BATCH) {
                removed.extend(storage.meta.delete_tags_checked(batch.to_vec()).await?);
            }
            removed
        };
        report.tags_removed += removed.len();
        for t in removed {
            report.removed.add_tag(RemovedTag {
                repository: t.repository,
                tag: t.tag,
                digest: t.digest,
            });
        }
        phases.mark(report, "delete");
    }
    Ok(())
}

fn item(repository: &str, digest: &str, size: u64) -> RemovedItem {
    RemovedItem {
        repository: repository.to_owned(),
        digest: digest.to_owned(),
        size,
    }
}

/// Untagged GC, blob sweep, orphan objects, upload expiry and a quota
/// reconcile pass.
pub async fn untagged(
    storage: &Storage,
    config: &GcConfig,
    report: &mut RunReport,
) -> Result<(), StorageError> {
    let now = now_ms();
    let manifest_cutoff = now - config.untagged_grace.as_millis() as i64;
    let blob_cutoff = now - config.blob_grace.as_millis() as i64;
    let mut phases = Phases::start();
    let plan = storage.meta.gc_plan(manifest_cutoff, blob_cutoff).await?;
    phases.mark(report, "plan");

    if report.dry_run {
        report.manifests_removed = plan.manifests.len();
        report.blob_links_removed = plan.links.len();
        report.blobs_removed = plan.blobs.len();
        report.freed_per_namespace = plan.freed_per_namespace.clone();
        for m in &plan.manifests {
            report
                .removed
                .add_manifest(item(&m.repository, &m.digest, m.size));
        }
        for l in &plan.links {
            report
                .removed
                .add_blob_link(item(&l.repository, &l.digest, l.size));
        }
        for b in &plan.blobs {
            report.removed.add_blob(item("", &b.digest, b.size));
        }
        let orphans = storage.sweep_orphans(blob_cutoff, true).await?;
        report.orphan_objects_removed = orphans.len();
        report.bytes_freed = plan.blobs.iter().map(|b| b.size).sum::<u64>()
            + orphans.iter().map(|o| o.size).sum::<u64>();
        for o in &orphans {
            report
                .removed
                .add_orphan_object(item("", &o.digest, o.size));
        }
        report.uploads_expired = 0;
        return Ok(());
    }

    // The quota reconcile is a read of one snapshot (ledger and data change
    // in the same transactions, so any snapshot is consistent): it runs on
    // a reader alongside the deletions, which hold the writer.
    let reconcile = {
        let meta = storage.meta.clone();
        tokio::spawn(async move { meta.reconcile_quota().await })
    };
    let deleted = delete_planned(
        storage,
        report,
        plan,
        manifest_cutoff,
        blob_cutoff,
        &mut phases,
    )
    .await;
    let drift = reconcile
        .await
        .map_err(|e| StorageError::Internal(format!("reconcile task failed: {e}")))?;
    deleted?;
    let drift = drift?;
    if !drift.is_empty() {
        tracing::warn!(namespaces = drift.len(), "quota reconcile fixed drift");
        report.quota_drift_fixed = drift.len();
    }
    phases.mark(report, "reconcile_wait");
    Ok(())
}

/// The real run's deletions, in order: manifests, blob links, blobs,
/// orphan objects, expired uploads.
async fn delete_planned(
    storage: &Storage,
    report: &mut RunReport,
    plan: berth_storage::meta::GcPlan,
    manifest_cutoff: i64,
    blob_cutoff: i64,
    phases: &mut Phases,
) -> Result<(), StorageError> {
    // 1. Manifests, in batches; an index's children and a subject's
    // referrers may sit in a later batch than their parent, so what a
    // batch skipped gets retried until nothing more goes.
    let mut freed: BTreeMap<String, u64> = BTreeMap::new();
    // Each list goes as soon as its phase is done.
    let berth_storage::meta::GcPlan {
        manifests: mut pending,
        links,
        blobs,
        ..
    } = plan;
    loop {
        let before = pending.len();
        let mut skipped = Vec::new();
        for batch in pending.chunks(MANIFEST_BATCH) {
            let deleted = storage
                .meta
                .delete_manifests_checked(batch.to_vec(), manifest_cutoff)
                .await?;
            let gone: std::collections::HashSet<(i64, &str)> = deleted
                .iter()
                .map(|m| (m.repo_id, m.digest.as_str()))
                .collect();
            skipped.extend(
                batch
                    .iter()
                    .filter(|m| !gone.contains(&(m.repo_id, m.digest.as_str())))
                    .cloned(),
            );
            report.manifests_removed += deleted.len();
            for m in &deleted {
                *freed.entry(m.namespace.to_string()).or_default() += m.size;
                report
                    .removed
                    .add_manifest(item(&m.repository, &m.digest, m.size));
            }
        }
        pending = skipped;
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    phases.mark(report, "manifests");

    // 2. Blob links nothing needs any more (the plan already counted the
    // links of the manifests just deleted).
    for batch in links.chunks(BATCH) {
        let (deleted, released) = storage
            .meta
            .delete_links_checked(batch.to_vec(), blob_cutoff)
            .await?;
        for (ns, bytes) in released {
            *freed.entry(ns).or_default() += bytes;
        }
        report.blob_links_removed += deleted.len();
        for l in &deleted {
            report
                .removed
                .add_blob_link(item(&l.repository, &l.digest, l.size));
        }
    }
    report.freed_per_namespace = freed;
    phases.mark(report, "blob_links");

    drop(links);

    // 3. Blobs linked nowhere: rows, then objects, under the blob locks.
    for batch in blobs.chunks(BATCH) {
        let deleted = storage.delete_blobs(batch.to_vec(), blob_cutoff).await?;
        report.bytes_freed += deleted.iter().map(|b| b.size).sum::<u64>();
        report.blobs_removed += deleted.len();
        for b in &deleted {
            report.removed.add_blob(item("", &b.digest, b.size));
        }
    }
    phases.mark(report, "blobs");

    // 4. Objects without rows (a crash between row and object deletion,
    // or an upload refused after its object was stored).
    let orphans = storage.sweep_orphans(blob_cutoff, false).await?;
    report.orphan_objects_removed = orphans.len();
    report.bytes_freed += orphans.iter().map(|o| o.size).sum::<u64>();
    for o in &orphans {
        report
            .removed
            .add_orphan_object(item("", &o.digest, o.size));
    }
    phases.mark(report, "orphans");

    // 5. Abandoned uploads (also expired every minute by the uploads'
    // own sweeper; this pass reports them with the run).
    report.uploads_expired = storage.uploads.expire_idle().await;

    Ok(())
}
