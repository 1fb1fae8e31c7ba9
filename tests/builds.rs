//! Builds end to end: a real git repository, the real binary, the lifecycle
//! stand-in (conformance's `cnb-creator`) pushing into berth, docker pulling
//! the result; and the failure paths, cancel, timeout, restart, quota and
//! the queue, with a `creator` wrapper whose behaviour each build picks
//! through its env vars (the lifecycle reads them from `platform/env`).

mod common;

use berth_conformance::client::Client;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The lifecycle stand-in binary, built if this test run has not built it.
fn standin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_berth")).with_file_name("cnb-creator");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).args(["build", "-p", "berth-conformance", "--bin", "cnb-creator"]));
    }
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A lifecycle dir whose `creator` runs the stand-in, or (by the build's
/// MODE env var) fails, sleeps, or records a short timed run.
fn lifecycle(dir: &Path) -> PathBuf {
    let lc = dir.join("lifecycle");
    std::fs::create_dir_all(&lc).unwrap();
    let script = format!(
        r#"#!/bin/sh
prev=""; report=""; platform=""
for a in "$@"; do
  case "$prev" in -report) report="$a";; -platform) platform="$a";; esac
  prev="$a"
done
mode=$(cat "$platform/env/MODE" 2>/dev/null || echo real)
case "$mode" in
  fail) echo "detecting..."; echo "ERROR: No buildpack groups passed detection." >&2; exit 3;;
  sleep) echo $$ >> "{state}/pids"; echo "sleeping"; sleep 60; exit 0;;
  timed) echo "start $(date +%s%N)" >> "{state}/events"; sleep 1; echo "end $(date +%s%N)" >> "{state}/events"
         printf '[image]\ndigest = "sha256:%064d"\n' 0 > "$report"; exit 0;;
  *) exec "{standin}" "$@";;
esac
"#,
        state = dir.display(),
        standin = standin().display()
    );
    let creator = lc.join("creator");
    std::fs::write(&creator, script).unwrap();
    run(Command::new("chmod").arg("+x").arg(&creator));
    lc
}

/// A bare git repository with an app, its `main` branch one commit.
fn git_repo(dir: &Path) -> String {
    let work = dir.join("src");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("app.py"), "print('hello from a berth build')\n").unwrap();
    std::fs::write(work.join("Procfile"), "web: python app.py\n").unwrap();
    let git = |args: &[&str], cwd: &Path| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.org",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(cwd));
    };
    git(&["init", "-q"], &work);
    git(&["add", "."], &work);
    git(&["commit", "-q", "-m", "app"], &work);
    git(&["branch", "-M", "main"], &work);
    git(&["clone", "-q", "--bare", "src", "bare.git"], dir);
    format!("file://{}", dir.join("bare.git").display())
}

fn start_berth(dir: &Path, extra: &str) -> (Berth, PathBuf) {
    let data = dir.join("data");
    let port = free_port();
    let config = format!(
        "[quota]\nunlimited = [\"toolforge\"]\n[builds]\nlifecycle_dir = \"{}\"\nsource_schemes = [\"file\"]\nmax_parallel = 2\nper_tool_parallel = 5\n{extra}",
        lifecycle(dir).display()
    );
    let berth = Berth::start_with(&data, port, &config);
    // The run image, as the platform provides it.
    let layout = dir.join("run-image");
    write_oci_layout(&layout, "latest", "run image", 2);
    skopeo_push_layout(
        &layout,
        "latest",
        &format!("{}/toolforge/run:latest", berth.host()),
        &format!("admin:{ADMIN_PASSWORD}"),
    );
    (berth, data)
}

struct Tool {
    client: Client,
    name: String,
}

impl Tool {
    fn new(berth: &Berth, name: &str) -> Tool {
        let password = berth.namespace_credentials(&format!("tool-{name}"));
        Tool {
            client: Client::new(&berth.url(), Some((format!("tool-{name}"), password))),
            name: name.into(),
        }
    }

    fn start(&self, source: &str, extra: serde_json::Value) -> (u16, serde_json::Value) {
        let mut body = serde_json::json!({ "source_url": source, "ref": "main" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .client
            .send(
                "POST",
                &format!("/v1/tool/{}/builds", self.name),
                &[("content-type", "application/json")],
                body.to_string().into_bytes(),
            )
            .unwrap();
        (r.status, r.json().unwrap())
    }

    fn build(&self, id: &str) -> serde_json::Value {
        let r = self
            .client
            .get(&format!("/v1/tool/{}/builds/{id}", self.name))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
        r.json().unwrap()["build"].clone()
    }

    fn wait(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let b = self.build(id);
            let s = b["status"].as_str().unwrap();
            if s != "BUILD_PENDING" && s != "BUILD_RUNNING" {
                return b;
            }
            assert!(Instant::now() < deadline, "build {id} did not finish: {b}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.build(id)["status"] != status {
            assert!(
                Instant::now() < deadline,
                "build {id} never reached {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self, id: &str, follow: bool) -> String {
        let r = self
            .client
            .get(&format!(
                "/v1/tool/{}/builds/{id}/logs?follow={follow}",
                self.name
            ))
            .unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

fn started_id(reply: &(u16, serde_json::Value)) -> String {
    assert_eq!(reply.0, 200, "{}", reply.1);
    reply.1["new_build"]["name"].as_str().unwrap().to_owned()
}

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

    // Cancel mid-build kills the lifecycle.
    let id = started_id(&tool.start(
        &source,
        serde_json::json!({ "envvars": { "MODE": "sleep" } }),
    ));
    tool.wait_status(&id, "BUILD_RUNNING");
    std::thread::sleep(Duration::from_millis(300));
    let r = tool
        .client
        .send(
            "PUT",
            &format!("/v1/tool/f/builds/{id}/cancel"),
            &[],
            Vec::new(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(tool.build(&id)["status"], "BUILD_CANCELLED");
    let r = tool
        .client
        .send(
            "PUT",
            &format!("/v1/tool/f/builds/{id}/cancel"),
            &[],
            Vec::new(),
        )
        .unwrap();
    assert_eq!(r.status, 409, "cancelling a finished build");
    let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
    for pid in pids.lines() {
        // SAFETY: probing with signal 0.
        let alive = unsafe { libc::kill(pid.trim().parse().unwrap(), 0) } == 0;
        assert!(
            !alive,
            "lifecycle process {pid} must be dead after timeout/cancel"
        );
    }

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

    // Restart during a build: the record says so.
    let id = started_id(&tool.start(
        &source,
        serde_json::json!({ "envvars": { "MODE": "sleep" } }),
    ));
    tool.wait_status(&id, "BUILD_RUNNING");
    // Kill berth while the lifecycle itself runs, not while git fetches.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tool.logs(&id, false).contains("sleeping") {
        assert!(Instant::now() < deadline, "the lifecycle never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = berth.port;
    berth.kill9();
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
    for pid in std::fs::read_to_string(dir.path().join("pids"))
        .unwrap()
        .lines()
    {
        // SAFETY: killing the sleeper the killed berth left behind.
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    }
}

#[test]
fn five_builds_with_two_runners_all_finish_two_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _) = start_berth(dir.path(), "");
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
    let events = std::fs::read_to_string(dir.path().join("events")).unwrap();
    let (mut running, mut peak) = (0i32, 0i32);
    let mut points: Vec<(u128, i32)> = events
        .lines()
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
    assert_eq!(events.lines().filter(|l| l.starts_with("start")).count(), 5);
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
