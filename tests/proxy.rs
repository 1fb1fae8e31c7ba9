//! berth behind a real reverse proxy: nginx (Debian's) terminates TLS on
//! 127.0.0.1 and connects to berth from 127.0.0.2 (`proxy_bind`), the one
//! trusted proxy; clients come from other loopback addresses (curl's
//! `--interface`), so berth can tell the proxy's word from a client's.
//! Checked: the forwarded client address is what the login throttle and
//! the access log use; the token realm and `Location` are the public URL
//! (or, without one, the forwarded scheme and host); a client talking to
//! berth directly cannot forge any of it; skopeo pushes and pulls through
//! the proxy.

mod common;
#[path = "common/tls.rs"]
mod tlsh;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tlsh::*;

/// The proxy's own address towards berth.
const PROXY_ADDR: &str = "127.0.0.2";

/// nginx in the foreground with a config of its own, killed when dropped.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    /// TLS on 127.0.0.1:<port> with `cert`/`key`, proxying everything to
    /// berth at `upstream` from `PROXY_ADDR`, as a Toolforge-style front
    /// proxy would: X-Forwarded-For/-Proto/-Host set, Host left to nginx
    /// (the upstream's name), bodies streamed.
    fn start(dir: &Path, port: u16, upstream: u16, cert: &Path, key: &Path) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let conf = format!(
            r#"
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_bind {PROXY_ADDR};
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(tool("nginx"))
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start nginx");
        let n = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What curl got: status, headers (lowercased names), body.
struct Got {
    status: u16,
    headers: String,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// curl from the local address `from`, trusting `ca`.
fn curl(from: &str, ca: &Path, method: &str, url: &str, headers: &[(&str, &str)]) -> Got {
    let out_dir = tempfile::tempdir().unwrap();
    let (h, b) = (out_dir.path().join("h"), out_dir.path().join("b"));
    let mut cmd = Command::new(tool("curl"));
    cmd.args(["-s", "--http1.1", "--interface", from, "-X", method])
        .arg("--cacert")
        .arg(ca)
        .arg("-D")
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(["-w", "%{http_code}"]);
    if method == "POST" {
        cmd.args(["--data-binary", ""]);
    }
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let status = run(cmd.arg(url)).trim().parse().unwrap();
    Got {
        status,
        headers: std::fs::read_to_string(h).unwrap_or_default(),
        body: std::fs::read_to_string(b).unwrap_or_default(),
    }
}

/// berth on 127.0.0.1 (plain HTTP, behind the proxy) with `config`.
fn berth_behind(dir: &Path, config: &str) -> Berth {
    Berth::start_with(
        &dir.join("data"),
        free_port(),
        &format!("[server]\ntrusted_proxies = [\"{PROXY_ADDR}/32\"]\n{config}"),
    )
}

/// The realm of a `WWW-Authenticate: Bearer realm="..."` challenge.
fn realm(got: &Got) -> String {
    let c = got.header("www-authenticate").expect("a challenge");
    c.split("realm=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned()
}

/// `berth::access` and login lines naming `needle`.
fn log_lines(berth: &Berth, needle: &str) -> Vec<String> {
    berth
        .log_text()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn behind_nginx_clients_are_the_forwarded_address_and_urls_the_public_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("proxy CA");
    let (cert, key) = write_pair(&dir.path().join("pki"), "nginx", &ca.server("nginx", 1));
    let ca_file = dir.path().join("pki/ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let public_port = free_port();
    let public = format!("https://localhost:{public_port}");
    let berth = berth_behind(dir.path(), &format!("public_url = \"{public}\"\n"));
    let password = berth.namespace_credentials("tool-web");
    let nginx = Nginx::start(
        &dir.path().join("nginx"),
        public_port,
        berth.port,
        &cert,
        &key,
    );
    assert_eq!(nginx.url(), public);

    // The challenge sends clients to the public token endpoint.
    let got = curl("127.0.0.3", &ca_file, "GET", &format!("{public}/v2/"), &[]);
    assert_eq!(got.status, 401, "{}", got.body);
    assert_eq!(realm(&got), format!("{public}/token"));
    // Locations are public URLs too.
    let auth = basic("tool-web", &password);
    let got = curl(
        "127.0.0.3",
        &ca_file,
        "POST",
        &format!("{public}/v2/tool-web/app/blobs/uploads/"),
        &[("authorization", &auth)],
    );
    assert_eq!(got.status, 202, "{}", got.body);
    let location = got.header("location").unwrap();
    assert!(
        location.starts_with(&format!("{public}/v2/tool-web/app/blobs/uploads/")),
        "{location}"
    );
    // The access log names the client behind the proxy, and the proxy.
    let lines = log_lines(&berth, "path=\"/v2/tool-web/app/blobs/uploads/\"");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("client=127.0.0.3") && l.contains(&format!("peer={PROXY_ADDR}:"))),
        "{lines:?}"
    );

    // Failed logins are counted per client address behind the proxy: two
    // from .3, then the first from .4 starts at one.
    let wrong = basic("tool-web", "wrong");
    for from in ["127.0.0.3", "127.0.0.3", "127.0.0.4"] {
        let got = curl(
            from,
            &ca_file,
            "GET",
            &format!("{public}/v2/tool-web/app/tags/list"),
            &[("authorization", &wrong)],
        );
        assert_eq!(got.status, 401);
    }
    let failures = log_lines(&berth, "login failed");
    assert!(
        failures
            .iter()
            .any(|l| l.contains("peer=127.0.0.3") && l.contains("failures=2")),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|l| l.contains("peer=127.0.0.4") && l.contains("failures=1")),
        "{failures:?}"
    );

    // A client talking to berth directly is not a trusted proxy: what it
    // claims to be forwarding is ignored (and removed).
    let direct = curl(
        "127.0.0.5",
        &ca_file,
        "GET",
        &format!("{}/v2/tool-web/app/tags/list", berth.url()),
        &[
            ("authorization", &wrong),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    );
    assert_eq!(direct.status, 401);
    let failures = log_lines(&berth, "login failed");
    assert!(
        failures.iter().any(|l| l.contains("peer=127.0.0.5")),
        "{failures:?}"
    );
    assert!(!berth.log_text().contains("203.0.113.9"));

    // A real client through the proxy: skopeo pushes (token flow through
    // the public realm) and pulls, verifying nginx's certificate.
    let certs = dir.path().join("cert-dir");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&ca_file, certs.join("ca.crt")).unwrap();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, "v1", "through nginx", 2);
    let image = format!("docker://localhost:{}/tool-web/app:v1", nginx.port);
    run(Command::new(tool("skopeo"))
        .args(["copy", "--dest-cert-dir"])
        .arg(&certs)
        .args(["--dest-creds", &format!("tool-web:{password}")])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&image));
    let out = run(Command::new(tool("skopeo"))
        .args(["inspect", "--cert-dir"])
        .arg(&certs)
        .arg(&image));
    assert!(out.contains("through nginx"), "{out}");
    let tokens = log_lines(&berth, "path=\"/token\"");
    assert!(
        tokens
            .iter()
            .any(|l| l.contains(&format!("peer={PROXY_ADDR}:"))),
        "skopeo fetched its token through the proxy: {tokens:?}"
    );
}

#[test]
fn without_a_public_url_the_forwarded_scheme_and_host_make_the_realm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("proxy CA");
    let (cert, key) = write_pair(&dir.path().join("pki"), "nginx", &ca.server("nginx", 1));
    let ca_file = dir.path().join("pki/ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let berth = berth_behind(dir.path(), "");
    let nginx = Nginx::start(
        &dir.path().join("nginx"),
        free_port(),
        berth.port,
        &cert,
        &key,
    );

    // Through the proxy: https and the host the client asked for.
    let got = curl(
        "127.0.0.3",
        &ca_file,
        "GET",
        &format!("{}/v2/", nginx.url()),
        &[],
    );
    assert_eq!(got.status, 401);
    assert_eq!(realm(&got), format!("{}/token", nginx.url()));
    // Locations stay relative without a public URL.
    let password = berth.namespace_credentials("tool-web");
    let got = curl(
        "127.0.0.3",
        &ca_file,
        "POST",
        &format!("{}/v2/tool-web/app/blobs/uploads/", nginx.url()),
        &[("authorization", &basic("tool-web", &password))],
    );
    assert_eq!(got.status, 202);
    assert!(got
        .header("location")
        .unwrap()
        .starts_with("/v2/tool-web/app/blobs/uploads/"));

    // Directly, the same headers from an untrusted client change nothing.
    let got = curl(
        "127.0.0.3",
        &ca_file,
        "GET",
        &format!("{}/v2/", berth.url()),
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    );
    assert_eq!(got.status, 401);
    assert_eq!(realm(&got), format!("http://{}/token", berth.host()));
}
