//! `berth migrate`: an embedded installation (SQLite and blob files in one
//! data dir) moved to PostgreSQL, its blobs copied into the target blob
//! store when that is another place (S3, another directory).
//!
//! Order keeps the storage invariant (objects before the rows that name
//! them): every object is copied, each checked against its digest as it
//! streams, before any row is written; the rows then go in one PostgreSQL
//! transaction that commits only when every table's count matches. The
//! source is only read (under its data-dir lock, so berth must be
//! stopped), so a migration that fails anywhere is simply run again.

use crate::meta::{export_tables, Metadata, PostgresConfig, RowBatch, Synchronous};
use crate::{lock_data_dir, BlobStore, StorageError};
use std::path::Path;

/// Tables of what a running process holds, not of what it stores: each
/// replica fills them as it runs (its heartbeat, the leases of jobs it
/// runs, console sign-ins), so they are neither copied nor required empty.
pub const TRANSIENT_TABLES: &[&str] = &["replicas", "job_leases", "ui_sessions"];

/// What a migration moved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationReport {
    /// Rows per table, in the order they were copied.
    pub tables: Vec<(String, u64)>,
    /// Blob objects in the source.
    pub objects: u64,
    /// Objects copied (the rest were already in the target, same size).
    pub objects_copied: u64,
    pub bytes_copied: u64,
    /// The generated secrets moved into `shared_secrets`.
    pub secrets: Vec<String>,
}

/// Moves the embedded store in `source_dir` to the PostgreSQL database
/// `target`, which must be new (no rows in berth's tables). With
/// `target_blobs`, every blob object is copied there first; without, the
/// blobs stay in `source_dir`, which the new configuration must then use
/// as its data dir. Each of `secrets` (files of `source_dir` holding a
/// secret berth generated) found there goes into `shared_secrets` under
/// its file name, so what was signed or handed out with it stays valid.
pub async fn embedded_to_postgres(
    source_dir: &Path,
    target: &PostgresConfig,
    target_blobs: Option<&BlobStore>,
    secrets: &[&str],
) -> Result<MigrationReport, StorageError> {
    let dir = source_dir.to_owned();
    let _lock = tokio::task::spawn_blocking(move || lock_data_dir(&dir))
        .await
        .map_err(|e| StorageError::Internal(format!("lock task failed: {e}")))??;
    let db = source_dir.join("berth.db");
    if !db.exists() {
        return Err(StorageError::Internal(format!(
            "{} has no berth.db: not an embedded berth data dir",
            source_dir.display()
        )));
    }
    // Opening brings the source to this berth's schema, which is the one
    // the target gets: the tables and columns then match one for one.
    let path = db.clone();
    let source = tokio::task::spawn_blocking(move || Metadata::open(&path, Synchronous::Full))
        .await
        .map_err(|e| StorageError::Internal(format!("open task failed: {e}")))??;
    source.close().await;
    let meta = Metadata::connect_postgres(target).await?;
    let Metadata::Postgres(pg) = &meta else {
        return Err(StorageError::Internal(
            "the target is not PostgreSQL".into(),
        ));
    };

    let mut report = MigrationReport {
        tables: Vec::new(),
        objects: 0,
        objects_copied: 0,
        bytes_copied: 0,
        secrets: Vec::new(),
    };
    if let Some(target_blobs) = target_blobs {
        let from = BlobStore::local(source_dir)?;
        for object in from.list().await? {
            report.objects += 1;
            if target_blobs.size(&object.digest).await? == Some(object.size) {
                continue;
            }
            let bytes = from.get(&object.digest, None).await?;
            target_blobs
                .put_verified(&object.digest, object.size, bytes)
                .await?;
            report.objects_copied += 1;
            report.bytes_copied += object.size;
            if report.objects_copied.is_multiple_of(1000) {
                tracing::info!(copied = report.objects_copied, "copying blobs");
            }
        }
    }

    // The export runs on a blocking thread and hands batches over a small
    // channel: at most a few batches are in memory at once.
    let (batches, received) = tokio::sync::mpsc::channel::<RowBatch>(2);
    let (counts_tx, counts_rx) = tokio::sync::oneshot::channel();
    let export = tokio::task::spawn_blocking(move || {
        let counts = export_tables(&db, TRANSIENT_TABLES, |batch| {
            batches
                .blocking_send(batch)
                .map_err(|_| StorageError::Internal("the import stopped".into()))
        });
        let _ = counts_tx.send(counts);
    });
    let imported = pg.import(TRANSIENT_TABLES, received, counts_rx).await;
    let _ = export.await;
    let moved = match imported {
        Ok(tables) => {
            report.tables = tables;
            move_secrets(&meta, source_dir, secrets).await
        }
        Err(e) => Err(e),
    };
    meta.close().await;
    report.secrets = moved?;
    Ok(report)
}

/// Stores each secret file of `dir` named in `names` in `shared_secrets`;
/// the names of those stored.
async fn move_secrets(
    meta: &Metadata,
    dir: &Path,
    names: &[&str],
) -> Result<Vec<String>, StorageError> {
    let mut moved = Vec::new();
    for name in names {
        let text = match tokio::fs::read_to_string(dir.join(name)).await {
            Ok(text) => text.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if text.is_empty() {
            continue;
        }
        if meta.shared_secret(name, text.clone()).await? == text {
            moved.push(name.to_string());
        } else {
            tracing::warn!(
                name,
                "the database already holds another secret of this name; it keeps its own"
            );
        }
    }
    Ok(moved)
}
