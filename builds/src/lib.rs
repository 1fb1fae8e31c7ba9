//! berth-builds: tools ask for a build of a git repository; the Cloud
//! Native Buildpacks lifecycle builds it and its exporter pushes the image
//! straight into berth, with a short-lived token that can push only to the
//! tool's namespace and pull the run image.
//!
//! Flow: `start` validates, resolves the ref (`git ls-remote`) and queues a
//! BUILD_PENDING record; the dispatcher starts queued builds while fewer
//! than `max_parallel` run (and fewer than `per_tool_parallel` for that
//! tool); a run fetches exactly the resolved commit, runs the `creator`
//! through a `Runner`, reads the digest from `report.toml`, and prunes old
//! records. Logs go to files that outlive the records.

pub mod git;
pub mod logs;
pub mod runner;

use berth_storage::meta::builds::{self as status, BuildRecord};
use berth_storage::{now_ms, RepoName, Storage, StorageError};
use logs::BuildLog;
use runner::{RunOutcome, RunSpec, Runner};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Which backend runs the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    Process,
    Container,
}

/// The `[builds]` settings.
#[derive(Debug, Clone)]
pub struct BuildsConfig {
    /// When false, build requests are refused (nothing would run them).
    pub enabled: bool,
    pub runner: RunnerKind,
    pub lifecycle_dir: PathBuf,
    pub buildpacks_dir: PathBuf,
    pub order: PathBuf,
    /// `repository:tag` of the run image in this registry.
    pub run_image: String,
    pub builder_image: String,
    /// `docker` or `podman` (container runner).
    pub container_engine: String,
    pub platform_api: String,
    pub uid: u32,
    pub gid: u32,
    pub max_parallel: usize,
    pub per_tool_parallel: usize,
    pub timeout: Duration,
    pub keep_successful: usize,
    pub keep_failed: usize,
    pub log_retention: Duration,
    pub source_schemes: Vec<String>,
    /// host:port the lifecycle reaches berth at.
    pub registry_host: String,
    /// Tool `foo` owns namespace `<tool_prefix>foo`.
    pub tool_prefix: String,
    /// `<data dir>/builds`: workspaces, caches, logs.
    pub dir: PathBuf,
}

impl BuildsConfig {
    pub fn defaults(dir: PathBuf, registry_host: String) -> BuildsConfig {
        BuildsConfig {
            enabled: true,
            runner: RunnerKind::Process,
            lifecycle_dir: "/cnb/lifecycle".into(),
            buildpacks_dir: "/cnb/buildpacks".into(),
            order: "/cnb/order.toml".into(),
            run_image: "toolforge/run:latest".into(),
            builder_image: "heroku/builder:24".into(),
            container_engine: "docker".into(),
            platform_api: "0.13".into(),
            uid: 1000,
            gid: 1000,
            max_parallel: 2,
            per_tool_parallel: 1,
            timeout: Duration::from_secs(30 * 60),
            keep_successful: 4,
            keep_failed: 2,
            log_retention: Duration::from_secs(30 * 86_400),
            source_schemes: vec!["https".into(), "http".into()],
            registry_host,
            tool_prefix: "tool-".into(),
            dir,
        }
    }
}

/// Mints the short-lived token a build pushes with: push and pull on
/// `push_repo`, pull on `pull_repo`. Implemented by the auth layer.
pub trait TokenMinter: Send + Sync {
    fn mint(&self, subject: &str, push_repo: &str, pull_repo: &str) -> String;
}

/// A build request (Toolforge's `POST /v1/tool/{tool}/builds` body).
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct BuildRequest {
    pub source_url: String,
    #[serde(rename = "ref", default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub image_name: Option<String>,
    #[serde(default)]
    pub envvars: BTreeMap<String, String>,
    #[serde(default)]
    pub use_latest_versions: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The request is wrong (400).
    #[error("{0}")]
    Invalid(String),
    /// No such build (404).
    #[error("no build {0}")]
    NotFound(String),
    /// The build already finished (409).
    #[error("build {0} has already finished")]
    Finished(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

struct Running {
    tool: String,
    cancel: watch::Sender<bool>,
}

pub struct Builds {
    storage: Storage,
    config: BuildsConfig,
    runner: Box<dyn Runner>,
    tokens: Arc<dyn TokenMinter>,
    running: Mutex<HashMap<String, Running>>,
    wake: Notify,
}

/// Tool names as Toolforge has them: `^[a-z]([-_a-z0-9]{0,254}[a-z0-9])?$`.
pub fn valid_tool(tool: &str) -> bool {
    let b = tool.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b[0].is_ascii_lowercase()
        && (b.len() == 1 || b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// Environment variable names Toolforge accepts: `^[A-Za-z_][A-Za-z_0-9]{2,}$`.
fn valid_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 3
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

impl Builds {
    pub fn new(
        storage: Storage,
        config: BuildsConfig,
        tokens: Arc<dyn TokenMinter>,
    ) -> Arc<Builds> {
        let runner: Box<dyn Runner> = match config.runner {
            RunnerKind::Process => Box::new(runner::ProcessRunner {
                lifecycle_dir: config.lifecycle_dir.clone(),
                buildpacks_dir: config.buildpacks_dir.clone(),
                order: config.order.clone(),
            }),
            RunnerKind::Container => Box::new(runner::ContainerRunner {
                engine: config.container_engine.clone(),
                builder_image: config.builder_image.clone(),
            }),
        };
        Arc::new(Builds {
            storage,
            config,
            runner,
            tokens,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    pub fn config(&self) -> &BuildsConfig {
        &self.config
    }

    pub fn namespace(&self, tool: &str) -> String {
        format!("{}{tool}", self.config.tool_prefix)
    }

    fn logs_dir(&self) -> PathBuf {
        self.config.dir.join("logs")
    }

    /// Validates and queues a build; returns its record and warnings for
    /// the caller (e.g. a namespace close to its quota).
    pub async fn start(
        &self,
        tool: &str,
        req: BuildRequest,
    ) -> Result<(BuildRecord, Vec<String>), BuildError> {
        if !self.config.enabled {
            return Err(BuildError::Invalid(
                "builds are switched off on this registry ([builds] enabled = false)".into(),
            ));
        }
        let scheme = req
            .source_url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        if !self.config.source_schemes.iter().any(|s| s == &scheme) {
            return Err(BuildError::Invalid(format!(
                "source_url {:?} must use one of the schemes {:?}",
                req.source_url.chars().take(200).collect::<String>(),
                self.config.source_schemes
            )));
        }
        if req.source_url.starts_with('-')
            || req.source_url.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(BuildError::Invalid(
                "source_url contains characters a URL cannot".into(),
            ));
        }
        for name in req.envvars.keys() {
            if !valid_env_name(name) {
                return Err(BuildError::Invalid(format!(
                    "environment variable name {name:?} must match ^[A-Za-z_][A-Za-z_0-9]{{2,}}$"
                )));
            }
        }
        let ns = self.namespace(tool);
        let image_name = req
            .image_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| ns.clone());
        if image_name.contains('/') || RepoName::parse(&format!("{ns}/{image_name}")).is_err() {
            return Err(BuildError::Invalid(format!(
                "image_name {image_name:?} must be one lowercase path component such as \"web\" or \"my-app\""
            )));
        }
        let reference = req
            .reference
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "HEAD".into());
        if reference.starts_with('-') {
            return Err(BuildError::Invalid(format!(
                "ref {reference:?} is not a git ref"
            )));
        }
        let resolved = git::resolve(&req.source_url, &reference)
            .await
            .map_err(|e| BuildError::Invalid(e.to_string()))?;
        let id = format!(
            "{tool}-buildpacks-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let record = BuildRecord {
            id: id.clone(),
            tool: tool.to_owned(),
            image_name,
            status: status::PENDING.into(),
            message: "waiting for a free runner".into(),
            params: serde_json::json!({
                "source_url": req.source_url, "ref": reference, "envvars": req.envvars,
                "image_name": req.image_name, "use_latest_versions": req.use_latest_versions,
            }),
            resolved_ref: resolved,
            destination_image: String::new(),
            log_path: self
                .logs_dir()
                .join(format!("{id}.log"))
                .display()
                .to_string(),
            created_ms: now_ms(),
            start_ms: None,
            end_ms: None,
        };
        self.storage.meta.insert_build(record.clone()).await?;
        let log = BuildLog::create(std::path::Path::new(&record.log_path))
            .await
            .map_err(StorageError::from)?;
        log.line(
            "berth",
            &format!(
                "build {id} queued: {} at {} ({})",
                record.params["source_url"], reference, record.resolved_ref
            ),
        )
        .await;
        let mut warnings = Vec::new();
        if let Ok(Some(q)) = self.storage.meta.quota(&ns).await {
            if q.limit_bytes.is_some() && q.percent >= 90.0 {
                warnings.push(format!(
                    "{ns} uses {:.1}% of its storage quota; the build's push may be refused. Delete old images or ask for more.",
                    q.percent
                ));
            }
        }
        self.wake.notify_one();
        Ok((record, warnings))
    }

    pub async fn list(&self, tool: &str) -> Result<Vec<BuildRecord>, BuildError> {
        Ok(self.storage.meta.builds_of(tool).await?)
    }

    /// One of the tool's builds; `latest` is its newest.
    pub async fn get(&self, tool: &str, id: &str) -> Result<BuildRecord, BuildError> {
        let found = if id == "latest" {
            self.storage.meta.builds_of(tool).await?.into_iter().next()
        } else {
            self.storage
                .meta
                .build(id)
                .await?
                .filter(|b| b.tool == tool)
        };
        found.ok_or_else(|| BuildError::NotFound(id.to_owned()))
    }

    pub async fn cancel(&self, tool: &str, id: &str) -> Result<BuildRecord, BuildError> {
        let b = self.get(tool, id).await?;
        if status::is_finished(&b.status) {
            return Err(BuildError::Finished(b.id));
        }
        if b.status == status::PENDING
            && self
                .storage
                .meta
                .transition_build(
                    &b.id,
                    status::PENDING,
                    status::CANCELLED,
                    "cancelled before it started".into(),
                    None,
                )
                .await?
        {
            return self.get(tool, &b.id).await;
        }
        if let Some(r) = self.running.lock().expect("running lock").get(&b.id) {
            let _ = r.cancel.send(true);
        }
        // The run task records BUILD_CANCELLED once the lifecycle is dead.
        for _ in 0..100 {
            let now = self.get(tool, &b.id).await?;
            if status::is_finished(&now.status) {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.get(tool, &b.id).await
    }

    /// Deletes a finished build's record (its log stays for its retention);
    /// with `delete_image`, also the image it pushed, unless pinned.
    pub async fn delete(
        &self,
        tool: &str,
        id: &str,
        delete_image: bool,
    ) -> Result<Vec<String>, BuildError> {
        let b = self.get(tool, id).await?;
        if !status::is_finished(&b.status) {
            return Err(BuildError::Invalid(format!(
                "build {} is still {}; cancel it first",
                b.id, b.status
            )));
        }
        let mut info = Vec::new();
        if delete_image {
            if let Some((_, digest)) = b.destination_image.rsplit_once('@') {
                let repo = RepoName::parse(&format!("{}/{}", self.namespace(tool), b.image_name))
                    .map_err(|e| BuildError::Invalid(e.to_string()))?;
                let pinned = self
                    .storage
                    .meta
                    .list_pins()
                    .await?
                    .iter()
                    .any(|p| p.repository == repo.as_str() && p.digest == digest);
                if pinned {
                    info.push(format!(
                        "image {repo}@{digest} is pinned (in use); it was kept"
                    ));
                } else if let Ok(d) = digest.parse() {
                    match self.storage.meta.delete_manifest(&repo, &d).await? {
                        berth_storage::meta::DeleteManifestOutcome::Deleted => {
                            info.push(format!("deleted image {repo}@{digest}"))
                        }
                        other => info.push(format!("image {repo}@{digest} not deleted: {other:?}")),
                    }
                }
            }
        }
        self.storage.meta.delete_build(&b.id).await?;
        info.push(format!("deleted build {}", b.id));
        Ok(info)
    }

    /// Removes every tag of the tool's images except those of pinned
    /// digests (the running webservice's); GC collects the rest.
    pub async fn clean(&self, tool: &str) -> Result<Vec<String>, BuildError> {
        let ns = self.namespace(tool);
        let tags: Vec<_> = self
            .storage
            .meta
            .gc_tags()
            .await?
            .into_iter()
            .filter(|t| t.namespace == ns)
            .collect();
        let pinned = tags.iter().filter(|t| t.pinned).count();
        let removed = self
            .storage
            .meta
            .delete_tags_checked(tags.into_iter().filter(|t| !t.pinned).collect())
            .await?;
        Ok(vec![format!(
            "removed {} tag(s) of {ns}; kept {pinned} pinned; storage is freed by the next garbage collection",
            removed.len()
        )])
    }

    /// At start: builds a dead process left running have failed.
    pub async fn recover(&self) -> Result<usize, StorageError> {
        self.storage
            .meta
            .fail_orphaned_builds("berth restarted while the build was running; start it again")
            .await
    }

    /// The dispatcher: starts queued builds as runners free up. Runs until
    /// the task is dropped.
    pub async fn dispatch(self: Arc<Self>) {
        let mut last_log_expiry = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if let Err(e) = self.start_queued().await {
                tracing::warn!(error = %e, "build dispatcher");
            }
            if last_log_expiry.elapsed() >= Duration::from_secs(3600) {
                last_log_expiry = std::time::Instant::now();
                let cutoff = std::time::SystemTime::now() - self.config.log_retention;
                let n = logs::expire(&self.logs_dir(), cutoff).await;
                if n > 0 {
                    tracing::info!(removed = n, "expired build logs");
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    async fn start_queued(self: &Arc<Self>) -> Result<(), StorageError> {
        for b in self.storage.meta.pending_builds().await? {
            let (total, for_tool) = {
                let running = self.running.lock().expect("running lock");
                (
                    running.len(),
                    running.values().filter(|r| r.tool == b.tool).count(),
                )
            };
            if total >= self.config.max_parallel {
                break;
            }
            if for_tool >= self.config.per_tool_parallel {
                continue;
            }
            if !self
                .storage
                .meta
                .transition_build(
                    &b.id,
                    status::PENDING,
                    status::RUNNING,
                    "running".into(),
                    None,
                )
                .await?
            {
                continue; // cancelled meanwhile
            }
            let (cancel, cancelled) = watch::channel(false);
            self.running.lock().expect("running lock").insert(
                b.id.clone(),
                Running {
                    tool: b.tool.clone(),
                    cancel,
                },
            );
            let me = self.clone();
            tokio::spawn(async move {
                let id = b.id.clone();
                me.execute(b, cancelled).await;
                me.running.lock().expect("running lock").remove(&id);
                me.wake.notify_one();
            });
        }
        Ok(())
    }

    async fn execute(&self, b: BuildRecord, cancelled: watch::Receiver<bool>) {
        let log = match BuildLog::create(std::path::Path::new(&b.log_path)).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                let _ = self
                    .finish(
                        &b,
                        status::FAILURE,
                        format!("cannot write the build log: {e}"),
                        None,
                    )
                    .await;
                return;
            }
        };
        let workspace = self.config.dir.join("work").join(&b.id);
        let (final_status, message, destination) =
            self.run_build(&b, &workspace, log.clone(), cancelled).await;
        log.line("berth", &format!("{final_status}: {message}"))
            .await;
        let _ = tokio::fs::remove_dir_all(&workspace).await;
        if let Err(e) = self.finish(&b, final_status, message, destination).await {
            tracing::error!(build = %b.id, error = %e, "cannot record the build's end");
        }
    }

    async fn run_build(
        &self,
        b: &BuildRecord,
        workspace: &std::path::Path,
        log: Arc<BuildLog>,
        cancelled: watch::Receiver<bool>,
    ) -> (&'static str, String, Option<String>) {
        let ns = self.namespace(&b.tool);
        let url = b.params["source_url"].as_str().unwrap_or_default();
        let reference = b.params["ref"].as_str().unwrap_or("HEAD");
        log.line("berth", &format!("fetching {url} at {}", b.resolved_ref))
            .await;
        if let Err(e) = git::checkout(
            url,
            reference,
            &b.resolved_ref,
            &workspace.join("app"),
            &log,
        )
        .await
        {
            return (
                status::FAILURE,
                format!("cannot fetch the source: {e}"),
                None,
            );
        }
        let env_dir = workspace.join("platform").join("env");
        let setup = async {
            tokio::fs::create_dir_all(&env_dir).await?;
            tokio::fs::create_dir_all(workspace.join("layers")).await?;
            if let Some(vars) = b.params["envvars"].as_object() {
                for (name, value) in vars {
                    tokio::fs::write(env_dir.join(name), value.as_str().unwrap_or_default())
                        .await?;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        if let Err(e) = setup.await {
            return (
                status::FAILURE,
                format!("cannot prepare the workspace: {e}"),
                None,
            );
        }
        let cache_dir = self
            .config
            .dir
            .join("cache")
            .join(&b.tool)
            .join(&b.image_name);
        if let Err(e) = tokio::fs::create_dir_all(&cache_dir).await {
            return (
                status::FAILURE,
                format!("cannot prepare the cache: {e}"),
                None,
            );
        }
        // As root, hand the workspace to the build user the lifecycle drops to.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid, dirs) = (
                self.config.uid,
                self.config.gid,
                vec![workspace.to_owned(), cache_dir.clone()],
            );
            let _ = tokio::task::spawn_blocking(move || {
                for d in dirs {
                    chown_tree(&d, uid, gid);
                }
            })
            .await;
        }
        let output_repo = format!("{ns}/{}", b.image_name);
        let run_repo = self
            .config
            .run_image
            .rsplit_once(':')
            .map(|(r, _)| r)
            .unwrap_or(&self.config.run_image)
            .to_owned();
        let token = self
            .tokens
            .mint(&format!("build:{}", b.id), &output_repo, &run_repo);
        let host = &self.config.registry_host;
        let spec = RunSpec {
            build_id: b.id.clone(),
            workspace: workspace.to_owned(),
            cache_dir,
            run_image: format!("{host}/{}", self.config.run_image),
            output_image: format!("{host}/{output_repo}:latest"),
            registry_host: host.clone(),
            registry_auth: serde_json::json!({ host: format!("Bearer {token}") }).to_string(),
            platform_api: self.config.platform_api.clone(),
            uid: self.config.uid,
            gid: self.config.gid,
            timeout: self.config.timeout,
        };
        log.line(
            "berth",
            &format!(
                "running the lifecycle: {} -> {}",
                spec.run_image, spec.output_image
            ),
        )
        .await;
        match self.runner.run(&spec, log.clone(), cancelled).await {
            RunOutcome::Cancelled => (status::CANCELLED, "cancelled".into(), None),
            RunOutcome::TimedOut => (
                status::TIMEOUT,
                format!(
                    "the build ran longer than {:?} and was stopped",
                    self.config.timeout
                ),
                None,
            ),
            RunOutcome::Failed(why) => (status::FAILURE, why, None),
            RunOutcome::Exited(0) => match read_report(&spec.report_path()).await {
                Ok(digest) => (
                    status::SUCCESS,
                    "built and pushed".into(),
                    Some(format!("{}@{digest}", spec.output_image)),
                ),
                Err(e) => (
                    status::FAILURE,
                    format!("the lifecycle succeeded but its report is unusable: {e}"),
                    None,
                ),
            },
            RunOutcome::Exited(code) => {
                let why = last_error_line(&b.log_path)
                    .await
                    .unwrap_or_else(|| "see the build log".into());
                (
                    status::FAILURE,
                    format!("the lifecycle exited with status {code}: {why}"),
                    None,
                )
            }
        }
    }

    async fn finish(
        &self,
        b: &BuildRecord,
        to: &'static str,
        message: String,
        destination: Option<String>,
    ) -> Result<(), StorageError> {
        self.storage
            .meta
            .transition_build(&b.id, status::RUNNING, to, message, destination)
            .await?;
        self.prune(&b.tool, &b.image_name).await
    }

    /// Keeps the newest `keep_successful` successful and `keep_failed`
    /// unsuccessful records per tool and image; logs stay on disk.
    async fn prune(&self, tool: &str, image: &str) -> Result<(), StorageError> {
        let (mut ok, mut bad) = (0, 0);
        for b in self.storage.meta.builds_of(tool).await? {
            if b.image_name != image || !status::is_finished(&b.status) {
                continue;
            }
            let keep = if b.status == status::SUCCESS {
                ok += 1;
                ok <= self.config.keep_successful
            } else {
                bad += 1;
                bad <= self.config.keep_failed
            };
            if !keep {
                self.storage.meta.delete_build(&b.id).await?;
            }
        }
        Ok(())
    }

    /// True once `id` is in a final state (for log following).
    pub async fn finished(&self, id: &str) -> bool {
        match self.storage.meta.build(id).await {
            Ok(Some(b)) => status::is_finished(&b.status),
            _ => true,
        }
    }
}

fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                chown_tree(&p, uid, gid);
            } else {
                let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
            }
        }
    }
}

/// The image digest from the lifecycle's `report.toml`.
async fn read_report(path: &std::path::Path) -> Result<String, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: toml::Value =
        toml::from_str(&text).map_err(|e| format!("report.toml is not TOML: {e}"))?;
    let digest = v
        .get("image")
        .and_then(|i| i.get("digest"))
        .and_then(|d| d.as_str())
        .ok_or("report.toml has no [image] digest")?;
    digest
        .parse::<berth_storage::Digest>()
        .map_err(|e| e.to_string())?;
    Ok(digest.to_owned())
}

/// The last error-looking line the lifecycle wrote (for the status message).
async fn last_error_line(log_path: &str) -> Option<String> {
    let text = tokio::fs::read_to_string(log_path).await.ok()?;
    text.lines()
        .rev()
        .filter(|l| l.contains("[lifecycle:err]") || l.to_ascii_lowercase().contains("error"))
        .map(|l| {
            l.split_once("] ")
                .map(|(_, rest)| rest)
                .unwrap_or(l)
                .trim()
                .to_owned()
        })
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(
            valid_tool("a")
                && valid_tool("my-tool_2")
                && !valid_tool("My")
                && !valid_tool("a-")
                && !valid_tool("")
        );
        assert!(
            valid_env_name("FOO")
                && valid_env_name("_AB")
                && !valid_env_name("AB")
                && !valid_env_name("1AB")
                && !valid_env_name("A-B")
        );
    }
}
