//! Builds cannot reach inside the network: sources on loopback, private,
//! link-local... addresses are refused in every spelling before git runs;
//! a host the admin trusts works (over http, git's dumb protocol served
//! here); what a caller learns about an unreachable repository is the same
//! whether the port is open, closed or silent; git resolutions are capped
//! per tool and overall while everyone else is served; and a cancel stops
//! a build while git fetches.

mod common;
#[path = "common/builds.rs"]
mod harness;

use berth_conformance::client::Client;
use common::*;
use harness::*;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A listener on 127.0.0.1 that counts the connections it accepts.
fn counting_listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (port, n)
}

#[test]
fn sources_inside_the_network_are_refused_before_git_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _) = start_berth_with(dir.path(), "source_schemes = [\"https\", \"http\"]\n", "");
    let tool = Tool::new(&berth, "ssrf");
    let (port, connections) = counting_listener();
    // Addresses typed out: refused, saying why (the caller typed them).
    for url in [
        format!("http://127.0.0.1:{port}/x.git"),
        format!("HTTPS://127.0.0.1:{port}/x.git"),
        format!("hTTp://127.0.0.1:{port}/x.git"),
        format!("http://2130706433:{port}/x.git"),
        format!("http://0x7f000001:{port}/x.git"),
        format!("http://0x7f.1:{port}/x.git"),
        format!("http://127.1:{port}/x.git"),
        format!("http://0177.0.0.1:{port}/x.git"),
        format!("http://127.0.0.1.:{port}/x.git"),
        format!("http://[::1]:{port}/x.git"),
        format!("http://[::ffff:127.0.0.1]:{port}/x.git"),
        format!("http://0.0.0.0:{port}/x.git"),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://10.0.0.1/x.git".into(),
        "http://172.16.5.4/x.git".into(),
        "http://192.168.1.1/x.git".into(),
        "http://100.64.0.1/x.git".into(),
        "http://[fd00::1]/x.git".into(),
        "http://[fe80::1]/x.git".into(),
        "http://224.0.0.1/x.git".into(),
        "http://255.255.255.255/x.git".into(),
    ] {
        let reply = tool.start(&url, serde_json::json!({}));
        assert_eq!(reply.0, 400, "{url}: {}", reply.1);
        let m = error_message(&reply);
        assert!(m.contains("must name a public host"), "{url}: {m}");
    }
    // Names that resolve inside: the generic answer (no DNS oracle).
    for url in [
        format!("http://localhost:{port}/x.git"),
        format!("http://LOCALHOST:{port}/x.git"),
    ] {
        let reply = tool.start(&url, serde_json::json!({}));
        assert_eq!(reply.0, 400, "{url}: {}", reply.1);
        let m = error_message(&reply);
        assert!(
            m.starts_with("cannot fetch the repository")
                && m.ends_with("check that it exists and is public"),
            "{url}: {m}"
        );
    }
    // Schemes, credentials.
    for (url, want) in [
        ("file:///etc".to_owned(), "schemes"),
        ("ftp://example.org/x.git".into(), "schemes"),
        ("git://example.org/x.git".into(), "schemes"),
        ("ssh://git@example.org/x.git".into(), "schemes"),
        ("https://user:pw@example.org/x.git".into(), "credentials"),
        ("--upload-pack=touch /tmp/x".into(), "characters"),
    ] {
        let reply = tool.start(&url, serde_json::json!({}));
        assert_eq!(reply.0, 400, "{url}: {}", reply.1);
        assert!(error_message(&reply).contains(want), "{url}: {}", reply.1);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "nothing connected to the loopback port"
    );
    let list = tool
        .client
        .get("/v1/tool/ssrf/builds")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["builds"].as_array().unwrap().len(), 0);
    // The detail is in berth's own log.
    assert!(berth.log_text().contains("localhost resolves to"));
}

#[test]
fn a_trusted_internal_host_works_and_ports_look_alike() {
    let dir = tempfile::tempdir().unwrap();
    git_repo(dir.path());
    let (berth, _) = start_berth_with(
        dir.path(),
        "source_schemes = [\"http\"]\n",
        "private_source_hosts = [\"localhost\"]\ngit_resolve_timeout = \"3s\"\n",
    );
    let server = GitServer::start(dir.path(), Hang::Never);
    let tool = Tool::new(&berth, "internal");

    // Over http from the trusted name, through the whole build.
    let id = started_id(&tool.start(&server.url("localhost", "bare.git"), serde_json::json!({})));
    let b = tool.wait(&id, Duration::from_secs(120));
    assert_eq!(
        b["status"],
        "BUILD_SUCCESS",
        "{b}\n{}",
        tool.logs(&id, false)
    );
    assert!(tool.logs(&id, false).contains("[git] checked out"));
    // The same server by address is not trusted.
    let reply = tool.start(&server.url("127.0.0.1", "bare.git"), serde_json::json!({}));
    assert_eq!(reply.0, 400);
    assert!(error_message(&reply).contains("loopback"), "{}", reply.1);

    // A closed port, a port that answers something else, one that says
    // nothing: one answer, the URL aside.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (open, _) = counting_listener();
    let silent = GitServer::start(dir.path(), Hang::Always);
    let mut answers = Vec::new();
    for port in [closed, open, silent.port] {
        let url = format!("http://localhost:{port}/bare.git");
        let reply = tool.start(&url, serde_json::json!({}));
        assert_eq!(reply.0, 400, "{url}: {}", reply.1);
        answers.push(error_message(&reply).replace(&url, "URL"));
    }
    silent.release();
    assert_eq!(answers[0], answers[1], "closed vs open");
    assert_eq!(answers[0], answers[2], "closed vs silent");
    assert_eq!(
        answers[0],
        "cannot fetch the repository \"URL\": check that it exists and is public"
    );
    // git's own words went to berth's log only.
    let log = berth.log_text();
    assert!(log.contains("build source refused or unreachable"), "{log}");
}

#[test]
fn git_resolutions_are_capped_per_tool_and_overall() {
    let dir = tempfile::tempdir().unwrap();
    let source = git_repo(dir.path());
    let (berth, _) = start_berth_with(
        dir.path(),
        "source_schemes = [\"http\", \"file\"]\n",
        "private_source_hosts = [\"localhost\"]\ngit_resolutions_per_tool = 2\ngit_resolutions_total = 3\ngit_resolve_timeout = \"300s\"\n",
    );
    let hang = GitServer::start(dir.path(), Hang::Always);
    let hanging = hang.url("localhost", "bare.git");
    let a = Tool::new(&berth, "capa");
    let b = Tool::new(&berth, "capb");
    let c = Tool::new(&berth, "capc");
    let start_in_background = |t: &Tool| {
        let (t, url) = (t.again(&berth), hanging.clone());
        std::thread::spawn(move || t.start(&url, serde_json::json!({})))
    };
    let held_a: Vec<_> = (0..2).map(|_| start_in_background(&a)).collect();
    hang.wait_connections(2);
    // The tool's next requests are refused at once, naming the limit...
    for _ in 0..3 {
        let reply = a.start(&hanging, serde_json::json!({}));
        assert_eq!(reply.0, 429, "{}", reply.1);
        assert_eq!(reply.1["errors"][0]["code"], "TOOMANYREQUESTS");
        assert!(
            error_message(&reply).contains("git_resolutions_per_tool = 2"),
            "{}",
            reply.1
        );
    }
    // ...while another tool is served: health, and a build of its own.
    assert_eq!(get(&format!("{}/healthz", berth.url()), None).0, 200);
    let id = started_id(&b.start(&source, serde_json::json!({})));
    assert_eq!(
        b.wait(&id, Duration::from_secs(120))["status"],
        "BUILD_SUCCESS"
    );
    // Overall: a third resolution fills the registry's cap.
    let held_b = start_in_background(&b);
    hang.wait_connections(3);
    let reply = c.start(&source, serde_json::json!({}));
    assert_eq!(reply.0, 429, "{}", reply.1);
    assert!(
        error_message(&reply).contains("git_resolutions_total = 3"),
        "{}",
        reply.1
    );
    assert_eq!(get(&format!("{}/healthz", berth.url()), None).0, 200);
    // Only the admitted resolutions reached the host.
    assert_eq!(hang.connections.load(Ordering::SeqCst), 3);
    // When the host finally hangs up, the held requests get the generic
    // answer, and the slots come back.
    hang.release();
    for h in held_a.into_iter().chain([held_b]) {
        let reply = h.join().unwrap();
        assert_eq!(reply.0, 400, "{}", reply.1);
        assert!(error_message(&reply).starts_with("cannot fetch the repository"));
    }
    let id = started_id(&c.start(&source, serde_json::json!({})));
    assert_eq!(
        c.wait(&id, Duration::from_secs(120))["status"],
        "BUILD_SUCCESS"
    );
    let metrics = Client::new(&berth.url(), admin())
        .get("/metrics")
        .unwrap()
        .text_all();
    assert!(
        metrics.contains("limit_refusals_total{limit=\"git_resolutions_per_tool\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("limit_refusals_total{limit=\"git_resolutions_total\"} 1"));
}

#[test]
fn cancel_stops_a_build_while_git_fetches() {
    let dir = tempfile::tempdir().unwrap();
    git_repo(dir.path());
    let (berth, _) = start_berth_with(
        dir.path(),
        "source_schemes = [\"http\"]\n",
        "private_source_hosts = [\"localhost\"]\ngit_fetch_timeout = \"300s\"\n",
    );
    // The refs are served (so the request resolves), the objects hang.
    let server = GitServer::start(dir.path(), Hang::On("/objects/"));
    let tool = Tool::new(&berth, "slowgit");
    let url = server.url("localhost", "bare.git");
    let id = started_id(&tool.start(&url, serde_json::json!({})));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !server
        .paths
        .lock()
        .unwrap()
        .iter()
        .any(|p| p.contains("/objects/"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "git never fetched objects"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(tool.build(&id)["status"], "BUILD_RUNNING");
    let marker = format!("localhost:{}", server.port);
    assert!(!processes_with(&marker).is_empty(), "git is fetching");
    let (status, body) = tool.cancel(&id);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["build"]["status"], "BUILD_CANCELLED", "{body}");
    wait_no_processes(&marker, "git must die with the cancel");
    // git's connection was closed by git's death, not by the server.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.closed_by_client.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fetch's connection stayed open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = tool.logs(&id, false);
    assert!(log.contains("BUILD_CANCELLED"), "{log}");
    assert!(!log.contains("running the lifecycle"), "{log}");
}
