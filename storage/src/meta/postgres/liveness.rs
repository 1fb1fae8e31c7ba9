//! GC's liveness rule on PostgreSQL, in one place, as the SQL both halves
//! of GC use (`sqlite/liveness.rs` states the rule; this is the same rule
//! in PostgreSQL's dialect). The plan applies it forward from the roots on
//! one snapshot; the checked deletions apply it backward to one item after
//! taking the locks its writers take (see `gc`).

use super::{exec, opt, Postgres};
use crate::{now_ms, StorageError};
use deadpool_postgres::GenericClient;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

/// The manifest row `m` is a root. Parameter `{cutoff}`: the manifest cutoff.
fn root(cutoff: &str) -> String {
    format!(
        "(GREATEST(m.pushed_ms, COALESCE((SELECT rel.released_ms FROM manifest_releases rel
                                           WHERE rel.repo_id = m.repo_id AND rel.digest = m.digest), 0)) >= {cutoff}
    OR EXISTS (SELECT 1 FROM tags t WHERE t.repo_id = m.repo_id AND t.digest = m.digest)
    OR EXISTS (SELECT 1 FROM pins p JOIN repositories pr ON pr.name = p.repository
               WHERE pr.id = m.repo_id AND p.digest = m.digest))"
    )
}

/// The two ways one manifest holds another: forward, from a living row
/// `l` to what it holds (one LATERAL term, since PostgreSQL allows the
/// recursive reference once), and backward, whether anything holds `m`.
const HOLDS_FORWARD: &str = "SELECT h.repo_id, h.digest FROM live l
    CROSS JOIN LATERAL (
        SELECT mr.repo_id, mr.child_digest AS digest FROM manifest_refs mr
        WHERE mr.repo_id = l.repo_id AND mr.manifest_digest = l.digest AND mr.kind = 'manifest'
        UNION ALL
        SELECT r.repo_id, r.digest FROM manifests r
        WHERE r.repo_id = l.repo_id AND r.subject = l.digest
    ) h";
const INDEX_HOLDS_BACKWARD: &str = "EXISTS (SELECT 1 FROM manifest_refs mr
    WHERE mr.repo_id = m.repo_id AND mr.child_digest = m.digest AND mr.kind = 'manifest')";
const SUBJECT_HOLDS_BACKWARD: &str = "EXISTS (SELECT 1 FROM manifests s
    WHERE s.repo_id = m.repo_id AND s.digest = m.subject)";

/// Marks every living manifest into `gc_live`. `$1`: manifest cutoff.
pub(super) static MARK_LIVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO gc_live (repo_id, digest)
         WITH RECURSIVE live(repo_id, digest) AS (
             SELECT m.repo_id, m.digest FROM manifests m WHERE {}
             UNION {HOLDS_FORWARD}
         )
         SELECT repo_id, digest FROM live",
        root("$1")
    )
});

/// The size of manifest (`$1` repo, `$2` digest) if it is still garbage;
/// `$3`: manifest cutoff.
pub(super) static MANIFEST_STILL_GARBAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT m.size FROM manifests m
         WHERE m.repo_id = $1 AND m.digest = $2
           AND NOT {} AND NOT {INDEX_HOLDS_BACKWARD} AND NOT {SUBJECT_HOLDS_BACKWARD}",
        root("$3")
    )
});

/// The link `rb` (with its blob `b`) is not needed. `survivor` narrows
/// which referencing manifests count (plan: not doomed; check: any).
fn link_unneeded(cutoff: &str, survivor: &str) -> String {
    format!(
        "rb.linked_ms < {cutoff} AND b.touched_ms < {cutoff}
         AND NOT EXISTS (SELECT 1 FROM manifest_refs mr
                         WHERE mr.repo_id = rb.repo_id AND mr.child_digest = rb.digest AND mr.kind = 'blob' {survivor})"
    )
}

/// Plans the links to remove into `gc_doomed_links`. `$1`: blob cutoff.
pub(super) static PLAN_LINKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO gc_doomed_links (repo_id, digest)
         SELECT rb.repo_id, rb.digest FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
         WHERE {}",
        link_unneeded(
            "$1",
            "AND NOT EXISTS (SELECT 1 FROM gc_doomed d WHERE d.repo_id = mr.repo_id AND d.digest = mr.manifest_digest)"
        )
    )
});

/// Whether link (`$1` repo, `$2` digest) is still unneeded; `$3`: cutoff.
pub(super) static LINK_STILL_GARBAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT 1 FROM repo_blobs rb JOIN blobs b ON b.digest = rb.digest
         WHERE rb.repo_id = $1 AND rb.digest = $2 AND {}",
        link_unneeded("$3", "")
    )
});

fn blob_unneeded(cutoff: &str, surviving_link: &str) -> String {
    format!(
        "b.touched_ms < {cutoff}
         AND NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest {surviving_link})"
    )
}

/// Plans the blobs to delete (after the planned links are gone).
pub(super) static PLAN_BLOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT b.digest, b.size FROM blobs b WHERE {} ORDER BY b.digest",
        blob_unneeded(
            "$1",
            "AND NOT EXISTS (SELECT 1 FROM gc_doomed_links l WHERE l.repo_id = rb.repo_id AND l.digest = rb.digest)"
        )
    )
});

/// Deletes blob row `$1` if it is still unneeded (`$2`: cutoff). The
/// DELETE locks the row first: a link or a mount that holds it (an upsert,
/// `FOR SHARE`) finishes first, and the conditions are then re-checked
/// against what it committed (a use restarts `touched_ms`, and the foreign
/// key from `repo_blobs` forbids deleting a linked blob in any case).
pub(super) static DELETE_BLOB_IF_GARBAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM blobs AS b WHERE b.digest = $1 AND {}",
        blob_unneeded("$2", "")
    )
});

/// Records a use of a blob: its grace period starts again.
pub(super) async fn record_blob_use(
    c: &impl GenericClient,
    digest: &str,
    now: i64,
) -> Result<(), StorageError> {
    exec(
        c,
        "UPDATE blobs SET touched_ms = $2 WHERE digest = $1",
        &[&digest, &now],
    )
    .await?;
    Ok(())
}

pub(super) async fn manifest_still_garbage(
    c: &impl GenericClient,
    repo_id: i64,
    digest: &str,
    manifest_cutoff: i64,
) -> Result<Option<u64>, StorageError> {
    Ok(
        match opt(
            c,
            &MANIFEST_STILL_GARBAGE,
            &[&repo_id, &digest, &manifest_cutoff],
        )
        .await?
        {
            Some(r) => Some(super::unsigned(&r, 0)?),
            None => None,
        },
    )
}

pub(super) async fn link_still_garbage(
    c: &impl GenericClient,
    repo_id: i64,
    digest: &str,
    blob_cutoff: i64,
) -> Result<bool, StorageError> {
    super::exists(c, &LINK_STILL_GARBAGE, &[&repo_id, &digest, &blob_cutoff]).await
}

pub(super) async fn delete_blob_if_garbage(
    c: &impl GenericClient,
    digest: &str,
    blob_cutoff: i64,
) -> Result<bool, StorageError> {
    Ok(exec(c, &DELETE_BLOB_IF_GARBAGE, &[&digest, &blob_cutoff]).await? > 0)
}

impl Postgres {
    /// See `sqlite/liveness.rs`: a quarter of the blob grace, 100 ms to 1 min.
    pub fn set_blob_grace(&self, grace: std::time::Duration) {
        let interval = (grace / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(60),
        );
        self.inner
            .touch_interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    pub async fn blob_used(
        &self,
        digest: &crate::Digest,
        last_used_ms: i64,
    ) -> Result<(), StorageError> {
        let interval = self.inner.touch_interval_ms.load(Ordering::Relaxed) as i64;
        if now_ms() - last_used_ms <= interval {
            return Ok(());
        }
        let digest = digest.to_string();
        let c = self.client().await?;
        record_blob_use(&c, &digest, now_ms()).await
    }
}
