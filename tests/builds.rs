//! Builds end to end: a real git repository, the real binary, the lifecycle
//! stand-in (test-tools' `cnb-creator`) pushing into berth, docker pulling
//! the result; and the failure paths, cancel, timeout, restart, quota and
//! the queue, with a `creator` wrapper whose behaviour each build picks
//! through its env vars (the lifecycle reads them from `platform/env`);
//! reserved env var names; the cap on followed logs. All of it runs in
//! the build sandbox (tests/builds_sandbox.rs attacks it).

mod common;
#[path = "common/builds.rs"]
mod harness;

use berth_conformance::client::Client;
use common::*;
use harness::*;
use std::io::{BufRead, BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

/// Finds `file` in any layer of a `docker save` archive.
fn saved_image_has(archive: &[u8], file: &str) -> bool {
    let mut outer = tar::Archive::new(archive);
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        let mut inner = tar::Archive::new(bytes.as_slice());
        if let Ok(entries) = inner.entries() {
            for e in entries.flatten() {
                if e.path()
                    .map(|p| p.to_string_lossy().trim_start_matches("./") == file)
                    .unwrap_or(false)
                {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn a_git_repository_becomes_an_image_docker_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _) = start_berth(dir.path(), "");
    let source = git_repo(dir.path());
    let dockerd = Dockerd::start(&dir.path().join("dockerd"));
    let tool = Tool::new(&berth, "demo");

    let reply = tool.start(
        &source,
        serde_json::json!({ "envvars": { "GREETING": "hello" } }),
    );
    let id = started_id(&reply);
    assert_eq!(
        reply.1["new_build"]["resolved_ref"].as_str().unwrap().len(),
        40
    );
    // Follow the log while it runs: it ends when the build does.
    let log = tool.logs(&id, true);
    let build = tool.build("latest");
    assert_eq!(build["build_id"], id);
    assert_eq!(build["status"], "BUILD_SUCCESS", "{build}\n{log}");
    let destination = build["destination_image"].as_str().unwrap();
    assert!(
        destination.starts_with(&format!(
            "{}/tool-demo/tool-demo:latest@sha256:",
            berth.host()
        )),
        "{destination}"
    );
    println!("build log:\n{log}");
    for want in [
        "[git] checked out",
        "===> EXPORTING",
        "Mounted layer",
        "*** Images",
        "BUILD_SUCCESS",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
    // The run image's layers were mounted, not uploaded again.
    let run_manifest = Client::new(&berth.url(), admin())
        .get("/v2/toolforge/run/manifests/latest")
        .unwrap()
        .json()
        .unwrap();
    for l in run_manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert!(
            log.contains(&format!("Mounted layer {d}")),
            "run layer {d} not mounted:\n{log}"
        );
        assert!(!log.contains(&format!("Uploaded layer {d}")));
    }

    let image = format!("{}/tool-demo/tool-demo:latest", berth.host());
    run(dockerd.cmd().args(["pull", &image]));
    let labels = run(dockerd.cmd().args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        &image,
    ]));
    println!("pulled image labels: {labels}");
    for label in [
        "io.buildpacks.lifecycle.metadata",
        "io.buildpacks.build.metadata",
        "io.buildpacks.project.metadata",
    ] {
        assert!(labels.contains(label), "{labels}");
    }
    let saved = Command::new(dockerd.cmd().get_program())
        .args(dockerd.cmd().get_args())
        .args(["save", &image])
        .output()
        .unwrap();
    assert!(saved.status.success());
    assert!(
        saved_image_has(&saved.stdout, "workspace/app.py"),
        "the app is in the image"
    );

    // Listing, a second build (its cache survives), pruning is per image.
    let second = started_id(&tool.start(&source, serde_json::json!({})));
    assert_eq!(
        tool.wait(&second, Duration::from_secs(60))["status"],
        "BUILD_SUCCESS"
    );
    assert!(
        tool.logs(&second, false).contains("1 earlier build(s)"),
        "the cache dir is kept between builds"
    );
    let list = tool
        .client
        .get("/v1/tool/demo/builds")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["builds"][0]["build_id"], second, "newest first");
    // A tool sees only its own builds.
    let other = Tool::new(&berth, "other");
    assert_eq!(
        other
            .client
            .get(&format!("/v1/tool/demo/builds/{id}"))
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        other
            .client
            .get(&format!("/v1/tool/other/builds/{id}"))
            .unwrap()
            .status,
        404
    );
    // Deleting a build can delete its image.
    let r = tool
        .client
        .delete(&format!("/v1/tool/demo/builds/{id}?delete_image=true"))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.text().contains("deleted image"), "{}", r.text());
}

#[test]
fn failures_cancel_timeout_quota_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut berth, data) = start_berth(dir.path(), "timeout = \"3s\"\n");
    let source = git_repo(dir.path());
    let tool = Tool::new(&berth, "f");

    // Bad requests are refused at once.
    let (status, body) = tool.start(
        &source.replace("bare.git", "nothing.git"),
        serde_json::json!({}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot fetch the repository"),
        "{body}"
    );
    let (status, body) = tool.start(&source, serde_json::json!({ "ref": "no-such-branch" }));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-branch"),
        "{body}"
    );
    let (status, _) = tool.start("ftp://example.org/x.git", serde_json::json!({}));
    assert_eq!(status, 400);
    let (status, _) = tool.start(&source, serde_json::json!({ "envvars": { "A-B": "x" } }));
    assert_eq!(status, 400);

    // A failing lifecycle.
    let id = started_id(&tool.start(
        &source,
        serde_json::json!({ "envvars": { "MODE": "fail" } }),
    ));
    let b = tool.wait(&id, Duration::from_secs(30));
    assert_eq!(b["status"], "BUILD_FAILURE");
    assert!(b["message"].as_str().unwrap().contains("status 3"), "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("No buildpack groups passed detection"),
        "{b}"
    );

    // Timeout.
    let id = started_id(&tool.start(
        &source,
        serde_json::json!({ "envvars": { "MODE": "sleep" } }),
    ));
    let b = tool.wait(&id, Duration::from_secs(30));
    assert_eq!(b["status"], "BUILD_TIMEOUT", "{b}");

    // Cancel mid-build kills the lifecycle, and everything it started.
    let marker = format!("{}/tool-f/", berth.host());
    let id = started_id(&tool.start(
        &source,
        serde_json::json!({ "envvars": { "MODE": "sleep" } }),
    ));
    tool.wait_log(&id, "sleeping");
    assert!(
        !processes_with(&marker).is_empty(),
        "the sleeping lifecycle is visible on the host by its output image"
    );
    let (status, body) = tool.cancel(&id);
    assert_eq!(status, 200, "{body}");
    assert_eq!(tool.build(&id)["status"], "BUILD_CANCELLED");
    let (status, _) = tool.cancel(&id);
    assert_eq!(status, 409, "cancelling a finished build");
    wait_no_processes(&marker, "lifecycle processes must die after timeout/cancel");

    // Quota: the push is refused and the build says why.
    let small = Tool::new(&berth, "small");
    Client::new(&berth.url(), admin())
        .send(
            "PUT",
            "/admin/v1/quotas/tool-small",
            &[],
            br#"{"limit_bytes": 1000}"#.to_vec(),
        )
        .unwrap();
    let id = started_id(&small.start(&source, serde_json::json!({})));
    let b = small.wait(&id, Duration::from_secs(60));
    assert_eq!(b["status"], "BUILD_FAILURE");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("quota exceeded for tool-small"),
        "{b}"
    );
    assert!(small
        .logs(&id, false)
        .contains("quota exceeded for tool-small"));

    // Restart during a build: the record says so, and the sandbox died
    // with the berth that ran it (bwrap --die-with-parent).
    let id = started_id(&tool.start(
        &source,
        serde_json::json!({ "envvars": { "MODE": "sleep" } }),
    ));
    // Kill berth while the lifecycle itself runs, not while git fetches.
    tool.wait_log(&id, "sleeping");
    let port = berth.port;
    berth.kill9();
    wait_no_processes(&marker, "the build's processes must not outlive berth");
    let berth = Berth::start_with(
        &data,
        port,
        &std::fs::read_to_string(data.with_extension(format!("{port}.toml"))).unwrap(),
    );
    let tool = Tool::new(&berth, "f");
    let b = tool.build(&id);
    assert_eq!(b["status"], "BUILD_FAILURE");
    assert!(b["message"].as_str().unwrap().contains("restarted"), "{b}");
    let log = tool.logs(&id, false);
    assert!(
        log.contains("running the lifecycle"),
        "the log survives the restart: {log}"
    );
}

#[test]
fn five_builds_with_two_runners_all_finish_two_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, data) = start_berth(dir.path(), "");
    let source = git_repo(dir.path());
    let tool = Tool::new(&berth, "q");
    let ids: Vec<String> = (0..5)
        .map(|_| {
            started_id(&tool.start(
                &source,
                serde_json::json!({ "envvars": { "MODE": "timed" } }),
            ))
        })
        .collect();
    let statuses: Vec<String> = ids
        .iter()
        .map(|id| tool.build(id)["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        statuses.iter().any(|s| s == "BUILD_PENDING"),
        "builds beyond the runners wait in the queue: {statuses:?}"
    );
    for id in &ids {
        assert_eq!(
            tool.wait(id, Duration::from_secs(60))["status"],
            "BUILD_SUCCESS"
        );
    }
    // Each run logged "start <ns>" and "end <ns>" (the sandbox gives the
    // build no way to write anywhere else). Read from the files: the
    // oldest record is pruned (below), its log stays on disk.
    let events: Vec<String> = ids
        .iter()
        .flat_map(|id| {
            std::fs::read_to_string(data.join("builds/logs").join(format!("{id}.log")))
                .unwrap()
                .lines()
                .filter_map(|l| l.split_once("[lifecycle] ").map(|(_, e)| e.to_owned()))
                .filter(|e| e.starts_with("start ") || e.starts_with("end "))
                .collect::<Vec<_>>()
        })
        .collect();
    let (mut running, mut peak) = (0i32, 0i32);
    let mut points: Vec<(u128, i32)> = events
        .iter()
        .map(|l| {
            let (kind, t) = l.split_once(' ').unwrap();
            (
                t.trim().parse().unwrap(),
                if kind == "start" { 1 } else { -1 },
            )
        })
        .collect();
    points.sort_by_key(|(t, d)| (*t, *d));
    for (_, d) in points {
        running += d;
        peak = peak.max(running);
    }
    assert_eq!(events.iter().filter(|l| l.starts_with("start")).count(), 5);
    assert_eq!(
        peak, 2,
        "at most max_parallel = 2 at once, and the queue used both"
    );
    // Only the newest 4 successful records of the image are kept.
    let list = tool
        .client
        .get("/v1/tool/q/builds")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list["builds"].as_array().unwrap().len(), 4, "{list}");
}

#[test]
fn platform_reserved_env_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _) = start_berth(dir.path(), "");
    let source = git_repo(dir.path());
    let tool = Tool::new(&berth, "envs");
    for name in [
        "CNB_PLATFORM_API",
        "CNB_REGISTRY_AUTH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PATH",
        "HOME",
        "BASH_ENV",
        "ENV",
        "IFS",
        "GLIBC_TUNABLES",
        "BERTH_ADMIN_PASSWORD",
    ] {
        let reply = tool.start(
            &source,
            serde_json::json!({ "envvars": { "GREETING": "hi", name: "x" } }),
        );
        assert_eq!(reply.0, 400, "{name}: {}", reply.1);
        let m = error_message(&reply);
        assert!(m.contains(name) && m.contains("reserved"), "{name}: {m}");
    }
    // Ordinary names, buildpack settings and runtime options still pass,
    // and reach the lifecycle.
    let id = started_id(&tool.start(
        &source,
        serde_json::json!({ "envvars": { "BP_NODE_VERSION": "20", "NODE_OPTIONS": "--max-old-space-size=512", "GREETING": "hello" } }),
    ));
    let b = tool.wait(&id, Duration::from_secs(60));
    assert_eq!(b["status"], "BUILD_SUCCESS", "{b}");
    let list = tool
        .client
        .get("/v1/tool/envs/builds")
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        list["builds"].as_array().unwrap().len(),
        1,
        "refused requests leave no build behind"
    );
}

/// Opens `GET .../logs?follow=true` on a connection of its own and reads
/// the status line; the connection stays open (the follow goes on).
fn open_follow(berth: &Berth, tool: &Tool, id: &str) -> (u16, BufReader<std::net::TcpStream>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", berth.port)).unwrap();
    write!(
        s,
        "GET /v1/tool/{t}/builds/{id}/logs?follow=True HTTP/1.1\r\nHost: {h}\r\nAuthorization: {a}\r\nConnection: close\r\n\r\n",
        t = tool.name,
        h = berth.host(),
        a = basic(&format!("tool-{}", tool.name), &tool.password),
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, r)
}

/// The rest of an answer whose status line was read: its body as text.
fn rest(mut r: BufReader<std::net::TcpStream>) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut r, &mut text).unwrap();
    text
}

#[test]
fn followed_logs_are_capped_per_tool() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _) = start_berth(
        dir.path(),
        "log_follows_per_tool = 2\nlog_follows_total = 3\n",
    );
    let source = git_repo(dir.path());
    let a = Tool::new(&berth, "followa");
    let b = Tool::new(&berth, "followb");
    let c = Tool::new(&berth, "followc");
    let sleep = serde_json::json!({ "envvars": { "MODE": "sleep" } });
    let ids: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|t| started_id(&t.start(&source, sleep.clone())))
        .collect();
    // Two builds running at once (max_parallel = 2); c's waits, and may
    // be followed too.
    a.wait_log(&ids[0], "sleeping");
    let mut open = Vec::new();
    for _ in 0..2 {
        let (code, conn) = open_follow(&berth, &a, &ids[0]);
        assert_eq!(code, 200);
        open.push(conn);
    }
    let (code, conn) = open_follow(&berth, &a, &ids[0]);
    assert_eq!(code, 429, "a third follow of one tool");
    let body = rest(conn);
    assert!(
        body.contains("TOOMANYREQUESTS") && body.contains("log_follows_per_tool = 2"),
        "{body}"
    );
    // Another tool is served; past the overall cap nobody is.
    let (code, b_conn) = open_follow(&berth, &b, &ids[1]);
    assert_eq!(code, 200, "another tool follows its own build");
    let (code, conn) = open_follow(&berth, &c, &ids[2]);
    assert_eq!(code, 429);
    assert!(rest(conn).contains("log_follows_total = 3"));
    assert_eq!(get(&format!("{}/healthz", berth.url()), None).0, 200);
    // Reading a log without following takes no slot.
    assert!(a.logs(&ids[0], false).contains("sleeping"));
    // A follow that ends gives its slot back: cancelling the build ends it.
    let (status, _) = b.cancel(&ids[1]);
    assert_eq!(status, 200);
    assert!(rest(b_conn).contains("BUILD_CANCELLED"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, conn) = open_follow(&berth, &c, &ids[2]);
        if code == 200 {
            drop(conn);
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A client that goes away gives its slot back too.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, conn) = open_follow(&berth, &a, &ids[0]);
        if code == 200 {
            open.push(conn);
            break;
        }
        assert!(Instant::now() < deadline, "a closed follow kept its slot");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.cancel(&ids[0]);
    c.cancel(&ids[2]);
    let metrics = Client::new(&berth.url(), admin())
        .get("/metrics")
        .unwrap()
        .text_all();
    assert!(
        metrics.contains("limit_refusals_total{limit=\"log_follows_per_tool\"}"),
        "{metrics}"
    );
}

#[test]
fn a_host_without_the_lifecycle_says_so_at_start_up_and_in_each_build() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("nowhere");
    let berth = Berth::start_with(
        &dir.path().join("data"),
        free_port(),
        &format!(
            "[builds]\nsource_schemes = [\"file\"]\nlifecycle_dir = \"{}\"\nbuildpacks_dir = \"{}\"\norder = \"{}\"\n",
            nowhere.join("lifecycle").display(),
            nowhere.join("buildpacks").display(),
            nowhere.join("order.toml").display()
        ),
    );
    let log = berth.log_text();
    for want in [
        "builds are enabled but this host lacks",
        "the CNB lifecycle's creator",
        "the buildpacks",
        "the order file",
    ] {
        assert!(log.contains(want), "start-up log lacks {want:?}:\n{log}");
    }
    let source = git_repo(dir.path());
    let tool = Tool::new(&berth, "nolc");
    let id = started_id(&tool.start(&source, serde_json::json!({})));
    let build = tool.wait(&id, Duration::from_secs(60));
    assert_eq!(build["status"], "BUILD_FAILURE", "{build}");
    let message = build["message"].as_str().unwrap();
    assert!(
        message.contains("lacks the CNB lifecycle's creator")
            && message.contains("[builds] lifecycle_dir"),
        "{message}"
    );
}
