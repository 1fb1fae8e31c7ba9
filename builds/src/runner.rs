//! Running the CNB lifecycle's `creator`, behind one trait with two
//! backends: `process` (lifecycle and buildpacks on this host, inside the
//! bubblewrap sandbox of `sandbox.rs`, or bare with `sandbox = "none"`)
//! and `container` (docker or podman runs the builder image's creator with
//! only the workspace and cache mounted). Both run the creator as the
//! build's [`Identity`], stream its output into the build log (bounded),
//! enforce the timeout and kill everything on cancel.

use crate::logs::{self, BuildLog};
use crate::sandbox::{self, Bwrap, Identity, Layout};
use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::watch;

/// Everything one lifecycle run needs. Paths are the host's.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub build_id: String,
    /// Holds `app/`, `layers/`, `platform/` and `report.toml`.
    pub workspace: PathBuf,
    /// Kept between builds of one tool and image.
    pub cache_dir: PathBuf,
    /// The build's `/tmp` (sandbox only).
    pub tmp_dir: PathBuf,
    /// The build's `/etc/passwd` and `/etc/group` (sandbox only).
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// `<registry>/<run image>`.
    pub run_image: String,
    /// `<registry>/<namespace>/<image>:latest`.
    pub output_image: String,
    /// host:port of the registry.
    pub registry_host: String,
    /// Whether the registry serves TLS; plain http is passed to the
    /// lifecycle as `-insecure-registry`.
    pub registry_tls: bool,
    /// The CA (PEM) the lifecycle must trust for the registry, if not a
    /// public one: mounted into the build, named by `SSL_CERT_DIR`.
    pub registry_ca: Option<PathBuf>,
    /// `CNB_REGISTRY_AUTH` JSON.
    pub registry_auth: String,
    pub platform_api: String,
    /// Who the creator runs as (and `-uid`/`-gid`).
    pub identity: Identity,
    pub timeout: Duration,
}

impl RunSpec {
    pub fn report_path(&self) -> PathBuf {
        self.workspace.join("report.toml")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Exited(i32),
    Cancelled,
    TimedOut,
    /// Could not be started at all.
    Failed(String),
}

pub type RunFuture<'a> = Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>>;

pub trait Runner: Send + Sync {
    /// Runs the creator; resolves when it exits, is cancelled (the watch
    /// turns true) or times out. Output goes to `log`.
    fn run<'a>(
        &'a self,
        spec: &'a RunSpec,
        log: Arc<BuildLog>,
        cancel: watch::Receiver<bool>,
    ) -> RunFuture<'a>;
}

/// Where the creator finds its parts (inside the sandbox or on the host).
struct CreatorPaths {
    app: PathBuf,
    layers: PathBuf,
    platform: PathBuf,
    buildpacks: PathBuf,
    order: PathBuf,
    launcher: PathBuf,
    cache: PathBuf,
    report: PathBuf,
}

impl CreatorPaths {
    fn in_workspace(ws: &Path, cache: &Path, buildpacks: &Path, order: &Path, lc: &Path) -> Self {
        CreatorPaths {
            app: ws.join("app"),
            layers: ws.join("layers"),
            platform: ws.join("platform"),
            buildpacks: buildpacks.into(),
            order: order.into(),
            launcher: lc.join("launcher"),
            cache: cache.into(),
            report: ws.join("report.toml"),
        }
    }

    /// The paths inside the sandbox or the builder container.
    fn inside() -> Self {
        Self::in_workspace(
            Path::new(sandbox::WORKSPACE),
            Path::new(sandbox::CACHE),
            Path::new(sandbox::BUILDPACKS),
            Path::new(sandbox::ORDER),
            Path::new(sandbox::LIFECYCLE),
        )
    }
}

/// The creator's flags, the same for every backend.
fn creator_args(p: &CreatorPaths, spec: &RunSpec) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: OsString| {
        a.push(name.into());
        a.push(value);
    };
    flag("-app", p.app.clone().into());
    flag("-layers", p.layers.clone().into());
    flag("-platform", p.platform.clone().into());
    flag("-buildpacks", p.buildpacks.clone().into());
    flag("-order", p.order.clone().into());
    flag("-launcher", p.launcher.clone().into());
    flag("-cache-dir", p.cache.clone().into());
    flag("-run-image", spec.run_image.clone().into());
    flag("-report", p.report.clone().into());
    if !spec.registry_tls {
        flag("-insecure-registry", spec.registry_host.clone().into());
    }
    flag("-uid", spec.identity.uid.to_string().into());
    flag("-gid", spec.identity.gid.to_string().into());
    flag("-log-level", "info".into());
    a.push(spec.output_image.clone().into());
    a
}

/// How the process runner confines the lifecycle.
#[derive(Debug, Clone)]
pub enum Sandboxing {
    Bwrap(Bwrap),
    /// `sandbox = "none"`: the host's view, berth's user.
    None,
    /// The sandbox was asked for but cannot be made; why. Builds fail
    /// with this rather than run unconfined.
    Missing(String),
}

/// The lifecycle on this host.
pub struct ProcessRunner {
    pub lifecycle_dir: PathBuf,
    pub buildpacks_dir: PathBuf,
    pub order: PathBuf,
    pub sandboxing: Sandboxing,
}

impl ProcessRunner {
    pub fn command(&self, spec: &RunSpec) -> Result<Command, String> {
        let mut env = vec![
            ("CNB_PLATFORM_API", spec.platform_api.as_str()),
            ("CNB_REGISTRY_AUTH", spec.registry_auth.as_str()),
        ];
        match &self.sandboxing {
            Sandboxing::Bwrap(bwrap) => {
                if spec.registry_ca.is_some() {
                    env.push(("SSL_CERT_DIR", sandbox::SSL_CERT_DIR));
                }
                let layout = Layout {
                    workspace: spec.workspace.clone(),
                    cache: spec.cache_dir.clone(),
                    tmp: spec.tmp_dir.clone(),
                    passwd: spec.passwd.clone(),
                    group: spec.group.clone(),
                    lifecycle_dir: self.lifecycle_dir.clone(),
                    buildpacks_dir: self.buildpacks_dir.clone(),
                    order: self.order.clone(),
                    registry_ca: spec.registry_ca.clone(),
                };
                Ok(bwrap.command(
                    &layout,
                    spec.identity,
                    &env,
                    &format!("{}/creator", sandbox::LIFECYCLE),
                    &creator_args(&CreatorPaths::inside(), spec),
                ))
            }
            Sandboxing::None => {
                let host = CreatorPaths::in_workspace(
                    &spec.workspace,
                    &spec.cache_dir,
                    &self.buildpacks_dir,
                    &self.order,
                    &self.lifecycle_dir,
                );
                let mut cmd = Command::new(self.lifecycle_dir.join("creator"));
                cmd.args(creator_args(&host, spec))
                    .env_clear()
                    .env(
                        "PATH",
                        std::env::var_os("PATH")
                            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
                    )
                    .envs(env)
                    .current_dir(&spec.workspace);
                // Unconfined, the lifecycle reads the CA where it is: its
                // directory joins the system's.
                if let Some(dir) = spec.registry_ca.as_ref().and_then(|ca| ca.parent()) {
                    cmd.env("SSL_CERT_DIR", format!("/etc/ssl/certs:{}", dir.display()));
                }
                // SAFETY: umask is async-signal-safe and cannot fail.
                unsafe {
                    cmd.pre_exec(|| {
                        libc::umask(0o022);
                        Ok(())
                    });
                }
                Ok(cmd)
            }
            Sandboxing::Missing(why) => Err(format!("builds cannot run on this host: {why}")),
        }
    }
}

impl Runner for ProcessRunner {
    fn run<'a>(
        &'a self,
        spec: &'a RunSpec,
        log: Arc<BuildLog>,
        cancel: watch::Receiver<bool>,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            let mut cmd = match self.command(spec) {
                Ok(c) => c,
                Err(why) => return RunOutcome::Failed(why),
            };
            // Its own process group: killing it kills the lifecycle (bare)
            // or bwrap, whose --die-with-parent takes the sandbox's pid
            // namespace, and everything in it, along.
            cmd.process_group(0);
            supervise(cmd, spec, log, cancel, |pid| {
                // SAFETY: signalling the process group we created.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            })
            .await
        })
    }
}

/// docker or podman running the builder image.
pub struct ContainerRunner {
    pub engine: String,
    pub builder_image: String,
}

impl ContainerRunner {
    pub fn container_name(spec: &RunSpec) -> String {
        format!("berth-build-{}", spec.build_id)
    }

    /// The engine's command: only the workspace and cache are mounted;
    /// the creator runs as the build's identity with no capabilities and
    /// no way to gain any. With rootless podman (berth not root) the
    /// user namespace keeps berth's uid, so the mounts stay writable.
    pub fn command(&self, spec: &RunSpec) -> Command {
        let id = spec.identity;
        let mut cmd = Command::new(&self.engine);
        cmd.args([
            "run",
            "--rm",
            "--network",
            "host",
            "--name",
            &Self::container_name(spec),
        ])
        .arg("--user")
        .arg(format!("{}:{}", id.uid, id.gid))
        .args(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]);
        if !sandbox::is_root() && Path::new(&self.engine).file_name() == Some("podman".as_ref()) {
            cmd.arg("--userns=keep-id");
        }
        cmd.arg("-v")
            .arg(format!(
                "{}:{}",
                spec.workspace.display(),
                sandbox::WORKSPACE
            ))
            .arg("-v")
            .arg(format!("{}:{}", spec.cache_dir.display(), sandbox::CACHE))
            .arg("-e")
            .arg(format!("CNB_PLATFORM_API={}", spec.platform_api))
            .arg("-e")
            .arg("CNB_REGISTRY_AUTH")
            .env("CNB_REGISTRY_AUTH", &spec.registry_auth);
        if let Some(ca) = &spec.registry_ca {
            cmd.arg("-v")
                .arg(format!(
                    "{}:{}/ca.crt:ro",
                    ca.display(),
                    sandbox::REGISTRY_CA_DIR
                ))
                .arg("-e")
                .arg(format!("SSL_CERT_DIR={}", sandbox::SSL_CERT_DIR));
        }
        cmd.arg(&self.builder_image)
            .arg(format!("{}/creator", sandbox::LIFECYCLE))
            .args(creator_args(&CreatorPaths::inside(), spec));
        cmd
    }
}

impl Runner for ContainerRunner {
    fn run<'a>(
        &'a self,
        spec: &'a RunSpec,
        log: Arc<BuildLog>,
        cancel: watch::Receiver<bool>,
    ) -> RunFuture<'a> {
        Box::pin(async move {
            let engine = self.engine.clone();
            let name = Self::container_name(spec);
            supervise(self.command(spec), spec, log, cancel, move |_pid| {
                // The engine client's own exit does not stop the container.
                let _ = std::process::Command::new(&engine)
                    .args(["kill", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            })
            .await
        })
    }
}

/// Spawns `cmd`, copies its output into the log line by line, and waits
/// for exit, cancel or timeout (then `kill` and wait).
async fn supervise(
    mut cmd: Command,
    spec: &RunSpec,
    log: Arc<BuildLog>,
    mut cancel: watch::Receiver<bool>,
    kill: impl Fn(u32),
) -> RunOutcome {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Spawned here, on a runtime worker thread, which lives as long as
    // berth: bwrap's --die-with-parent follows the thread that spawned it,
    // so never move this into spawn_blocking (whose idle threads exit and
    // would take the build with them).
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return RunOutcome::Failed(format!("cannot start the lifecycle: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        let log = log.clone();
        pumps.push(tokio::spawn(async move {
            logs::pump(out, &log, "lifecycle").await
        }));
    }
    if let Some(err) = child.stderr.take() {
        let log = log.clone();
        pumps.push(tokio::spawn(async move {
            logs::pump(err, &log, "lifecycle:err").await
        }));
    }
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let outcome = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => RunOutcome::Exited(s.code().unwrap_or(-1)),
            Err(e) => RunOutcome::Failed(format!("waiting for the lifecycle failed: {e}")),
        },
        _ = crate::git::cancelled(Some(&mut cancel)) => {
            kill(pid);
            let _ = child.wait().await;
            RunOutcome::Cancelled
        }
        _ = &mut deadline => {
            kill(pid);
            let _ = child.wait().await;
            RunOutcome::TimedOut
        }
    };
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::argv;

    fn spec() -> RunSpec {
        RunSpec {
            build_id: "tool-x-buildpacks-1".into(),
            workspace: "/w".into(),
            cache_dir: "/c".into(),
            tmp_dir: "/t".into(),
            passwd: "/p".into(),
            group: "/g".into(),
            run_image: "127.0.0.1:5000/toolforge/run:latest".into(),
            output_image: "127.0.0.1:5000/tool-x/tool-x:latest".into(),
            registry_host: "127.0.0.1:5000".into(),
            registry_tls: false,
            registry_ca: None,
            registry_auth: "{}".into(),
            platform_api: "0.13".into(),
            identity: Identity {
                uid: 200_004,
                gid: 200_004,
            },
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn process_runner_passes_the_platform_flags() {
        let r = ProcessRunner {
            lifecycle_dir: "/cnb/lifecycle".into(),
            buildpacks_dir: "/cnb/buildpacks".into(),
            order: "/cnb/order.toml".into(),
            sandboxing: Sandboxing::None,
        };
        let a = argv(&r.command(&spec()).unwrap()).join(" ");
        for want in [
            "/cnb/lifecycle/creator -app /w/app -layers /w/layers -platform /w/platform",
            "-buildpacks /cnb/buildpacks -order /cnb/order.toml -launcher /cnb/lifecycle/launcher -cache-dir /c",
            "-run-image 127.0.0.1:5000/toolforge/run:latest -report /w/report.toml -insecure-registry 127.0.0.1:5000",
            "-uid 200004 -gid 200004",
        ] {
            assert!(a.contains(want), "{a}");
        }
        assert!(a.ends_with("127.0.0.1:5000/tool-x/tool-x:latest"));
        let missing = ProcessRunner {
            sandboxing: Sandboxing::Missing("bwrap is not installed".into()),
            ..r
        };
        assert!(missing
            .command(&spec())
            .unwrap_err()
            .contains("bwrap is not installed"));
    }

    #[test]
    fn container_runner_mounts_only_the_workspace_and_cache() {
        let r = ContainerRunner {
            engine: "docker".into(),
            builder_image: "heroku/builder:24".into(),
        };
        let a = argv(&r.command(&spec())).join(" ");
        assert!(
            a.starts_with("docker run --rm --network host --name berth-build-tool-x-buildpacks-1 --user 200004:200004 --cap-drop ALL --security-opt no-new-privileges"),
            "{a}"
        );
        assert!(a.contains("-v /w:/workspace -v /c:/cache -e"), "{a}");
        assert_eq!(a.matches(" -v ").count(), 2, "{a}");
        assert!(a.contains("heroku/builder:24 /cnb/lifecycle/creator -app /workspace/app"));
        assert!(a.contains("-cache-dir /cache"), "{a}");
        assert!(
            !a.contains("CNB_REGISTRY_AUTH={}"),
            "the token is not on the command line"
        );
    }

    #[test]
    fn over_tls_the_registry_is_not_insecure_and_its_ca_is_handed_over() {
        let tls = RunSpec {
            registry_tls: true,
            registry_ca: Some("/etc/berth/ca.pem".into()),
            ..spec()
        };
        let r = ProcessRunner {
            lifecycle_dir: "/cnb/lifecycle".into(),
            buildpacks_dir: "/cnb/buildpacks".into(),
            order: "/cnb/order.toml".into(),
            sandboxing: Sandboxing::None,
        };
        let cmd = r.command(&tls).unwrap();
        assert!(!argv(&cmd).join(" ").contains("-insecure-registry"));
        let env: Vec<_> = cmd.as_std().get_envs().collect();
        assert!(env.contains(&(
            std::ffi::OsStr::new("SSL_CERT_DIR"),
            Some(std::ffi::OsStr::new("/etc/ssl/certs:/etc/berth"))
        )));
        // Without a CA: public roots only, no SSL_CERT_DIR.
        let cmd = r
            .command(&RunSpec {
                registry_ca: None,
                ..tls.clone()
            })
            .unwrap();
        assert!(!cmd.as_std().get_envs().any(|(k, _)| k == "SSL_CERT_DIR"));
        let c = ContainerRunner {
            engine: "docker".into(),
            builder_image: "heroku/builder:24".into(),
        };
        let a = argv(&c.command(&tls)).join(" ");
        assert!(
            a.contains("-v /etc/berth/ca.pem:/cnb/registry-ca/ca.crt:ro -e SSL_CERT_DIR=/etc/ssl/certs:/cnb/registry-ca"),
            "{a}"
        );
        assert!(!a.contains("-insecure-registry"), "{a}");
    }
}
