//! TLS end to end, against the real binary with a CA made in the test:
//! the certificate reloaded from its files and on SIGHUP while a
//! keep-alive connection lives on; handshakes bounded in time and counted
//! as connections; HTTP/2 by ALPN with its streams counted like
//! connections, its idle connections closed and its header lists bounded;
//! client certificates as tool accounts; and the real clients: docker
//! (certs.d: the CA, then a client certificate), skopeo and podman
//! (`--cert-dir`), and a build's lifecycle pushing over TLS.

mod common;
#[path = "common/builds.rs"]
mod harness;
#[path = "common/tls.rs"]
mod tlsh;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};
use tlsh::*;

fn body_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

#[test]
fn plain_http_on_the_tls_port_is_told_to_use_https() {
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(dir.path(), "");
    let (status, _, body) = get(&format!("http://{}/healthz", b.host), None);
    assert_eq!(status, 400);
    assert!(
        body_text(&body).contains("use https://"),
        "{}",
        body_text(&body)
    );
    // And TLS is what is served, with the CA made here.
    let (status, _, _) = b.request(None, "GET", "/healthz", &[]);
    assert_eq!(status, 200);
    // A client that does not know the CA is refused by its own check.
    let untrusting = tls_agent(&Ca::new("another CA").pem, None);
    assert!(untrusting
        .get(&format!("{}/healthz", b.url()))
        .call()
        .is_err());
}

#[test]
fn certificate_files_reload_on_change_and_on_sighup_without_dropping_connections() {
    // Polling: the files are replaced (rename, as renewals do) and new
    // connections get the new certificate; an open one keeps working.
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(dir.path(), "tls_reload_interval = \"300ms\"\n");
    let mut open = TlsConn::open(&b.host, &b.ca.pem);
    assert_eq!(open.server_serial(), b.first_serial);
    assert_eq!(open.get("/healthz").unwrap(), 200);

    let second = b.ca.server("berth two", 2);
    replace_file(&b.key, &second.key_pem);
    replace_file(&b.cert, &second.cert_pem);
    assert!(
        wait_for_serial(&b.host, &b.ca.pem, &second.serial, Duration::from_secs(10)),
        "the new certificate was not served; log:\n{}",
        b.berth.log_text()
    );
    assert_eq!(
        open.get("/v2/").unwrap(),
        401,
        "the open connection lives on"
    );
    assert_eq!(open.server_serial(), b.first_serial);
    assert!(b.berth.log_text().contains("TLS certificate reloaded"));

    // SIGHUP only (no polling): nothing changes until the signal.
    let dir2 = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(dir2.path(), "tls_reload_interval = \"0s\"\n");
    let mut open = TlsConn::open(&b.host, &b.ca.pem);
    assert_eq!(open.get("/healthz").unwrap(), 200);
    let third = b.ca.server("berth three", 3);
    replace_file(&b.key, &third.key_pem);
    replace_file(&b.cert, &third.cert_pem);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(served_serial(&b.host, &b.ca.pem), b.first_serial);
    b.berth.signal(libc::SIGHUP);
    assert!(wait_for_serial(
        &b.host,
        &b.ca.pem,
        &third.serial,
        Duration::from_secs(10)
    ));
    assert_eq!(open.get("/healthz").unwrap(), 200);

    // A broken renewal (a key that is not the certificate's) is refused
    // on SIGHUP: the certificate in use stays, berth says why.
    let fourth = b.ca.server("berth four", 4);
    replace_file(&b.cert, &fourth.cert_pem);
    b.berth.signal(libc::SIGHUP);
    assert!(wait_for_line(
        &b.berth.log,
        "TLS files not reloaded",
        Duration::from_secs(10)
    ));
    assert_eq!(served_serial(&b.host, &b.ca.pem), third.serial);
    assert_eq!(open.get("/healthz").unwrap(), 200);
    // SIGHUP did not end berth (its default action).
    assert_eq!(b.request(None, "GET", "/healthz", &[]).0, 200);
}

#[test]
fn tls_handshake_is_bounded_in_time_and_holds_a_connection_slot() {
    // Generous because CI runs this next to docker and skopeo tests on
    // two cores: the third client's attempts below must all happen while
    // the silent two still hold their places.
    let timeout = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(
        dir.path(),
        &format!(
            "[limits]\nmax_connections_per_address = 2\ntls_handshake_timeout = \"{}s\"\n",
            timeout.as_secs()
        ),
    );
    // Two clients connect and never start their handshake.
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&b.host).unwrap())
        .collect();
    // They hold this address's two places (once berth has accepted them,
    // which a loaded machine may take a moment to do): a third is refused,
    // and told so over TLS (the refusal completes a handshake to say it).
    let refused = loop {
        let mut third = TlsConn::open(&b.host, &b.ca.pem);
        let status = third.get("/healthz").unwrap();
        if status != 200 || started.elapsed() > timeout - Duration::from_millis(1500) {
            break status;
        }
        drop(third);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(refused, 429, "after {:?}", started.elapsed());
    // berth closes them once the handshake time is up.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without a word");
    }
    assert!(
        started.elapsed() >= timeout - Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < timeout * 3);
    // Their places are free again.
    let mut fresh = TlsConn::open(&b.host, &b.ca.pem);
    assert_eq!(fresh.get("/healthz").unwrap(), 200);
    assert!(b
        .berth
        .log_text()
        .contains("TLS handshake not finished in time"));
    let (_, _, metrics) = b.request(None, "GET", "/metrics", &[]);
    let metrics = body_text(&metrics);
    let count = |limit: &str| -> u64 {
        let key = format!("berth_limit_refusals_total{{limit=\"{limit}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    // Each silent client either timed out in its handshake or, when a
    // loaded machine accepted it after one of the third's attempts had
    // taken its place, was refused at once; the third was refused once.
    let (timeouts, refused) = (
        count("tls_handshake_timeout"),
        count("max_connections_per_address"),
    );
    assert!(timeouts >= 1, "{metrics}");
    assert_eq!(timeouts + refused, 3, "{metrics}");
}

// ------------------------------------------------------------ HTTP/2 ----

/// A request body that stays open until its sender is dropped.
struct OpenBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for OpenBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

type H2Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn empty() -> H2Body {
    http_body_util::Empty::new().boxed()
}

/// An HTTP/2 connection over TLS (ALPN h2), and the task driving it
/// (finished when the connection is closed).
async fn h2_connect(
    b: &TlsBerth,
) -> (
    hyper::client::conn::http2::SendRequest<H2Body>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = (*rustls_client(&b.ca.pem, None)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&b.host).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

fn h2_request(b: &TlsBerth, method: &str, path: &str, body: H2Body) -> http::Request<H2Body> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost:{}{path}", b.berth.port))
        .body(body)
        .unwrap()
}

async fn h2_send(
    send: &mut hyper::client::conn::http2::SendRequest<H2Body>,
    req: http::Request<H2Body>,
) -> Result<(u16, String), String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body_text(&body)))
}

/// Sends GET /healthz on `send` until it answers `want`, for up to 10 s,
/// and returns the last answer. berth takes a request's place when its
/// headers arrive and gives it back when it drops the answer, just after
/// the client has read it: on a loaded machine either can lag the client's
/// view by a scheduling slice, so the test waits for the state rather than
/// sleeping a guess.
async fn h2_healthz_until(
    b: &TlsBerth,
    send: &mut hyper::client::conn::http2::SendRequest<H2Body>,
    want: u16,
) -> (u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = h2_send(send, h2_request(b, "GET", "/healthz", empty()))
            .await
            .unwrap();
        if answer.0 == want || std::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn http2_by_alpn_with_requests_in_flight_counted_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(dir.path(), "[limits]\nmax_connections_per_address = 3\n");
    runtime().block_on(async {
        // Three requests stay in flight on the one connection (token
        // forms whose bodies never end): its own place and two more. A
        // fourth on the same connection then finds no place left. Whether
        // the three have arrived can only be seen by asking, and asking
        // too early takes a place one of them needed: then start again.
        let mut attempt = 0;
        let (mut send, _driver, mut senders, mut answers) = loop {
            attempt += 1;
            let (mut send, driver) = h2_connect(&b).await;
            let mut senders = Vec::new();
            let mut answers = Vec::new();
            for _ in 0..3 {
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
                senders.push(tx);
                let mut req = h2_request(&b, "POST", "/token", OpenBody(rx).boxed());
                req.headers_mut().insert(
                    "content-type",
                    "application/x-www-form-urlencoded".parse().unwrap(),
                );
                let mut s = send.clone();
                answers.push(tokio::spawn(async move { h2_send(&mut s, req).await }));
            }
            tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            let (status, body) = h2_send(&mut send, h2_request(&b, "GET", "/healthz", empty()))
                .await
                .unwrap();
            let all_held = answers.iter().all(|a| !a.is_finished());
            if (status == 429 && all_held) || attempt == 8 {
                assert_eq!(status, 429, "{body}");
                assert!(body.contains("max_connections_per_address"), "{body}");
                assert!(all_held, "a held request was answered early");
                break (send, driver, senders, answers);
            }
            drop(senders);
            for a in answers {
                let _ = a.await;
            }
            driver.abort();
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Nor does a new HTTP/1.1 connection from this address.
        let host = b.host.clone();
        let ca = b.ca.pem.clone();
        let refused =
            tokio::task::spawn_blocking(move || TlsConn::open(&host, &ca).get("/healthz").unwrap())
                .await
                .unwrap();
        assert_eq!(refused, 429);
        // One finishes: its place is given back.
        senders.pop();
        let (status, body) = answers.pop().unwrap().await.unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("token"), "{body}");
        let (status, body) = h2_healthz_until(&b, &mut send, 200).await;
        assert_eq!(status, 200, "{body}");
        drop(senders);
        for a in answers {
            assert_eq!(a.await.unwrap().unwrap().0, 200);
        }
    });
    let log = b.berth.log_text();
    assert!(log.contains("version=HTTP/2.0"), "{log}");
}

#[test]
fn http2_idle_connections_close_and_header_lists_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(dir.path(), "[limits]\nheader_timeout = \"2s\"\n");
    runtime().block_on(async {
        // Idle after one request: closed after header_timeout.
        let (mut send, driver) = h2_connect(&b).await;
        assert_eq!(
            h2_send(&mut send, h2_request(&b, "GET", "/healthz", empty()))
                .await
                .unwrap()
                .0,
            200
        );
        let idle_since = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("an idle HTTP/2 connection is closed")
            .unwrap();
        assert!(idle_since.elapsed() >= Duration::from_millis(1500));

        // Not while a request is in flight, however long it takes...
        let (mut send, driver) = h2_connect(&b).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let mut s = send.clone();
        let req = h2_request(&b, "POST", "/token", OpenBody(rx).boxed());
        let slow = tokio::spawn(async move { h2_send(&mut s, req).await });
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!driver.is_finished(), "closed with a request in flight");
        // ...and a header list over max_header_bytes gets no further.
        let mut big = h2_request(&b, "GET", "/healthz", empty());
        big.headers_mut()
            .insert("x-big", "a".repeat(100 * 1024).parse().unwrap());
        match h2_send(&mut send, big).await {
            Ok((status, _)) => assert_eq!(status, 431),
            Err(e) => println!("oversized header list refused: {e}"),
        }
        // The connection serves on.
        assert_eq!(
            h2_send(&mut send, h2_request(&b, "GET", "/healthz", empty()))
                .await
                .unwrap()
                .0,
            200
        );
        drop(tx);
        assert_eq!(slow.await.unwrap().unwrap().0, 200);
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("idle again: closed")
            .unwrap();
    });
}

#[test]
fn http2_request_bodies_are_paced_like_http1_ones() {
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(dir.path(), "[limits]\nbody_idle_timeout = \"1s\"\n");
    runtime().block_on(async {
        let (mut send, _driver) = h2_connect(&b).await;
        // A body that never comes is cut off after body_idle_timeout.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let started = Instant::now();
        let (status, body) = h2_send(
            &mut send,
            h2_request(&b, "POST", "/token", OpenBody(rx).boxed()),
        )
        .await
        .unwrap();
        assert!(status >= 400, "{status} {body}");
        assert!(body.contains("idle"), "{body}");
        assert!(started.elapsed() < Duration::from_secs(10));
        drop(tx);
        // The connection serves on.
        let (status, _) = h2_send(&mut send, h2_request(&b, "GET", "/healthz", empty()))
            .await
            .unwrap();
        assert_eq!(status, 200);
    });
}

// ------------------------------------------------- client certificates ----

/// berth with TLS and client certificates from `clients` (a CA of its own,
/// as Kubernetes' is), plus `extra` config.
fn with_client_ca(dir: &std::path::Path, clients: &Ca, extra: &str) -> TlsBerth {
    let path = dir.join("clients-ca.crt");
    std::fs::write(&path, &clients.pem).unwrap();
    TlsBerth::start(
        dir,
        &format!(
            "[auth]\nclient_ca = \"{}\"\n{extra}\n[quota]\ndefault_limit = \"1GiB\"\n",
            path.display()
        ),
    )
}

/// A monolithic blob upload into `repo`: the status.
fn push_blob(b: &TlsBerth, client: Option<&Issued>, repo: &str, auth: Option<&str>) -> u16 {
    let blob = format!("a blob for {repo}").into_bytes();
    let mut req = ureq::http::Request::builder().method("POST").uri(format!(
        "{}/v2/{repo}/blobs/uploads/?digest={}",
        b.url(),
        sha256(&blob)
    ));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = b.agent(client).run(req.body(blob).unwrap()).unwrap();
    r.status().as_u16()
}

#[test]
fn client_certificates_are_their_tool_namespace_account() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = Ca::new("kubernetes");
    let b = with_client_ca(dir.path(), &k8s, "");
    let alice = k8s.client("alice", &["toolforge"], 10);
    let bob_password = {
        let (s, _, body) = b.request(
            None,
            "POST",
            "/admin/v1/namespaces/tool-bob/credentials",
            &[("authorization", &basic("admin", ADMIN_PASSWORD))],
        );
        assert_eq!(s, 201);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["password"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // The certificate is tool-alice's login: its own figures, not others'.
    let status = |client: Option<&Issued>, path: &str, headers: &[(&str, &str)]| {
        b.request(client, "GET", path, headers).0
    };
    assert_eq!(status(Some(&alice), "/v1/tool/alice/quotas", &[]), 200);
    assert_eq!(status(Some(&alice), "/v1/tool/bob/quotas", &[]), 403);
    assert_eq!(status(Some(&alice), "/admin/v1/quotas", &[]), 403);
    assert_eq!(status(Some(&alice), "/v2/", &[]), 200);
    assert_eq!(status(None, "/v1/tool/alice/quotas", &[]), 401);
    // It pushes into its namespace, and only there.
    assert_eq!(push_blob(&b, Some(&alice), "tool-alice/web", None), 201);
    assert_eq!(push_blob(&b, Some(&alice), "tool-bob/web", None), 403);
    assert_eq!(push_blob(&b, None, "tool-alice/web", None), 401);
    // /token issues its namespace's scopes to it.
    let (s, _, body) = b.request(
        Some(&alice),
        "GET",
        "/token?service=berth&scope=repository:tool-alice/web:pull,push",
        &[],
    );
    assert_eq!(s, 200);
    let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims: serde_json::Value = {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["sub"], "tool-alice");
    assert_eq!(
        claims["access"][0]["actions"],
        serde_json::json!(["pull", "push"])
    );

    // Credentials in the request win over the connection's certificate:
    // bob's password is bob, whatever certificate the connection holds...
    let bob = basic("tool-bob", &bob_password);
    assert_eq!(
        status(
            Some(&alice),
            "/v1/tool/bob/quotas",
            &[("authorization", &bob)]
        ),
        200
    );
    assert_eq!(
        status(
            Some(&alice),
            "/v1/tool/alice/quotas",
            &[("authorization", &bob)]
        ),
        403
    );
    // ...and bad credentials are refused, not replaced by the certificate.
    let wrong = basic("tool-alice", "wrong");
    assert_eq!(
        status(
            Some(&alice),
            "/v1/tool/alice/quotas",
            &[("authorization", &wrong)]
        ),
        401
    );

    // No certificate is the admin: CN=admin is tool-admin.
    let admin_cn = k8s.client("admin", &["system:masters"], 11);
    assert_eq!(status(Some(&admin_cn), "/admin/v1/quotas", &[]), 403);
    assert_eq!(status(Some(&admin_cn), "/v1/tool/admin/quotas", &[]), 200);
    // A name that cannot be a namespace stands for no one (anonymous).
    let node = k8s.client("system:node:worker-1", &["system:nodes"], 12);
    assert_eq!(status(Some(&node), "/v2/", &[]), 401);
    assert!(b.berth.log_text().contains("client certificate not used"));

    // Certificates the CA did not sign, or that expired, fail the handshake.
    let rogue = Ca::new("kubernetes").client("alice", &["toolforge"], 13);
    let expired = k8s.expired_client("alice", 14);
    for bad in [&rogue, &expired] {
        assert!(b
            .agent(Some(bad))
            .get(&format!("{}/v1/tool/alice/quotas", b.url()))
            .call()
            .is_err());
    }
    assert!(b.berth.log_text().contains("client certificate refused"));
}

#[test]
fn client_certificate_organization_and_namespace_template() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = Ca::new("kubernetes");
    let b = with_client_ca(
        dir.path(),
        &k8s,
        "client_cert_namespace = \"tools-{cn}\"\nclient_cert_organization = \"toolforge\"",
    );
    let tool = k8s.client("alice", &["toolforge"], 20);
    let person = k8s.client("alice", &["admins"], 21);
    assert_eq!(b.request(Some(&tool), "GET", "/v2/", &[]).0, 200);
    assert_eq!(push_blob(&b, Some(&tool), "tools-alice/web", None), 201);
    assert_eq!(push_blob(&b, Some(&tool), "tool-alice/web", None), 403);
    // The same name from outside the organization is nobody.
    assert_eq!(b.request(Some(&person), "GET", "/v2/", &[]).0, 401);
    assert_eq!(push_blob(&b, Some(&person), "tools-alice/web", None), 401);
}

// -------------------------------------------------------- real clients ----

fn skopeo(args: &[&str]) -> Command {
    let mut c = Command::new(tool("skopeo"));
    c.args(args);
    c
}

#[test]
fn skopeo_and_podman_verify_berth_with_cert_dir() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = Ca::new("kubernetes");
    let b = with_client_ca(dir.path(), &k8s, "");
    let password = {
        let (s, _, body) = b.request(
            None,
            "POST",
            "/admin/v1/namespaces/tool-e2e/credentials",
            &[("authorization", &basic("admin", ADMIN_PASSWORD))],
        );
        assert_eq!(s, 201);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["password"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let creds = format!("tool-e2e:{password}");
    let certs = dir.path().join("cert-dir");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&b.ca_file, certs.join("ca.crt")).unwrap();
    let certs = certs.display().to_string();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, "v1", "skopeo over TLS", 2);
    let src = format!("oci:{}:v1", layout.display());
    let image = format!("docker://{}/tool-e2e/tls:v1", b.host);

    // Without the CA, skopeo refuses berth's certificate.
    let err = run_failing(&mut skopeo(&[
        "copy",
        "--retry-times=0",
        "--dest-creds",
        &creds,
        &src,
        &image,
    ]));
    assert!(err.contains("x509") || err.contains("certificate"), "{err}");
    // With it (verification on, the default), a push and an inspect.
    run(&mut skopeo(&[
        "copy",
        "--dest-cert-dir",
        &certs,
        "--dest-creds",
        &creds,
        &src,
        &image,
    ]));
    let out = run(&mut skopeo(&["inspect", "--cert-dir", &certs, &image]));
    assert!(out.contains("skopeo over TLS"), "{out}");

    // podman pulls it, verifying with the same directory.
    let storage = dir.path().join("podman");
    let out = run(Command::new(tool("podman"))
        .arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "pull",
            "--cert-dir",
            &certs,
        ])
        .arg(format!("{}/tool-e2e/tls:v1", b.host)));
    assert!(!out.trim().is_empty(), "podman pull prints the image id");

    // A client certificate in the cert dir (containers-certs.d: *.cert and
    // *.key) is a tool's login: skopeo pushes with no credentials.
    let alice = k8s.client("alice", &["toolforge"], 30);
    let client_dir = dir.path().join("alice-certs");
    std::fs::create_dir_all(&client_dir).unwrap();
    std::fs::copy(&b.ca_file, client_dir.join("ca.crt")).unwrap();
    std::fs::write(client_dir.join("client.cert"), &alice.cert_pem).unwrap();
    std::fs::write(client_dir.join("client.key"), &alice.key_pem).unwrap();
    let client_dir = client_dir.display().to_string();
    run(&mut skopeo(&[
        "copy",
        "--dest-cert-dir",
        &client_dir,
        &src,
        &format!("docker://{}/tool-alice/tls:v1", b.host),
    ]));
    let err = run_failing(&mut skopeo(&[
        "copy",
        "--retry-times=0",
        "--dest-cert-dir",
        &client_dir,
        &src,
        &format!("docker://{}/tool-e2e/tls:alice", b.host),
    ]));
    assert!(
        err.contains("denied") || err.contains("DENIED") || err.contains("authentication required"),
        "{err}"
    );
}

#[test]
fn docker_pushes_and_pulls_over_tls_with_certs_d_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = Ca::new("kubernetes");
    let clients_ca = dir.path().join("clients-ca.crt");
    std::fs::write(&clients_ca, &k8s.pem).unwrap();
    // On ::1 under a name: docker never reads certs.d for 127.0.0.0/8
    // (which it treats as an insecure registry), so a pass there would
    // prove nothing.
    let b = TlsBerth::start_at(
        dir.path(),
        "::1",
        &format!("[auth]\nclient_ca = \"{}\"\n", clients_ca.display()),
    );
    let password = {
        let (s, _, body) = b.request(
            None,
            "POST",
            "/admin/v1/namespaces/tool-e2e/credentials",
            &[("authorization", &basic("admin", ADMIN_PASSWORD))],
        );
        assert_eq!(s, 201);
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["password"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let host = format!("{TEST_HOST}:{}", b.berth.port);
    let dockerd = Dockerd::start_private_etc(
        &dir.path().join("dockerd"),
        &format!("127.0.0.1 localhost\n::1 {TEST_HOST}\n"),
    );
    // An image in the daemon to push: skopeo loads a layout made here.
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, "v1", "docker over TLS", 2);
    let image = format!("{host}/tool-e2e/tls:v1");
    run(Command::new(tool("skopeo"))
        .args(["copy", "--dest-daemon-host"])
        .arg(format!("unix://{}", dockerd.socket.display()))
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!("docker-daemon:{image}")));

    // Before the CA is in certs.d, docker refuses berth's certificate:
    // this daemon does verify.
    let err = dockerd.login(&host, "tool-e2e", &password).unwrap_err();
    assert!(err.contains("x509") || err.contains("certificate"), "{err}");
    let certs = dockerd.certs_d().join(&host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&b.ca_file, certs.join("ca.crt")).unwrap();
    dockerd
        .login(&host, "tool-e2e", &password)
        .expect("docker login over TLS");
    let out = run(dockerd.cmd().args(["push", &image]));
    assert!(out.contains("digest: sha256:"), "docker push: {out}");
    run(dockerd.cmd().args(["rmi", &image]));
    run(dockerd.cmd().args(["pull", &image]));
    let (status, _, _) = b.request(None, "GET", "/v2/tool-e2e/tls/manifests/v1", &[]);
    assert_eq!(status, 200);
    run(dockerd.cmd().args(["logout", &host]));

    // A tool's client certificate in certs.d (client.cert, client.key):
    // docker pushes into the tool's namespace with no login at all...
    let alice = k8s.client("alice", &["toolforge"], 40);
    std::fs::write(certs.join("client.cert"), &alice.cert_pem).unwrap();
    std::fs::write(certs.join("client.key"), &alice.key_pem).unwrap();
    let mine = format!("{host}/tool-alice/tls:v1");
    run(dockerd.cmd().args(["tag", &image, &mine]));
    let out = run(dockerd.cmd().args(["push", &mine]));
    assert!(out.contains("digest: sha256:"), "docker push: {out}");
    // ...and nowhere else.
    let theirs = format!("{host}/tool-e2e/tls:alice");
    run(dockerd.cmd().args(["tag", &image, &theirs]));
    let err = run_failing(dockerd.cmd().args(["push", &theirs]));
    assert!(err.contains("denied"), "{err}");
}

/// Starts berth with TLS and builds (`extra` in `[builds]`), runs one
/// build of a git repository and returns it with its log.
fn build_over_tls(dir: &std::path::Path, extra: &str) -> (TlsBerth, serde_json::Value, String) {
    let b = TlsBerth::start(
        dir,
        &harness::builds_config(dir, "source_schemes = [\"file\"]\n", extra),
    );
    harness::push_run_image(&b.berth, dir);
    let source = harness::git_repo(dir);
    let (s, _, body) = b.request(
        None,
        "POST",
        "/admin/v1/namespaces/tool-demo/credentials",
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(s, 201);
    let password = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["password"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = basic("tool-demo", &password);
    let mut r = b
        .agent(None)
        .post(&format!("{}/v1/tool/demo/builds", b.url()))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .send(serde_json::json!({"source_url": source, "ref": "main"}).to_string())
        .unwrap();
    let reply: serde_json::Value =
        serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
    let id = harness::started_id(&(r.status().as_u16(), reply));
    let deadline = Instant::now() + Duration::from_secs(120);
    let build = loop {
        let (s, _, body) = b.request(
            None,
            "GET",
            &format!("/v1/tool/demo/builds/{id}"),
            &[("authorization", &auth)],
        );
        assert_eq!(s, 200);
        let build = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["build"].clone();
        let status = build["status"].as_str().unwrap().to_owned();
        if status != "BUILD_PENDING" && status != "BUILD_RUNNING" {
            break build;
        }
        assert!(Instant::now() < deadline, "build did not finish: {build}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, _, log) = b.request(
        None,
        "GET",
        &format!("/v1/tool/demo/builds/{id}/logs"),
        &[("authorization", &auth)],
    );
    (b, build, body_text(&log))
}

#[test]
fn a_build_pushes_over_tls_trusting_the_registry_ca() {
    // The lifecycle is handed the CA berth's certificate chains to
    // ([builds] registry_ca): mounted into the sandbox, named by
    // SSL_CERT_DIR, and the registry is not called insecure.
    let dir = tempfile::tempdir().unwrap();
    let (b, build, log) = build_over_tls(dir.path(), "registry_ca = \"{dir}/pki/ca.crt\"\n");
    assert_eq!(build["status"], "BUILD_SUCCESS", "{build}\n{log}");
    assert!(log.contains("===> EXPORTING"), "{log}");
    let (status, _, _) = b.request(None, "GET", "/v2/tool-demo/tool-demo/manifests/latest", &[]);
    assert_eq!(status, 200);

    // Without the CA the lifecycle does not trust berth: it verifies.
    let dir = tempfile::tempdir().unwrap();
    let (_b, build, log) = build_over_tls(dir.path(), "");
    assert_eq!(build["status"], "BUILD_FAILURE", "{build}\n{log}");
    assert!(
        log.contains("certificate") || log.contains("UnknownIssuer"),
        "{log}"
    );
}
