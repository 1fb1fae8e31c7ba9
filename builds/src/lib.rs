//! berth-builds: tools ask for a build of a git repository; the Cloud
//! Native Buildpacks lifecycle builds it and its exporter pushes the image
//! straight into berth, with a short-lived token that can push only to the
//! tool's namespace and pull the run image.
//!
//! Flow: `start` validates the request (`request`), checks the source
//! (`source`: public hosts only, unless trusted), resolves the ref
//! (`git`, capped per tool and overall by `caps`) and queues a
//! BUILD_PENDING record; the dispatcher starts queued builds while fewer
//! than `max_parallel` run (and fewer than `per_tool_parallel` for that
//! tool); a run fetches exactly the resolved commit, hands the workspace
//! and the tool's cache to the tool's own uid, runs the `creator` through
//! a `runner` (inside the `sandbox`), reads the digest from `report.toml`,
//! and prunes old records. Logs go to files that outlive the records
//! (`logs`).

pub mod caps;
pub mod git;
pub mod logs;
pub mod request;
pub mod runner;
pub mod sandbox;
pub mod source;

use berth_storage::meta::builds::{self as status, BuildRecord};
use berth_storage::{now_ms, RepoName, Storage, StorageError};
use caps::Cap;
use git::{Git, GitError};
use logs::{BuildLog, LogStream};
pub use request::valid_tool;
use runner::{RunOutcome, RunSpec, Runner, Sandboxing};
use sandbox::{Identity, SandboxKind};
use source::{SourceError, SourcePolicy};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify, OnceCell};

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
    /// How the process runner confines the lifecycle.
    pub sandbox: SandboxKind,
    pub lifecycle_dir: PathBuf,
    pub buildpacks_dir: PathBuf,
    pub order: PathBuf,
    /// `repository:tag` of the run image in this registry.
    pub run_image: String,
    pub builder_image: String,
    /// `docker` or `podman` (container runner).
    pub container_engine: String,
    pub platform_api: String,
    /// When berth runs as root, tool number `n` (allocated on its first
    /// build, never reused) builds as uid and gid `uid_base + n`, for
    /// `n < uid_count`.
    pub uid_base: u32,
    pub uid_count: u32,
    pub max_parallel: usize,
    pub per_tool_parallel: usize,
    /// Builds of one tool waiting or running; more are refused (429).
    pub queued_per_tool: usize,
    pub timeout: Duration,
    pub keep_successful: usize,
    pub keep_failed: usize,
    pub log_retention: Duration,
    /// The most of a build's own output one log keeps.
    pub max_log_bytes: u64,
    pub source_schemes: Vec<String>,
    /// When not empty, the only hosts sources may come from.
    pub source_hosts: Vec<String>,
    /// Hosts trusted although they resolve to non-public addresses.
    pub private_source_hosts: Vec<String>,
    /// Resolving the host and `git ls-remote`, at request time.
    pub git_resolve_timeout: Duration,
    /// Each git step of fetching the source, when the build runs.
    pub git_fetch_timeout: Duration,
    pub git_resolutions_per_tool: usize,
    pub git_resolutions_total: usize,
    /// Followed logs (`?follow=true` of an unfinished build) open at once.
    pub log_follows_per_tool: usize,
    pub log_follows_total: usize,
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
            sandbox: SandboxKind::Bwrap,
            lifecycle_dir: "/cnb/lifecycle".into(),
            buildpacks_dir: "/cnb/buildpacks".into(),
            order: "/cnb/order.toml".into(),
            run_image: "toolforge/run:latest".into(),
            builder_image: "heroku/builder:24".into(),
            container_engine: "docker".into(),
            platform_api: "0.13".into(),
            uid_base: 200_000,
            uid_count: 100_000,
            max_parallel: 2,
            per_tool_parallel: 1,
            queued_per_tool: 16,
            timeout: Duration::from_secs(30 * 60),
            keep_successful: 4,
            keep_failed: 2,
            log_retention: Duration::from_secs(30 * 86_400),
            max_log_bytes: 16 << 20,
            source_schemes: vec!["https".into(), "http".into()],
            source_hosts: Vec::new(),
            private_source_hosts: Vec::new(),
            git_resolve_timeout: Duration::from_secs(20),
            git_fetch_timeout: Duration::from_secs(5 * 60),
            git_resolutions_per_tool: 2,
            git_resolutions_total: 16,
            log_follows_per_tool: 4,
            log_follows_total: 256,
            registry_host,
            tool_prefix: "tool-".into(),
            dir,
        }
    }

    /// Whether each tool builds as its own uid: berth is root and the
    /// runner can switch users (the bubblewrap sandbox, or a container).
    pub fn per_tool_uid(&self) -> bool {
        sandbox::is_root()
            && match self.runner {
                RunnerKind::Process => self.sandbox == SandboxKind::Bwrap,
                RunnerKind::Container => true,
            }
    }

    fn source_policy(&self) -> SourcePolicy {
        SourcePolicy {
            schemes: self.source_schemes.clone(),
            hosts: self.source_hosts.clone(),
            private_hosts: self.private_source_hosts.clone(),
            resolve_timeout: self.git_resolve_timeout,
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
    /// The tool (or everyone) reached a limit (429); `limit` is its
    /// config key under `[builds]`.
    #[error("{message}")]
    TooMany {
        limit: &'static str,
        message: String,
    },
    /// Builds cannot run on this host (503); says why.
    #[error("{0}")]
    Unavailable(String),
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
    /// The process runner's confinement (also what `ready` tries out).
    sandboxing: Sandboxing,
    tokens: Arc<dyn TokenMinter>,
    /// git, or why it cannot be used.
    git: Result<Git, String>,
    /// Learned once (at start-up): whether builds can run on this host.
    readiness: OnceCell<Result<(), String>>,
    resolutions: Cap,
    follows: Cap,
    running: Mutex<HashMap<String, Running>>,
    wake: Notify,
}

/// The first git with `http.curloptResolve`, which pins git to the
/// address that was checked.
const GIT_MIN: (u32, u32) = (2, 37);

/// Where one build's files are on the host: `<builds>/work/<id>/`
/// (berth's, 0700) holding the workspace, `/tmp` and the identity files.
struct BuildDirs {
    root: PathBuf,
    workspace: PathBuf,
    tmp: PathBuf,
    passwd: PathBuf,
    group: PathBuf,
}

impl BuildDirs {
    fn new(root: PathBuf) -> BuildDirs {
        BuildDirs {
            workspace: root.join("workspace"),
            tmp: root.join("tmp"),
            passwd: root.join("passwd"),
            group: root.join("group"),
            root,
        }
    }
}

impl Builds {
    pub fn new(
        storage: Storage,
        config: BuildsConfig,
        tokens: Arc<dyn TokenMinter>,
    ) -> Arc<Builds> {
        let sandboxing = match config.sandbox {
            SandboxKind::None => Sandboxing::None,
            SandboxKind::Bwrap => match sandbox::Bwrap::find() {
                Ok(b) => Sandboxing::Bwrap(b),
                Err(why) => Sandboxing::Missing(why),
            },
        };
        let runner: Box<dyn Runner> = match config.runner {
            RunnerKind::Process => Box::new(runner::ProcessRunner {
                lifecycle_dir: config.lifecycle_dir.clone(),
                buildpacks_dir: config.buildpacks_dir.clone(),
                order: config.order.clone(),
                sandboxing: sandboxing.clone(),
            }),
            RunnerKind::Container => Box::new(runner::ContainerRunner {
                engine: config.container_engine.clone(),
                builder_image: config.builder_image.clone(),
            }),
        };
        let git = sandbox::which("git")
            .map(|program| Git {
                program,
                home: config.dir.join("git-home"),
                resolve_timeout: config.git_resolve_timeout,
                fetch_timeout: config.git_fetch_timeout,
            })
            .ok_or_else(|| "git is not installed (builds fetch their sources with it)".to_owned());
        Arc::new(Builds {
            resolutions: Cap::new(
                "git resolutions",
                "git_resolutions_per_tool",
                config.git_resolutions_per_tool,
                "git_resolutions_total",
                config.git_resolutions_total,
            ),
            follows: Cap::new(
                "followed build logs",
                "log_follows_per_tool",
                config.log_follows_per_tool,
                "log_follows_total",
                config.log_follows_total,
            ),
            storage,
            config,
            runner,
            sandboxing,
            tokens,
            git,
            readiness: OnceCell::new(),
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

    fn running(&self) -> MutexGuard<'_, HashMap<String, Running>> {
        // Every change to the map is one statement: a panic elsewhere
        // cannot leave it half-changed.
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether builds can run on this host: git (new enough) and the
    /// sandbox (bubblewrap tried for real) or the container engine. Learned
    /// once; `berth serve` asks at start-up and logs the answer.
    pub async fn ready(&self) -> Result<(), String> {
        self.readiness
            .get_or_init(|| self.check_host())
            .await
            .clone()
    }

    async fn check_host(&self) -> Result<(), String> {
        let git = self.git.as_ref().map_err(Clone::clone)?;
        logs::private_dir(&git.home)
            .await
            .map_err(|e| format!("cannot create {}: {e}", git.home.display()))?;
        let out = git
            .command(None, &["version"], None)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", git.program.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version: Vec<u32> = text
            .trim()
            .trim_start_matches("git version ")
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .filter_map(|n| n.parse().ok())
            .collect();
        if version.len() < 2 || (version[0], version[1]) < GIT_MIN {
            return Err(format!(
                "{} is {:?}; builds need git {}.{} or newer (http.curloptResolve pins git to the checked address)",
                git.program.display(),
                text.trim(),
                GIT_MIN.0,
                GIT_MIN.1
            ));
        }
        match self.config.runner {
            RunnerKind::Container => {
                if sandbox::which(&self.config.container_engine).is_none() {
                    return Err(format!(
                        "the container engine {:?} ([builds] container_engine) is not installed",
                        self.config.container_engine
                    ));
                }
            }
            RunnerKind::Process => match &self.sandboxing {
                Sandboxing::None => tracing::warn!(
                    "builds run WITHOUT a sandbox ([builds] sandbox = \"none\"): build code runs as berth's own user and can read the data dir; use this only on a trusted single-user host"
                ),
                Sandboxing::Missing(why) => return Err(why.clone()),
                Sandboxing::Bwrap(bwrap) => {
                    let probe_as = if self.config.per_tool_uid() {
                        Identity {
                            uid: self.config.uid_base,
                            gid: self.config.uid_base,
                        }
                    } else {
                        Identity::berth()
                    };
                    bwrap.probe(probe_as).await?;
                }
            },
        }
        Ok(())
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
        self.ready().await.map_err(|why| {
            BuildError::Unavailable(format!("builds cannot run on this registry: {why}"))
        })?;
        for name in req.envvars.keys() {
            request::check_env_name(name).map_err(BuildError::Invalid)?;
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
        request::check_ref(&reference).map_err(BuildError::Invalid)?;
        let unfinished = self.storage.meta.unfinished_builds(tool).await?;
        if unfinished >= self.config.queued_per_tool {
            return Err(BuildError::TooMany {
                limit: "queued_per_tool",
                message: format!(
                    "tool {tool} has {unfinished} builds waiting or running, its limit ([builds] queued_per_tool = {}); wait for some to finish or cancel them",
                    self.config.queued_per_tool
                ),
            });
        }
        let resolved = {
            let _slot = self.resolutions.try_acquire(tool)?;
            // One deadline for the lookup and ls-remote together (each
            // has its own too); git dies with the dropped future.
            let limit = self.config.git_resolve_timeout;
            tokio::time::timeout(limit, self.resolve(tool, &req.source_url, &reference))
                .await
                .unwrap_or_else(|_| {
                    tracing::info!(tool, url = %req.source_url, "build source: resolving took longer than {limit:?}");
                    Err(BuildError::Invalid(source::cannot_fetch(&req.source_url)))
                })?
        };
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
        let log = BuildLog::create(Path::new(&record.log_path), self.config.max_log_bytes)
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

    /// Checks `url` and resolves `reference` in it to a commit. What went
    /// wrong reaching the repository goes to berth's log; the caller gets
    /// the one generic answer (so the API is no port scanner).
    async fn resolve(&self, tool: &str, url: &str, reference: &str) -> Result<String, BuildError> {
        let git = self
            .git
            .as_ref()
            .map_err(|why| BuildError::Unavailable(why.clone()))?;
        let unreachable = |detail: &str| {
            tracing::info!(tool, url, detail, "build source refused or unreachable");
            BuildError::Invalid(source::cannot_fetch(url))
        };
        let source = match source::check(&self.config.source_policy(), url).await {
            Ok(s) => s,
            Err(SourceError::Refused(why)) => return Err(BuildError::Invalid(why)),
            Err(SourceError::Unreachable { detail }) => return Err(unreachable(&detail)),
        };
        match git.resolve(&source, reference).await {
            Ok(commit) => Ok(commit),
            Err(GitError::Unreachable { detail, .. }) => Err(unreachable(&detail)),
            Err(e @ GitError::UnknownRef { .. }) => Err(BuildError::Invalid(e.to_string())),
            Err(e) => Err(unreachable(&e.to_string())),
        }
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

    /// A build's log as a stream; with `follow`, it lasts until the build
    /// ends. Following an unfinished build takes a slot of the follow cap
    /// (per tool and overall) for as long as the stream is open.
    pub async fn logs(
        self: &Arc<Self>,
        tool: &str,
        id: &str,
        follow: bool,
    ) -> Result<LogStream, BuildError> {
        let b = self.get(tool, id).await?;
        let slot = if follow && !status::is_finished(&b.status) {
            Some(self.follows.try_acquire(tool)?)
        } else {
            None
        };
        let me = self.clone();
        let build_id = b.id.clone();
        Ok(logs::follow(
            PathBuf::from(&b.log_path),
            follow,
            move || {
                let (me, id) = (me.clone(), build_id.clone());
                async move { me.finished(&id).await }
            },
            slot,
        ))
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
        if let Some(r) = self.running().get(&b.id) {
            let _ = r.cancel.send(true);
        }
        // The run task records BUILD_CANCELLED once git or the lifecycle
        // is dead, whichever was running.
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

    /// At start: builds a dead process left running have failed, and
    /// their workspaces go.
    pub async fn recover(&self) -> Result<usize, StorageError> {
        let failed = self
            .storage
            .meta
            .fail_orphaned_builds("berth restarted while the build was running; start it again")
            .await?;
        let work = self.config.dir.join("work");
        if let Err(e) = tokio::fs::remove_dir_all(&work).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %work.display(), error = %e, "cannot remove old build workspaces");
            }
        }
        Ok(failed)
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
                let running = self.running();
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
            self.running().insert(
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
                me.running().remove(&id);
                me.wake.notify_one();
            });
        }
        Ok(())
    }

    async fn execute(&self, b: BuildRecord, cancelled: watch::Receiver<bool>) {
        let log = match BuildLog::create(Path::new(&b.log_path), self.config.max_log_bytes).await {
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
        let dirs = BuildDirs::new(self.config.dir.join("work").join(&b.id));
        let (final_status, message, destination) =
            self.run_build(&b, &dirs, log.clone(), cancelled).await;
        log.line("berth", &format!("{final_status}: {message}"))
            .await;
        let _ = tokio::fs::remove_dir_all(&dirs.root).await;
        if let Err(e) = self.finish(&b, final_status, message, destination).await {
            tracing::error!(build = %b.id, error = %e, "cannot record the build's end");
        }
    }

    /// Who `tool`'s builds run as: its own uid and gid when berth is root
    /// (allocated on its first build), else berth's.
    async fn identity(&self, tool: &str) -> Result<Identity, String> {
        if !self.config.per_tool_uid() {
            return Ok(Identity::berth());
        }
        match self
            .storage
            .meta
            .build_user(tool, self.config.uid_count)
            .await
        {
            Ok(Some(n)) => {
                let id = self.config.uid_base + n;
                Ok(Identity { uid: id, gid: id })
            }
            Ok(None) => Err(format!(
                "every build uid is taken ([builds] uid_base = {}, uid_count = {}); an admin must widen the range",
                self.config.uid_base, self.config.uid_count
            )),
            Err(e) => Err(format!("cannot read the tool's build uid: {e}")),
        }
    }

    async fn run_build(
        &self,
        b: &BuildRecord,
        dirs: &BuildDirs,
        log: Arc<BuildLog>,
        mut cancelled: watch::Receiver<bool>,
    ) -> (&'static str, String, Option<String>) {
        let fail = |why: String| (status::FAILURE, why, None);
        let git = match &self.git {
            Ok(g) => g,
            Err(why) => return fail(format!("builds cannot run on this registry: {why}")),
        };
        let url = b.params["source_url"].as_str().unwrap_or_default();
        let reference = b.params["ref"].as_str().unwrap_or("HEAD");
        // Checked again: what a name resolves to may have changed since
        // the build was requested.
        let source = match source::check(&self.config.source_policy(), url).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(build = %b.id, url, error = %e, "build source refused when the build ran");
                return fail(source::cannot_fetch(url));
            }
        };
        if let Err(e) = logs::private_dir(&dirs.root).await {
            return fail(format!("cannot prepare the workspace: {e}"));
        }
        log.line("berth", &format!("fetching {url} at {}", b.resolved_ref))
            .await;
        match git
            .checkout(
                &source,
                reference,
                &b.resolved_ref,
                &dirs.workspace.join("app"),
                &log,
                &mut cancelled,
            )
            .await
        {
            Ok(()) => {}
            Err(GitError::Cancelled) => return (status::CANCELLED, "cancelled".into(), None),
            Err(e) => return fail(format!("cannot fetch the source: {e}")),
        }
        let identity = match self.identity(&b.tool).await {
            Ok(id) => id,
            Err(why) => return fail(why),
        };
        let cache_dir = match self.prepare(b, dirs, identity, &log).await {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot prepare the workspace: {e}")),
        };
        let ns = self.namespace(&b.tool);
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
            workspace: dirs.workspace.clone(),
            cache_dir,
            tmp_dir: dirs.tmp.clone(),
            passwd: dirs.passwd.clone(),
            group: dirs.group.clone(),
            run_image: format!("{host}/{}", self.config.run_image),
            output_image: format!("{host}/{output_repo}:latest"),
            registry_host: host.clone(),
            registry_auth: serde_json::json!({ host: format!("Bearer {token}") }).to_string(),
            platform_api: self.config.platform_api.clone(),
            identity,
            timeout: self.config.timeout,
        };
        log.line(
            "berth",
            &format!(
                "running the lifecycle as uid {}: {} -> {}",
                identity.uid, spec.run_image, spec.output_image
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
            RunOutcome::Failed(why) => fail(why),
            RunOutcome::Exited(0) => match read_report(&spec.report_path()).await {
                Ok(digest) => (
                    status::SUCCESS,
                    "built and pushed".into(),
                    Some(format!("{}@{digest}", spec.output_image)),
                ),
                Err(e) => fail(format!(
                    "the lifecycle succeeded but its report is unusable: {e}"
                )),
            },
            RunOutcome::Exited(code) => {
                let why = last_error_line(&b.log_path)
                    .await
                    .unwrap_or_else(|| "see the build log".into());
                fail(format!("the lifecycle exited with status {code}: {why}"))
            }
        }
    }

    /// Makes the workspace (app, layers, platform/env), `/tmp`, the
    /// identity files and the tool's cache for `b`, all for `id` alone:
    /// 0700 and, when builds have their own uid, owned by it. Returns the
    /// cache dir. A cache owned by anyone else (an older berth's shared
    /// build user) is discarded: caches are disposable, trust in them is
    /// not.
    async fn prepare(
        &self,
        b: &BuildRecord,
        dirs: &BuildDirs,
        id: Identity,
        log: &BuildLog,
    ) -> std::io::Result<PathBuf> {
        let env_dir = dirs.workspace.join("platform").join("env");
        tokio::fs::create_dir_all(&env_dir).await?;
        tokio::fs::create_dir_all(dirs.workspace.join("layers")).await?;
        tokio::fs::create_dir_all(&dirs.tmp).await?;
        if let Some(vars) = b.params["envvars"].as_object() {
            for (name, value) in vars {
                // Names were checked when the build was requested; a
                // record that holds something else is not trusted.
                if request::check_env_name(name).is_ok() {
                    tokio::fs::write(env_dir.join(name), value.as_str().unwrap_or_default())
                        .await?;
                }
            }
        }
        let tool_cache = self.config.dir.join("cache").join(&b.tool);
        logs::private_dir(&tool_cache).await?;
        let cache = tool_cache.join(&b.image_name);
        match tokio::fs::symlink_metadata(&cache).await {
            Ok(m) if std::os::unix::fs::MetadataExt::uid(&m) != id.uid || !m.is_dir() => {
                log.line(
                    "berth",
                    "the cache belonged to another user; this build starts with an empty cache",
                )
                .await;
                if m.is_dir() {
                    tokio::fs::remove_dir_all(&cache).await?;
                } else {
                    tokio::fs::remove_file(&cache).await?;
                }
            }
            _ => {}
        }
        tokio::fs::create_dir_all(&cache).await?;
        let per_tool = id != Identity::berth();
        let (workspace, tmp, cache_dir) = (dirs.workspace.clone(), dirs.tmp.clone(), cache.clone());
        let (passwd_path, group_path) = (dirs.passwd.clone(), dirs.group.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let (passwd, group) = sandbox::identity_files(id);
            for (path, text) in [(&passwd_path, passwd), (&group_path, group)] {
                std::fs::write(path, text)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
            }
            for d in [&workspace, &tmp, &cache_dir] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
            }
            if per_tool {
                // Nothing runs in the workspace yet: walking it is safe.
                chown_tree(&workspace, id)?;
                std::os::unix::fs::chown(&tmp, Some(id.uid), Some(id.gid))?;
                std::os::unix::fs::chown(&cache_dir, Some(id.uid), Some(id.gid))?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(cache)
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

/// Hands a tree to `id` (lchown: links are not followed). A loop, not
/// recursion: the depth of a checked-out repository is its author's
/// choice.
fn chown_tree(root: &Path, id: Identity) -> std::io::Result<()> {
    let mut dirs = vec![root.to_owned()];
    std::os::unix::fs::lchown(root, Some(id.uid), Some(id.gid))?;
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            std::os::unix::fs::lchown(e.path(), Some(id.uid), Some(id.gid))?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    Ok(())
}

/// The image digest from the lifecycle's `report.toml`. The build wrote
/// it: only a regular file is read (never through a link, which could
/// point at berth's secrets), and at most 64 KiB of it.
async fn read_report(path: &Path) -> Result<String, String> {
    let path = path.to_owned();
    let text = tokio::task::spawn_blocking(move || -> Result<String, String> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| format!("cannot read report.toml: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read report.toml: {e}"))?;
        if !meta.is_file() {
            return Err("report.toml is not a regular file".into());
        }
        let mut text = String::new();
        file.take(64 << 10)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read report.toml: {e}"))?;
        Ok(text)
    })
    .await
    .map_err(|e| e.to_string())??;
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
pub(crate) mod test_util {
    /// A command's program and arguments, for checking what would run.
    pub fn argv(cmd: &tokio::process::Command) -> Vec<String> {
        let c = cmd.as_std();
        std::iter::once(c.get_program())
            .chain(c.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_report_is_read_only_as_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "admin-password-123").unwrap();
        let report = dir.path().join("report.toml");
        std::os::unix::fs::symlink(&secret, &report).unwrap();
        let e = read_report(&report).await.unwrap_err();
        assert!(!e.contains("admin-password"), "{e}");
        std::fs::remove_file(&report).unwrap();
        let digest = format!("sha256:{}", "a".repeat(64));
        std::fs::write(&report, format!("[image]\ndigest = \"{digest}\"\n")).unwrap();
        assert_eq!(read_report(&report).await.unwrap(), digest);
    }
}
