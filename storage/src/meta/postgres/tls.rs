//! TLS to PostgreSQL. With `sslmode=require` in `database_url`, every
//! connection is encrypted and the server's certificate is verified: it
//! must chain to `[storage] database_ca` (or, without it, to the
//! platform's roots) and name the host berth connects to. That is libpq's
//! `verify-full`, stricter than libpq's `require`, because an encrypted
//! connection to whoever answers protects nothing against an attacker on
//! the path. Without `sslmode=require` connections are plain, as before.

use crate::StorageError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How connections to the database are made.
#[derive(Clone)]
pub(crate) enum Tls {
    Plain,
    Verified(MakeRustlsConnect),
}

pub(crate) fn for_config(
    config: &tokio_postgres::Config,
    ca: Option<&Path>,
) -> Result<Tls, StorageError> {
    if config.get_ssl_mode() != SslMode::Require {
        if ca.is_some() {
            return Err(StorageError::Internal(
                "[storage] database_ca is set but database_url does not ask for TLS: add sslmode=require".into(),
            ));
        }
        return Ok(Tls::Plain);
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                StorageError::Internal(format!(
                    "cannot read [storage] database_ca {}: {e}",
                    path.display()
                ))
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StorageError::Internal(format!("{}: not PEM certificates: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StorageError::Internal(format!("{}: unusable certificate: {e}", path.display()))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // The platform's store may hold certificates rustls cannot
                // use; the others still serve.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(StorageError::Internal(
            "sslmode=require, but no CA certificate to verify the database with: set [storage] database_ca".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StorageError::Internal(format!("TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Tls::Verified(MakeRustlsConnect::new(tls)))
}
