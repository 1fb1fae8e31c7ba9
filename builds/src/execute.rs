//! Running one build: its directories and identity, the checkout of
//! exactly the resolved commit, the lifecycle through the runner (inside
//! the sandbox), `report.toml`, and the record's final state.

use crate::git::GitError;
use crate::logs::{self, BuildLog};
use crate::runner::{RunOutcome, RunSpec};
use crate::sandbox::Identity;
use crate::{request, sandbox, source};
use crate::{BuildDirs, Builds};
use berth_storage::meta::builds::{BuildRecord, BuildStatus};
use berth_storage::StorageError;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

impl Builds {
    pub(crate) async fn execute(&self, b: BuildRecord, cancelled: watch::Receiver<bool>) {
        let log = match self.open_log(&b).await {
            Ok(l) => Arc::new(l),
            Err(e) => {
                let _ = self
                    .finish(
                        &b,
                        BuildStatus::Failure,
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
    ) -> (BuildStatus, String, Option<String>) {
        let fail = |why: String| (BuildStatus::Failure, why, None);
        let git = match &self.config.missing_lifecycle_parts()[..] {
            [] => match &self.git {
                Ok(g) => g,
                Err(why) => return fail(format!("builds cannot run on this registry: {why}")),
            },
            missing => {
                return fail(format!(
                    "builds cannot run on this registry: it lacks {}; ask its operators",
                    missing.join(", ")
                ))
            }
        };
        let url = b.params.source_url.as_str();
        let reference = b.params.reference.as_str();
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
            Err(GitError::Cancelled) => return (BuildStatus::Cancelled, "cancelled".into(), None),
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
            registry_tls: self.config.registry_tls,
            registry_ca: self.config.registry_ca.clone(),
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
            RunOutcome::Cancelled => (BuildStatus::Cancelled, "cancelled".into(), None),
            RunOutcome::TimedOut => (
                BuildStatus::Timeout,
                format!(
                    "the build ran longer than {:?} and was stopped",
                    self.config.timeout
                ),
                None,
            ),
            RunOutcome::Failed(why) => fail(why),
            RunOutcome::Exited(0) => match read_report(&spec.report_path()).await {
                Ok(digest) => (
                    BuildStatus::Success,
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
        for (name, value) in &b.params.envvars {
            // Names were checked when the build was requested; a record
            // that holds something else is not trusted.
            if request::check_env_name(name).is_ok() {
                tokio::fs::write(env_dir.join(name), value).await?;
            }
        }
        let per_tool = id != Identity::berth();
        // Two builds of one tool and image share the cache directory. One
        // of them met it after the other had created it (as berth's) but
        // before handing it to the tool's uid, took it for another user's,
        // removed it, and the other failed with "No such file or
        // directory". So it is checked, created and handed over by one
        // build at a time.
        let one_at_a_time = self.cache_prep.lock().await;
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
        tokio::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).await?;
        if per_tool {
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || {
                std::os::unix::fs::chown(&cache, Some(id.uid), Some(id.gid))
            })
            .await
            .map_err(std::io::Error::other)??;
        }
        drop(one_at_a_time);
        let (workspace, tmp) = (dirs.workspace.clone(), dirs.tmp.clone());
        let (passwd_path, group_path) = (dirs.passwd.clone(), dirs.group.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let (passwd, group) = sandbox::identity_files(id);
            for (path, text) in [(&passwd_path, passwd), (&group_path, group)] {
                std::fs::write(path, text)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
            }
            for d in [&workspace, &tmp] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
            }
            if per_tool {
                // Nothing runs in the workspace yet: walking it is safe.
                chown_tree(&workspace, id)?;
                std::os::unix::fs::chown(&tmp, Some(id.uid), Some(id.gid))?;
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
        to: BuildStatus,
        message: String,
        destination: Option<String>,
    ) -> Result<(), StorageError> {
        let changed = self
            .storage
            .meta
            .transition_build(
                &b.id,
                BuildStatus::Running,
                to,
                message.clone(),
                destination.clone(),
            )
            .await?;
        if changed {
            // The change feed hears of the finished build and its image.
            let digest = destination
                .as_deref()
                .and_then(|d| d.rsplit_once('@'))
                .map(|(_, d)| d.to_owned());
            let event = berth_storage::meta::NewEvent {
                action: "build".into(),
                repository: Some(format!("{}/{}", self.namespace(&b.tool), b.image_name)),
                tag: digest.as_ref().map(|_| "latest".to_owned()),
                digest,
                actor: Some(format!("build:{}", b.id)),
                detail: Some(serde_json::json!({
                    "build_id": b.id,
                    "tool": b.tool,
                    "status": to,
                    "message": message,
                    "destination_image": destination,
                })),
                ..Default::default()
            };
            if let Err(e) = self.storage.meta.record_event(event).await {
                tracing::warn!(build = %b.id, error = %e, "cannot record the build in the change feed");
            }
        }
        self.prune(&b.tool, &b.image_name).await
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
