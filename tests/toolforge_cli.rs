//! Toolforge's own build client, `toolforge-builds-cli` from PyPI (what
//! users type as `toolforge build ...`), unchanged, against the real berth:
//! configured as on Toolforge with `~/.toolforge.yaml` (`api_gateway.url`,
//! `builds.builds_endpoint: /v1`) and a kubeconfig whose user carries a
//! berth API token (`berth token create`), or over TLS a Kubernetes client
//! certificate. Every command it has, with the options users pass.

mod common;
#[path = "common/builds.rs"]
mod harness;
#[path = "common/tls.rs"]
mod tlsh;

use common::*;
use harness::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The version whose shapes berth follows (read from its source).
const CLI_VERSION: &str = "0.0.24";

/// The CLI in a venv under target/, installed from PyPI once (per
/// process: the tests here run in parallel and would otherwise build the
/// same venv at once).
fn cli() -> PathBuf {
    static CLI: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CLI.get_or_init(install_cli).clone()
}

fn install_cli() -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_berth"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned();
    let venv = target.join(format!("toolforge-builds-cli-{CLI_VERSION}"));
    let exe = venv.join("bin/toolforge-build");
    if !exe.exists() {
        // --clear: an install cut short earlier left a venv without the CLI.
        run(Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv));
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("toolforge-builds-cli=={CLI_VERSION}"),
        ]));
    }
    assert!(exe.exists(), "{} was not installed", exe.display());
    exe
}

/// A user's home with Toolforge's two config files pointing at berth.
struct Home {
    dir: PathBuf,
    exe: PathBuf,
}

impl Home {
    /// `url`: berth's; `user`: the kubeconfig user's keys (a token, or a
    /// client certificate and key), indented for the `user:` map.
    fn new(dir: &Path, url: &str, tool: &str, user: &str) -> Home {
        let home = dir.join("home");
        std::fs::create_dir_all(home.join(".kube")).unwrap();
        std::fs::write(
            home.join(".toolforge.yaml"),
            format!("api_gateway:\n  url: {url}\nbuilds:\n  builds_endpoint: /v1\n"),
        )
        .unwrap();
        std::fs::write(
            home.join(".kube/config"),
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: {tool}\nclusters:\n- name: toolforge\n  cluster:\n    server: https://k8s.invalid:6443\ncontexts:\n- name: {tool}\n  context:\n    cluster: toolforge\n    user: tool-{tool}\n    namespace: tool-{tool}\nusers:\n- name: tool-{tool}\n  user:\n    {user}\n"
            ),
        )
        .unwrap();
        Home {
            dir: home,
            exe: cli(),
        }
    }

    /// Runs `toolforge build <args>`; (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out: Output = Command::new(&self.exe)
            .args(args)
            .env_clear()
            .env("HOME", &self.dir)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TOOLFORGE_CLI", "1")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("$ toolforge build {}\n{text}", args.join(" "));
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "toolforge build {} failed:\n{text}", args.join(" "));
        text
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// An API token for the tool's namespace, made as an admin would hand one
/// out (`berth token create`; it prints the token alone on stdout).
fn api_token(berth: &Berth, tool: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "token",
            "create",
            &format!("tool-{tool}"),
            "--name",
            "toolforge-cli",
        ])
        .args(["--expires", "30d", "--url", &berth.url()])
        .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(out.status.success(), "berth token create: {out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("berth_"), "{token}");
    token
}

#[test]
fn every_toolforge_build_command_works_against_berth() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _) = start_berth(dir.path(), "");
    let source = git_repo(dir.path());
    let tool = Tool::new(&berth, "demo");
    let token = api_token(&berth, "demo");
    let home = Home::new(dir.path(), &berth.url(), "demo", &format!("token: {token}"));

    // start: follows the log to the end (JSON lines, parsed by the CLI).
    let out = home.ok(&["start", &source, "--ref", "main", "-e", "GREETING=hello"]);
    for want in ["[git] checked out", "===> EXPORTING", "BUILD_SUCCESS"] {
        assert!(out.contains(want), "start's log lacks {want:?}:\n{out}");
    }
    // start --detach, with an image name and --use-latest-versions.
    let out = home.ok(&[
        "start", &source, "--ref", "main", "--detach", "-i", "web", "-L",
    ]);
    assert!(out.contains("build name is 'demo-buildpacks-"), "{out}");
    let detached = out
        .split("build name is '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_owned();
    tool.wait(&detached, Duration::from_secs(120));

    // list and show, as a table and as JSON.
    let out = home.ok(&["list"]);
    assert!(out.contains(&detached) && out.contains(" ok "), "{out}");
    let list = home.json(&["list", "--json"]);
    assert_eq!(list["builds"].as_array().unwrap().len(), 2, "{list}");
    let out = home.ok(&["show"]);
    assert!(
        out.contains(&detached),
        "show shows the latest build:\n{out}"
    );
    // (The CLI prints its own flattened form of the build.)
    let shown = home.json(&["show", &detached, "--json"]);
    assert_eq!(shown["build"]["build_id"], detached);
    assert_eq!(shown["build"]["status"], "ok");
    assert_eq!(shown["build"]["use_latest_versions"], true);
    assert!(shown["build"]["destination_image"]
        .as_str()
        .unwrap()
        .contains("/tool-demo/web:latest@sha256:"));

    // logs, whole and followed (of a finished build: it ends).
    let out = home.ok(&["logs", &detached]);
    assert!(out.contains("BUILD_SUCCESS"), "{out}");
    let out = home.ok(&["logs", "-f", &detached]);
    assert!(out.contains("BUILD_SUCCESS"), "{out}");

    // cancel: a build that sleeps; cancel reads `id` from the answer.
    let out = home.ok(&[
        "start",
        &source,
        "--ref",
        "main",
        "--detach",
        "-e",
        "MODE=sleep",
    ]);
    let sleeping = out
        .split("build name is '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_owned();
    tool.wait_status(&sleeping, "BUILD_RUNNING");
    let out = home.ok(&["cancel", "-y", &sleeping]);
    assert!(out.contains("Cancelled 1 builds"), "{out}");
    assert_eq!(tool.build(&sleeping)["status"], "BUILD_CANCELLED");
    // Cancelling it again: an error, printed from Toolforge's `error`.
    let (ok, out) = home.run(&["cancel", "-y", &sleeping]);
    assert!(!ok && out.contains("has already finished"), "{out}");
    assert!(!out.contains("\"errors\""), "raw JSON printed:\n{out}");
    let out = home.ok(&["cancel", "-y", "--all"]);
    assert!(out.contains("Cancelled"), "{out}");

    // quota: figures for people.
    let out = home.ok(&["quota"]);
    for want in [
        "Registry", "Storage", "Limit", "1.0 GiB", "Used", "Capacity", "%",
    ] {
        assert!(out.contains(want), "quota lacks {want:?}:\n{out}");
    }
    assert!(!out.contains("Capacity    0.0\n"), "{out}");
    let quota = home.json(&["quota", "--json"]);
    assert_eq!(
        quota["quota"]["categories"][0]["items"][0]["limit"],
        "1.0 GiB"
    );

    // delete one, then the rest; delete reads `id` too.
    let out = home.ok(&["delete", "-y", &sleeping]);
    assert!(out.contains("Deleted 1 builds"), "{out}");
    let out = home.ok(&["delete", "-y", "--all"]);
    assert!(out.contains("Deleted 2 builds"), "{out}");
    let out = home.ok(&["list"]);
    assert!(out.contains("No builds found"), "{out}");

    // clean: the tool's tags go (GC frees the space later).
    let out = home.ok(&["clean", "-y"]);
    assert!(out.contains("If you still need more space"), "{out}");
    let clean = home.json(&["clean", "-y", "--json"]);
    assert!(clean["messages"]["info"][0]
        .as_str()
        .unwrap()
        .contains("removed"));

    // Errors read as Toolforge's: a bad env name.
    let (ok, out) = home.run(&["start", &source, "-e", "X=1", "--detach"]);
    assert!(!ok && out.contains("environment variable name"), "{out}");
    // Another tool's builds: refused.
    let other = Tool::new(&berth, "other");
    let started = other.start(&source, serde_json::json!({}));
    let other_id = started_id(&started);
    let (ok, out) = home.run(&["show", &other_id]);
    assert!(!ok && out.contains("no build"), "{out}");
}

#[test]
fn the_toolforge_cli_over_tls_with_a_kubernetes_client_certificate() {
    // As on Toolforge: the kubeconfig's user is a client certificate whose
    // CN is the tool, signed by the cluster CA berth trusts ([auth]
    // client_ca); berth serves TLS and its builds push over it.
    let dir = tempfile::tempdir().unwrap();
    let extra = "registry_ca = \"{dir}/pki/ca.crt\"\n[auth]\nclient_ca = \"{dir}/pki/ca.crt\"\n";
    let b = tlsh::TlsBerth::start(
        dir.path(),
        &builds_config(dir.path(), "source_schemes = [\"file\"]\n", extra),
    );
    push_run_image(&b.berth, dir.path());
    let source = git_repo(dir.path());
    let issued = b.ca.client("demo", &[], 7);
    let (crt, key) = tlsh::write_pair(&dir.path().join("kube"), "demo", &issued);
    let home = Home::new(
        dir.path(),
        &b.url(),
        "demo",
        &format!(
            "client-certificate: {}\n    client-key: {}",
            crt.display(),
            key.display()
        ),
    );
    let out = home.ok(&["start", &source, "--ref", "main"]);
    assert!(out.contains("BUILD_SUCCESS"), "{out}");
    let out = home.ok(&["list"]);
    assert!(out.contains(" ok "), "{out}");
    let out = home.ok(&["quota"]);
    assert!(out.contains("1.0 GiB"), "{out}");
    // The certificate is tool-demo's: another tool's build is not its.
    let other = issued_for_other(&b);
    let (ok, out) = home.run(&["show", &other]);
    assert!(!ok && out.contains("no build"), "{out}");
}

/// Starts a build as another tool (over its own client certificate) and
/// returns its id.
fn issued_for_other(b: &tlsh::TlsBerth) -> String {
    let issued = b.ca.client("other", &[], 8);
    let agent = tlsh::tls_agent(&b.ca.pem, Some(&issued));
    let mut r = agent
        .post(&format!("{}/v1/tool/other/builds", b.url()))
        .header("content-type", "application/json")
        .send(
            serde_json::json!({"source_url": git_repo(&b.dir.join("other")), "ref": "main"})
                .to_string(),
        )
        .unwrap();
    let reply: serde_json::Value =
        serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
    started_id(&(r.status().as_u16(), reply))
}

/// A build a git push started, as the CLI shows it: `show` prints
/// berth's `messages.info`, which says what started the build.
#[test]
fn the_cli_shows_what_a_push_started() {
    let dir = tempfile::tempdir().unwrap();
    let (berth, _) = start_berth(dir.path(), "");
    let source = git_repo(dir.path());
    let tool = Tool::new(&berth, "pushed");
    let token = api_token(&berth, "pushed");
    let home = Home::new(
        dir.path(),
        &berth.url(),
        "pushed",
        &format!("token: {token}"),
    );
    let r = tool
        .client
        .send(
            "PUT",
            "/v1/tool/pushed/trigger",
            &[("content-type", "application/json")],
            serde_json::json!({ "source_url": source })
                .to_string()
                .into_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.describe());
    let created = r.json().unwrap();
    let hook = created["trigger"]["hook_url"].as_str().unwrap();
    let secret = created["secret"].as_str().unwrap();
    let commit = run(Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir.path().join("src")))
    .trim()
    .to_owned();
    // GitLab's documented push payload, about this repository.
    let mut payload: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/hooks/gitlab-push.json")).unwrap();
    payload["ref"] = "refs/heads/main".into();
    payload["after"] = commit.clone().into();
    payload["project"]["git_http_url"] = source.clone().into();
    payload["project"]["default_branch"] = "main".into();
    let mut r = http_agent()
        .post(&format!("{}{hook}", berth.url()))
        .header("x-gitlab-event", "Push Hook")
        .header("x-gitlab-token", secret)
        .header("content-type", "application/json")
        .send(payload.to_string())
        .unwrap();
    let answer: serde_json::Value =
        serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
    assert_eq!(r.status(), 202, "{answer}");
    let id = answer["build_id"].as_str().unwrap().to_owned();
    tool.wait(&id, Duration::from_secs(120));

    let out = home.ok(&["show", &id]);
    assert!(
        out.contains(&format!(
            "triggered by a push of {commit} to refs/heads/main by \"jsmith\""
        )),
        "{out}"
    );
    assert!(out.contains("Ref: refs/heads/main"), "{out}");
    let shown = home.json(&["show", &id, "--json"]);
    assert_eq!(shown["build"]["status"], "ok", "{shown}");
    let out = home.ok(&["list"]);
    assert!(out.contains(&id), "{out}");
}
