//! GC's liveness rule, in one place, as the SQL both halves of GC use.
//!
//! A manifest **lives** if it is a *root* — tagged, pinned, or pushed or
//! released (lost a tag) within the untagged grace period — or if a living
//! manifest *holds* it: an index holds the manifests it lists, a subject
//! holds its referrers. A **blob link** is needed while a surviving manifest
//! of its repository references the blob, or while it was linked or the
//! blob used within the blob grace period. A **blob** is needed while any
//! needed link names it, or while it was used within the blob grace period.
//! Uses that restart a blob's grace: upload completion, mount, a manifest
//! naming it, and a HEAD (at most once per `touch_interval`).
//!
//! The plan applies the rule forward, from the roots over a read snapshot
//! (`mark_live`), and the checked deletions apply it backward to one item
//! inside the deleting write transaction (`still_garbage`), where "a holder
//! exists" stands for "a holder lives": a doomed holder is always deleted
//! before what it holds, and whatever it held is retried after it. Both
//! are built from the fragments below; the tests at the end check that the
//! plan and the checked deletions agree on a table of cases.

use super::Sqlite;
use crate::{now_ms, StorageError};
use rusqlite::{named_params, params, Connection};
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

/// The manifest row `m` is a root. Parameter `:manifest_cutoff`.
const ROOT: &str = "(MAX(m.pushed_ms, COALESCE((SELECT rel.released_ms FROM main.manifest_releases rel
                                          WHERE rel.repo_id = m.repo_id AND rel.digest = m.digest), 0)) >= :manifest_cutoff
    OR EXISTS (SELECT 1 FROM main.tags t WHERE t.repo_id = m.repo_id AND t.digest = m.digest)
    OR EXISTS (SELECT 1 FROM main.pins p JOIN main.repositories pr ON pr.name = p.repository
               WHERE pr.id = m.repo_id AND p.digest = m.digest))";

/// The two ways one manifest holds another, each written in both
/// directions: forward, from the living rows `l` to what they hold (for the
/// plan's walk), and backward, whether anything holds `m` (for the check).
const INDEX_HOLDS_FORWARD: &str = "SELECT mr.repo_id, mr.child_digest FROM live l
    JOIN main.manifest_refs mr ON mr.repo_id = l.repo_id AND mr.manifest_digest = l.digest AND mr.kind = 'manifest'";
const INDEX_HOLDS_BACKWARD: &str = "EXISTS (SELECT 1 FROM main.manifest_refs mr
    WHERE mr.repo_id = m.repo_id AND mr.child_digest = m.digest AND mr.kind = 'manifest')";
const SUBJECT_HOLDS_FORWARD: &str = "SELECT r.repo_id, r.digest FROM live l
    JOIN main.manifests r ON r.repo_id = l.repo_id AND r.subject = l.digest";
const SUBJECT_HOLDS_BACKWARD: &str = "EXISTS (SELECT 1 FROM main.manifests s
    WHERE s.repo_id = m.repo_id AND s.digest = m.subject)";

/// Marks every living manifest into `temp.gc_live`.
pub(super) static MARK_LIVE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO temp.gc_live (repo_id, digest)
         WITH RECURSIVE live(repo_id, digest) AS (
             SELECT m.repo_id, m.digest FROM main.manifests m WHERE {ROOT}
             UNION {INDEX_HOLDS_FORWARD}
             UNION {SUBJECT_HOLDS_FORWARD}
         )
         SELECT repo_id, digest FROM live"
    )
});

/// The size of manifest (`:repo_id`, `:digest`) if it is still garbage.
pub(super) static MANIFEST_STILL_GARBAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT m.size FROM main.manifests m
         WHERE m.repo_id = :repo_id AND m.digest = :digest
           AND NOT {ROOT} AND NOT {INDEX_HOLDS_BACKWARD} AND NOT {SUBJECT_HOLDS_BACKWARD}"
    )
});

/// The link `rb` (joined with its blob `b`) is not needed by the rule
/// above. `survivor` narrows which referencing manifests count: in the
/// plan, those not doomed; in the check, every one that still exists.
fn link_unneeded(survivor: &str) -> String {
    format!(
        "rb.linked_ms < :blob_cutoff AND b.touched_ms < :blob_cutoff
         AND NOT EXISTS (SELECT 1 FROM main.manifest_refs mr
                         WHERE mr.repo_id = rb.repo_id AND mr.child_digest = rb.digest AND mr.kind = 'blob' {survivor})"
    )
}

/// Plans the links to remove into `temp.gc_doomed_links`.
pub(super) static PLAN_LINKS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO temp.gc_doomed_links (repo_id, digest)
         SELECT rb.repo_id, rb.digest FROM main.repo_blobs rb JOIN main.blobs b ON b.digest = rb.digest
         WHERE {}",
        link_unneeded(
            "AND NOT EXISTS (SELECT 1 FROM temp.gc_doomed d WHERE d.repo_id = mr.repo_id AND d.digest = mr.manifest_digest)"
        )
    )
});

/// Whether link (`:repo_id`, `:digest`) is still unneeded.
pub(super) static LINK_STILL_GARBAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT 1 FROM main.repo_blobs rb JOIN main.blobs b ON b.digest = rb.digest
         WHERE rb.repo_id = :repo_id AND rb.digest = :digest AND {}",
        link_unneeded("")
    )
});

/// The blob `b` is not needed: unused within the grace and named by no
/// link that `surviving_link` keeps (links are `rb`).
fn blob_unneeded(surviving_link: &str) -> String {
    format!(
        "b.touched_ms < :blob_cutoff
         AND NOT EXISTS (SELECT 1 FROM main.repo_blobs rb WHERE rb.digest = b.digest {surviving_link})"
    )
}

/// Plans the blobs to delete (after the planned links are gone).
pub(super) static PLAN_BLOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT b.digest, b.size FROM main.blobs b WHERE {} ORDER BY b.digest",
        blob_unneeded(
            "AND NOT EXISTS (SELECT 1 FROM temp.gc_doomed_links l WHERE l.repo_id = rb.repo_id AND l.digest = rb.digest)"
        )
    )
});

/// Deletes blob row `:digest` if it is still unneeded.
pub(super) static DELETE_BLOB_IF_GARBAGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM main.blobs AS b WHERE b.digest = :digest AND {}",
        blob_unneeded("")
    )
});

/// Records a use of a blob: its grace period starts again.
pub(super) fn record_blob_use(conn: &Connection, digest: &str, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE blobs SET touched_ms = ?2 WHERE digest = ?1")?
        .execute(params![digest, now])?;
    Ok(())
}

/// Whether manifest (`repo_id`, `digest`) is still garbage; its size if so.
pub(super) fn manifest_still_garbage(
    conn: &Connection,
    repo_id: i64,
    digest: &str,
    manifest_cutoff: i64,
) -> rusqlite::Result<Option<u64>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(&MANIFEST_STILL_GARBAGE)?
        .query_row(
            named_params! {":repo_id": repo_id, ":digest": digest, ":manifest_cutoff": manifest_cutoff},
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|s| s.map(|s| s.max(0) as u64))
}

pub(super) fn link_still_garbage(
    conn: &Connection,
    repo_id: i64,
    digest: &str,
    blob_cutoff: i64,
) -> rusqlite::Result<bool> {
    conn.prepare_cached(&LINK_STILL_GARBAGE)?
        .exists(named_params! {":repo_id": repo_id, ":digest": digest, ":blob_cutoff": blob_cutoff})
}

pub(super) fn delete_blob_if_garbage(
    conn: &Connection,
    digest: &str,
    blob_cutoff: i64,
) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached(&DELETE_BLOB_IF_GARBAGE)?
        .execute(named_params! {":digest": digest, ":blob_cutoff": blob_cutoff})?
        > 0)
}

impl Sqlite {
    /// How often a blob's use by a HEAD is recorded: a quarter of the blob
    /// grace period (between 100 ms and a minute), so a HEAD always
    /// protects the blob for the rest of a push while HEAD-heavy pulls do
    /// not become writes.
    pub fn set_blob_grace(&self, grace: std::time::Duration) {
        let interval = (grace / 4).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(60),
        );
        self.inner
            .touch_interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    /// Records that a client relied on a blob (a HEAD before skipping its
    /// upload) whose use was last recorded at `last_used_ms`; writes only
    /// when that is older than the touch interval.
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
        self.write(move |tx| Ok(record_blob_use(tx, &digest, now_ms())?))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value;
    use rusqlite::StatementStatus;

    /// SQLite re-prepares a statement on every new binding when a bound
    /// value took part in planning it (the link and pin checks' joins on a
    /// bound key did): at platform scale that re-parsing was a tenth of
    /// GC's writer time. berth's connections plan once (`tune`); this
    /// keeps it so for the per-item checks.
    #[test]
    fn per_item_checks_are_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("berth.db");
        drop(super::Sqlite::open(&db, crate::Synchronous::Normal).unwrap());
        let c = Connection::open(&db).unwrap();
        super::super::tune(&c).unwrap();
        let key = |round: i64| -> Vec<(&str, Value)> {
            vec![
                (":repo_id", Value::Integer(round)),
                (":digest", Value::Text(format!("sha256:{round}"))),
                (":blob_cutoff", Value::Integer(round)),
                (":manifest_cutoff", Value::Integer(round)),
            ]
        };
        for (name, sql) in [
            ("link", LINK_STILL_GARBAGE.as_str()),
            ("manifest", MANIFEST_STILL_GARBAGE.as_str()),
            ("blob", DELETE_BLOB_IF_GARBAGE.as_str()),
            ("pinned", super::super::gc::PINNED),
        ] {
            let mut stmt = c.prepare(sql).unwrap();
            for round in 0..3 {
                for (param, value) in key(round) {
                    if let Some(i) = stmt.parameter_index(param).unwrap() {
                        stmt.raw_bind_parameter(i, value).unwrap();
                    }
                }
                let mut rows = stmt.raw_query();
                while rows.next().unwrap().is_some() {}
            }
            assert_eq!(
                stmt.get_status(StatementStatus::RePrepare),
                0,
                "{name} is re-prepared on each binding"
            );
        }
    }
}
