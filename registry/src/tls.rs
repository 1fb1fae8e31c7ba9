//! TLS for the one listener: the certificate chain, its key and the
//! optional client CA are read from PEM files into a rustls `ServerConfig`
//! (ALPN `h2` and `http/1.1`), and read again when the files change
//! (`watch`, polling) or when asked (`reload`, on SIGHUP). A reload swaps
//! the config for handshakes that start afterwards; connections already
//! open keep the session they negotiated. A reload that fails (a file half
//! written, a key that does not match its certificate) keeps the config in
//! use and says why.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// Where the PEM files are (`[server] tls_cert`, `tls_key`; `[auth] client_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain: the server's certificate first, then any
    /// intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to; none: no
    /// client certificates are asked for.
    pub client_ca: Option<PathBuf>,
}

/// The listener's TLS settings, swapped whole on reload.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

struct Loaded {
    /// ALPN h2 and http/1.1: what connections are served with.
    config: Arc<ServerConfig>,
    /// http/1.1 only: for the canned refusal of a connection over a limit
    /// (written as HTTP/1.1 whatever the client would have preferred).
    refusal: Arc<ServerConfig>,
    /// SHA-256 of the files' bytes, to tell a change from a touch.
    fingerprint: [u8; 32],
    /// The server certificate, for the log.
    summary: String,
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common names (one, in any certificate berth accepts).
    pub common_names: Vec<String>,
    /// The subject's organizations (Kubernetes reads them as groups).
    pub organizations: Vec<String>,
    /// The serial number, hex, for the log.
    pub serial: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn certificates(
    pem: &[u8],
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the {what} {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "the {what} {} holds no certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

impl Loaded {
    fn read(files: &TlsFiles) -> Result<Loaded, String> {
        let cert_pem = read(&files.cert, "TLS certificate ([server] tls_cert)")?;
        let key_pem = read(&files.key, "TLS key ([server] tls_key)")?;
        let ca_pem = match &files.client_ca {
            Some(p) => Some(read(p, "client CA ([auth] client_ca)")?),
            None => None,
        };
        let mut h = Sha256::new();
        for part in [Some(&cert_pem), Some(&key_pem), ca_pem.as_ref()] {
            let part = part.map(|v| v.as_slice()).unwrap_or_default();
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let fingerprint: [u8; 32] = h.finalize().into();

        let chain = certificates(
            &cert_pem,
            &files.cert,
            "TLS certificate ([server] tls_cert)",
        )?;
        let summary = describe(&chain[0])
            .map(|c| format!("CN={:?} serial={}", c.common_names, c.serial))
            .unwrap_or_else(|| "an unparsable certificate".into());
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "the TLS key ([server] tls_key) {} holds no private key: {e}",
                files.key.display()
            )
        })?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let builder = match (&files.client_ca, &ca_pem) {
            (Some(path), Some(pem)) => {
                let mut roots = RootCertStore::empty();
                for ca in certificates(pem, path, "client CA ([auth] client_ca)")? {
                    roots.add(ca).map_err(|e| {
                        format!(
                            "the client CA ([auth] client_ca) {} holds a certificate that cannot be a trust anchor: {e}",
                            path.display()
                        )
                    })?;
                }
                // Optional: a client without a certificate is served as
                // before (anonymous, Basic or a token); one that presents
                // a certificate must present a valid one.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| format!("client CA ([auth] client_ca): {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "the TLS key {} does not go with the certificate {}: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
        let mut refusal = config.clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        refusal.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            refusal: Arc::new(refusal),
            fingerprint,
            summary,
        })
    }
}

impl Tls {
    /// Reads the files; an error says which file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let loaded = Loaded::read(&files)?;
        tracing::info!(certificate = %loaded.summary, client_ca = ?files.client_ca, "TLS is on");
        Ok(Tls {
            files,
            current: RwLock::new(loaded),
        })
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// For a connection that is served: the config current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().config.clone())
    }

    /// For a connection that is refused with a canned HTTP/1.1 answer.
    pub fn refusal_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().refusal.clone())
    }

    /// Whether client certificates are asked for.
    pub fn asks_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again (blocking file I/O: call it off the async
    /// workers). `Ok(true)`: they changed and new handshakes use them;
    /// `Ok(false)`: unchanged; `Err`: the config in use is kept.
    pub fn reload(&self) -> Result<bool, String> {
        let loaded = Loaded::read(&self.files)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.fingerprint == loaded.fingerprint {
            return Ok(false);
        }
        tracing::info!(certificate = %loaded.summary, "TLS certificate reloaded");
        *current = loaded;
        Ok(true)
    }

    /// `reload` on a blocking thread, logging a failure.
    pub async fn reload_logged(self: &Arc<Self>, why: &'static str) {
        let tls = self.clone();
        match tokio::task::spawn_blocking(move || tls.reload()).await {
            Ok(Ok(false)) if why == "SIGHUP" => tracing::info!("TLS files unchanged"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(
                trigger = why,
                "TLS files not reloaded, the certificate in use stays: {e}"
            ),
            Err(e) => tracing::error!(trigger = why, "TLS reload task failed: {e}"),
        }
    }

    /// Polls the files every `interval` and reloads them when their bytes
    /// change (a renewal that replaces, renames or rewrites them alike).
    /// Runs until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        loop {
            tokio::time::sleep(interval).await;
            self.reload_logged("file change").await;
        }
    }
}

/// Reads the subject (common names, organizations) and serial of a DER
/// certificate; `None` if it does not parse.
pub fn describe(der: &[u8]) -> Option<PeerCertificate> {
    use x509_cert::der::{Decode, Tag, Tagged};
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let cn = x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let o = x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.10");
    let mut out = PeerCertificate {
        common_names: Vec::new(),
        organizations: Vec::new(),
        serial: cert
            .tbs_certificate
            .serial_number
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    };
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            let list = if atv.oid == cn {
                &mut out.common_names
            } else if atv.oid == o {
                &mut out.organizations
            } else {
                continue;
            };
            // DirectoryString: the string types X.509 names use.
            let text = match atv.value.tag() {
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
                    std::str::from_utf8(atv.value.value()).ok()?.to_owned()
                }
                _ => return None,
            };
            list.push(text);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_subjects() {
        let mut params = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "toolforge");
        params.serial_number = Some(rcgen::SerialNumber::from(vec![0x01, 0xab]));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let d = describe(cert.der()).unwrap();
        assert_eq!(d.common_names, ["alice"]);
        assert_eq!(d.organizations, ["toolforge"]);
        assert_eq!(d.serial, "01ab");
        assert_eq!(describe(b"not a certificate"), None);
    }

    fn write_pair(dir: &Path, cn: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn reload_swaps_only_on_change_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "one");
        let tls = Tls::load(files.clone()).unwrap();
        assert!(!tls.reload().unwrap(), "unchanged files are no reload");
        write_pair(dir.path(), "two");
        assert!(tls.reload().unwrap());
        assert!(tls.current().summary.contains("two"));
        // A key that belongs to another certificate is refused, the old
        // config stays.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&files.key, other.serialize_pem()).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.contains("does not go with"), "{e}");
        assert!(tls.current().summary.contains("two"));
        std::fs::write(&files.cert, "garbage").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.contains("no certificate") || e.contains("not PEM"), "{e}");
        std::fs::remove_file(&files.key).unwrap();
        assert!(tls.reload().unwrap_err().contains("cannot read"));
    }
}
