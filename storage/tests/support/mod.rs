//! What the storage tests share: the backend under test. Every behaviour
//! test is written once, generic over `Backend`, and run against SQLite (a
//! file in a temporary directory) and PostgreSQL (a fresh database on the
//! server `postgres` starts once per test process): one suite, every
//! backend, as distribution's storage driver tests do.
#![allow(dead_code)]

pub mod postgres;

use berth_storage::{Metadata, PostgresConfig, Storage, StorageConfig, Synchronous};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a test's metadata lives: reopening the same `Place` reopens the
/// same database.
#[derive(Debug, Clone)]
pub struct Place {
    pub backend: Backend,
    /// PostgreSQL's database URL (a fresh database per `Place`).
    pub url: Option<String>,
}

impl Place {
    pub fn new(backend: Backend) -> Place {
        Place {
            backend,
            url: match backend {
                Backend::Sqlite => None,
                Backend::Postgres => Some(postgres::fresh_database()),
            },
        }
    }

    pub fn config(&self, dir: &Path, synchronous: Synchronous) -> StorageConfig {
        StorageConfig {
            data_dir: dir.to_owned(),
            synchronous,
            uploads: Default::default(),
            postgres: self.url.as_ref().map(|url| PostgresConfig {
                url: url.clone(),
                max_connections: 8,
                tls_ca: None,
            }),
        }
    }

    /// Storage on `dir` (blobs and staging there; metadata in the place).
    pub async fn storage(&self, dir: &Path) -> Storage {
        Storage::connect(&self.config(dir, Synchronous::Normal))
            .await
            .unwrap_or_else(|e| panic!("opening storage on {:?}: {e}", self.backend))
    }

    /// Metadata alone (`dir` holds the SQLite file).
    pub async fn metadata(&self, dir: &Path) -> Metadata {
        match &self.url {
            None => Metadata::open(&dir.join("berth.db"), Synchronous::Normal).unwrap(),
            Some(url) => Metadata::connect_postgres(&PostgresConfig {
                url: url.clone(),
                max_connections: 8,
                tls_ca: None,
            })
            .await
            .unwrap(),
        }
    }
}

/// Runs each named `async fn(Backend)` as two tests, `sqlite::<name>` and
/// `postgres::<name>`.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}
