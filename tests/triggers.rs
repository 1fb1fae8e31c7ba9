//! Builds on git push, end to end: a tool registers a build trigger, and
//! forges' push deliveries (the payloads GitLab and GitHub document, in
//! tests/fixtures/hooks/, with this test's repository, refs and commits
//! put in) reach the real binary over TCP. A signed push builds exactly
//! its commit (fetched over http from a repository served here, git's
//! dumb protocol, as tests/builds_network.rs serves one) and the image
//! lands; every bad delivery is refused and starts nothing; a burst of
//! pushes builds once, the newest commit (with SQLite and with PostgreSQL
//! metadata); the per-tool delivery rate and the per-address throttle of
//! failures hold.

mod common;
#[path = "common/builds.rs"]
mod harness;
#[path = "../storage/tests/support/postgres.rs"]
mod pg;

use common::*;
use harness::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ZERO: &str = "0000000000000000000000000000000000000000";

/// HMAC-SHA256 written out from RFC 2104 (an independent check of
/// berth's own, which uses the `hmac` crate).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    format!("sha256={outer:x}")
}

/// A commit on `main` of the test repository (`dir/src`, pushed to
/// `dir/bare.git` and made servable over dumb http); returns its id.
fn commit(dir: &Path, what: &str) -> String {
    let work = dir.join("src");
    std::fs::write(work.join("change.txt"), what).unwrap();
    let git = |args: &[&str], cwd: &Path| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.org"])
            .args(args)
            .current_dir(cwd))
    };
    git(&["add", "."], &work);
    git(&["commit", "-q", "-m", what], &work);
    git(&["push", "-q", "../bare.git", "main"], &work);
    git(&["update-server-info"], &dir.join("bare.git"));
    git(&["rev-parse", "HEAD"], &work).trim().to_owned()
}

fn head(dir: &Path) -> String {
    run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir.join("src")))
    .trim()
    .to_owned()
}

/// GitHub's documented push payload, about `url` (its clone URL; the web
/// URL without `.git`), a push of `after` to `reference`.
fn github_push(url: &str, reference: &str, before: &str, after: &str) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_str(include_str!("fixtures/hooks/github-push.json")).unwrap();
    v["ref"] = json!(reference);
    v["before"] = json!(before);
    v["after"] = json!(after);
    v["deleted"] = json!(after == ZERO);
    v["repository"]["clone_url"] = json!(url);
    v["repository"]["html_url"] = json!(url.trim_end_matches(".git"));
    v["repository"]["default_branch"] = json!("main");
    v["repository"]["master_branch"] = json!("main");
    serde_json::to_vec_pretty(&v).unwrap()
}

/// GitLab's documented push payload, likewise.
fn gitlab_push(url: &str, reference: &str, before: &str, after: &str) -> Vec<u8> {
    let mut v: Value =
        serde_json::from_str(include_str!("fixtures/hooks/gitlab-push.json")).unwrap();
    v["ref"] = json!(reference);
    v["before"] = json!(before);
    v["after"] = json!(after);
    v["checkout_sha"] = json!(after);
    let web = url.trim_end_matches(".git");
    v["project"]["git_http_url"] = json!(url);
    v["project"]["http_url"] = json!(url);
    v["project"]["web_url"] = json!(web);
    v["project"]["homepage"] = json!(web);
    v["project"]["default_branch"] = json!("main");
    v["repository"]["git_http_url"] = json!(url);
    v["repository"]["homepage"] = json!(web);
    serde_json::to_vec(&v).unwrap()
}

/// An answer: status, JSON body, Retry-After.
type Reply = (u16, Value, Option<String>);

/// POSTs a delivery.
fn post(url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    let mut b = ureq::http::Request::builder().method("POST").uri(url);
    b = b.header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let mut r = http_agent()
        .run(b.body(body).unwrap())
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = r.body_mut().read_to_vec().unwrap_or_default();
    (
        r.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry,
    )
}

/// A GitHub delivery of `event`, signed with `secret` (unsigned if None).
fn github(berth: &Berth, hook: &str, secret: Option<&str>, event: &str, body: Vec<u8>) -> Reply {
    let mut headers = vec![
        ("x-github-event", event.to_owned()),
        (
            "x-github-delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        ),
        ("user-agent", "GitHub-Hookshot/044aadd".into()),
    ];
    if let Some(s) = secret {
        headers.push(("x-hub-signature-256", hmac_sha256(s.as_bytes(), &body)));
    }
    post(&format!("{}{hook}", berth.url()), &headers, body)
}

/// A GitLab push delivery with `token` as X-Gitlab-Token.
fn gitlab(berth: &Berth, hook: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut headers = vec![("x-gitlab-event", "Push Hook".to_owned())];
    if let Some(t) = token {
        headers.push(("x-gitlab-token", t.to_owned()));
    }
    let (s, v, _) = post(&format!("{}{hook}", berth.url()), &headers, body);
    (s, v)
}

/// The tool's trigger request.
fn put_trigger(tool: &Tool, body: Value) -> (u16, Value) {
    let r = tool
        .client
        .send(
            "PUT",
            &format!("/v1/tool/{}/trigger", tool.name),
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
        .unwrap();
    (r.status, r.json().unwrap_or(Value::Null))
}

fn builds(tool: &Tool) -> Vec<Value> {
    let r = tool
        .client
        .get(&format!("/v1/tool/{}/builds", tool.name))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    r.json().unwrap()["builds"].as_array().unwrap().clone()
}

/// berth with builds, http sources from `localhost` trusted, `limits`
/// under `[limits]` (which may end with further tables); the repository
/// in `dir` served over http.
fn setup(dir: &Path, limits: &str) -> (Berth, GitServer, String) {
    git_repo(dir);
    let (berth, _) = start_berth_with(
        dir,
        "source_schemes = [\"http\"]\n",
        &format!("private_source_hosts = [\"localhost\"]\n[limits]\n{limits}"),
    );
    let server = GitServer::start(dir, Hang::Never);
    let url = server.url("localhost", "bare.git");
    (berth, server, url)
}

/// Registers `tool`'s trigger for `url`; returns (hook path, secret).
fn register(tool: &Tool, url: &str, extra: Value) -> (String, String) {
    let mut body = json!({ "source_url": url });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, v) = put_trigger(tool, body);
    assert_eq!(status, 201, "{v}");
    let hook = v["trigger"]["hook_url"].as_str().unwrap().to_owned();
    assert!(hook.starts_with("/v1/hooks/"), "{v}");
    let secret = v["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "{v}");
    (hook, secret)
}

#[test]
fn a_signed_github_push_builds_its_commit_and_bad_deliveries_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _server, url) = setup(dir.path(), "");
    let tool = Tool::new(&berth, "hooked");

    // Registering is checked as a build request is.
    let (status, v) = put_trigger(
        &tool,
        json!({ "source_url": url, "envvars": { "LD_PRELOAD": "x" } }),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v["error"][0].as_str().unwrap().contains("reserved"), "{v}");
    let (status, v) = put_trigger(&tool, json!({ "source_url": url, "ref": "a..b" }));
    assert_eq!(status, 400, "{v}");
    let (status, v) = put_trigger(
        &tool,
        json!({ "source_url": url.replace("bare", "nothing") }),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"][0].as_str().unwrap().starts_with("cannot fetch"),
        "{v}"
    );
    let (status, _) = put_trigger(&tool, json!({ "source_url": url, "colour": "blue" }));
    assert_eq!(status, 400, "unknown fields are refused");
    // Another tool may not touch it; anonymous callers neither.
    let other = Tool::new(&berth, "other");
    let r = other
        .client
        .send(
            "PUT",
            "/v1/tool/hooked/trigger",
            &[],
            json!({ "source_url": url }).to_string().into_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.describe());
    let (status, _, _) = request(
        "GET",
        &format!("{}/v1/tool/hooked/trigger", berth.url()),
        &[],
    );
    assert_eq!(status, 401);
    assert_eq!(
        tool.client.get("/v1/tool/hooked/trigger").unwrap().status,
        404
    );

    let (hook, secret) = register(&tool, &url, json!({}));
    let shown = tool
        .client
        .get("/v1/tool/hooked/trigger")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(shown["trigger"]["hook_url"], hook.as_str());
    assert_eq!(shown["trigger"]["ref"], Value::Null, "default branch");
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown once: {shown}"
    );
    assert!(!shown.to_string().contains(&secret));
    assert!(
        !std::fs::read(berth.data_dir.join("berth.db"))
            .unwrap()
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "the secret is not in the database"
    );

    // GitHub's ping when the webhook is created.
    let (status, v, _) = github(
        &berth,
        &hook,
        Some(&secret),
        "ping",
        br#"{"zen":"Keep it logically awesome.","hook_id":1}"#.to_vec(),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "pong");

    // Two commits; the push of the first must build the first, though
    // the branch has moved on.
    let first = head(dir.path());
    let a = commit(dir.path(), "a");
    let b = commit(dir.path(), "b");
    let (status, v, _) = github(
        &berth,
        &hook,
        Some(&secret),
        "push",
        github_push(&url, "refs/heads/main", &first, &a),
    );
    assert_eq!(status, 202, "{v}\n{}", berth.log_text());
    assert_eq!(v["status"], "queued");
    assert_eq!(v["commit"], a.as_str());
    let id = v["build_id"].as_str().unwrap().to_owned();
    let build = tool.wait(&id, Duration::from_secs(120));
    let log = tool.logs(&id, false);
    assert_eq!(build["status"], "BUILD_SUCCESS", "{build}\n{log}");
    println!("hook answer: {v}\nbuild: {build:#}\nbuild log:\n{log}");
    assert_eq!(build["resolved_ref"], a.as_str());
    assert_eq!(build["parameters"]["commit"], a.as_str());
    assert_eq!(build["parameters"]["ref"], "refs/heads/main");
    assert_eq!(
        build["trigger"],
        json!({ "kind": "push", "commit": a, "ref": "refs/heads/main", "pusher": "Codertocat" })
    );
    assert!(log.contains(&format!("[git] checked out {a}")), "{log}");
    assert!(!log.contains(&format!("checked out {b}")), "{log}");
    assert!(log.contains("queued by a push of"), "{log}");
    // Toolforge's CLI prints messages.info with `show`.
    let r = tool
        .client
        .get(&format!("/v1/tool/hooked/builds/{id}"))
        .unwrap()
        .json()
        .unwrap();
    assert!(
        r["messages"]["info"][0]
            .as_str()
            .unwrap()
            .contains(&format!("triggered by a push of {a}")),
        "{r}"
    );
    // The image landed.
    let destination = build["destination_image"].as_str().unwrap();
    let digest = destination.rsplit_once('@').unwrap().1;
    let m = tool
        .client
        .get("/v2/tool-hooked/tool-hooked/manifests/latest")
        .unwrap();
    assert_eq!(m.status, 200, "{}", m.describe());
    assert_eq!(sha256(&m.body), digest);
    // A manual build says so.
    let manual = started_id(&tool.start(&url, json!({})));
    assert_eq!(tool.build(&manual)["trigger"], json!({ "kind": "manual" }));
    tool.wait(&manual, Duration::from_secs(120));
    let count = builds(&tool).len();
    assert_eq!(count, 2);

    // Each bad delivery is refused, and starts nothing.
    let push_b = github_push(&url, "refs/heads/main", &a, &b);
    let refusals: Vec<(&str, Reply, u16)> = vec![
        (
            "replay",
            github(
                &berth,
                &hook,
                Some(&secret),
                "push",
                github_push(&url, "refs/heads/main", &first, &a),
            ),
            409,
        ),
        (
            "wrong signature",
            github(
                &berth,
                &hook,
                Some("not the secret"),
                "push",
                push_b.clone(),
            ),
            403,
        ),
        (
            "missing signature",
            github(&berth, &hook, None, "push", push_b.clone()),
            401,
        ),
        (
            "unknown hook",
            github(
                &berth,
                "/v1/hooks/0123456789abcdef0123456789abcdef",
                Some(&secret),
                "push",
                push_b.clone(),
            ),
            404,
        ),
        (
            "not a hook id",
            github(
                &berth,
                "/v1/hooks/..%2F..%2Fetc",
                Some(&secret),
                "push",
                push_b.clone(),
            ),
            404,
        ),
        (
            "another repository",
            github(
                &berth,
                &hook,
                Some(&secret),
                "push",
                github_push(
                    "https://github.com/Codertocat/Hello-World.git",
                    "refs/heads/main",
                    &a,
                    &b,
                ),
            ),
            422,
        ),
        (
            "oversized",
            github(&berth, &hook, Some(&secret), "push", {
                let mut big = push_b.clone();
                big.truncate(big.len() - 2);
                big.extend(format!(",\"padding\":\"{}\"}}", "x".repeat(1 << 20)).into_bytes());
                big
            }),
            413,
        ),
        (
            "malformed",
            github(
                &berth,
                &hook,
                Some(&secret),
                "push",
                b"{\"ref\": \"refs/heads/main\", \"after\": ".to_vec(),
            ),
            400,
        ),
        (
            "not a payload",
            github(&berth, &hook, Some(&secret), "push", b"[1, 2, 3]".to_vec()),
            400,
        ),
    ];
    for (what, (status, v, _), want) in refusals {
        assert_eq!(status, want, "{what}: {v}");
        let message = v["error"][0].as_str().unwrap_or_default();
        assert!(
            !message.is_empty(),
            "{what}: an error in the tool API's shape: {v}"
        );
        assert_eq!(
            v["errors"][0]["message"].as_str(),
            Some(message),
            "{what}: {v}"
        );
        assert!(!message.contains(&secret), "{what}");
        println!("{what}: {status} {message}");
    }
    // No forge's event header.
    let (status, v, _) = post(
        &format!("{}{hook}", berth.url()),
        &[(
            "x-hub-signature-256",
            hmac_sha256(secret.as_bytes(), &push_b),
        )],
        push_b.clone(),
    );
    assert_eq!(status, 400, "{v}");

    // Acknowledged and ignored: deleting the branch, other branches, tags,
    // other events.
    for (what, body, event) in [
        (
            "branch deletion",
            github_push(&url, "refs/heads/main", &b, ZERO),
            "push",
        ),
        (
            "another branch",
            github_push(&url, "refs/heads/dev", &a, &b),
            "push",
        ),
        ("a tag", github_push(&url, "refs/tags/v1", ZERO, &b), "push"),
        (
            "the documented example (a tag deletion)",
            {
                let mut v: Value =
                    serde_json::from_str(include_str!("fixtures/hooks/github-push.json")).unwrap();
                v["repository"]["clone_url"] = json!(url);
                serde_json::to_vec(&v).unwrap()
            },
            "push",
        ),
        ("an issue", br#"{"action":"opened"}"#.to_vec(), "issues"),
    ] {
        let (status, v, _) = github(&berth, &hook, Some(&secret), event, body);
        assert_eq!(status, 200, "{what}: {v}");
        assert_eq!(v["status"], "ignored", "{what}: {v}");
        println!("{what}: {}", v["reason"]);
    }
    assert_eq!(builds(&tool).len(), count, "nothing started");

    // A tag pattern makes tag pushes build; the hook and secret stay.
    let (status, v) = put_trigger(&tool, json!({ "source_url": url, "ref": "refs/tags/v*" }));
    assert_eq!(status, 200, "{v}");
    assert!(v.get("secret").is_none());
    assert_eq!(v["trigger"]["hook_url"], hook.as_str());
    let (status, v, _) = github(
        &berth,
        &hook,
        Some(&secret),
        "push",
        github_push(&url, "refs/tags/v1", ZERO, &b),
    );
    assert_eq!(status, 202, "{v}");
    let tag_build = v["build_id"].as_str().unwrap().to_owned();
    tool.cancel(&tag_build);

    // Rotation: the old secret stops working at once.
    let r = tool
        .client
        .send("POST", "/v1/tool/hooked/trigger/rotate", &[], Vec::new())
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let rotated = r.json().unwrap()["secret"].as_str().unwrap().to_owned();
    assert_ne!(rotated, secret);
    let (status, _, _) = github(&berth, &hook, Some(&secret), "ping", b"{}".to_vec());
    assert_eq!(status, 403);
    let (status, _, _) = github(&berth, &hook, Some(&rotated), "ping", b"{}".to_vec());
    assert_eq!(status, 200);

    // Deleted: the hook is unknown.
    let r = tool.client.delete("/v1/tool/hooked/trigger").unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    let (status, v, _) = github(
        &berth,
        &hook,
        Some(&rotated),
        "push",
        github_push(&url, "refs/heads/main", &b, &commit(dir.path(), "c")),
    );
    assert_eq!(status, 404, "{v}");
    assert_eq!(
        tool.client
            .delete("/v1/tool/hooked/trigger")
            .unwrap()
            .status,
        404
    );
}

#[test]
fn a_burst_of_gitlab_pushes_builds_once_the_newest_commit() {
    burst_of_gitlab_pushes(false)
}

/// The same with the metadata in PostgreSQL (`[storage] database_url`):
/// triggers, replays and coalescing are that backend's SQL.
#[test]
fn a_burst_of_gitlab_pushes_builds_once_the_newest_commit_on_postgres() {
    burst_of_gitlab_pushes(true)
}

fn burst_of_gitlab_pushes(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let storage = if postgres {
        format!(
            "[storage]\ndatabase_url = \"{}\"\ndatabase_max_connections = 8\n",
            pg::fresh_database()
        )
    } else {
        String::new()
    };
    let (berth, _server, url) = setup(dir.path(), &storage);
    if postgres {
        assert!(
            berth.log_text().contains("Postgres"),
            "{}",
            berth.log_text()
        );
    }
    let tool = Tool::new(&berth, "busy");
    let (hook, secret) = register(&tool, &url, json!({ "ref": "main", "image_name": "web" }));

    // Both runners busy, so pushes wait.
    let sleepers: Vec<String> = (0..2)
        .map(|_| started_id(&tool.start(&url, json!({ "envvars": { "MODE": "sleep" } }))))
        .collect();
    // Running is not enough: a build is RUNNING from before its git
    // checkout, and one that failed there (the test commits to the same
    // repository meanwhile) would free its runner and let the first push
    // start at once. The creator saying "sleeping" is past all that.
    for s in &sleepers {
        tool.wait_log(s, "sleeping");
        tool.wait_status(s, "BUILD_RUNNING");
    }
    // Wrong and missing tokens first: refused, nothing queued.
    let first = head(dir.path());
    let c = commit(dir.path(), "c0");
    let (status, v) = gitlab(
        &berth,
        &hook,
        Some("wrong"),
        gitlab_push(&url, "refs/heads/main", &first, &c),
    );
    assert_eq!(status, 403, "{v}");
    let (status, v) = gitlab(
        &berth,
        &hook,
        None,
        gitlab_push(&url, "refs/heads/main", &first, &c),
    );
    assert_eq!(status, 401, "{v}");
    assert_eq!(builds(&tool).len(), 2);

    let mut before = first;
    let mut pushed = Vec::new();
    for i in 1..=5 {
        let after = commit(dir.path(), &format!("c{i}"));
        let (status, v) = gitlab(
            &berth,
            &hook,
            Some(&secret),
            gitlab_push(&url, "refs/heads/main", &before, &after),
        );
        assert_eq!(status, 202, "push {i}: {v}");
        assert_eq!(
            v["status"],
            if i == 1 { "queued" } else { "coalesced" },
            "push {i}: {v}"
        );
        pushed.push((v["build_id"].as_str().unwrap().to_owned(), after.clone()));
        before = after;
    }
    let (id, last) = pushed.last().unwrap().clone();
    assert!(
        pushed.iter().all(|(b, _)| *b == id),
        "one build: {pushed:?}"
    );
    let push_builds: Vec<Value> = builds(&tool)
        .into_iter()
        .filter(|b| b["trigger"]["kind"] == "push")
        .collect();
    assert_eq!(push_builds.len(), 1, "{push_builds:?}");
    assert_eq!(push_builds[0]["resolved_ref"], last.as_str());
    // A late replay of a replaced commit starts nothing either.
    let (status, v) = gitlab(
        &berth,
        &hook,
        Some(&secret),
        gitlab_push(&url, "refs/heads/main", ZERO, &pushed[1].1),
    );
    assert_eq!(status, 409, "{v}");

    for s in &sleepers {
        tool.cancel(s);
    }
    let build = tool.wait(&id, Duration::from_secs(120));
    let log = tool.logs(&id, false);
    assert_eq!(build["status"], "BUILD_SUCCESS", "{build}\n{log}");
    assert_eq!(
        build["trigger"],
        json!({ "kind": "push", "commit": last, "ref": "refs/heads/main", "pusher": "jsmith" })
    );
    assert!(log.contains(&format!("[git] checked out {last}")), "{log}");
    assert_eq!(log.matches(": this build will build ").count(), 4, "{log}");
    assert!(build["destination_image"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/tool-busy/web:latest@sha256:", berth.host())));
    let m = tool
        .client
        .get("/v2/tool-busy/web/manifests/latest")
        .unwrap();
    assert_eq!(m.status, 200, "{}", m.describe());
    assert_eq!(
        builds(&tool)
            .iter()
            .filter(|b| b["trigger"]["kind"] == "push")
            .count(),
        1
    );
}

#[test]
fn deliveries_are_limited_per_tool_and_failures_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _server, url) = setup(dir.path(), "hooks_per_tool_per_minute = 3\n");
    let tool = Tool::new(&berth, "limited");
    let (hook, secret) = register(&tool, &url, json!({}));
    let calm = Tool::new(&berth, "calm");
    let (calm_hook, calm_secret) = register(&calm, &url, json!({}));

    // Unsigned deliveries do not use up the tool's rate.
    for _ in 0..3 {
        assert_eq!(github(&berth, &hook, None, "ping", b"{}".to_vec()).0, 401);
    }
    for i in 0..3 {
        let (status, v, _) = github(&berth, &hook, Some(&secret), "ping", b"{}".to_vec());
        assert_eq!(status, 200, "delivery {i}: {v}");
    }
    let (status, v, retry) = github(&berth, &hook, Some(&secret), "ping", b"{}".to_vec());
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["errors"][0]["code"], "TOOMANYREQUESTS");
    assert!(
        v["error"][0]
            .as_str()
            .unwrap()
            .contains("hooks_per_tool_per_minute"),
        "{v}"
    );
    let retry: u64 = retry.unwrap().parse().unwrap();
    assert!(
        (2..=60).contains(&retry),
        "Retry-After {retry}: when a delivery frees"
    );
    // Another tool is served.
    let (status, _, _) = github(
        &berth,
        &calm_hook,
        Some(&calm_secret),
        "ping",
        b"{}".to_vec(),
    );
    assert_eq!(status, 200);
    assert!(builds(&tool).is_empty());

    // Guessing hooks from one address: the first five failures (the three
    // unsigned ones above count) are answered at once, then each waits
    // (the login throttle's rules).
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(
            github(
                &berth,
                "/v1/hooks/0123456789abcdef0123456789abcdef",
                None,
                "ping",
                b"{}".to_vec()
            )
            .0,
            404
        );
    }
    let t = Instant::now();
    assert_eq!(
        github(
            &berth,
            "/v1/hooks/fedcba9876543210fedcba9876543210",
            None,
            "ping",
            b"{}".to_vec()
        )
        .0,
        404
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "the 7th failure waited: {:?}",
        t.elapsed()
    );
    // A delivery that passes is not slowed by them: it is answered while
    // the next failures (1 s, then 2 s) are still waiting.
    let berth_url = berth.url();
    let failing = std::thread::spawn(move || {
        for _ in 0..2 {
            let (status, _, _) = post(
                &format!("{berth_url}/v1/hooks/0123456789abcdef0123456789abcdef"),
                &[("x-github-event", "ping".to_owned())],
                b"{}".to_vec(),
            );
            assert_eq!(status, 404);
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let (status, _, _) = github(
        &berth,
        &calm_hook,
        Some(&calm_secret),
        "ping",
        b"{}".to_vec(),
    );
    assert_eq!(status, 200);
    assert!(
        !failing.is_finished(),
        "the passing delivery was answered before the failures"
    );
    failing.join().unwrap();
    println!("failures took {:?}", started.elapsed());
    let metrics = request("GET", &format!("{}/metrics", berth.url()), &[]).2;
    assert!(String::from_utf8_lossy(&metrics).contains("hooks_per_tool_per_minute"));
}
