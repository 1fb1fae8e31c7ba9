//! Shared by the TLS tests (included with `#[path]` next to `mod
//! common;`): a CA made in the test (rcgen) issuing server and client
//! certificates, berth serving TLS with them, HTTPS clients trusting that
//! CA (ureq for requests, a raw rustls stream to see the served
//! certificate and keep a connection alive across a reload).
#![allow(dead_code)]

use crate::common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The names every server certificate of these tests is for. Docker treats
/// 127.0.0.0/8 as an insecure registry and never reads certs.d for it, so
/// its tests reach berth as `registry.berth.test`, a name only their
/// dockerd resolves (to ::1).
pub const TEST_HOST: &str = "registry.berth.test";

/// A certificate authority made for one test.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, mut params: CertificateParams, serial: u64) -> Issued {
        let key = KeyPair::generate().unwrap();
        params.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            // As berth logs it (DER: no leading zero bytes).
            serial: berth_registry::tls::describe(cert.der()).unwrap().serial,
        }
    }

    /// A server certificate for localhost, 127.0.0.1, ::1 and `TEST_HOST`.
    pub fn server(&self, cn: &str, serial: u64) -> Issued {
        let mut params = CertificateParams::new(vec![
            "localhost".to_owned(),
            TEST_HOST.to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, serial)
    }

    /// A client certificate as Kubernetes issues them: CN = the user (for
    /// Toolforge, the tool), O = its groups.
    pub fn client(&self, cn: &str, organizations: &[&str], serial: u64) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for o in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, serial)
    }

    /// Like `client`, but expired last year.
    pub fn expired_client(&self, cn: &str, serial: u64) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.issue(params, serial)
    }
}

/// Writes a certificate and key as `dir/<name>.crt` and `dir/<name>.key`.
pub fn write_pair(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, &issued.cert_pem).unwrap();
    std::fs::write(&k, &issued.key_pem).unwrap();
    (c, k)
}

/// Replaces a file's contents all at once (write aside, rename), as
/// certificate renewals do.
pub fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A berth serving TLS, with the CA and file paths its test needs.
pub struct TlsBerth {
    pub berth: Berth,
    pub ca: Ca,
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_file: PathBuf,
    /// The serial of the certificate berth started with.
    pub first_serial: String,
    /// host:port clients name (an IP literal, or `TEST_HOST:port`).
    pub host: String,
}

impl TlsBerth {
    /// berth on 127.0.0.1 with a certificate from a new CA. `config` is
    /// appended right after the `[server]` TLS lines, so it may begin with
    /// more `[server]` keys before its own sections; `{dir}` in it is the
    /// test's directory.
    pub fn start(dir: &Path, config: &str) -> TlsBerth {
        TlsBerth::start_at(dir, "127.0.0.1", config)
    }

    /// Like `start`, listening on `ip` (e.g. "::1").
    pub fn start_at(dir: &Path, ip: &str, config: &str) -> TlsBerth {
        let ca = Ca::new("berth test CA");
        let pki = dir.join("pki");
        let first = ca.server("berth one", 1);
        let (cert, key) = write_pair(&pki, "server", &first);
        let ca_file = pki.join("ca.crt");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let port = free_port();
        let listen = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        let config = format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{}",
            cert.display(),
            key.display(),
            config.replace("{dir}", &dir.display().to_string())
        );
        let data = dir.join("data");
        let child = Berth::spawn_at(&data, &listen, port, &config, None);
        let berth = Berth {
            child: Some(child),
            port,
            data_dir: data.clone(),
            log: data.with_extension(format!("{port}.log")),
        };
        let b = TlsBerth {
            berth,
            ca,
            dir: dir.to_owned(),
            cert,
            key,
            ca_file,
            first_serial: first.serial,
            host: listen,
        };
        b.wait_healthy();
        b
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.host)
    }

    fn wait_healthy(&self) {
        let agent = tls_agent(&self.ca.pem, None);
        let url = format!("{}/healthz", self.url());
        self.berth.wait_until_healthy("berth (TLS)", || {
            agent.get(&url).call().is_ok_and(|r| r.status() == 200)
        });
    }

    /// An agent trusting this berth's CA, with a client certificate if given.
    pub fn agent(&self, client: Option<&Issued>) -> ureq::Agent {
        tls_agent(&self.ca.pem, client)
    }

    /// A bodiless request over TLS: (status, headers, body).
    pub fn request(
        &self,
        client: Option<&Issued>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url()));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = self
            .agent(client)
            .run(b.body(Vec::<u8>::new()).unwrap())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = r.status().as_u16();
        let h = r.headers().clone();
        let body = r.body_mut().read_to_vec().unwrap_or_default();
        (status, h, body)
    }
}

/// A ureq agent trusting only `ca_pem`, presenting `client` if given.
pub fn tls_agent(ca_pem: &str, client: Option<&Issued>) -> ureq::Agent {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca]));
    if let Some(c) = client {
        let cert = Certificate::from_pem(c.cert_pem.as_bytes()).unwrap();
        let key = PrivateKey::from_pem(c.key_pem.as_bytes()).unwrap();
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&[cert], key)));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .tls_config(tls.build())
        .build()
        .into()
}

/// A rustls client config trusting only `ca_pem`, HTTP/1.1 by ALPN.
pub fn rustls_client(ca_pem: &str, client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One TLS connection kept open (HTTP/1.1 keep-alive).
pub struct TlsConn {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsConn {
    pub fn open(addr: &str, ca_pem: &str) -> TlsConn {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let conn = rustls::ClientConnection::new(
            rustls_client(ca_pem, None),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        TlsConn { stream }
    }

    /// Serial number (hex) of the certificate the server presented.
    pub fn server_serial(&self) -> String {
        let der = &self.stream.conn.peer_certificates().unwrap()[0];
        berth_registry::tls::describe(der).unwrap().serial
    }

    /// GET `path` on this connection; returns the status (the body is read
    /// so the connection can be used again).
    pub fn get(&mut self, path: &str) -> Result<u16, String> {
        write!(
            self.stream,
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: keep-alive\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        self.stream.flush().map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                Ok(_) => return Err("connection closed".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head}"))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

/// The serial of the certificate a new connection to `addr` is served.
pub fn served_serial(addr: &str, ca_pem: &str) -> String {
    TlsConn::open(addr, ca_pem).server_serial()
}

/// Waits until a new connection is served the certificate `serial`.
pub fn wait_for_serial(addr: &str, ca_pem: &str, serial: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if served_serial(addr, ca_pem) == serial {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
