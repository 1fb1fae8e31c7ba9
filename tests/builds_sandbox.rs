//! The build sandbox, attacked from inside by a build: while another
//! tool's build runs, a build tries to read berth's database, secrets and
//! blobs, the other tool's cache and workspace, berth's environment, and
//! to poison the other cache; it prints what it managed into its log,
//! which the test reads through the API. Also: each tool builds as its
//! own uid, what builds leave on the host is private to them, berth run
//! by an ordinary user still sandboxes builds (with a user namespace), and
//! berth without bubblewrap serves and says why builds cannot run.
//!
//! Runs as root in CI (the per-tool uids need it); the sandbox is
//! bubblewrap, installed by scripts/install-test-deps.

mod common;
#[path = "common/builds.rs"]
mod harness;

use common::*;
use harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every blob in a file (small ones are otherwise kept in berth.db), so
/// that the attacks have a blob file to aim at beside the database.
const FILE_BLOBS: &str = "[storage]\ninline_blob_max = \"0\"\n";

/// Some blob file under `<data>/blobs`.
fn a_blob(data: &Path) -> PathBuf {
    fn walk(d: &Path) -> Option<PathBuf> {
        for e in std::fs::read_dir(d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = walk(&p) {
                    return Some(f);
                }
            } else {
                return Some(p);
            }
        }
        None
    }
    walk(&data.join("blobs")).expect("the run image's blobs are stored")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// What one attack left behind.
struct Attack {
    log: String,
    attacker: Tool,
    attack_id: String,
    victim: Tool,
    victim_id: String,
    victim_build: PathBuf,
    victim_ws: PathBuf,
    victim_cache: PathBuf,
    attacker_cache: PathBuf,
}

/// Every attempt the attacking build makes.
const ATTEMPTS: &[&str] = &[
    "read-db",
    "read-admin-password",
    "read-token-key",
    "read-blob",
    "list-data-dir",
    "read-other-cache",
    "write-other-cache",
    "read-other-workspace",
    "read-berth-environ",
    "read-init-environ",
    "signal-berth",
    "find-berth-db",
    "find-other-secret",
    "write-lifecycle",
    "write-usr",
    "read-shadow",
];

/// Tool `victim` builds (secret in its workspace, its cache written, then
/// waits); tool `attacker` builds MODE=attack against everything, told the
/// host paths of each target. Returns the attacker's log.
fn attack(berth: &Berth, data: &Path, dir: &Path, source: &str) -> Attack {
    let victim = Tool::new(berth, "victim");
    let attacker = Tool::new(berth, "attacker");
    let mark = "s3cr3t-mark";
    let victim_id = started_id(&victim.start(
        source,
        serde_json::json!({ "envvars": { "MODE": "victim", "MARK": mark } }),
    ));
    victim.wait_log(&victim_id, "victim ready");
    let victim_build = data.join("builds/work").join(&victim_id);
    let victim_ws = victim_build.join("workspace");
    let victim_cache = data.join("builds/cache/victim/tool-victim");
    // What the attacker goes for exists, and root can read it: the
    // attempts fail because of the sandbox, not for want of a target.
    let password = data.join("admin-password");
    if !password.exists() {
        // The harness passes the admin password in the environment; write
        // the file berth would otherwise have generated, as it would.
        std::fs::write(&password, "generated-admin-password").unwrap();
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let targets = [
        ("TARGET_DB", data.join("berth.db")),
        ("TARGET_PASSWORD", password),
        ("TARGET_KEY", data.join("token-key")),
        ("TARGET_BLOB", a_blob(data)),
        ("TARGET_CACHE", victim_cache.clone()),
        ("TARGET_WS", victim_ws.clone()),
        ("TARGET_DATA", data.to_owned()),
    ];
    for (_, path) in &targets {
        assert!(path.exists(), "{} must exist", path.display());
    }
    assert!(std::fs::read(victim_ws.join(format!("secret-{mark}"))).is_ok());
    assert!(victim_cache.join("victim-file").exists());
    let berth_pid = berth.child.as_ref().unwrap().id();
    let mut envvars = serde_json::json!({ "MODE": "attack", "TARGET_PID": berth_pid.to_string() });
    for (name, path) in &targets {
        envvars[*name] = path.display().to_string().into();
    }
    let attack_id = started_id(&attacker.start(source, serde_json::json!({ "envvars": envvars })));
    let b = attacker.wait(&attack_id, Duration::from_secs(120));
    assert_eq!(b["status"], "BUILD_FAILURE", "{b}");
    let log = attacker.logs(&attack_id, false);
    println!("attacker's log:\n{log}");
    for control in ["cache-write", "workspace-write", "cache-read"] {
        assert!(
            log.contains(&format!("CONTROL {control}: ok")),
            "the attacker could not even use its own {control}:\n{log}"
        );
    }
    assert!(
        !victim_cache.join("poison").exists(),
        "the cache was poisoned"
    );
    assert!(!dir.join("lifecycle/planted").exists());
    Attack {
        log,
        attacker,
        attack_id,
        victim,
        victim_id,
        victim_build,
        victim_ws,
        victim_cache,
        attacker_cache: data.join("builds/cache/attacker/tool-attacker"),
    }
}

#[test]
fn a_build_cannot_reach_berth_or_other_tools() {
    assert!(
        is_root(),
        "this test runs as root (as CI does): per-tool uids need it"
    );
    let dir = tempfile::tempdir().unwrap();
    // The data dir sits under a 0700 parent (berth as root from /root):
    // nothing in the sandbox walks the host path, so builds still work.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (berth, data) = start_berth(dir.path(), FILE_BLOBS);
    let source = git_repo(dir.path());
    // A cache an older berth left, owned by its shared build user (1000):
    // not trusted, so discarded.
    let old_cache = data.join("builds/cache/attacker/tool-attacker");
    std::fs::create_dir_all(&old_cache).unwrap();
    std::fs::write(old_cache.join("planted"), "from the shared build user").unwrap();
    chown_all(&old_cache, 1000);
    let a = attack(&berth, &data, dir.path(), &source);
    assert!(!old_cache.join("planted").exists());
    assert!(
        a.log.contains("the cache belonged to another user"),
        "{}",
        a.log
    );
    for attempt in ATTEMPTS {
        assert!(
            a.log.contains(&format!("ATTACK {attempt}: refused")),
            "attempt {attempt} was not refused:\n{}",
            a.log
        );
    }
    assert!(!a.log.contains("SUCCEEDED"), "{}", a.log);

    // Each tool builds as a uid of its own, above uid_base (200000), and
    // what the build writes in its cache is that uid's.
    let mine = std::fs::metadata(a.attacker_cache.join("owned-by-me")).unwrap();
    let theirs = std::fs::metadata(a.victim_cache.join("victim-file")).unwrap();
    assert!(
        mine.uid() >= 200_000 && theirs.uid() >= 200_000,
        "{} {}",
        mine.uid(),
        theirs.uid()
    );
    assert_ne!(mine.uid(), theirs.uid(), "two tools, two uids");
    assert_eq!((mine.gid(), theirs.gid()), (mine.uid(), theirs.uid()));
    assert!(a.log.contains(&format!(
        "attacker runs as uid {} gid {}",
        mine.uid(),
        mine.uid()
    )));
    assert!(a
        .log
        .contains(&format!("running the lifecycle as uid {}", mine.uid())));

    // What builds leave on the host is theirs alone: workspaces and caches
    // 0700 (owned by the tool's uid inside berth's 0700 directories), logs
    // 0600 in a 0700 directory, the data dir 0700.
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&a.victim_build), 0o700);
    assert_eq!(std::fs::metadata(&a.victim_build).unwrap().uid(), 0);
    assert_eq!(mode(&a.victim_ws), 0o700);
    assert_eq!(std::fs::metadata(&a.victim_ws).unwrap().uid(), theirs.uid());
    for cache in [&a.victim_cache, &a.attacker_cache] {
        assert_eq!(mode(cache), 0o700, "{}", cache.display());
        assert_eq!(mode(cache.parent().unwrap()), 0o700);
    }
    assert_eq!(
        std::fs::metadata(&a.victim_cache).unwrap().uid(),
        theirs.uid()
    );
    assert_eq!(mode(&data.join("builds/logs")), 0o700);
    assert_eq!(
        mode(
            &data
                .join("builds/logs")
                .join(format!("{}.log", a.attack_id))
        ),
        0o600
    );

    // The victim is cancelled; its sandbox goes with it, workspace and all.
    let marker = format!("{}/tool-victim/", berth.host());
    assert!(!processes_with(&marker).is_empty());
    let (status, body) = a.victim.cancel(&a.victim_id);
    assert_eq!(status, 200, "{body}");
    wait_no_processes(&marker, "the cancelled build's processes");
    assert!(!a.victim_build.exists(), "the workspace is removed");

    // And a real (stand-in) build of the attacker's still works: its cache
    // from the attack run is its own.
    let id = started_id(&a.attacker.start(&source, serde_json::json!({})));
    let b = a.attacker.wait(&id, Duration::from_secs(120));
    assert_eq!(
        b["status"],
        "BUILD_SUCCESS",
        "{b}\n{}",
        a.attacker.logs(&id, false)
    );
}

/// Starts `berth serve` on a free port as `uid` (as the test when None),
/// with `path` as PATH, and `config` unless it is None.
fn spawn_berth(data: &Path, config: Option<&str>, uid: Option<u32>, path: &str) -> Berth {
    let port = free_port();
    let log = data.with_extension(format!("{port}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(data)
    .env_clear()
    .env("PATH", path)
    .env("RUST_LOG", "info")
    .env("BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    if let Some(text) = config {
        let config_path = data.with_extension(format!("{port}.toml"));
        std::fs::write(&config_path, text).unwrap();
        cmd.arg("--config").arg(config_path);
    }
    if let Some(u) = uid {
        cmd.uid(u).gid(u);
    }
    let berth = Berth {
        child: Some(cmd.spawn().unwrap()),
        port,
        data_dir: data.to_owned(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_agent()
        .get(&format!("{}/healthz", berth.url()))
        .call()
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            Instant::now() < deadline,
            "berth did not start:\n{}",
            berth.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    berth
}

/// Hands `path` and everything under it to `uid`.
fn chown_all(path: &Path, uid: u32) {
    run(Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path));
}

#[test]
fn berth_as_an_ordinary_user_still_sandboxes_builds() {
    assert!(
        is_root(),
        "this test runs as root, to start berth as nobody"
    );
    let nobody = 65_534;
    let dir = tempfile::tempdir().unwrap();
    let source = git_repo(dir.path());
    let config = builds_config(dir.path(), "source_schemes = [\"file\"]\n", FILE_BLOBS);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    chown_all(dir.path(), nobody);
    let path = std::env::var("PATH").unwrap_or_default();
    let berth = spawn_berth(&data, Some(&config), Some(nobody), &path);
    assert!(
        berth.log_text().contains("builds can run")
            && berth.log_text().contains("per_tool_uid=false"),
        "{}",
        berth.log_text()
    );
    push_run_image(&berth, dir.path());
    let a = attack(&berth, &data, dir.path(), &source);
    assert!(
        a.log.contains(&format!("attacker runs as uid {nobody}")),
        "{}",
        a.log
    );
    // One uid for every build here: the sandbox's own init (the build's
    // environment) is readable, as the build's own; nothing else is.
    for attempt in ATTEMPTS.iter().filter(|a| **a != "read-init-environ") {
        assert!(
            a.log.contains(&format!("ATTACK {attempt}: refused")),
            "attempt {attempt} was not refused:\n{}",
            a.log
        );
    }
    let (status, _) = a.victim.cancel(&a.victim_id);
    assert_eq!(status, 200);
    // A real (stand-in) build works unprivileged too.
    let id = started_id(&a.attacker.start(&source, serde_json::json!({})));
    let b = a.attacker.wait(&id, Duration::from_secs(120));
    assert_eq!(
        b["status"],
        "BUILD_SUCCESS",
        "{b}\n{}",
        a.attacker.logs(&id, false)
    );
}

#[test]
fn without_bubblewrap_or_setpriv_berth_serves_and_says_why_builds_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    // A PATH with git and nothing else: no bwrap.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let git = run(Command::new("sh").args(["-c", "command -v git"]));
    std::os::unix::fs::symlink(git.trim(), bin.join("git")).unwrap();
    let data = dir.path().join("data");
    // No config at all: the README's first command.
    let berth = spawn_berth(&data, None, None, bin.to_str().unwrap());
    builds_unavailable(&berth, "bubblewrap (bwrap) is not installed");
    drop(berth);

    // As root, bwrap alone is not enough: setpriv drops to the tool's uid.
    if is_root() {
        let bwrap = run(Command::new("sh").args(["-c", "command -v bwrap"]));
        std::os::unix::fs::symlink(bwrap.trim(), bin.join("bwrap")).unwrap();
        let data = dir.path().join("data2");
        let berth = spawn_berth(&data, None, None, bin.to_str().unwrap());
        builds_unavailable(&berth, "setpriv is not installed");
    }
}

/// berth serves, its log says builds cannot run and `why`, and a build
/// request gets 503 UNAVAILABLE saying `why`.
fn builds_unavailable(berth: &Berth, why: &str) {
    assert!(
        wait_for_line(&berth.log, why, Duration::from_secs(30)),
        "{}",
        berth.log_text()
    );
    assert!(berth.log_text().contains("builds cannot run on this host"));
    let tool = Tool::new(berth, "unavailable");
    let reply = tool.start("https://example.org/x.git", serde_json::json!({}));
    assert_eq!(reply.0, 503, "{}", reply.1);
    assert_eq!(reply.1["errors"][0]["code"], "UNAVAILABLE");
    assert!(error_message(&reply).contains(why), "{}", reply.1);
    assert_eq!(get(&format!("{}/healthz", berth.url()), None).0, 200);
}
