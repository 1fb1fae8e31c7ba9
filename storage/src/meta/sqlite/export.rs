//! Every table read out, for `berth migrate`: one read transaction (a
//! consistent snapshot) on its own read-only connection, each table's rows
//! in batches bounded by count and bytes, so a large database never sits
//! in memory.

use super::super::types::{Cell, RowBatch};
use crate::StorageError;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// A batch ends at this many rows or bytes, whichever comes first.
const BATCH_ROWS: usize = 1000;
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Hands every row of every table except `skip` to `send`, table by table
/// in creation order (which the migrations made respect references), and
/// returns each table's row count.
pub fn export_tables(
    path: &Path,
    skip: &[&str],
    mut send: impl FnMut(RowBatch) -> Result<(), StorageError>,
) -> Result<Vec<(String, u64)>, StorageError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.execute_batch("BEGIN")?;
    let tables: Vec<String> = {
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_master
             WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid",
        )?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        names.collect::<Result<_, _>>()?
    };
    let mut counts = Vec::new();
    for table in tables {
        if skip.contains(&table.as_str()) {
            continue;
        }
        // Names come from the schema berth created; quoting is enough, but
        // a name outside that alphabet means this is not berth's database.
        if !is_identifier(&table) {
            return Err(StorageError::Internal(format!(
                "unexpected table {table:?} in the SQLite database"
            )));
        }
        let columns: Vec<String> = {
            let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
            let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
            names.collect::<Result<_, _>>()?
        };
        if let Some(bad) = columns.iter().find(|c| !is_identifier(c)) {
            return Err(StorageError::Internal(format!(
                "unexpected column {bad:?} in table {table}"
            )));
        }
        let list = columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut stmt = conn.prepare(&format!("SELECT {list} FROM \"{table}\""))?;
        let mut rows = stmt.query([])?;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut count = 0u64;
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(columns.len());
            for (i, column) in columns.iter().enumerate() {
                let cell = match row.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Integer(v),
                    ValueRef::Real(v) => Cell::Real(v),
                    ValueRef::Text(t) => Cell::Text(
                        std::str::from_utf8(t)
                            .map_err(|_| {
                                StorageError::Internal(format!(
                                    "table {table}, column {column}: text that is not UTF-8"
                                ))
                            })?
                            .to_owned(),
                    ),
                    ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                };
                bytes += match &cell {
                    Cell::Text(t) => t.len(),
                    Cell::Blob(b) => b.len(),
                    _ => 8,
                };
                cells.push(cell);
            }
            batch.push(cells);
            count += 1;
            if batch.len() >= BATCH_ROWS || bytes >= BATCH_BYTES {
                send(RowBatch {
                    table: table.clone(),
                    columns: columns.clone(),
                    rows: std::mem::take(&mut batch),
                })?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            send(RowBatch {
                table: table.clone(),
                columns: columns.clone(),
                rows: batch,
            })?;
        }
        counts.push((table, count));
    }
    conn.execute_batch("COMMIT")?;
    Ok(counts)
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
