//! The integrity check's questions (`berth fsck --config`), answered on
//! one REPEATABLE READ snapshot, safe while replicas write. Inline blobs
//! are read as a stream of rows, never all at once.

use super::super::types::IntegrityRows;
use super::{one, rows, snapshot, Postgres};
use crate::StorageError;
use futures_util::{pin_mut, TryStreamExt};

impl Postgres {
    pub async fn integrity_rows(&self) -> Result<IntegrityRows, StorageError> {
        snapshot!(self, |tx| {
            let blob_digests = rows(
                &tx,
                "SELECT digest FROM blobs b
                 WHERE NOT EXISTS (SELECT 1 FROM blob_data d WHERE d.digest = b.digest)
                 ORDER BY digest",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
            let inline = tx
                .query_raw(
                    "SELECT d.digest, d.data, b.size FROM blob_data d
                     JOIN blobs b ON b.digest = d.digest ORDER BY d.digest",
                    std::iter::empty::<i64>(),
                )
                .await?;
            pin_mut!(inline);
            let (mut inline_blobs, mut inline_damaged) = (0, Vec::new());
            while let Some(row) = inline.try_next().await? {
                inline_blobs += 1;
                let digest: String = row.try_get(0)?;
                let data: &[u8] = row.try_get(1)?;
                let size: i64 = row.try_get(2)?;
                let sound = digest.parse::<crate::Digest>().is_ok_and(|d| {
                    data.len() as i64 == size && crate::Digest::compute(d.algorithm(), data) == d
                });
                if !sound {
                    inline_damaged.push(digest);
                }
            }
            let unreferenced_links: i64 = one(
                &tx,
                "SELECT COUNT(*) FROM repo_blobs rb WHERE NOT EXISTS (
                     SELECT 1 FROM manifest_refs mr
                     WHERE mr.repo_id = rb.repo_id AND mr.child_digest = rb.digest
                       AND mr.kind = 'blob')",
                &[],
            )
            .await?
            .try_get(0)?;
            let unlinked_blob_rows: i64 = one(
                &tx,
                "SELECT COUNT(*) FROM blobs b
                 WHERE NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest)",
                &[],
            )
            .await?
            .try_get(0)?;
            Ok(IntegrityRows {
                blob_digests,
                inline_blobs,
                inline_damaged,
                unreferenced_links: unreferenced_links.max(0) as u64,
                unlinked_blob_rows: unlinked_blob_rows.max(0) as u64,
            })
        })
    }
}
