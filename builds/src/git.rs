//! Fetching sources with the real `git`: resolve a ref to a commit
//! (`git ls-remote`) when the build is requested, and fetch exactly that
//! commit into the build's workspace when it runs.
//!
//! Every git runs hardened: no system or user config (an empty HOME,
//! `GIT_CONFIG_NOSYSTEM`), an environment of its own (no proxy variables,
//! no askpass, no credential helper, no terminal prompt), one transport
//! (the source's scheme), no redirects, a low-speed cut-off on fetches,
//! connections pinned to the addresses `source::check` approved
//! (`http.curloptResolve`), a timeout, bounded output, and its own process
//! group, killed whole on timeout, on cancel, or when the caller stops
//! waiting.

use crate::logs::BuildLog;
use crate::source::{cannot_fetch, Source};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Most of git's stdout kept (ls-remote lists refs; a hostile server can
/// send millions that match a pattern).
const STDOUT_CAP: usize = 1 << 20;
/// Most of git's stderr kept.
const STDERR_CAP: usize = 64 << 10;

/// How git is run.
#[derive(Debug, Clone)]
pub struct Git {
    /// The git executable (found at start-up).
    pub program: PathBuf,
    /// An empty directory git gets as HOME, so no `~/.gitconfig`,
    /// `~/.netrc` or credential store of berth's user is read.
    pub home: PathBuf,
    /// Limit on `ls-remote` (at request time).
    pub resolve_timeout: Duration,
    /// Limit on each step of fetching the source (when the build runs).
    pub fetch_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The repository could not be read. Callers are told only
    /// [`cannot_fetch`]; `detail` (git's stderr) is for logs.
    #[error("{}", cannot_fetch(url))]
    Unreachable { url: String, detail: String },
    #[error("ref {reference:?} does not exist in {url}")]
    UnknownRef { url: String, reference: String },
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
}

pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a finished git printed.
struct Output {
    success: bool,
    status: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Output {
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// A spawned git whose whole process group (git and its transport
/// helpers such as `git-remote-https`) is killed if it is dropped before
/// it was reaped.
struct Running(Child);

impl Running {
    fn kill_group(&mut self) {
        // `id()` is None once the child was reaped: its pid (and group id)
        // may then belong to someone else.
        if let Some(pid) = self.0.id() {
            // SAFETY: signalling the process group this child leads.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Reads `r` to its end, keeping the first `cap` bytes (the rest is
/// drained so the writer never blocks).
async fn read_capped(r: Option<impl AsyncRead + Unpin>, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut r) = r else { return kept };
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Resolves when `cancel` turns true; never if it is None or closed.
pub(crate) async fn cancelled(cancel: Option<&mut watch::Receiver<bool>>) {
    if let Some(c) = cancel {
        if c.wait_for(|v| *v).await.is_ok() {
            return;
        }
    }
    std::future::pending::<()>().await
}

enum Ended {
    Done(std::io::Result<std::process::ExitStatus>, Vec<u8>, Vec<u8>),
    TimedOut,
    Cancelled,
}

impl Git {
    /// The hardened command for `args` (about `source`, if any).
    pub fn command(&self, source: Option<&Source>, args: &[&str], cwd: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.program);
        let scheme = source.map(|s| s.scheme.as_str()).unwrap_or("file");
        cmd.env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ALLOW_PROTOCOL", scheme)
            .env("GIT_PROTOCOL_FROM_USER", "0")
            .env("LC_ALL", "C")
            .args(["-c", "protocol.allow=never"])
            .arg("-c")
            .arg(format!("protocol.{scheme}.allow=always"))
            .args([
                "-c",
                "http.followRedirects=false",
                "-c",
                "credential.helper=",
                "-c",
                "core.askPass=",
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "init.templateDir=",
                "-c",
                "submodule.recurse=false",
            ]);
        if args.first() == Some(&"fetch") {
            // A fetch may be long (git_fetch_timeout); a stalled one is cut
            // off sooner. ls-remote is short enough for its own timeout.
            cmd.args([
                "-c",
                "http.lowSpeedLimit=1000",
                "-c",
                "http.lowSpeedTime=30",
            ]);
        }
        if let Some(pin) = source.and_then(|s| s.pin.as_ref()) {
            cmd.arg("-c")
                .arg(format!("http.curloptResolve={}", pin.curl_resolve()));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // The checkout must be readable by the build's user and, once in
        // the image, by whoever runs it; berth's own umask is 077.
        // SAFETY: umask is async-signal-safe and cannot fail.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        cmd
    }

    async fn run(
        &self,
        source: Option<&Source>,
        args: &[&str],
        cwd: Option<&Path>,
        timeout: Duration,
        cancel: Option<&mut watch::Receiver<bool>>,
    ) -> Result<Output, GitError> {
        let what = args.first().copied().unwrap_or("git");
        let mut child = Running(
            self.command(source, args, cwd)
                .spawn()
                .map_err(|e| GitError::Failed(format!("cannot run git: {e}")))?,
        );
        let (out, err) = (child.0.stdout.take(), child.0.stderr.take());
        let ended = {
            let finished = async {
                let (o, e, status) = tokio::join!(
                    read_capped(out, STDOUT_CAP),
                    read_capped(err, STDERR_CAP),
                    child.0.wait()
                );
                Ended::Done(status, o, e)
            };
            tokio::select! {
                done = finished => done,
                _ = tokio::time::sleep(timeout) => Ended::TimedOut,
                _ = cancelled(cancel) => Ended::Cancelled,
            }
        };
        match ended {
            Ended::Done(status, stdout, stderr) => {
                let status =
                    status.map_err(|e| GitError::Failed(format!("waiting for git failed: {e}")))?;
                Ok(Output {
                    success: status.success(),
                    status: status.to_string(),
                    stdout,
                    stderr,
                })
            }
            Ended::TimedOut | Ended::Cancelled => {
                child.kill_group();
                let _ = child.0.wait().await;
                if matches!(ended, Ended::Cancelled) {
                    Err(GitError::Cancelled)
                } else {
                    Err(GitError::Failed(format!(
                        "git {what} took longer than {timeout:?} and was stopped"
                    )))
                }
            }
        }
    }

    /// Resolves `reference` (a branch, tag, `HEAD`, or a full commit id)
    /// in `source` to a commit id. A commit id is returned as it is, but
    /// only once the repository answered: what a caller learns about a
    /// host that does not speak git is always the same [`cannot_fetch`].
    pub async fn resolve(&self, source: &Source, reference: &str) -> Result<String, GitError> {
        let commit = is_commit(reference);
        let pattern = if commit { "HEAD" } else { reference };
        let out = self
            .run(
                Some(source),
                &["ls-remote", "--", &source.url, pattern],
                None,
                self.resolve_timeout,
                None,
            )
            .await
            .map_err(|e| match e {
                GitError::Failed(detail) => GitError::Unreachable {
                    url: source.url.clone(),
                    detail,
                },
                other => other,
            })?;
        if !out.success {
            return Err(GitError::Unreachable {
                url: source.url.clone(),
                detail: out.stderr_text(),
            });
        }
        if commit {
            return Ok(reference.to_ascii_lowercase());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let refs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
        // Prefer an exact name, then a branch, then a tag (peeled first).
        let candidates = [
            reference.to_owned(),
            format!("refs/heads/{reference}"),
            format!("refs/tags/{reference}^{{}}"),
            format!("refs/tags/{reference}"),
        ];
        candidates
            .iter()
            .find_map(|c| {
                refs.iter()
                    .find(|(sha, name)| name == c && is_commit(sha))
                    .map(|(sha, _)| sha.to_ascii_lowercase())
            })
            .ok_or_else(|| GitError::UnknownRef {
                url: source.url.clone(),
                reference: reference.into(),
            })
    }

    /// Fetches exactly `commit` of `source` (via `reference`) into `dir`.
    /// Turning `cancel` true stops it (git killed) with `Cancelled`.
    pub async fn checkout(
        &self,
        source: &Source,
        reference: &str,
        commit: &str,
        dir: &Path,
        log: &BuildLog,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), GitError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| GitError::Failed(format!("cannot create {}: {e}", dir.display())))?;
        let wanted = if is_commit(reference) {
            commit
        } else {
            reference
        };
        let url = source.url.as_str();
        let shallow: &[&str] = &["fetch", "-q", "--depth", "1", "--", url, wanted];
        let full: &[&str] = &["fetch", "-q", "--", url, commit];
        let detach: &[&str] = &["checkout", "-q", "--detach", commit];
        // A shallow fetch of the ref, else a full fetch of the commit;
        // checkout of what was resolved (the ref may have moved since),
        // else fetch that commit and check it out. A cancel ends it all.
        self.step(source, &["init", "-q"], dir, log, cancel).await?;
        match self.step(source, shallow, dir, log, cancel).await {
            Err(GitError::Cancelled) => return Err(GitError::Cancelled),
            Err(_) => self.step(source, full, dir, log, cancel).await?,
            Ok(()) => {}
        }
        match self.step(source, detach, dir, log, cancel).await {
            Err(GitError::Cancelled) => return Err(GitError::Cancelled),
            Err(_) => {
                self.step(source, full, dir, log, cancel).await?;
                self.step(source, detach, dir, log, cancel).await?;
            }
            Ok(()) => {}
        }
        let _ = tokio::fs::remove_dir_all(dir.join(".git")).await;
        log.line("git", &format!("checked out {commit}")).await;
        Ok(())
    }

    /// One git command in `dir`, its output copied into the build log.
    async fn step(
        &self,
        source: &Source,
        args: &[&str],
        dir: &Path,
        log: &BuildLog,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<(), GitError> {
        let out = self
            .run(
                Some(source),
                args,
                Some(dir),
                self.fetch_timeout,
                Some(cancel),
            )
            .await?;
        for l in String::from_utf8_lossy(&out.stderr)
            .lines()
            .chain(String::from_utf8_lossy(&out.stdout).lines())
        {
            log.line("git", l).await;
        }
        if out.success {
            Ok(())
        } else {
            Err(GitError::Failed(format!(
                "git {} failed ({})",
                args.first().copied().unwrap_or_default(),
                out.status
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Pin;
    use crate::test_util::argv;

    #[test]
    fn git_is_pinned_and_confined() {
        let git = Git {
            program: "/usr/bin/git".into(),
            home: "/data/builds/git-home".into(),
            resolve_timeout: Duration::from_secs(20),
            fetch_timeout: Duration::from_secs(300),
        };
        let source = Source {
            url: "https://git.example.org/x.git".into(),
            scheme: "https".into(),
            pin: Some(Pin {
                host: "git.example.org".into(),
                port: 443,
                addrs: vec!["203.0.114.1".parse().unwrap()],
            }),
        };
        let cmd = git.command(
            Some(&source),
            &["ls-remote", "--", &source.url, "main"],
            None,
        );
        let a = argv(&cmd).join(" ");
        for want in [
            "-c protocol.allow=never -c protocol.https.allow=always",
            "-c http.followRedirects=false",
            "-c credential.helper=",
            "-c http.curloptResolve=git.example.org:443:203.0.114.1",
            "ls-remote -- https://git.example.org/x.git main",
        ] {
            assert!(a.contains(want), "{a}");
        }
        let env: Vec<(String, String)> = cmd
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_owned(), v?.to_str()?.to_owned())))
            .collect();
        for (k, v) in [
            ("HOME", "/data/builds/git-home"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_ALLOW_PROTOCOL", "https"),
            ("GIT_TERMINAL_PROMPT", "0"),
        ] {
            assert!(env.contains(&(k.into(), v.into())), "{env:?}");
        }
        assert!(
            !env.iter()
                .any(|(k, _)| k.to_ascii_lowercase().contains("proxy")),
            "{env:?}"
        );
    }

    /// curl must connect where the pin says: the name below cannot
    /// resolve (RFC 6761), so a connection can only come from the pin.
    #[tokio::test]
    async fn git_connects_to_the_pinned_address() {
        let Some(program) = crate::sandbox::which("git") else {
            panic!("git is not installed; run scripts/install-test-deps");
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = s.read(&mut head).await.unwrap();
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        let home = tempfile::tempdir().unwrap();
        let git = Git {
            program,
            home: home.path().into(),
            resolve_timeout: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(60),
        };
        let source = Source {
            url: format!("http://pinned.invalid:{port}/x.git"),
            scheme: "http".into(),
            pin: Some(Pin {
                host: "pinned.invalid".into(),
                port,
                addrs: vec!["127.0.0.1".parse().unwrap()],
            }),
        };
        let resolving = tokio::spawn(async move { git.resolve(&source, "main").await });
        let head = tokio::time::timeout(Duration::from_secs(60), accepted)
            .await
            .expect("git connected to the pinned address")
            .unwrap();
        assert!(head.contains("Host: pinned.invalid"), "{head}");
        assert!(matches!(
            resolving.await.unwrap(),
            Err(GitError::Unreachable { .. })
        ));
    }

    #[tokio::test]
    async fn a_timed_out_git_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("git");
        let pids = dir.path().join("pids");
        // A "git" that starts a helper in its group and hangs.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nsleep 300 &\necho $! > {}\nwait\n",
                pids.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let git = Git {
            program: script,
            home: dir.path().into(),
            resolve_timeout: Duration::from_millis(500),
            fetch_timeout: Duration::from_millis(500),
        };
        let source = Source {
            url: "file:///nowhere".into(),
            scheme: "file".into(),
            pin: None,
        };
        match git.resolve(&source, "main").await {
            Err(GitError::Unreachable { detail, .. }) => {
                assert!(detail.contains("longer than"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        let helper: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // SAFETY: probing with signal 0.
        while unsafe { libc::kill(helper, 0) } == 0 {
            // A killed child stays a zombie until its parent (gone) is
            // replaced by init's reaping; a zombie is dead enough.
            let state = std::fs::read_to_string(format!("/proc/{helper}/stat")).unwrap_or_default();
            if state.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the helper {helper} outlived its git"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
