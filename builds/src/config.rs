//! The `[builds]` settings: declared once, here, and read straight from
//! the config file (every key documented in config.example.toml).
//! `resolve` fills in what comes from elsewhere (the listen address, the
//! data dir, the tool prefix) and checks the rest.

use crate::sandbox::{self, SandboxKind};
use crate::source::SourcePolicy;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which backend runs the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    Process,
    Container,
}

/// The `[builds]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub keep_successful: usize,
    pub keep_failed: usize,
    #[serde(with = "humantime_serde")]
    pub log_retention: Duration,
    /// The most of a build's own output one log keeps.
    #[serde(deserialize_with = "size")]
    pub max_log_bytes: u64,
    pub source_schemes: Vec<String>,
    /// When not empty, the only hosts sources may come from.
    pub source_hosts: Vec<String>,
    /// Hosts trusted although they resolve to non-public addresses.
    pub private_source_hosts: Vec<String>,
    /// Resolving the host and `git ls-remote`, at request time.
    #[serde(with = "humantime_serde")]
    pub git_resolve_timeout: Duration,
    /// Each git step of fetching the source, when the build runs.
    #[serde(with = "humantime_serde")]
    pub git_fetch_timeout: Duration,
    pub git_resolutions_per_tool: usize,
    pub git_resolutions_total: usize,
    /// Followed logs (`?follow=true` of an unfinished build) open at once.
    pub log_follows_per_tool: usize,
    pub log_follows_total: usize,
    /// host:port the lifecycle reaches berth at (it is also the registry
    /// part of the image names). Empty in the file: the listen address.
    pub registry_host: String,
    /// CA certificate(s) (PEM) the lifecycle must trust for the registry's
    /// TLS certificate when it is not from a public CA (a private or
    /// self-signed one); mounted into every build.
    pub registry_ca: Option<PathBuf>,
    /// Whether berth serves TLS (`[server] tls_cert`): the lifecycle then
    /// talks https, else it is told the registry is insecure (http).
    #[serde(skip)]
    pub registry_tls: bool,
    /// Replaced by `uid_base` (one build user for every tool is gone); read
    /// only so that a config still setting them is refused, saying so.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Tool `foo` owns namespace `<tool_prefix>foo` (`[registry]`).
    #[serde(skip)]
    pub tool_prefix: String,
    /// `<data dir>/builds`: workspaces, caches, logs.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        BuildsConfig::defaults(PathBuf::new(), String::new())
    }
}

/// Sizes as "16MiB" or a number of bytes.
fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    bytesize::ByteSize::deserialize(d).map(|b| b.as_u64())
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
            registry_ca: None,
            registry_tls: false,
            uid: None,
            gid: None,
            tool_prefix: "tool-".into(),
            dir,
        }
    }

    /// Completes the settings read from the file with what comes from
    /// elsewhere, and checks them: the registry host defaults to the listen
    /// address (loopback when berth listens on all addresses); schemes and
    /// host lists are compared lowercased.
    pub fn resolve(
        &mut self,
        listen: SocketAddr,
        data_dir: &Path,
        tool_prefix: &str,
    ) -> Result<(), String> {
        if self.registry_host.is_empty() {
            self.registry_host = if listen.ip().is_unspecified() {
                format!("127.0.0.1:{}", listen.port())
            } else {
                listen.to_string()
            };
        }
        self.dir = data_dir.join("builds");
        self.tool_prefix = tool_prefix.to_owned();
        for list in [
            &mut self.source_schemes,
            &mut self.source_hosts,
            &mut self.private_source_hosts,
        ] {
            for item in list.iter_mut() {
                *item = item.to_ascii_lowercase();
            }
        }
        self.validate()
    }

    fn validate(&self) -> Result<(), String> {
        if self.uid.is_some() || self.gid.is_some() {
            return Err("[builds] uid and gid are gone: when berth runs as root each tool's builds now run as their own uid and gid, uid_base + n (see config.example.toml); remove uid/gid and set uid_base to a range no account uses".into());
        }
        let positive = [
            ("max_parallel", self.max_parallel),
            ("per_tool_parallel", self.per_tool_parallel),
            ("queued_per_tool", self.queued_per_tool),
            ("git_resolutions_per_tool", self.git_resolutions_per_tool),
            ("git_resolutions_total", self.git_resolutions_total),
            ("log_follows_per_tool", self.log_follows_per_tool),
            ("log_follows_total", self.log_follows_total),
            ("uid_count", self.uid_count as usize),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("[builds] {key} must be at least 1"));
        }
        if self.uid_base < 1000
            || self
                .uid_base
                .checked_add(self.uid_count)
                .is_none_or(|end| end == u32::MAX)
        {
            return Err(format!(
                "[builds] uid_base = {} with uid_count = {} is not a range of ordinary uids (from 1000 up, below 4294967295)",
                self.uid_base, self.uid_count
            ));
        }
        if self.git_resolve_timeout.is_zero() || self.git_fetch_timeout.is_zero() {
            return Err(
                "[builds] git_resolve_timeout and git_fetch_timeout must be more than 0s".into(),
            );
        }
        if let Some(s) = self
            .source_schemes
            .iter()
            .find(|s| !crate::source::SUPPORTED_SCHEMES.contains(&s.as_str()))
        {
            return Err(format!(
                "[builds] source_schemes: {s:?} is not supported; builds fetch from {:?}",
                crate::source::SUPPORTED_SCHEMES
            ));
        }
        check_run_image(&self.run_image)
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

    /// What the process runner needs on this host and lacks: the
    /// lifecycle's `creator`, the buildpacks directory, the order file.
    /// Empty for the container runner (the builder image brings them).
    pub fn missing_lifecycle_parts(&self) -> Vec<String> {
        if self.runner != RunnerKind::Process {
            return Vec::new();
        }
        let mut missing = Vec::new();
        let creator = self.lifecycle_dir.join("creator");
        if !creator.is_file() {
            missing.push(format!(
                "the CNB lifecycle's creator ({}, [builds] lifecycle_dir)",
                creator.display()
            ));
        }
        if !self.buildpacks_dir.is_dir() {
            missing.push(format!(
                "the buildpacks ({}, [builds] buildpacks_dir)",
                self.buildpacks_dir.display()
            ));
        }
        if !self.order.is_file() {
            missing.push(format!(
                "the order file ({}, [builds] order)",
                self.order.display()
            ));
        }
        missing
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

/// `run_image` must be `repository:tag` of this registry.
fn check_run_image(run_image: &str) -> Result<(), String> {
    let (repo, tag) = run_image
        .rsplit_once(':')
        .ok_or_else(|| format!("[builds] run_image {run_image:?} must be repository:tag, e.g. \"toolforge/run:latest\""))?;
    berth_storage::RepoName::parse(repo).map_err(|e| format!("[builds] run_image: {e}"))?;
    berth_storage::names::validate_tag(tag).map_err(|e| format!("[builds] run_image: {e}"))?;
    Ok(())
}
