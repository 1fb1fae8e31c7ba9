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

    /// Every blob row's digest, sorted.
    pub fn blob_digests(&self) -> Result<Vec<String>, StorageError> {
        let mut stmt = self
            .conn
            .prepare("SELECT digest FROM blobs ORDER BY digest")?;
        let rows = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(rows)
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
