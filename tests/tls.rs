//! TLS end to end, against the real binary with a CA made in the test:
//! the certificate reloaded from its files and on SIGHUP while a
//! keep-alive connection lives on; handshakes bounded in time and counted
//! as connections; HTTP/2 by ALPN with its streams counted like
//! connections, its idle connections closed and its header lists bounded;
//! client certificates as tool accounts; and the real clients: docker
//! (certs.d: the CA, then a client certificate), skopeo and podman
//! (`--cert-dir`), and a build's lifecycle pushing over TLS.

mod common;
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
    let dir = tempfile::tempdir().unwrap();
    let b = TlsBerth::start(
        dir.path(),
        "[limits]\nmax_connections_per_address = 2\ntls_handshake_timeout = \"2s\"\n",
    );
    // Two clients connect and never start their handshake.
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&b.host).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    // They hold this address's two places: a third is refused, and told
    // so over TLS (the refusal completes a handshake to say it).
    let mut third = TlsConn::open(&b.host, &b.ca.pem);
    assert_eq!(third.get("/healthz").unwrap(), 429);
    // berth closes them once the handshake time is up.
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without a word");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    // Their places are free again.
    let mut fresh = TlsConn::open(&b.host, &b.ca.pem);
    assert_eq!(fresh.get("/healthz").unwrap(), 200);
    assert!(b
        .berth
        .log_text()
        .contains("TLS handshake not finished in time"));
    let (_, _, metrics) = b.request(None, "GET", "/metrics", &[]);
    let metrics = body_text(&metrics);
    assert!(
        metrics.contains("limit=\"tls_handshake_timeout\"} 2"),
        "{metrics}"
    );
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
        let (mut send, _driver) = h2_connect(&b).await;
        let (status, _) = h2_send(&mut send, h2_request(&b, "GET", "/healthz", empty()))
            .await
            .unwrap();
        assert_eq!(status, 200);
        // Three requests stay in flight on the one connection (token
        // forms whose bodies never end): its own place and two more.
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
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A fourth on the same connection finds no place left.
        let (status, body) = h2_send(&mut send, h2_request(&b, "GET", "/healthz", empty()))
            .await
            .unwrap();
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("max_connections_per_address"), "{body}");
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
        let (status, _) = h2_send(&mut send, h2_request(&b, "GET", "/healthz", empty()))
            .await
            .unwrap();
        assert_eq!(status, 200);
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
