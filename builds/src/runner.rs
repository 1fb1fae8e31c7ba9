//! Running the CNB lifecycle's `creator`, behind one trait with two
//! backends: `process` (lifecycle and buildpacks on this host) and
//! `container` (docker or podman runs the builder image's creator with the
//! workspace mounted). Both stream output into the build log, enforce the
//! timeout and kill everything on cancel.

use crate::logs::BuildLog;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;

/// Everything one lifecycle run needs.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub build_id: String,
    /// Holds `app/`, `layers/`, `platform/` and `report.toml`.
    pub workspace: PathBuf,
    /// Kept between builds of one tool and image.
    pub cache_dir: PathBuf,
    /// `<registry>/<run image>`.
    pub run_image: String,
    /// `<registry>/<namespace>/<image>:latest`.
    pub output_image: String,
    /// host:port of the registry (plain http: passed as insecure).
    pub registry_host: String,
    /// `CNB_REGISTRY_AUTH` JSON.
    pub registry_auth: String,
    pub platform_api: String,
    pub uid: u32,
    pub gid: u32,
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

/// The lifecycle on this host.
pub struct ProcessRunner {
    pub lifecycle_dir: PathBuf,
    pub buildpacks_dir: PathBuf,
    pub order: PathBuf,
}

impl ProcessRunner {
    pub fn command(&self, spec: &RunSpec) -> Command {
        let ws = &spec.workspace;
        let mut cmd = Command::new(self.lifecycle_dir.join("creator"));
        cmd.arg("-app")
            .arg(ws.join("app"))
            .arg("-layers")
            .arg(ws.join("layers"))
            .arg("-platform")
            .arg(ws.join("platform"))
            .arg("-buildpacks")
            .arg(&self.buildpacks_dir)
            .arg("-order")
            .arg(&self.order)
            .arg("-launcher")
            .arg(self.lifecycle_dir.join("launcher"))
            .arg("-cache-dir")
            .arg(&spec.cache_dir)
            .arg("-run-image")
            .arg(&spec.run_image)
            .arg("-report")
            .arg(spec.report_path())
            .arg("-insecure-registry")
            .arg(&spec.registry_host)
            .arg("-uid")
            .arg(spec.uid.to_string())
            .arg("-gid")
            .arg(spec.gid.to_string())
            .arg("-log-level")
            .arg("info")
            .arg(&spec.output_image)
            .env("CNB_PLATFORM_API", &spec.platform_api)
            .env("CNB_REGISTRY_AUTH", &spec.registry_auth)
            .current_dir(ws);
        cmd
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
            let mut cmd = self.command(spec);
            // Its own process group, so cancel and timeout kill the buildpacks'
            // children too.
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

    pub fn command(&self, spec: &RunSpec) -> Command {
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
        .arg("0:0")
        .arg("-v")
        .arg(format!("{}:/workspace", spec.workspace.display()))
        .arg("-v")
        .arg(format!("{}:/cache", spec.cache_dir.display()))
        .arg("-e")
        .arg(format!("CNB_PLATFORM_API={}", spec.platform_api))
        .arg("-e")
        .arg("CNB_REGISTRY_AUTH")
        .env("CNB_REGISTRY_AUTH", &spec.registry_auth)
        .arg(&self.builder_image)
        .arg("/cnb/lifecycle/creator")
        .args([
            "-app",
            "/workspace/app",
            "-layers",
            "/workspace/layers",
            "-platform",
            "/workspace/platform",
        ])
        .args(["-cache-dir", "/cache", "-report", "/workspace/report.toml"])
        .arg("-run-image")
        .arg(&spec.run_image)
        .arg("-insecure-registry")
        .arg(&spec.registry_host)
        .arg("-uid")
        .arg(spec.uid.to_string())
        .arg("-gid")
        .arg(spec.gid.to_string())
        .arg(&spec.output_image);
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
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return RunOutcome::Failed(format!("cannot start the lifecycle: {e}")),
    };
    let pid = child.id().unwrap_or(0);
    let mut pumps = Vec::new();
    for (stream, source) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "lifecycle",
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "lifecycle:err",
        ),
    ] {
        if let Some(s) = stream {
            let log = log.clone();
            pumps.push(tokio::spawn(async move {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    log.line(source, &l).await;
                }
            }));
        }
    }
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let outcome = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => RunOutcome::Exited(s.code().unwrap_or(-1)),
            Err(e) => RunOutcome::Failed(format!("waiting for the lifecycle failed: {e}")),
        },
        _ = async { while cancel.changed().await.is_ok() { if *cancel.borrow() { return; } } std::future::pending::<()>().await } => {
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

    fn spec() -> RunSpec {
        RunSpec {
            build_id: "tool-x-buildpacks-1".into(),
            workspace: "/w".into(),
            cache_dir: "/c".into(),
            run_image: "127.0.0.1:5000/toolforge/run:latest".into(),
            output_image: "127.0.0.1:5000/tool-x/tool-x:latest".into(),
            registry_host: "127.0.0.1:5000".into(),
            registry_auth: "{}".into(),
            platform_api: "0.13".into(),
            uid: 1000,
            gid: 1000,
            timeout: Duration::from_secs(1),
        }
    }

    fn argv(cmd: &Command) -> Vec<String> {
        let c = cmd.as_std();
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn process_runner_passes_the_platform_flags() {
        let r = ProcessRunner {
            lifecycle_dir: "/cnb/lifecycle".into(),
            buildpacks_dir: "/cnb/buildpacks".into(),
            order: "/cnb/order.toml".into(),
        };
        let a = argv(&r.command(&spec())).join(" ");
        for want in [
            "/cnb/lifecycle/creator -app /w/app -layers /w/layers -platform /w/platform",
            "-buildpacks /cnb/buildpacks -order /cnb/order.toml -launcher /cnb/lifecycle/launcher -cache-dir /c",
            "-run-image 127.0.0.1:5000/toolforge/run:latest -report /w/report.toml -insecure-registry 127.0.0.1:5000",
            "-uid 1000 -gid 1000",
        ] {
            assert!(a.contains(want), "{a}");
        }
        assert!(a.ends_with("127.0.0.1:5000/tool-x/tool-x:latest"));
    }

    #[test]
    fn container_runner_mounts_the_workspace() {
        let r = ContainerRunner {
            engine: "podman".into(),
            builder_image: "heroku/builder:24".into(),
        };
        let a = argv(&r.command(&spec())).join(" ");
        assert!(
            a.starts_with("podman run --rm --network host --name berth-build-tool-x-buildpacks-1"),
            "{a}"
        );
        assert!(a.contains("-v /w:/workspace -v /c:/cache"));
        assert!(a.contains("heroku/builder:24 /cnb/lifecycle/creator -app /workspace/app"));
    }
}
