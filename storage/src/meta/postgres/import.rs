//! Rows moved in from another backend, for `berth migrate`: everything in
//! one transaction (a failed migration leaves the database as it was),
//! each batch sent with `COPY ... FROM STDIN (FORMAT binary)`, every value
//! converted to its column's type here (a value that does not fit is an
//! error naming table and column, never a silent change).

use super::super::types::{Cell, RowBatch};
use super::{one, rows, Postgres};
use crate::StorageError;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type};

impl Postgres {
    /// Imports every batch `batches` yields, then checks each table holds
    /// exactly the count in `expected` (what the source said it sent),
    /// moves identity sequences past the imported ids, and commits.
    /// Refuses before writing anything when any of berth's tables already
    /// has rows (but those in `transient`, which replicas fill as they
    /// run): a migration goes into a new database.
    pub async fn import(
        &self,
        transient: &[&str],
        mut batches: tokio::sync::mpsc::Receiver<RowBatch>,
        expected: tokio::sync::oneshot::Receiver<Result<Vec<(String, u64)>, StorageError>>,
    ) -> Result<Vec<(String, u64)>, StorageError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let known: Vec<String> = rows(
            &tx,
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<Result<_, _>>()?;
        for table in known
            .iter()
            .filter(|t| *t != "schema_migrations" && !transient.contains(&t.as_str()))
        {
            let filled: bool = one(
                &tx,
                &format!("SELECT EXISTS (SELECT 1 FROM \"{table}\")"),
                &[],
            )
            .await?
            .try_get(0)?;
            if filled {
                return Err(StorageError::Internal(format!(
                    "the target database is not empty (table {table} has rows); migrate into a new database"
                )));
            }
        }
        while let Some(batch) = batches.recv().await {
            if !known.contains(&batch.table) {
                return Err(StorageError::Internal(format!(
                    "table {} is not in the PostgreSQL schema",
                    batch.table
                )));
            }
            copy_in(&tx, batch).await?;
        }
        let expected = expected
            .await
            .map_err(|_| StorageError::Internal("the export ended without its counts".into()))??;
        for (table, count) in &expected {
            let have: i64 = one(&tx, &format!("SELECT COUNT(*) FROM \"{table}\""), &[])
                .await?
                .try_get(0)?;
            if have as u64 != *count {
                return Err(StorageError::Internal(format!(
                    "table {table}: {count} rows read, {have} written; nothing was committed"
                )));
            }
        }
        let identities = rows(
            &tx,
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND is_identity = 'YES'",
            &[],
        )
        .await?;
        for row in identities {
            let table: String = row.try_get(0)?;
            let column: String = row.try_get(1)?;
            // The next generated id follows the highest imported one.
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'),
                                   COALESCE((SELECT MAX(\"{column}\") FROM \"{table}\"), 1),
                                   (SELECT MAX(\"{column}\") FROM \"{table}\") IS NOT NULL)"
                ),
                &[],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(expected)
    }
}

async fn copy_in(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: RowBatch,
) -> Result<(), StorageError> {
    let RowBatch {
        table,
        columns,
        rows,
    } = batch;
    let list = columns
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // The target's column types, as the statement describes them.
    let types: Vec<Type> = tx
        .prepare(&format!("SELECT {list} FROM \"{table}\" LIMIT 0"))
        .await?
        .columns()
        .iter()
        .map(|c| c.type_().clone())
        .collect();
    let sink = tx
        .copy_in(&format!(
            "COPY \"{table}\" ({list}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for row in rows {
        let values = row
            .into_iter()
            .zip(&types)
            .zip(&columns)
            .map(|((cell, ty), column)| {
                convert(cell, ty).map_err(|why| {
                    StorageError::Internal(format!("table {table}, column {column}: {why}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&(dyn ToSql + Sync)> = values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect();
        writer.as_mut().write(&refs).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// A SQLite value as the PostgreSQL column type `ty` takes it.
fn convert(cell: Cell, ty: &Type) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    Ok(match (cell, ty) {
        (Cell::Null, _) => Box::new(SqlNull) as Box<dyn ToSql + Sync + Send>,
        (Cell::Integer(v), t) if *t == Type::INT8 => Box::new(v),
        (Cell::Integer(v), t) if *t == Type::INT4 => {
            Box::new(i32::try_from(v).map_err(|_| format!("{v} does not fit INTEGER"))?)
        }
        (Cell::Integer(v), t) if *t == Type::INT2 => {
            Box::new(i16::try_from(v).map_err(|_| format!("{v} does not fit SMALLINT"))?)
        }
        (Cell::Integer(v @ (0 | 1)), t) if *t == Type::BOOL => Box::new(v == 1),
        (Cell::Integer(v), t) if *t == Type::FLOAT8 => Box::new(v as f64),
        (Cell::Real(v), t) if *t == Type::FLOAT8 => Box::new(v),
        (Cell::Text(v), t) if *t == Type::TEXT || *t == Type::VARCHAR => Box::new(v),
        (Cell::Blob(v), t) if *t == Type::BYTEA => Box::new(v),
        // SQLite keeps what it is given: text where bytes were meant.
        (Cell::Text(v), t) if *t == Type::BYTEA => Box::new(v.into_bytes()),
        (cell, t) => return Err(format!("{cell:?} cannot be stored as {t}")),
    })
}

/// NULL of whatever type the column has (`Option<T>` would check `T`).
#[derive(Debug)]
struct SqlNull;

impl ToSql for SqlNull {
    fn to_sql(
        &self,
        _: &Type,
        _: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        Ok(IsNull::Yes)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}
