//! Shared by the build tests (included with `#[path]` next to `mod
//! common;`): a lifecycle dir whose `creator` runs the lifecycle stand-in
//! (test-tools' `cnb-creator`) or, by the build's MODE env var, fails,
//! sleeps, records a timed run, or attacks the sandbox; a real git
//! repository; a static HTTP server for it (git's dumb protocol) that can
//! hang; a berth with builds; a tool's client; and a look at the host's
//! processes.
//!
//! Everything a build runs lives in the lifecycle dir: the sandbox mounts
//! that dir (read-only) and nothing else of the test's.
#![allow(dead_code)]

use crate::common::*;
use berth_conformance::client::Client;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lifecycle stand-in binary, built if this test run has not built it.
pub fn standin() -> PathBuf {
    test_tool("cnb-creator")
}

/// The `creator` every build test runs. It finds its flags, reads the
/// build's env vars from `<platform>/env/` and acts by MODE. Processes it
/// leaves running carry the output image (`host:port/tool-x/...`) in their
/// command line, so a test can find them on the host. The sleeping modes
/// sleep far longer than any test waits (tests cancel them or let berth's
/// build timeout end them): a sleeper that ended on its own on a slow
/// machine would free its runner under a test that counts on it busy.
const CREATOR: &str = r#"#!/bin/sh
prev=""; report=""; platform=""; cache=""; out=""
for a in "$@"; do
  case "$prev" in -report) report="$a";; -platform) platform="$a";; -cache-dir) cache="$a";; esac
  prev="$a"; out="$a"
done
here=$(dirname "$0")
var() { cat "$platform/env/$1" 2>/dev/null; }
mode=$(var MODE); [ -n "$mode" ] || mode=real
case "$mode" in
  fail) echo "detecting..."; echo "ERROR: No buildpack groups passed detection." >&2; exit 3;;
  sleep) echo "sleeping"; sh -c 'sleep 900; exit 0' "$out"; exit 0;;
  timed) echo "start $(date +%s%N)"; sleep 1; echo "end $(date +%s%N)"
         printf '[image]\ndigest = "sha256:%064d"\n' 0 > "$report"; exit 0;;
  victim) echo "secret of $(var MARK)" > "/workspace/secret-$(var MARK)"
          echo "the victim's cache" > "$cache/victim-file"
          echo "victim ready as uid $(id -u)"; sh -c 'sleep 900; exit 0' "$out"; exit 0;;
  attack)
    echo "attacker runs as uid $(id -u) gid $(id -g)"
    echo mine > "$cache/owned-by-me" && echo "CONTROL cache-write: ok"
    echo mine > /workspace/mine && echo "CONTROL workspace-write: ok"
    cat "$cache/owned-by-me" >/dev/null && echo "CONTROL cache-read: ok"
    probe() { if sh -c "$2" >/dev/null 2>&1; then echo "ATTACK $1: SUCCEEDED"; else echo "ATTACK $1: refused"; fi; }
    probe read-db "cat '$(var TARGET_DB)'"
    probe read-admin-password "cat '$(var TARGET_PASSWORD)'"
    probe read-token-key "cat '$(var TARGET_KEY)'"
    probe read-blob "cat '$(var TARGET_BLOB)'"
    probe list-data-dir "ls '$(var TARGET_DATA)' | grep -q ."
    probe read-other-cache "cat '$(var TARGET_CACHE)/victim-file'"
    probe write-other-cache "echo poisoned > '$(var TARGET_CACHE)/poison'"
    probe read-other-workspace "cat '$(var TARGET_WS)'/secret-*"
    probe read-berth-environ "cat /proc/$(var TARGET_PID)/environ"
    probe read-init-environ "cat /proc/1/environ"
    probe signal-berth "kill -0 $(var TARGET_PID)"
    probe find-berth-db "find / -path /proc -prune -o -path /usr -prune -o -name berth.db -print | grep -q ."
    probe find-other-secret "find / -path /proc -prune -o -path /usr -prune -o -name 'secret-*' -print | grep -q ."
    probe write-lifecycle "touch /cnb/lifecycle/planted"
    probe write-usr "touch /usr/planted"
    probe read-shadow "cat /etc/shadow"
    exit 3;;
  *) exec "$here/cnb-creator" "$@";;
esac
"#;

/// `dir/lifecycle`: the creator script and a copy of the stand-in.
pub fn lifecycle(dir: &Path) -> PathBuf {
    let lc = dir.join("lifecycle");
    std::fs::create_dir_all(&lc).unwrap();
    std::fs::write(lc.join("creator"), CREATOR).unwrap();
    std::fs::copy(standin(), lc.join("cnb-creator")).unwrap();
    for f in ["creator", "cnb-creator"] {
        std::fs::set_permissions(
            lc.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
    std::fs::set_permissions(&lc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    lc
}

/// A bare git repository `dir/bare.git` with an app, its `main` branch one
/// commit, ready to be served over http too. Returns its file:// URL.
pub fn git_repo(dir: &Path) -> String {
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
    git(&["update-server-info"], &dir.join("bare.git"));
    format!("file://{}", dir.join("bare.git").display())
}

/// Starts berth with builds (the lifecycle of `dir`, file:// sources, two
/// runners) plus `extra` `[builds]` lines, and pushes the run image.
pub fn start_berth(dir: &Path, extra: &str) -> (Berth, PathBuf) {
    start_berth_with(dir, "source_schemes = [\"file\"]\n", extra)
}

/// Like `start_berth`, with `schemes` (a `source_schemes = ...` line).
pub fn start_berth_with(dir: &Path, schemes: &str, extra: &str) -> (Berth, PathBuf) {
    let data = dir.join("data");
    let berth = Berth::start_with(&data, free_port(), &builds_config(dir, schemes, extra));
    push_run_image(&berth, dir);
    (berth, data)
}

/// The config of a berth running builds with the lifecycle of `dir`.
pub fn builds_config(dir: &Path, schemes: &str, extra: &str) -> String {
    // The stand-in brings its own buildpack; berth still wants the
    // directory and the order file a real lifecycle reads.
    let buildpacks = dir.join("buildpacks");
    std::fs::create_dir_all(&buildpacks).unwrap();
    let order = dir.join("order.toml");
    std::fs::write(
        &order,
        "[[order]]\n[[order.group]]\nid = \"berth/stand-in\"\nversion = \"0.0.1\"\n",
    )
    .unwrap();
    format!(
        "[quota]\nunlimited = [\"toolforge\"]\n[builds]\nlifecycle_dir = \"{}\"\nbuildpacks_dir = \"{}\"\norder = \"{}\"\n{schemes}max_parallel = 2\nper_tool_parallel = 5\n{extra}",
        lifecycle(dir).display(),
        buildpacks.display(),
        order.display()
    )
}

/// The run image, as the platform provides it.
pub fn push_run_image(berth: &Berth, dir: &Path) {
    let layout = dir.join("run-image");
    write_oci_layout(&layout, "latest", "run image", 2);
    skopeo_push_layout(
        &layout,
        "latest",
        &format!("{}/toolforge/run:latest", berth.host()),
        &format!("admin:{ADMIN_PASSWORD}"),
    );
}

pub struct Tool {
    pub client: Client,
    pub name: String,
    pub password: String,
}

impl Tool {
    pub fn new(berth: &Berth, name: &str) -> Tool {
        let password = berth.namespace_credentials(&format!("tool-{name}"));
        Tool {
            client: Client::new(
                &berth.url(),
                Some((format!("tool-{name}"), password.clone())),
            ),
            name: name.into(),
            password,
        }
    }

    /// Another client for the same tool (a client is for one thread).
    pub fn again(&self, berth: &Berth) -> Tool {
        Tool {
            client: Client::new(
                &berth.url(),
                Some((format!("tool-{}", self.name), self.password.clone())),
            ),
            name: self.name.clone(),
            password: self.password.clone(),
        }
    }

    pub fn start(&self, source: &str, extra: serde_json::Value) -> (u16, serde_json::Value) {
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

    pub fn build(&self, id: &str) -> serde_json::Value {
        let r = self
            .client
            .get(&format!("/v1/tool/{}/builds/{id}", self.name))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.describe());
        r.json().unwrap()["build"].clone()
    }

    pub fn wait(&self, id: &str, timeout: Duration) -> serde_json::Value {
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

    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.build(id)["status"] != status {
            assert!(
                Instant::now() < deadline,
                "build {id} never reached {status}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the build's log contains `needle`; returns the log.
    pub fn wait_log(&self, id: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.logs(id, false);
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "build {id}'s log never showed {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log as text (`Accept: text/plain`; Toolforge's JSON lines are
    /// the default).
    pub fn logs(&self, id: &str, follow: bool) -> String {
        let r = self
            .client
            .send(
                "GET",
                &format!("/v1/tool/{}/builds/{id}/logs?follow={follow}", self.name),
                &[("accept", "text/plain")],
                Vec::new(),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }

    pub fn cancel(&self, id: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .send(
                "PUT",
                &format!("/v1/tool/{}/builds/{id}/cancel", self.name),
                &[],
                Vec::new(),
            )
            .unwrap();
        (r.status, r.json().unwrap_or_default())
    }
}

pub fn started_id(reply: &(u16, serde_json::Value)) -> String {
    assert_eq!(reply.0, 200, "{}", reply.1);
    reply.1["new_build"]["name"].as_str().unwrap().to_owned()
}

/// The error message of an error answer.
pub fn error_message(reply: &(u16, serde_json::Value)) -> String {
    reply.1["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Host processes whose command line contains `marker` (and are not
/// zombies), as (pid, command line).
pub fn processes_with(marker: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.starts_with('Z'))
            .unwrap_or(false);
        if cmdline.contains(marker) && !zombie && pid != std::process::id() as i32 {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Waits until no host process carries `marker`.
pub fn wait_no_processes(marker: &str, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the static git server does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hang {
    /// Serve every file.
    Never,
    /// Accept, read the request, never answer.
    Always,
    /// Serve, except paths containing this, which hang.
    On(&'static str),
}

/// A static file server on 127.0.0.1 for a bare repository (git's dumb
/// http protocol), counting connections; hung connections are held until
/// `release`, and those the client closes are counted.
pub struct GitServer {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub paths: Arc<Mutex<Vec<String>>>,
    pub closed_by_client: Arc<AtomicUsize>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl GitServer {
    pub fn start(root: &Path, hang: Hang) -> GitServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = GitServer {
            port,
            connections: Arc::default(),
            paths: Arc::default(),
            closed_by_client: Arc::default(),
            held: Arc::default(),
        };
        let (connections, paths, closed, held) = (
            server.connections.clone(),
            server.paths.clone(),
            server.closed_by_client.clone(),
            server.held.clone(),
        );
        let root = root.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                connections.fetch_add(1, Ordering::SeqCst);
                let (root, paths, closed, held) =
                    (root.clone(), paths.clone(), closed.clone(), held.clone());
                std::thread::spawn(move || serve_one(stream, &root, hang, &paths, &closed, &held));
            }
        });
        server
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}/{path}", self.port)
    }

    /// Closes every held connection.
    pub fn release(&self) {
        for s in self.held.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn wait_connections(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.connections.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "the server saw {} connections, not {n}",
                self.connections.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve_one(
    stream: TcpStream,
    root: &Path,
    hang: Hang,
    paths: &Mutex<Vec<String>>,
    closed: &AtomicUsize,
    held: &Mutex<Vec<TcpStream>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    paths.lock().unwrap().push(path.clone());
    let hangs = match hang {
        Hang::Never => false,
        Hang::Always => true,
        Hang::On(part) => path.contains(part),
    };
    if hangs {
        held.lock().unwrap().push(stream.try_clone().unwrap());
        // Blocks until the client goes away (or `release`).
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.get_mut().read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        closed.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let file = path
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_start_matches('/');
    let mut stream = stream;
    let target = root.join(file);
    let reply = match std::fs::read(&target) {
        Ok(body) if !file.contains("..") && target.is_file() => {
            let mut r = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            r.extend(body);
            r
        }
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    };
    let _ = stream.write_all(&reply);
}
