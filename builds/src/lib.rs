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
mod config;
mod execute;
pub mod git;
pub mod logs;
mod queue;
pub mod request;
pub mod runner;
pub mod sandbox;
pub mod source;
pub mod trigger;

use berth_storage::meta::builds::{
    BuildParams, BuildRecord, BuildStatus, BuildTrigger, PushQueued,
};
use berth_storage::{now_ms, RepoName, Storage, StorageError};
use caps::Cap;
pub use config::{BuildsConfig, RunnerKind};
use git::{Git, GitError};
use logs::{BuildLog, LogStream};
pub use request::valid_tool;
use runner::{Runner, Sandboxing};
use sandbox::{Identity, SandboxKind};
use source::SourceError;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify, OnceCell};

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

/// A push a forge delivered to a trigger's hook (signature checked).
#[derive(Debug, Clone)]
pub struct Push {
    /// The trigger's hook id.
    pub trigger_id: String,
    /// The full ref pushed to (`refs/heads/main`).
    pub reference: String,
    /// The pushed commit (the payload's `after`).
    pub commit: String,
    /// Who pushed, as the forge says.
    pub pusher: String,
}

/// What became of a push's build.
#[derive(Debug, Clone)]
pub enum PushOutcome {
    Queued(BuildRecord),
    /// A waiting build of the same trigger and ref now builds the pushed
    /// commit instead of `replaced`.
    Coalesced {
        build: BuildRecord,
        replaced: String,
    },
    /// The trigger has seen this commit already: nothing was queued.
    Replay,
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
    /// Held while a build readies its tool's cache directory (see
    /// `prepare`): two builds of one tool and image share it.
    cache_prep: tokio::sync::Mutex<()>,
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
            cache_prep: tokio::sync::Mutex::new(()),
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

    /// Checks what a build request asks for, as every build is checked
    /// (a manual build when requested, a trigger when registered and each
    /// push's build again): builds switched on and able to run on this
    /// host, env var names, the image name and the ref. Returns the image
    /// name to use and the ref (`HEAD` when none was given).
    pub async fn check_request(
        &self,
        tool: &str,
        req: &BuildRequest,
    ) -> Result<(String, String), BuildError> {
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
        Ok((image_name, reference))
    }

    /// Checks `source_url` and resolves `reference` in it (`git
    /// ls-remote`) under the per-tool and overall resolution caps, with
    /// one deadline for both: what a build request does before it is
    /// queued, and what registering a trigger does to its source.
    pub async fn check_source(
        &self,
        tool: &str,
        source_url: &str,
        reference: &str,
    ) -> Result<String, BuildError> {
        let _slot = self.resolutions.try_acquire(tool)?;
        // git dies with the dropped future.
        let limit = self.config.git_resolve_timeout;
        tokio::time::timeout(limit, self.resolve(tool, source_url, reference))
            .await
            .unwrap_or_else(|_| {
                tracing::info!(tool, url = %source_url, "build source: resolving took longer than {limit:?}");
                Err(BuildError::Invalid(source::cannot_fetch(source_url)))
            })
    }

    /// Validates and queues a build; returns its record and warnings for
    /// the caller (e.g. a namespace close to its quota).
    pub async fn start(
        &self,
        tool: &str,
        req: BuildRequest,
    ) -> Result<(BuildRecord, Vec<String>), BuildError> {
        let (image_name, reference) = self.check_request(tool, &req).await?;
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
        let resolved = self.check_source(tool, &req.source_url, &reference).await?;
        let record = self.new_record(tool, image_name, &req, reference, resolved);
        self.storage.meta.insert_build(record.clone()).await?;
        self.log_queued(&record, "").await?;
        let warnings = self.quota_warnings(tool).await;
        self.wake.notify_one();
        Ok((record, warnings))
    }

    /// Queues the build of a push a forge signed: exactly `push.commit`
    /// of the trigger's source, with the trigger's parameters (`req`,
    /// checked again as any build request is). Not resolved with git
    /// here: the forge named the commit, the source was checked when the
    /// trigger was registered, and it is checked again when the build
    /// runs. A waiting build of the same trigger and ref takes the newer
    /// commit instead (coalescing); a commit the trigger has seen is a
    /// replay and queues nothing (`Metadata::queue_push_build`).
    pub async fn start_push(
        &self,
        tool: &str,
        req: BuildRequest,
        push: Push,
    ) -> Result<PushOutcome, BuildError> {
        if !git::is_commit(&push.commit) {
            return Err(BuildError::Invalid(format!(
                "{} is not a full commit id",
                source::shown(&push.commit)
            )));
        }
        let commit = push.commit.to_ascii_lowercase();
        let req = BuildRequest {
            reference: Some(push.reference.clone()),
            ..req
        };
        let (image_name, reference) = self.check_request(tool, &req).await?;
        let mut record = self.new_record(tool, image_name, &req, reference, commit.clone());
        record.params.commit = Some(commit.clone());
        record.trigger = BuildTrigger::Push {
            commit: commit.clone(),
            reference: push.reference.clone(),
            pusher: push.pusher.clone(),
        };
        record.trigger_id = Some(push.trigger_id.clone());
        let by = format!(
            "a push of {commit} to {} by {}",
            push.reference,
            source::shown(&push.pusher)
        );
        let outcome = match self
            .storage
            .meta
            .queue_push_build(record, self.config.queued_per_tool)
            .await
        {
            Ok(PushQueued::Replay) => return Ok(PushOutcome::Replay),
            Ok(PushQueued::Queued(b)) => {
                self.log_queued(&b, &format!(" by {by}")).await?;
                PushOutcome::Queued(b)
            }
            Ok(PushQueued::Coalesced { build, replaced }) => {
                if let Ok(log) = self.open_log(&build).await {
                    log.line(
                        "berth",
                        &format!("{by} replaced {replaced}: this build will build {commit}"),
                    )
                    .await;
                }
                PushOutcome::Coalesced { build, replaced }
            }
            Err(StorageError::LimitReached { limit, message }) => {
                return Err(BuildError::TooMany { limit, message })
            }
            Err(e) => return Err(e.into()),
        };
        self.wake.notify_one();
        Ok(outcome)
    }

    fn new_record(
        &self,
        tool: &str,
        image_name: String,
        req: &BuildRequest,
        reference: String,
        resolved: String,
    ) -> BuildRecord {
        let id = format!(
            "{tool}-buildpacks-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        BuildRecord {
            id: id.clone(),
            tool: tool.to_owned(),
            image_name,
            status: BuildStatus::Pending,
            message: "waiting for a free runner".into(),
            params: BuildParams {
                source_url: req.source_url.clone(),
                reference,
                envvars: req.envvars.clone(),
                image_name: req.image_name.clone(),
                use_latest_versions: req.use_latest_versions,
                commit: None,
            },
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
            trigger: BuildTrigger::Manual,
            trigger_id: None,
        }
    }

    /// Opens build `record`'s log for writing: its file and, with several
    /// replicas (PostgreSQL), the database copy every replica reads.
    pub(crate) async fn open_log(&self, record: &BuildRecord) -> std::io::Result<BuildLog> {
        let shared = self
            .storage
            .meta
            .shared()
            .then(|| (self.storage.meta.clone(), record.id.clone()));
        BuildLog::create_shared(
            Path::new(&record.log_path),
            self.config.max_log_bytes,
            shared,
        )
        .await
    }

    /// The log's first line: what was queued (`by`: by whom, if not by hand).
    async fn log_queued(&self, record: &BuildRecord, by: &str) -> Result<(), BuildError> {
        let log = self.open_log(record).await.map_err(StorageError::from)?;
        log.line(
            "berth",
            &format!(
                "build {} queued{by}: {:?} at {} ({})",
                record.id, record.params.source_url, record.params.reference, record.resolved_ref
            ),
        )
        .await;
        Ok(())
    }

    /// A warning for a namespace close to its quota (the build's push may
    /// be refused).
    async fn quota_warnings(&self, tool: &str) -> Vec<String> {
        let ns = self.namespace(tool);
        let mut warnings = Vec::new();
        if let Ok(Some(q)) = self.storage.meta.quota(&ns).await {
            if q.limit_bytes.is_some() && q.percent >= 90.0 {
                warnings.push(format!(
                    "{ns} uses {:.1}% of its storage quota; the build's push may be refused. Delete old images or ask for more.",
                    q.percent
                ));
            }
        }
        warnings
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
        let slot = if follow && !b.status.is_finished() {
            Some(self.follows.try_acquire(tool)?)
        } else {
            None
        };
        let me = self.clone();
        let build_id = b.id.clone();
        let finished = move || {
            let (me, id) = (me.clone(), build_id.clone());
            async move { me.finished(&id).await }
        };
        // With several replicas the build may run, or have run, on
        // another one: the database's copy, unless it has none (a build
        // logged before the copy existed) and the file is here.
        if self.storage.meta.shared() {
            let in_db = !self
                .storage
                .meta
                .build_log_after(&b.id, 0, 1)
                .await?
                .is_empty();
            let here = tokio::fs::try_exists(&b.log_path).await.unwrap_or(false);
            if in_db || !here {
                return Ok(logs::follow_shared(
                    self.storage.meta.clone(),
                    b.id.clone(),
                    follow,
                    finished,
                    slot,
                ));
            }
        }
        Ok(logs::follow(
            PathBuf::from(&b.log_path),
            follow,
            finished,
            slot,
        ))
    }

    pub async fn cancel(&self, tool: &str, id: &str) -> Result<BuildRecord, BuildError> {
        let b = self.get(tool, id).await?;
        if b.status.is_finished() {
            return Err(BuildError::Finished(b.id));
        }
        if b.status == BuildStatus::Pending
            && self
                .storage
                .meta
                .transition_build(
                    &b.id,
                    BuildStatus::Pending,
                    BuildStatus::Cancelled,
                    "cancelled before it started".into(),
                    None,
                )
                .await?
        {
            return self.get(tool, &b.id).await;
        }
        let here = match self.running().get(&b.id) {
            Some(r) => {
                let _ = r.cancel.send(true);
                true
            }
            None => false,
        };
        if !here && self.storage.meta.shared() {
            // Running on another replica: it polls for this flag.
            self.storage.meta.request_build_cancel(&b.id).await?;
        }
        // The run task records BUILD_CANCELLED once git or the lifecycle
        // is dead, whichever was running.
        for _ in 0..100 {
            let now = self.get(tool, &b.id).await?;
            if now.status.is_finished() {
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
        if !b.status.is_finished() {
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
                    // On the tool's behalf (the build API is the tool's).
                    let actor = self.namespace(tool);
                    match self.storage.meta.delete_manifest(&repo, &d, &actor).await? {
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
        // Repositories read, and tags deleted, at a time.
        const CLEAN_PAGE: u32 = 256;
        let ns = self.namespace(tool);
        let (mut pinned, mut removed) = (0, 0);
        let mut after_repo_id = 0;
        loop {
            let tags = self
                .storage
                .meta
                .gc_tags(Some(ns.clone()), after_repo_id, CLEAN_PAGE)
                .await?;
            let Some(last) = tags.last() else { break };
            after_repo_id = last.repo_id;
            pinned += tags.iter().filter(|t| t.pinned).count();
            let unpinned: Vec<_> = tags.into_iter().filter(|t| !t.pinned).collect();
            for batch in unpinned.chunks(CLEAN_PAGE as usize) {
                removed += self
                    .storage
                    .meta
                    .delete_tags_checked(batch.to_vec())
                    .await?
                    .len();
            }
        }
        Ok(vec![format!(
            "removed {removed} tag(s) of {ns}; kept {pinned} pinned; storage is freed by the next garbage collection"
        )])
    }
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
