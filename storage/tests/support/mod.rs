//! What the storage tests share: the backend under test. Every behaviour
//! test is written once, generic over `Backend`, and run against SQLite (a
//! file in a temporary directory) and PostgreSQL (a fresh database on the
//! server `postgres` starts once per test process): one suite, every
//! backend, as distribution's storage driver tests do.
#![allow(dead_code)]

pub mod garage;
pub mod postgres;

use berth_storage::{Metadata, PostgresConfig, S3Config, Storage, StorageConfig, Synchronous};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// PostgreSQL metadata and blobs in S3 (a Garage bucket): what
    /// replicas share, upload sessions in the database.
    S3,
}

/// Where a test's metadata lives: reopening the same `Place` reopens the
/// same database.
#[derive(Debug, Clone)]
pub struct Place {
    pub backend: Backend,
    /// PostgreSQL's database URL (a fresh database per `Place`).
    pub url: Option<String>,
    /// The bucket (a fresh one per `Place`).
    pub s3: Option<S3Config>,
}

/// `[storage.s3]` for a fresh bucket on the test process's Garage.
pub fn s3_config(server: &garage::Server) -> S3Config {
    S3Config {
        bucket: garage::fresh_bucket(server),
        endpoint: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        access_key_id: Some(server.key_id.clone()),
        secret_access_key: Some(server.secret.clone()),
        allow_http: true,
        virtual_hosted_style: false,
        prefix: None,
        redirect: None,
    }
}

impl Place {
    pub fn new(backend: Backend) -> Place {
        Place {
            backend,
            url: match backend {
                Backend::Sqlite => None,
                Backend::Postgres | Backend::S3 => Some(postgres::fresh_database()),
            },
            s3: match backend {
                Backend::S3 => Some(s3_config(
                    garage::server().expect("S3 tests run only with a Garage server"),
                )),
                _ => None,
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
            s3: self.s3.clone(),
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

/// Runs each named `async fn(Backend)` on PostgreSQL with blobs in S3,
/// as `s3::<name>`; without a Garage binary (and `CI` unset) it prints why
/// and passes.
#[allow(unused_macros)] // Only the files with S3 cases use it.
macro_rules! on_s3 {
    ($($name:ident),* $(,)?) => {
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if crate::support::garage::server().is_none() {
                        return;
                    }
                    super::$name(crate::support::Backend::S3).await
                }
            )*
        }
    };
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
