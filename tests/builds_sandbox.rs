//! The build sandbox, attacked from inside by a build: while another
//! tool's build runs, a build tries to read berth's database, secrets and
//! blobs, the other tool's cache and workspace, berth's environment, and
//! to poison the other cache; it prints what it managed into its log,
//! which the test reads through the API. Also: each tool builds as its
//! own uid, and what builds leave on the host is private to them.
//!
//! Runs as root in CI (the per-tool uids need it); the sandbox is
//! bubblewrap, installed by scripts/install-test-deps.

mod common;
#[path = "common/builds.rs"]
mod harness;

use harness::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

#[test]
fn a_build_cannot_reach_berth_or_other_tools() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test runs as root (as CI does): per-tool uids need it"
    );
    let dir = tempfile::tempdir().unwrap();
    // The data dir sits under a 0700 parent (berth as root from /root):
    // nothing in the sandbox walks the host path, so builds still work.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (berth, data) = start_berth(dir.path(), "");
    let source = git_repo(dir.path());
    let victim = Tool::new(&berth, "victim");
    let attacker = Tool::new(&berth, "attacker");

    // The victim's build holds a secret in its workspace and writes its
    // cache, then waits.
    let mark = "s3cr3t-mark";
    let victim_id = started_id(&victim.start(
        &source,
        serde_json::json!({ "envvars": { "MODE": "victim", "MARK": mark } }),
    ));
    victim.wait_log(&victim_id, "victim ready");
    let victim_build = data.join("builds/work").join(&victim_id);
    let victim_ws = victim_build.join("workspace");
    let victim_cache = data.join("builds/cache/victim/tool-victim");
    // What the attacker goes for exists, and root can read it: the
    // attempts below fail because of the sandbox, not for want of a target.
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
        ("TARGET_BLOB", a_blob(&data)),
        ("TARGET_CACHE", victim_cache.clone()),
        ("TARGET_WS", victim_ws.clone()),
        ("TARGET_DATA", data.clone()),
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

    let attack_id = started_id(&attacker.start(&source, serde_json::json!({ "envvars": envvars })));
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
    let attempts = [
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
    for a in attempts {
        assert!(
            log.contains(&format!("ATTACK {a}: refused")),
            "attempt {a} was not refused:\n{log}"
        );
    }
    assert!(!log.contains("SUCCEEDED"), "{log}");
    assert!(
        !victim_cache.join("poison").exists(),
        "the cache was poisoned"
    );
    assert!(!dir.path().join("lifecycle/planted").exists());

    // Each tool builds as a uid of its own, above uid_base (200000), and
    // what the build writes in its cache is that uid's.
    let attacker_cache = data.join("builds/cache/attacker/tool-attacker");
    let mine = std::fs::metadata(attacker_cache.join("owned-by-me")).unwrap();
    let theirs = std::fs::metadata(victim_cache.join("victim-file")).unwrap();
    assert!(
        mine.uid() >= 200_000 && theirs.uid() >= 200_000,
        "{} {}",
        mine.uid(),
        theirs.uid()
    );
    assert_ne!(mine.uid(), theirs.uid(), "two tools, two uids");
    assert_eq!((mine.gid(), theirs.gid()), (mine.uid(), theirs.uid()));
    assert!(log.contains(&format!(
        "attacker runs as uid {} gid {}",
        mine.uid(),
        mine.uid()
    )));
    assert!(attacker
        .logs(&attack_id, false)
        .contains(&format!("running the lifecycle as uid {}", mine.uid())));

    // What builds leave on the host is theirs alone: workspaces and caches
    // 0700 (owned by the tool's uid inside berth's 0700 directories), logs
    // 0600 in a 0700 directory, the data dir 0700.
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&victim_build), 0o700);
    assert_eq!(std::fs::metadata(&victim_build).unwrap().uid(), 0);
    assert_eq!(mode(&victim_ws), 0o700);
    assert_eq!(std::fs::metadata(&victim_ws).unwrap().uid(), theirs.uid());
    for cache in [&victim_cache, &attacker_cache] {
        assert_eq!(mode(cache), 0o700, "{}", cache.display());
        assert_eq!(mode(cache.parent().unwrap()), 0o700);
    }
    assert_eq!(
        std::fs::metadata(&victim_cache).unwrap().uid(),
        theirs.uid()
    );
    assert_eq!(mode(&data.join("builds/logs")), 0o700);
    assert_eq!(
        mode(&data.join("builds/logs").join(format!("{attack_id}.log"))),
        0o600
    );

    // The victim is cancelled; its sandbox goes with it, workspace and all.
    let marker = format!("{}/tool-victim/", berth.host());
    assert!(!processes_with(&marker).is_empty());
    let (status, body) = victim.cancel(&victim_id);
    assert_eq!(status, 200, "{body}");
    wait_no_processes(&marker, "the cancelled build's processes");
    assert!(!victim_build.exists(), "the workspace is removed");

    // And a real (stand-in) build of the attacker's still works: its cache
    // from the attack run is its own.
    let id = started_id(&attacker.start(&source, serde_json::json!({})));
    let b = attacker.wait(&id, Duration::from_secs(120));
    assert_eq!(
        b["status"],
        "BUILD_SUCCESS",
        "{b}\n{}",
        attacker.logs(&id, false)
    );
}
