//! Read-only questions for an integrity check, answered from a database
//! file another process may be writing (berth running): no lock taken, no
//! migration run. `Storage::check_integrity` pairs them with the blob store.

use crate::StorageError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// A read-only view of a metadata database.
pub struct Integrity {
    conn: Connection,
}

impl Integrity {
    pub fn open(path: &Path) -> Result<Integrity, StorageError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        Ok(Integrity { conn })
    }

    /// Every blob row whose bytes are in the blob store (not inline in
    /// `blob_data`), by digest.
    pub fn blob_digests(&self) -> Result<Vec<String>, StorageError> {
        let mut stmt = self.conn.prepare(
            "SELECT digest FROM blobs b
                 WHERE NOT EXISTS (SELECT 1 FROM blob_data d WHERE d.digest = b.digest)
                 ORDER BY digest",
        )?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(rows)
    }

    /// Blobs kept inline: how many, and those whose bytes do not hash to
    /// their digest or have another size than their row says (damage).
    pub fn inline_blobs(&self) -> Result<(usize, Vec<String>), StorageError> {
        let mut stmt = self.conn.prepare(
            "SELECT d.digest, d.data, b.size FROM blob_data d JOIN blobs b ON b.digest = d.digest
             ORDER BY d.digest",
        )?;
        let mut rows = stmt.query([])?;
        let (mut count, mut damaged) = (0, Vec::new());
        while let Some(row) = rows.next()? {
            count += 1;
            let digest: String = row.get(0)?;
            let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            let size: i64 = row.get(2)?;
            let sound = digest.parse::<crate::Digest>().is_ok_and(|d| {
                data.len() as i64 == size && crate::Digest::compute(d.algorithm(), data) == d
            });
            if !sound {
                damaged.push(digest);
            }
        }
        Ok((count, damaged))
    }

    /// Blob links no manifest of their repository references.
    pub fn unreferenced_links(&self) -> Result<u64, StorageError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM repo_blobs rb WHERE NOT EXISTS (SELECT 1 FROM manifest_refs mr
             WHERE mr.repo_id = rb.repo_id AND mr.child_digest = rb.digest AND mr.kind = 'blob')",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Blob rows no repository links.
    pub fn unlinked_blob_rows(&self) -> Result<u64, StorageError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM repo_blobs rb WHERE rb.digest = b.digest)",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}
