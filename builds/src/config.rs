//! The `[builds]` settings as the engine takes them.

use crate::sandbox::{self, SandboxKind};
use crate::source::SourcePolicy;
use std::path::PathBuf;
use std::time::Duration;

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

    pub(crate) fn source_policy(&self) -> SourcePolicy {
        SourcePolicy {
            schemes: self.source_schemes.clone(),
            hosts: self.source_hosts.clone(),
            private_hosts: self.private_source_hosts.clone(),
            resolve_timeout: self.git_resolve_timeout,
        }
    }
}
