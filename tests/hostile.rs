//! berth under attack by its own tenants. Each test starts the real binary
//! (most with `ulimit -n 1024`), drives one class of abuse at it, and checks
//! both sides: the attacker is refused with the right status, code and a
//! message naming the limit, and another tool is served meanwhile (health,
//! a push, a pull). SECURITY.md lists every limit these tests exercise.

mod common;

use berth_conformance::client::{Client, Resp};
use berth_conformance::fixtures::{image_manifest, Blob, Ctx, OCI_MANIFEST};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// The descriptor limit the attacks run under, as the issue found them.
const ULIMIT: u64 = 1024;

fn start(dir: &Path, config: &str) -> Berth {
    Berth::start_limited(&dir.join("data"), free_port(), config, Some(ULIMIT))
}

fn tool_client(berth: &Berth, ns: &str) -> Client {
    let password = berth.namespace_credentials(ns);
    Client::new(&berth.url(), Some((ns.to_owned(), password)))
}

/// Another tenant is served: health, a push of a fresh image, and a pull
/// of it byte for byte.
fn others_are_served(berth: &Berth, ns: &str) {
    let (status, _, body) = get(&format!("{}/healthz", berth.url()), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let ctx = Ctx::new(tool_client(berth, ns), ns);
    let repo = ctx.repo("served");
    let (manifest, digest) = ctx
        .push_image(&repo, "v1")
        .unwrap_or_else(|e| panic!("{ns} could not push while under attack: {e}"));
    let r = ctx
        .client
        .get(&format!("/v2/{repo}/manifests/{digest}"))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.body, manifest);
}

fn assert_refused(r: &Resp, status: u16, code: &str, mentions: &[&str]) {
    assert_eq!(r.status, status, "{}", r.describe());
    assert_eq!(r.error_code().as_deref(), Some(code), "{}", r.describe());
    for m in mentions {
        assert!(r.text().contains(m), "{:?} not in {}", m, r.describe());
    }
}

fn start_upload(client: &Client, repo: &str) -> Resp {
    client.start_upload(repo).unwrap()
}

/// A TCP connection to berth from `source` (another loopback address, so
/// that the attacker's per-address count is not the other tenants').
fn connect_from(source: &str, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&src.into()).unwrap();
    let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&dst.into()).unwrap();
    socket.into()
}

/// Reads whatever arrives until the peer closes or `timeout` passes;
/// returns the text and whether the connection was closed.
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (String, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

#[test]
fn upload_sessions_hold_no_descriptors_and_are_capped_per_namespace_and_overall() {
    let dir = tempfile::tempdir().unwrap();
    // More sessions than the process has descriptors: before, ~1,000 open
    // sessions broke every request of every tool with "Too many open files".
    let berth = start(
        dir.path(),
        "[limits]\nuploads_per_namespace = 1500\nuploads_total = 1600\n",
    );
    let attacker = tool_client(&berth, "tool-flood");
    for i in 0..1500 {
        let r = start_upload(&attacker, "tool-flood/x");
        assert_eq!(r.status, 202, "session {i}: {}", r.describe());
    }
    let r = start_upload(&attacker, "tool-flood/x");
    assert_refused(
        &r,
        429,
        "TOOMANYREQUESTS",
        &["uploads_per_namespace", "1500"],
    );
    assert!(
        berth.open_fds() < 200,
        "1500 idle upload sessions hold {} descriptors",
        berth.open_fds()
    );
    others_are_served(&berth, "tool-victim");

    // The overall cap: a second namespace fills what is left of it.
    let second = tool_client(&berth, "tool-flood2");
    let mut opened = 0;
    let refusal = loop {
        let r = start_upload(&second, "tool-flood2/x");
        if r.status != 202 {
            break r;
        }
        opened += 1;
        assert!(opened <= 100, "the overall cap did not hold");
    };
    assert_refused(&refusal, 429, "TOOMANYREQUESTS", &["uploads_total", "1600"]);
    // The victim started a session in others_are_served (and finished it).
    assert_eq!(opened, 100);
    // Pulls need no session: still served.
    let (status, _, _) = get(&format!("{}/healthz", berth.url()), None);
    assert_eq!(status, 200);
    assert!(berth
        .log_text()
        .lines()
        .all(|l| !l.contains("Too many open files")));
}

#[test]
fn abandoned_uploads_count_against_quota_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), "[limits]\nupload_idle_timeout = \"3s\"\n");
    let admin_client = Client::new(&berth.url(), admin());
    let r = admin_client
        .send(
            "PUT",
            "/admin/v1/quotas/tool-q",
            &[("content-type", "application/json")],
            br#"{"limit_bytes": 10000000}"#.to_vec(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let client = tool_client(&berth, "tool-q");
    let patch = |loc: &str, len: usize| client.send("PATCH", loc, &[], vec![7u8; len]).unwrap();
    // Two abandoned uploads staging 9 MB between them.
    let mut abandoned = Vec::new();
    for len in [6_000_000, 3_000_000] {
        let loc = start_upload(&client, "tool-q/app")
            .header("location")
            .unwrap()
            .to_owned();
        let r = patch(&loc, len);
        assert_eq!(r.status, 202, "{}", r.describe());
        abandoned.push(r.header("location").unwrap().to_owned());
    }
    // Staged bytes count: 2 MB more do not fit under 10 MB.
    let loc = start_upload(&client, "tool-q/app")
        .header("location")
        .unwrap()
        .to_owned();
    let r = patch(&loc, 2_000_000);
    assert_refused(
        &r,
        403,
        "DENIED",
        &["quota exceeded for tool-q", "in unfinished uploads"],
    );
    others_are_served(&berth, "tool-victim");

    // Idle sessions expire within minutes (here: seconds) and give their
    // bytes back; then the push fits.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let loc = start_upload(&client, "tool-q/app")
            .header("location")
            .unwrap()
            .to_owned();
        let r = patch(&loc, 2_000_000);
        if r.status == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle uploads never expired: {}",
            r.describe()
        );
        let _ = client.delete(&loc);
        std::thread::sleep(Duration::from_millis(500));
    }
    // Both abandoned sessions go (a status GET does not keep them alive).
    for loc in abandoned {
        loop {
            let r = client.get(&loc).unwrap();
            if r.status == 404 {
                assert_refused(&r, 404, "BLOB_UPLOAD_UNKNOWN", &["expired"]);
                break;
            }
            assert_eq!(r.status, 204, "{}", r.describe());
            assert!(Instant::now() < deadline, "an idle upload never expired");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn slow_bodies_slow_headers_and_idle_connections_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(
        dir.path(),
        "[limits]\nbody_idle_timeout = \"2s\"\nbody_min_rate = \"1KiB\"\nbody_rate_grace = \"3s\"\nheader_timeout = \"3s\"\n",
    );
    let password = berth.namespace_credentials("tool-slow");
    let client = Client::new(&berth.url(), Some(("tool-slow".into(), password.clone())));
    let auth = basic("tool-slow", &password);

    // 20 uploads trickling one byte a second: under the idle timeout, far
    // under the minimum rate. Each must be cut off, not held forever.
    let mut trickles: Vec<TcpStream> = (0..20)
        .map(|_| {
            let loc = start_upload(&client, "tool-slow/x")
                .header("location")
                .unwrap()
                .to_owned();
            let mut s = connect_from("127.0.0.2", berth.port);
            write!(
                s,
                "PATCH {loc} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 1000000\r\n\r\n"
            )
            .unwrap();
            s
        })
        .collect();
    // One connection that never sends its headers, one that sends them a
    // byte at a time, one that is simply idle.
    let mut silent = connect_from("127.0.0.2", berth.port);
    let mut slow_head = connect_from("127.0.0.2", berth.port);
    // A keep-alive connection that goes quiet after one request.
    let mut idle = connect_from("127.0.0.2", berth.port);
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let started = Instant::now();
    let mut cut = vec![false; trickles.len()];
    while Instant::now() < started + Duration::from_secs(30) && cut.iter().any(|c| !c) {
        for (i, s) in trickles.iter_mut().enumerate() {
            if !cut[i] && s.write_all(b"x").is_err() {
                cut[i] = true;
            }
            if !cut[i] {
                s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
                let mut b = [0u8; 512];
                if s.read(&mut b).is_ok() {
                    cut[i] = true; // an answer (the error) or EOF
                }
            }
        }
        let _ = slow_head.write_all(b"G");
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert!(
        cut.iter().all(|c| *c),
        "{} of 20 trickling uploads were still open after 30 s",
        cut.iter().filter(|c| !**c).count()
    );
    for (name, s) in [("silent", &mut silent), ("slow header", &mut slow_head)] {
        let (_, closed) = read_until_closed(s, Duration::from_secs(15));
        assert!(closed, "a {name} connection was not closed");
    }
    let (text, closed) = read_until_closed(&mut idle, Duration::from_secs(15));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(closed, "an idle keep-alive connection was not closed");
    others_are_served(&berth, "tool-victim");
}

#[test]
fn connections_are_capped_per_client_address() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), "[limits]\nmax_connections_per_address = 50\n");
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(connect_from("127.0.0.2", berth.port));
    }
    let mut refused = 0;
    let mut silent = 0;
    for s in held.iter_mut() {
        let (text, _) = read_until_closed(s, Duration::from_millis(150));
        if text.starts_with("HTTP/1.1 429") {
            assert!(text.contains("TOOMANYREQUESTS"), "{text}");
            assert!(text.contains("max_connections_per_address"), "{text}");
            refused += 1;
        } else {
            assert!(text.is_empty(), "{text}");
            silent += 1;
        }
    }
    assert_eq!((silent, refused), (50, 150));
    let metrics = Client::new(&berth.url(), None)
        .get("/metrics")
        .unwrap()
        .text_all();
    assert!(
        metrics.contains("berth_limit_refusals_total{limit=\"max_connections_per_address\"} 150"),
        "{metrics}"
    );
    // Another address (the tests' own 127.0.0.1) is served meanwhile.
    others_are_served(&berth, "tool-victim");
    assert!(berth.open_fds() < 200, "{} descriptors", berth.open_fds());
    drop(held);
    // The attacker's connections closed: its address may connect again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect_from("127.0.0.2", berth.port);
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let (text, _) = read_until_closed(&mut s, Duration::from_secs(5));
        if text.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn token_requests_and_the_token_cache_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), "[limits]\ntoken_cache_bytes = \"2MiB\"\n");
    let anonymous = Client::new(&berth.url(), None);
    // 2,000 scopes (a ~150 KiB token before) are refused up front.
    let form: String = (0..2000)
        .map(|i| format!("scope=repository:a/{i}:pull"))
        .collect::<Vec<_>>()
        .join("&");
    let r = anonymous
        .send(
            "POST",
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form.into_bytes(),
        )
        .unwrap();
    assert_refused(&r, 429, "TOOMANYREQUESTS", &["token_max_scopes", "32"]);
    // A token longer than any berth issues is refused without a look.
    let r = anonymous
        .send(
            "GET",
            "/v2/tool-x/r/tags/list",
            &[("authorization", &format!("Bearer {}", "a".repeat(20_000)))],
            Vec::new(),
        )
        .unwrap();
    assert_refused(&r, 401, "UNAUTHORIZED", &["token_max_bytes"]);

    // 2,000 distinct tokens of 32 long scopes each, each presented once:
    // ~10 KiB of grants apiece, ~20 MiB if every one were remembered.
    let long = "x".repeat(200);
    let before = berth.rss_bytes();
    let agent = http_agent();
    for t in 0..2000 {
        let query: String = (0..32)
            .map(|i| format!("scope=repository:tool-x/{long}-{t}-{i}:pull"))
            .collect::<Vec<_>>()
            .join("&");
        let mut r = agent
            .get(&format!("{}/token?service=berth&{query}", berth.url()))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value =
            serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
        let token = v["token"].as_str().unwrap();
        assert!(token.len() <= 16 * 1024, "{}", token.len());
        let r = agent
            .get(&format!("{}/v2/tool-x/{long}-{t}-0/tags/list", berth.url()))
            .header("authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let grown = berth.rss_bytes().saturating_sub(before);
    assert!(
        grown < 12 * 1024 * 1024,
        "RSS grew by {} MiB with a 2 MiB token cache",
        grown / (1024 * 1024)
    );
    others_are_served(&berth, "tool-victim");
}

#[test]
fn parallel_password_guessing_is_refused_without_slowing_other_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), "");
    berth.namespace_credentials("tool-target");
    let other_password = berth.namespace_credentials("tool-other");
    let url = berth.url();
    let guessing = std::thread::spawn(move || {
        let threads: Vec<_> = (0..100)
            .map(|t| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let agent = http_agent();
                    (0..4)
                        .map(|i| {
                            agent
                                .get(&format!("{url}/token?scope=repository:tool-target/x:push"))
                                .header(
                                    "authorization",
                                    &basic("tool-target", &format!("guess-{t}-{i}")),
                                )
                                .call()
                                .unwrap()
                                .status()
                                .as_u16()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect::<Vec<u16>>()
    });
    // Meanwhile, from the same address, another account logs in: neither
    // refused nor held back by the delays the guesses earned.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let started = Instant::now();
        let r = http_agent()
            .get(&format!(
                "{}/token?scope=repository:tool-other/x:push",
                berth.url()
            ))
            .header("authorization", &basic("tool-other", &other_password))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "another account's valid login took {:?} (the throttle's 8 s delay?)",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let statuses = guessing.join().unwrap();
    let judged = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(judged + refused, 400, "{statuses:?}");
    assert!(
        judged <= 40 && refused >= 360,
        "400 parallel guesses: {judged} were checked, {refused} refused"
    );
    others_are_served(&berth, "tool-victim");
}

#[test]
fn stored_content_is_served_as_data_never_as_a_page() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), "");
    let ctx = Ctx::new(tool_client(&berth, "tool-xss"), "tool-xss");
    let repo = "tool-xss/page";
    let config = ctx.config();
    ctx.push_blob(repo, &config).unwrap();
    let annotated = |media_type: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[],"annotations":{{"x":"<script>fetch('/admin/v1/quotas')</script>"}}}}"#,
            config.digest,
            config.bytes.len()
        )
        .into_bytes()
    };
    // A page by Content-Type, or by the body's mediaType, or a media type
    // carrying a control character: refused, nothing stored.
    for (content_type, body) in [
        ("text/html", annotated(OCI_MANIFEST)),
        (OCI_MANIFEST, annotated("text/html")),
        (
            "application/json",
            annotated("application/vnd.oci.image.manifest.v1+json\\u0001"),
        ),
    ] {
        let r = ctx.put_manifest(repo, "v1", content_type, &body).unwrap();
        assert_refused(&r, 400, "MANIFEST_INVALID", &[]);
    }
    let mut invalid_utf8 = annotated(OCI_MANIFEST);
    let at = invalid_utf8
        .windows(6)
        .position(|w| w == b"script")
        .unwrap();
    invalid_utf8[at] = 0xff;
    let r = ctx
        .put_manifest(repo, "v1", OCI_MANIFEST, &invalid_utf8)
        .unwrap();
    assert_refused(&r, 400, "MANIFEST_INVALID", &["UTF-8"]);
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/v1")).unwrap();
    assert_refused(&r, 404, "MANIFEST_UNKNOWN", &[]);

    // What is stored is served as its manifest type, with nosniff and a
    // sandboxing CSP; so are errors and every other answer.
    let ok = annotated(OCI_MANIFEST);
    let r = ctx.put_manifest(repo, "v2", OCI_MANIFEST, &ok).unwrap();
    assert_eq!(r.status, 201, "{}", r.describe());
    for path in [
        format!("/v2/{repo}/manifests/v2"),
        format!("/v2/{repo}/blobs/{}", config.digest),
        format!("/v2/{repo}/manifests/missing"),
        "/healthz".to_owned(),
        "/v2/".to_owned(),
    ] {
        let r = ctx.client.get(&path).unwrap();
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("sandbox") && csp.contains("default-src 'none'"),
            "{path}: {csp}"
        );
        assert!(
            !r.header("content-type")
                .unwrap_or_default()
                .contains("html"),
            "{path}"
        );
    }
    let r = ctx.client.get(&format!("/v2/{repo}/manifests/v2")).unwrap();
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    others_are_served(&berth, "tool-victim");
}

#[test]
fn refused_writes_leave_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), "");
    let ctx = Ctx::new(tool_client(&berth, "tool-ghost"), "tool-ghost");
    // A manifest naming blobs the repository does not have.
    let config = ctx.config();
    let layer = ctx.blob(100);
    let manifest = image_manifest(OCI_MANIFEST, &config, &[&layer], None);
    let r = ctx
        .put_manifest("tool-ghost/never", "v1", OCI_MANIFEST, &manifest)
        .unwrap();
    assert_refused(&r, 400, "MANIFEST_BLOB_UNKNOWN", &[]);
    // A blob over the namespace's quota.
    let admin_client = Client::new(&berth.url(), admin());
    let r = admin_client
        .send(
            "PUT",
            "/admin/v1/quotas/tool-ghost",
            &[("content-type", "application/json")],
            br#"{"limit_bytes": 1000}"#.to_vec(),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let big = Blob::new(vec![9u8; 5000]);
    let err = ctx.push_blob("tool-ghost/toobig", &big).unwrap_err();
    assert!(err.contains("403"), "{err}");
    // Neither left a repository behind.
    let r = admin_client.get("/v2/_catalog").unwrap();
    assert_eq!(r.status, 200);
    let catalog = r.json().unwrap();
    let repos: Vec<&str> = catalog["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        !repos.iter().any(|r| r.starts_with("tool-ghost/")),
        "{repos:?}"
    );
    let r = ctx.client.get("/v2/tool-ghost/never/tags/list").unwrap();
    assert_refused(&r, 404, "NAME_UNKNOWN", &[]);
}

#[test]
fn metrics_show_private_namespaces_only_to_those_who_may_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(
        dir.path(),
        "[auth]\nprivate_namespaces = [\"tool-secret\"]\n",
    );
    for ns in ["tool-secret", "tool-open"] {
        let ctx = Ctx::new(tool_client(&berth, ns), ns);
        ctx.push_image(&format!("{ns}/app"), "v1").unwrap();
    }
    // Methods a client invents are counted as OTHER, not one series each.
    for i in 0..50 {
        let mut s = connect_from("127.0.0.1", berth.port);
        write!(
            s,
            "FOO{i} /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let (text, _) = read_until_closed(&mut s, Duration::from_secs(5));
        assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    }
    let anonymous = Client::new(&berth.url(), None).get("/metrics").unwrap();
    assert_eq!(anonymous.status, 200);
    let text = String::from_utf8_lossy(&anonymous.body).into_owned();
    assert!(text.contains("namespace=\"tool-open\""), "{text}");
    assert!(
        !text.contains("tool-secret"),
        "anonymous scrape shows a private namespace"
    );
    assert!(!text.contains("FOO"), "invented methods became labels");
    assert!(text.contains("method=\"OTHER\""));
    let (status, _, body) = request(
        "GET",
        &format!("{}/metrics", berth.url()),
        &[("authorization", &basic("admin", ADMIN_PASSWORD))],
    );
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("namespace=\"tool-secret\""));
}

#[test]
fn a_second_berth_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), "");
    let port = free_port();
    let mut second = Berth::spawn(&first.data_dir, port, "", None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the second berth kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log =
        std::fs::read_to_string(first.data_dir.with_extension(format!("{port}.log"))).unwrap();
    assert!(
        log.contains(&format!(
            "in use by another berth process (pid {})",
            first.pid()
        )),
        "{log}"
    );
    // The first one never noticed.
    others_are_served(&first, "tool-victim");
}

/// A request refused before berth reads its body (an out-of-order chunk,
/// an unknown upload, a PUT without its digest, a monolithic POST with a
/// malformed digest or past the session cap) still gets its error: berth
/// reads and drops the body first, so a client sending megabytes reads the
/// answer instead of a reset connection.
#[test]
fn refusals_before_the_body_are_answered_not_reset() {
    let dir = tempfile::tempdir().unwrap();
    let berth = start(dir.path(), "[limits]\nuploads_per_namespace = 2\n");
    let client = tool_client(&berth, "tool-early");
    let body = vec![7u8; 8 * 1024 * 1024];
    let r = start_upload(&client, "tool-early/app");
    let location = r.header("location").unwrap().to_owned();
    let send = |method: &str, url: &str, headers: &[(&str, &str)]| {
        client
            .send(method, url, headers, body.clone())
            .unwrap_or_else(|e| panic!("{method} {url}: the answer was lost: {e}"))
    };
    let len = body.len().to_string();
    let r = send(
        "PATCH",
        &location,
        &[
            ("content-range", &format!("100-{}", body.len() + 99)),
            ("content-length", &len),
        ],
    );
    assert_refused(&r, 416, "BLOB_UPLOAD_INVALID", &["does not continue"]);
    let unknown = "/v2/tool-early/app/blobs/uploads/00000000-0000-0000-0000-000000000000";
    let r = send("PATCH", unknown, &[]);
    assert_refused(&r, 404, "BLOB_UPLOAD_UNKNOWN", &[]);
    let r = send("PUT", &location, &[]);
    assert_refused(&r, 400, "DIGEST_INVALID", &["digest"]);
    let r = send(
        "POST",
        "/v2/tool-early/app/blobs/uploads/?digest=sha256:nothex",
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.describe());
    // One session is open; a second fills the cap; a monolithic POST
    // past it is refused, and answered.
    start_upload(&client, "tool-early/app");
    let digest = format!("sha256:{}", "0".repeat(64));
    let r = send(
        "POST",
        &format!("/v2/tool-early/app/blobs/uploads/?digest={digest}"),
        &[],
    );
    assert_refused(&r, 429, "TOOMANYREQUESTS", &["uploads_per_namespace"]);
}
