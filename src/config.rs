//! The configuration file (TOML) and its defaults. Every key is documented
//! in `config.example.toml`; command-line flags override the file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub storage: Storage,
    pub registry: Registry,
    pub auth: berth_registry::auth::AuthConfig,
    pub quota: Quota,
    pub gc: berth_gc::GcConfig,
    pub builds: berth_builds::BuildsConfig,
    pub metrics: Metrics,
    pub log: Log,
    pub limits: Limits,
    pub ui: berth_registry::ui::UiConfig,
    pub notifications: berth_registry::notify::NotificationsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain and key: TLS (HTTP/2 by ALPN) when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How often the TLS files are checked for changes; 0s: on SIGHUP only.
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
    /// The URL clients reach berth at (behind a proxy): token realm and
    /// `Location` headers.
    pub public_url: Option<String>,
    /// Peers whose X-Forwarded-For/-Proto/-Host are believed.
    pub trusted_proxies: Vec<berth_registry::proxy::Cidr>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: "127.0.0.1:5000".parse().expect("valid default address"),
            shutdown_grace: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            tls_reload_interval: Duration::from_secs(10),
            public_url: None,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Server {
    /// The TLS files, when TLS is on (`resolve` has checked them).
    pub fn tls_files(
        &self,
        auth: &berth_registry::auth::AuthConfig,
    ) -> Option<berth_registry::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(berth_registry::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: auth.client_ca.clone(),
            }),
            _ => None,
        }
    }

    fn resolve(&mut self, auth: &mut berth_registry::auth::AuthConfig) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "[server] tls_cert and tls_key go together: set both (TLS) or neither".into(),
                )
            }
            (None, None) if auth.client_ca.is_some() => {
                return Err("[auth] client_ca needs TLS: set [server] tls_cert and tls_key".into())
            }
            _ => {}
        }
        berth_registry::auth::client_cert_namespace(&auth.client_cert_namespace, "x")?;
        if let Some(url) = &self.public_url {
            let url = berth_registry::proxy::parse_public_url(url)?;
            if auth.realm.is_none() {
                auth.realm = Some(format!("{url}/token"));
            }
            self.public_url = Some(url);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub data_dir: PathBuf,
    pub sqlite_synchronous: berth_storage::Synchronous,
    /// `postgres://...`: metadata in PostgreSQL instead of SQLite.
    pub database_url: Option<String>,
    /// PostgreSQL connections this process keeps at most.
    pub database_max_connections: usize,
    /// CA certificates (PEM) for TLS to PostgreSQL (`sslmode=require`).
    pub database_ca: Option<PathBuf>,
    /// Blobs up to this size are kept in the database, not as files.
    #[serde(with = "size")]
    pub inline_blob_max: u64,
    /// `[storage.s3]`: blobs in an S3-compatible bucket, upload sessions
    /// in the metadata database (shared by replicas).
    pub s3: Option<S3>,
}

/// `[storage.s3]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    pub bucket: String,
    /// An S3-compatible service's URL; AWS when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Unset: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the other
    /// sources of AWS's usual environment).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub virtual_hosted_style: bool,
    pub prefix: Option<String>,
    /// Blob GETs answer 307 to a presigned URL (HEAD never does).
    #[serde(default)]
    pub redirect: bool,
    #[serde(with = "humantime_serde", default = "default_redirect_expiry")]
    pub redirect_expiry: std::time::Duration,
}

fn default_redirect_expiry() -> std::time::Duration {
    std::time::Duration::from_secs(20 * 60)
}

impl std::fmt::Debug for S3 {
    /// As the storage's own config shows it: never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.storage_config().fmt(f)
    }
}

impl S3 {
    pub fn storage_config(&self) -> berth_storage::S3Config {
        berth_storage::S3Config {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            allow_http: self.allow_http,
            virtual_hosted_style: self.virtual_hosted_style,
            prefix: self.prefix.clone(),
            redirect: self.redirect.then_some(self.redirect_expiry),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.bucket.is_empty() {
            return Err("[storage.s3] bucket must name a bucket".into());
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err("[storage.s3] access_key_id and secret_access_key go together (or neither, for the AWS environment variables)".into());
        }
        if let Some(e) = &self.endpoint {
            if e.starts_with("http://") && !self.allow_http {
                return Err(
                    "[storage.s3] endpoint is http://; set allow_http = true to use it".into(),
                );
            }
        }
        // S3 presigned URLs are valid for 7 days at most.
        if self.redirect
            && (self.redirect_expiry < std::time::Duration::from_secs(1)
                || self.redirect_expiry > std::time::Duration::from_secs(7 * 24 * 3600))
        {
            return Err("[storage.s3] redirect_expiry must be between 1s and 7 days".into());
        }
        Ok(())
    }
}

/// The largest `inline_blob_max`: past it a blob is better off as a file
/// (and sessions would keep more in memory).
const INLINE_BLOB_MAX_LIMIT: u64 = 1024 * 1024;

impl Default for Storage {
    fn default() -> Self {
        Storage {
            data_dir: PathBuf::from("./berth-data"),
            sqlite_synchronous: berth_storage::Synchronous::Normal,
            database_url: None,
            database_max_connections: 16,
            database_ca: None,
            inline_blob_max: berth_storage::UploadLimits::default().inline_max,
            s3: None,
        }
    }
}

impl Storage {
    /// The PostgreSQL settings, when `database_url` selects PostgreSQL.
    pub fn postgres(&self) -> Option<berth_storage::PostgresConfig> {
        self.database_url
            .as_ref()
            .map(|url| berth_storage::PostgresConfig {
                url: url.clone(),
                max_connections: self.database_max_connections,
                tls_ca: self.database_ca.clone(),
            })
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(
                    "[storage] database_url must be a postgres:// (or postgresql://) URL".into(),
                );
            }
            if self.database_max_connections < 2 {
                return Err("[storage] database_max_connections must be at least 2".into());
            }
        }
        if let Some(s3) = &self.s3 {
            s3.validate()?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registry {
    pub chunk_min_length: Option<u64>,
    /// Tool `foo` owns namespace `<tool_prefix>foo`.
    pub tool_prefix: String,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            chunk_min_length: None,
            tool_prefix: "tool-".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quota {
    /// Limit of namespaces without an override; `None` is unlimited.
    #[serde(with = "size_or_unlimited")]
    pub default_limit: Option<u64>,
    /// Namespaces that are never limited.
    pub unlimited: Vec<String>,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            default_limit: Some(1024 * 1024 * 1024),
            unlimited: Vec::new(),
        }
    }
}

impl Quota {
    /// `alert_percent`: when a usage crossing should be recorded for
    /// notifications (`[notifications]`), if any endpoint wants them.
    pub fn policy(&self, alert_percent: Option<f64>) -> berth_storage::meta::QuotaPolicy {
        berth_storage::meta::QuotaPolicy {
            default_limit: self.default_limit,
            unlimited: self.unlimited.iter().cloned().collect(),
            alert_percent,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve /metrics without credentials (else admin only).
    pub public: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { public: true }
    }
}

/// What any one caller can make berth hold, and the overall bounds
/// (SECURITY.md lists each with its reason).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(with = "size")]
    pub max_header_bytes: u64,
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    #[serde(with = "size")]
    pub body_min_rate: u64,
    #[serde(with = "humantime_serde")]
    pub body_rate_grace: Duration,
    pub uploads_per_namespace: usize,
    pub uploads_total: usize,
    #[serde(with = "humantime_serde")]
    pub upload_idle_timeout: Duration,
    #[serde(with = "size")]
    pub upload_memory: u64,
    pub token_max_scopes: usize,
    #[serde(with = "size")]
    pub token_max_bytes: u64,
    #[serde(with = "size")]
    pub token_cache_bytes: u64,
    pub logins_per_address: usize,
    pub logins_per_account: usize,
    pub password_checks: usize,
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    pub max_streams_per_connection: u32,
    pub api_tokens_per_namespace: usize,
    /// Signed deliveries to a tool's build-trigger hook per minute.
    pub hooks_per_tool_per_minute: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let conn = berth_registry::ConnectionLimits::default();
        let uploads = berth_storage::UploadLimits::default();
        let auth = berth_registry::auth::AuthLimits::default();
        Limits {
            max_connections: conn.max_connections,
            max_connections_per_address: conn.max_connections_per_address,
            header_timeout: conn.header_timeout,
            max_header_bytes: conn.max_header_bytes as u64,
            body_idle_timeout: conn.body_pace.idle,
            body_min_rate: conn.body_pace.min_rate,
            body_rate_grace: conn.body_pace.grace,
            uploads_per_namespace: uploads.per_namespace,
            uploads_total: uploads.total,
            upload_idle_timeout: uploads.idle_timeout,
            upload_memory: uploads.memory,
            token_max_scopes: auth.token_max_scopes,
            token_max_bytes: auth.token_max_bytes as u64,
            token_cache_bytes: auth.token_cache_bytes as u64,
            logins_per_address: auth.logins_per_address,
            logins_per_account: auth.logins_per_account,
            password_checks: auth.password_checks,
            tls_handshake_timeout: conn.tls_handshake_timeout,
            max_streams_per_connection: conn.max_streams_per_connection,
            api_tokens_per_namespace: auth.api_tokens_per_namespace,
            hooks_per_tool_per_minute: 30,
        }
    }
}

impl Limits {
    /// The connection limits, with `max_connections` held under what the
    /// process's descriptor limit allows (`fd_budget`: descriptors left for
    /// connections, each of which may also hold one file open).
    pub fn connection_limits(&self, fd_budget: Option<u64>) -> berth_registry::ConnectionLimits {
        let max_connections = match fd_budget {
            Some(budget) => self.max_connections.min((budget / 2).max(16) as usize),
            None => self.max_connections,
        };
        berth_registry::ConnectionLimits {
            max_connections,
            max_connections_per_address: self.max_connections_per_address,
            header_timeout: self.header_timeout,
            body_pace: berth_registry::request_body::BodyPace {
                idle: self.body_idle_timeout,
                min_rate: self.body_min_rate,
                grace: self.body_rate_grace,
            },
            max_header_bytes: self.max_header_bytes.min(usize::MAX as u64) as usize,
            tls_handshake_timeout: self.tls_handshake_timeout,
            max_streams_per_connection: self.max_streams_per_connection,
        }
    }

    /// Upload sessions' bounds; `inline_max` is `[storage] inline_blob_max`.
    pub fn upload_limits(&self, inline_max: u64) -> berth_storage::UploadLimits {
        berth_storage::UploadLimits {
            per_namespace: self.uploads_per_namespace,
            total: self.uploads_total,
            idle_timeout: self.upload_idle_timeout,
            inline_max,
            memory: self.upload_memory,
        }
    }

    pub fn auth_limits(&self) -> berth_registry::auth::AuthLimits {
        berth_registry::auth::AuthLimits {
            token_max_scopes: self.token_max_scopes,
            token_max_bytes: self.token_max_bytes as usize,
            token_cache_bytes: self.token_cache_bytes as usize,
            logins_per_address: self.logins_per_address,
            logins_per_account: self.logins_per_account,
            password_checks: self.password_checks,
            api_tokens_per_namespace: self.api_tokens_per_namespace,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_connections", self.max_connections),
            ("uploads_per_namespace", self.uploads_per_namespace),
            ("uploads_total", self.uploads_total),
            ("token_max_scopes", self.token_max_scopes),
            ("logins_per_address", self.logins_per_address),
            ("logins_per_account", self.logins_per_account),
            ("password_checks", self.password_checks),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection as usize,
            ),
            ("api_tokens_per_namespace", self.api_tokens_per_namespace),
            ("hooks_per_tool_per_minute", self.hooks_per_tool_per_minute),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("[limits] {key} must be at least 1"));
        }
        if self.password_checks <= self.logins_per_account {
            return Err(format!(
                "[limits] password_checks ({}) must be more than logins_per_account ({}): guesses at one account must not hold every password check",
                self.password_checks, self.logins_per_account
            ));
        }
        if self.max_header_bytes < 8192 {
            return Err("[limits] max_header_bytes must be at least 8KiB".into());
        }
        if self.body_idle_timeout.is_zero()
            || self.header_timeout.is_zero()
            || self.tls_handshake_timeout.is_zero()
        {
            return Err(
                "[limits] header_timeout, body_idle_timeout and tls_handshake_timeout must be more than 0s".into(),
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing-subscriber filter; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks every section and fills in what one section takes from
    /// another (the builds' registry host from the listen address, their
    /// directory from the data dir; auth's limits from `[limits]`). Run it
    /// after command-line flags have overridden the file.
    pub fn resolve(&mut self) -> Result<(), String> {
        self.limits.validate()?;
        self.storage.validate()?;
        self.server.resolve(&mut self.auth)?;
        self.gc.validate()?;
        // Builds reach the registry as its clients do: at the public URL
        // (through the proxy, with its scheme) when there is one, else at
        // the listen address with berth's own TLS.
        let mut registry_tls = self.server.tls_cert.is_some();
        if let (true, Some((scheme, host))) = (
            self.builds.registry_host.is_empty(),
            self.server
                .public_url
                .as_deref()
                .and_then(|u| u.split_once("://")),
        ) {
            self.builds.registry_host = host.to_owned();
            registry_tls = scheme == "https";
        }
        self.ui.validate()?;
        if self.storage.inline_blob_max > INLINE_BLOB_MAX_LIMIT {
            return Err(format!(
                "[storage] inline_blob_max is at most {INLINE_BLOB_MAX_LIMIT} bytes (1MiB); larger blobs belong in files"
            ));
        }
        self.notifications.validate()?;
        self.builds.resolve(
            self.server.listen,
            &self.storage.data_dir,
            &self.registry.tool_prefix,
        )?;
        self.builds.registry_tls = registry_tls;
        let (default, max) = (
            self.auth.api_token_default_lifetime,
            self.auth.api_token_max_lifetime,
        );
        if default < Duration::from_secs(1) || default > max {
            return Err(
                "[auth] api_token_default_lifetime must be at least 1s and at most api_token_max_lifetime"
                    .into(),
            );
        }
        self.auth.limits = self.limits.auth_limits();
        Ok(())
    }
}

/// Sizes as strings such as "1GiB" or "500 MB", or "unlimited".
mod size_or_unlimited {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_size_or_unlimited(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses "1GiB", "500 MB", "1048576" or "unlimited" (`None`).
pub fn parse_size_or_unlimited(s: &str) -> Result<Option<u64>, String> {
    if s.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| Some(b.as_u64()))
        .map_err(|e| format!("{s:?} is not a size like \"1GiB\" or \"unlimited\": {e}"))
}

/// Sizes as strings such as "64KiB" or "16 MiB" (or a plain number of bytes).
mod size {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|e| {
                    serde::de::Error::custom(format!("{s:?} is not a size like \"64KiB\": {e}"))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
                .unwrap();
        let example = Config::parse(&text).expect("config.example.toml must parse");
        let default = Config::default();
        assert_eq!(example.server.listen, default.server.listen);
        assert_eq!(example.server.shutdown_grace, default.server.shutdown_grace);
        assert_eq!(example.storage.data_dir, default.storage.data_dir);
        assert_eq!(
            example.storage.sqlite_synchronous,
            default.storage.sqlite_synchronous
        );
        assert_eq!(example.storage.database_url, default.storage.database_url);
        assert_eq!(
            example.storage.database_max_connections,
            default.storage.database_max_connections
        );
        assert_eq!(
            example.storage.inline_blob_max,
            default.storage.inline_blob_max
        );
        assert_eq!(example.limits.upload_memory, default.limits.upload_memory);
        assert_eq!(example.log.level, default.log.level);
        assert_eq!(example.auth.enabled, default.auth.enabled);
        assert_eq!(example.auth.service, default.auth.service);
        assert_eq!(example.auth.token_ttl, default.auth.token_ttl);
        assert_eq!(example.auth.anonymous_pull, default.auth.anonymous_pull);
        assert_eq!(
            example.auth.private_namespaces,
            default.auth.private_namespaces
        );
        assert_eq!(
            example.auth.api_token_default_lifetime,
            default.auth.api_token_default_lifetime
        );
        assert_eq!(
            example.auth.api_token_max_lifetime,
            default.auth.api_token_max_lifetime
        );
        assert_eq!(
            example.limits.api_tokens_per_namespace,
            default.limits.api_tokens_per_namespace
        );
        assert_eq!(example.quota.default_limit, default.quota.default_limit);
        assert_eq!(example.quota.unlimited, default.quota.unlimited);
        assert_eq!(example.registry.tool_prefix, default.registry.tool_prefix);
        assert_eq!(example.metrics.public, default.metrics.public);
        assert_eq!(example.ui.enabled, default.ui.enabled);
        assert_eq!(example.ui.session_ttl, default.ui.session_ttl);
        assert_eq!(example.ui.session_idle, default.ui.session_idle);
        assert_eq!(example.ui.sessions, default.ui.sessions);
        assert_eq!(
            example.ui.sessions_per_account,
            default.ui.sessions_per_account
        );
        assert_eq!(example.ui.secure_cookies, default.ui.secure_cookies);
        assert_eq!(example.ui.page_size, default.ui.page_size);
        assert_eq!(
            example.ui.usage_sample_interval,
            default.ui.usage_sample_interval
        );
        assert_eq!(example.ui.usage_retention, default.ui.usage_retention);
        assert_eq!(example.ui.usage_max_rows, default.ui.usage_max_rows);
        assert_eq!(
            example.gc.tag_cleanup_schedule,
            default.gc.tag_cleanup_schedule
        );
        assert_eq!(example.gc.untagged_schedule, default.gc.untagged_schedule);
        assert_eq!(example.gc.untagged_grace, default.gc.untagged_grace);
        assert_eq!(example.gc.blob_grace, default.gc.blob_grace);
        assert_eq!(example.gc.lease_ttl, default.gc.lease_ttl);
        assert_eq!(
            example.limits.upload_idle_timeout,
            default.limits.upload_idle_timeout
        );
        assert_eq!(
            example.limits.max_connections,
            default.limits.max_connections
        );
        assert_eq!(
            example.limits.max_connections_per_address,
            default.limits.max_connections_per_address
        );
        assert_eq!(example.limits.body_min_rate, default.limits.body_min_rate);
        assert_eq!(
            example.limits.token_cache_bytes,
            default.limits.token_cache_bytes
        );
        assert_eq!(
            example.limits.max_header_bytes,
            default.limits.max_header_bytes
        );
        assert_eq!(
            example.limits.uploads_per_namespace,
            default.limits.uploads_per_namespace
        );
        assert!(example.limits.validate().is_ok());
        assert_eq!(
            example.gc.retention.keep_last,
            default.gc.retention.keep_last
        );
        assert_eq!(
            example.gc.retention.protected_tags,
            default.gc.retention.protected_tags
        );
        assert!(example.gc.validate().is_ok());
        assert_eq!(example.builds.run_image, default.builds.run_image);
        assert_eq!(example.builds.max_parallel, default.builds.max_parallel);
        assert_eq!(example.builds.timeout, default.builds.timeout);
        assert_eq!(example.builds.source_schemes, default.builds.source_schemes);
        let (mut example, mut default) = (example, default);
        example.resolve().unwrap();
        default.resolve().unwrap();
        assert_eq!(example.builds.registry_host, default.builds.registry_host);
        let (e, d) = (&example.builds, &default.builds);
        assert_eq!(e.sandbox, d.sandbox);
        assert_eq!(e.runner, d.runner);
        assert_eq!((e.uid_base, e.uid_count), (d.uid_base, d.uid_count));
        assert_eq!(e.per_tool_parallel, d.per_tool_parallel);
        assert_eq!(e.queued_per_tool, d.queued_per_tool);
        assert_eq!(e.max_log_bytes, d.max_log_bytes);
        assert_eq!(e.source_hosts, d.source_hosts);
        assert_eq!(e.private_source_hosts, d.private_source_hosts);
        assert_eq!(e.git_resolve_timeout, d.git_resolve_timeout);
        assert_eq!(e.git_fetch_timeout, d.git_fetch_timeout);
        assert_eq!(e.git_resolutions_per_tool, d.git_resolutions_per_tool);
        assert_eq!(e.git_resolutions_total, d.git_resolutions_total);
        assert_eq!(e.log_follows_per_tool, d.log_follows_per_tool);
        assert_eq!(e.log_follows_total, d.log_follows_total);
        assert_eq!(e.keep_successful, d.keep_successful);
        assert_eq!(e.keep_failed, d.keep_failed);
        assert_eq!(e.log_retention, d.log_retention);
        assert_eq!(e.lifecycle_dir, d.lifecycle_dir);
        assert_eq!(e.platform_api, d.platform_api);
        assert_eq!(e.registry_ca, d.registry_ca);
        let (e, d) = (&example.server, &default.server);
        assert_eq!((&e.tls_cert, &e.tls_key), (&d.tls_cert, &d.tls_key));
        assert_eq!(e.tls_reload_interval, d.tls_reload_interval);
        assert_eq!(e.public_url, d.public_url);
        assert_eq!(e.trusted_proxies, d.trusted_proxies);
        let (e, d) = (&example.auth, &default.auth);
        assert_eq!(e.client_ca, d.client_ca);
        assert_eq!(e.client_cert_namespace, d.client_cert_namespace);
        assert_eq!(e.client_cert_organization, d.client_cert_organization);
        let (e, d) = (&example.limits, &default.limits);
        assert_eq!(e.tls_handshake_timeout, d.tls_handshake_timeout);
        assert_eq!(e.max_streams_per_connection, d.max_streams_per_connection);
        assert_eq!(e.hooks_per_tool_per_minute, d.hooks_per_tool_per_minute);
    }

    #[test]
    fn tls_and_proxy_settings_are_checked() {
        let bad = |text: &str, want: &str| {
            let mut c = Config::parse(text).unwrap();
            let e = c.resolve().unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        };
        bad("[server]\ntls_cert = \"/c.pem\"", "go together");
        bad("[auth]\nclient_ca = \"/ca.pem\"", "needs TLS");
        bad(
            "[server]\ntls_cert = \"/c\"\ntls_key = \"/k\"\n[auth]\nclient_cert_namespace = \"tool\"",
            "{cn}",
        );
        bad(
            "[server]\npublic_url = \"https://r.example.org/registry\"",
            "path",
        );
        bad(
            "[limits]\ntls_handshake_timeout = \"0s\"",
            "tls_handshake_timeout",
        );
        assert!(Config::parse("[server]\ntrusted_proxies = [\"10.0.0.1/8\"]").is_err());

        let mut c = Config::parse(
            "[server]\ntls_cert = \"/c\"\ntls_key = \"/k\"\npublic_url = \"https://r.example.org/\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n[auth]\nclient_ca = \"/ca\"",
        )
        .unwrap();
        c.resolve().unwrap();
        assert_eq!(
            c.server.public_url.as_deref(),
            Some("https://r.example.org")
        );
        assert_eq!(
            c.auth.realm.as_deref(),
            Some("https://r.example.org/token"),
            "the realm follows the public URL"
        );
        assert!(c.builds.registry_tls);
        assert_eq!(
            c.builds.registry_host, "r.example.org",
            "builds push to the public name"
        );
        let files = c.server.tls_files(&c.auth).unwrap();
        assert_eq!(files.client_ca.as_deref(), Some(Path::new("/ca")));
        assert_eq!(c.server.trusted_proxies.len(), 2);
        // An explicit realm stays.
        let mut c = Config::parse(
            "[server]\npublic_url = \"https://r.example.org\"\n[auth]\nrealm = \"https://auth.example.org/token\"",
        )
        .unwrap();
        c.resolve().unwrap();
        assert_eq!(
            c.auth.realm.as_deref(),
            Some("https://auth.example.org/token")
        );
        assert!(
            c.builds.registry_tls,
            "https at the proxy, though berth itself is plain"
        );
        // An explicit registry host is reached with berth's own scheme.
        let mut c = Config::parse(
            "[server]\npublic_url = \"https://r.example.org\"\n[builds]\nregistry_host = \"127.0.0.1:5000\"",
        )
        .unwrap();
        c.resolve().unwrap();
        assert_eq!(c.builds.registry_host, "127.0.0.1:5000");
        assert!(!c.builds.registry_tls);
    }

    #[test]
    fn builds_settings_are_checked() {
        let bad = |text: &str, want: &str| {
            let mut c = Config::parse(text).unwrap();
            let e = c.resolve().unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        };
        bad("[builds]\nuid = 1000", "uid_base");
        bad("[builds]\nuid_base = 0", "uid_base");
        bad(
            "[builds]\nuid_base = 4294967200\nuid_count = 1000",
            "uid_base",
        );
        bad(
            "[builds]\ngit_resolutions_per_tool = 0",
            "git_resolutions_per_tool",
        );
        bad("[builds]\nsource_schemes = [\"ssh\"]", "not supported");
        bad(
            "[auth]\napi_token_default_lifetime = \"400d\"",
            "api_token_default_lifetime",
        );
        bad(
            "[limits]\napi_tokens_per_namespace = 0",
            "api_tokens_per_namespace",
        );
        assert!(Config::parse("[builds]\nsandbox = \"chroot\"").is_err());
        let mut c = Config::parse(
            "[builds]\nsandbox = \"none\"\nsource_schemes = [\"HTTPS\"]\nprivate_source_hosts = [\"Git.Internal\"]\nmax_log_bytes = \"1MiB\"",
        )
        .unwrap();
        c.resolve().unwrap();
        let e = &c.builds;
        assert_eq!(e.sandbox, berth_builds::sandbox::SandboxKind::None);
        assert_eq!(e.source_schemes, ["https"]);
        assert_eq!(e.private_source_hosts, ["git.internal"]);
        assert_eq!(e.max_log_bytes, 1 << 20);
    }

    #[test]
    fn s3_settings_are_read_checked_and_never_print_the_secret() {
        let mut c = Config::parse(
            "[storage.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:3900\"\nregion = \"garage\"\naccess_key_id = \"GK1\"\nsecret_access_key = \"very-secret\"\nallow_http = true\nprefix = \"berth/\"\nredirect = true",
        )
        .unwrap();
        c.resolve().unwrap();
        let s3 = c.storage.s3.as_ref().unwrap().storage_config();
        assert_eq!(s3.bucket, "b");
        assert!(!s3.virtual_hosted_style, "path-style by default");
        assert_eq!(s3.redirect, Some(Duration::from_secs(20 * 60)));
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(!format!("{s3:?}").contains("very-secret"));
        let bad = |text: &str, want: &str| {
            let mut c = Config::parse(text).unwrap();
            let e = c.resolve().unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        };
        bad("[storage.s3]\nbucket = \"\"", "bucket");
        bad(
            "[storage.s3]\nbucket = \"b\"\naccess_key_id = \"x\"",
            "go together",
        );
        bad(
            "[storage.s3]\nbucket = \"b\"\nendpoint = \"http://s3.local\"",
            "allow_http",
        );
        bad(
            "[storage.s3]\nbucket = \"b\"\nredirect = true\nredirect_expiry = \"30d\"",
            "redirect_expiry",
        );
        assert!(Config::parse("[storage.s3]\nbucket = \"b\"\nregoin = \"x\"").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_errors() {
        assert!(Config::parse("[server]\nlisten_on = \"x\"").is_err());
        assert!(Config::parse("[server]\nshutdown_grace = \"soon\"").is_err());
        assert!(Config::parse("[quota]\ndefault_limit = \"lots\"").is_err());
        let c = Config::parse("[gc]\ntag_cleanup_schedule = \"every tuesday\"").unwrap();
        assert!(c.gc.validate().is_err());
        let c = Config::parse("[gc]\nlease_ttl = \"0s\"").unwrap();
        assert!(c.gc.validate().unwrap_err().contains("lease_ttl"));
        let e = Config::parse("[gc.retention]\nkeep_pattern = \"(\"").unwrap_err();
        assert!(e.to_string().contains("keep_pattern"), "{e}");
        let c = Config::parse("[gc.retention]\nmax_age = \"30d\"").unwrap();
        assert_eq!(
            c.gc.retention.max_age,
            Some(Duration::from_secs(30 * 86400))
        );
        let c = Config::parse("[quota]\ndefault_limit = \"2GiB\"").unwrap();
        assert_eq!(c.quota.default_limit, Some(2 << 30));
        let c = Config::parse("[quota]\ndefault_limit = \"unlimited\"").unwrap();
        assert_eq!(c.quota.default_limit, None);
        let c = Config::parse("[server]\nshutdown_grace = \"90s\"").unwrap();
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(90));
    }
}
