//! The wiring from a `Config` to the registry's shared `State`: storage,
//! auth, GC, builds and metrics, assembled one way for `berth serve`, the
//! in-process fuzz target (fuzzing/) and anything else that needs the same
//! registry in a process. Background work (build dispatcher, GC schedules,
//! upload expiry) is started separately, by `start_background`, so that a
//! caller can have the state without it.

use crate::config::Config;
use berth_registry::{RegistryConfig, State};
use berth_storage::{Storage, StorageConfig};
use std::sync::Arc;

/// Opens the data dir (taking its lock) and builds the state every request
/// is answered from. `fd_budget` is how many descriptors connections may
/// use (`None`: no limit known); it caps `max_connections`.
pub async fn build_state(cfg: &Config, fd_budget: Option<u64>) -> Result<Arc<State>, String> {
    let mut cfg = cfg.clone();
    cfg.resolve()?;
    let cfg = &cfg;
    let storage_config = StorageConfig {
        data_dir: cfg.storage.data_dir.clone(),
        synchronous: cfg.storage.sqlite_synchronous,
        uploads: cfg.limits.upload_limits(cfg.storage.inline_blob_max),
        postgres: cfg.storage.postgres(),
        s3: cfg.storage.s3.as_ref().map(|s3| s3.storage_config()),
    };
    // Opening runs migrations and touches the filesystem: `connect` keeps
    // the blocking parts off the async workers.
    let storage = Storage::connect(&storage_config).await.map_err(|e| {
        if cfg.storage.database_url.is_some() {
            format!(
                "cannot open storage (data dir {}, PostgreSQL at [storage] database_url): {e}",
                cfg.storage.data_dir.display()
            )
        } else {
            format!(
                "cannot open data dir {}: {e}",
                cfg.storage.data_dir.display()
            )
        }
    })?;
    tracing::info!(backend = ?storage.meta.backend(), "metadata opened");
    let notifications = &cfg.notifications;
    storage
        .meta
        .set_event_recording(!notifications.endpoints.is_empty());
    storage.meta.set_quota_policy(
        cfg.quota.policy(
            notifications
                .wants(berth_registry::notify::EventKind::Quota)
                .then_some(notifications.quota_threshold_percent),
        ),
    );
    storage.meta.set_blob_grace(cfg.gc.blob_grace);
    let gc_config = cfg.gc.clone();
    match storage.meta.interrupt_unfinished_gc_runs().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            runs = n,
            "marked GC runs cut short by the last shutdown as interrupted"
        ),
        Err(e) => return Err(format!("cannot read GC run records: {e}")),
    }
    let gc = berth_gc::Gc::new(storage.clone(), gc_config.clone());
    let builds_config = cfg.builds.clone();
    let auth: Arc<berth_registry::auth::Auth> = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || auth_from_config(&cfg))
            .await
            .map_err(|e| format!("auth start-up task failed: {e}"))??
            .into()
    };
    let builds = berth_builds::Builds::new(storage.clone(), builds_config, auth.clone());
    let hooks = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || hooks_from_config(&cfg))
            .await
            .map_err(|e| format!("hooks start-up task failed: {e}"))??
    };
    Ok(Arc::new(State {
        auth,
        storage,
        config: RegistryConfig {
            chunk_min_length: cfg.registry.chunk_min_length,
            shutdown_grace: cfg.server.shutdown_grace,
            metrics_public: cfg.metrics.public,
            limits: cfg.limits.connection_limits(fd_budget),
            forwarding: berth_registry::proxy::Forwarding {
                trusted_proxies: cfg.server.trusted_proxies.clone(),
            },
            public_url: cfg.server.public_url.clone(),
            notifications: Arc::new(cfg.notifications.clone()),
            listen: cfg.server.listen.to_string(),
        },
        metrics: {
            let m = berth_registry::metrics::Metrics::new();
            m.register(gc.metrics.collectors());
            m
        },
        gc,
        builds,
        // Secure cookies follow `[ui] secure_cookies`, else whether each
        // request came over TLS (`ui::OverTls`).
        ui: berth_registry::ui::Console::new(cfg.ui.clone()),
        hooks,
    }))
}

/// Build triggers' hooks: their secrets derive from `<data dir>/hook-key`
/// (generated on first start, mode 0600; replacing it changes every
/// hook's secret), their limits from `[limits]`.
fn hooks_from_config(cfg: &Config) -> Result<berth_registry::hooks::Hooks, String> {
    let path = cfg.storage.data_dir.join("hook-key");
    let key = berth_registry::auth::secrets::load_or_create(&path)
        .map_err(|e| format!("cannot read or create hook key {}: {e}", path.display()))?;
    Ok(berth_registry::hooks::Hooks::new(
        berth_registry::hooks::HookKey::new(key.as_bytes()),
        cfg.limits.hooks_per_tool_per_minute,
        cfg.limits.logins_per_address,
    ))
}

/// The listener's TLS, when `[server] tls_cert` and `tls_key` are set: the
/// files are read now, so a bad certificate stops start-up with a message
/// naming the file. `None` serves plain HTTP.
pub async fn tls_from_config(
    cfg: &Config,
) -> Result<Option<Arc<berth_registry::tls::Tls>>, String> {
    let Some(files) = cfg.server.tls_files(&cfg.auth) else {
        return Ok(None);
    };
    let tls = tokio::task::spawn_blocking(move || berth_registry::tls::Tls::load(files))
        .await
        .map_err(|e| format!("TLS start-up task failed: {e}"))??;
    Ok(Some(Arc::new(tls)))
}

/// The background work of a serving registry; `stop` ends it.
pub struct Background {
    scheduler: Option<tokio_cron_scheduler::JobScheduler>,
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    expiry: tokio::task::JoinHandle<()>,
    console: Option<tokio::task::JoinHandle<()>>,
    notifier: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the build dispatcher (after failing builds a dead process left
/// running), the GC schedules, upload expiry and the console's sampler,
/// as configured.
pub async fn start_background(state: &Arc<State>) -> Result<Background, String> {
    let dispatcher = if state.builds.config().enabled {
        report_builds_readiness(&state.builds).await;
        match state.builds.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                builds = n,
                "builds running when berth stopped were marked failed"
            ),
            Err(e) => return Err(format!("cannot read build records: {e}")),
        }
        Some(tokio::spawn(state.builds.clone().dispatch()))
    } else {
        None
    };
    let scheduler = if state.gc.config().enabled {
        Some(
            berth_gc::scheduler::start(state.gc.clone())
                .await
                .map_err(|e| format!("cannot start the GC scheduler: {e}"))?,
        )
    } else {
        tracing::warn!("scheduled GC is off ([gc] enabled = false)");
        None
    };
    let expiry = tokio::spawn(state.storage.uploads.clone().run_expiry());
    // The console's samples: request rates, and usage over time.
    let console = state
        .ui
        .config
        .enabled
        .then(|| tokio::spawn(berth_registry::ui::run_sampler(state.clone())));
    let notify = &state.config.notifications;
    let notifier = if notify.endpoints.is_empty() {
        Vec::new()
    } else {
        let source = berth_registry::notify::Source {
            addr: state.config.listen.clone(),
            instance_id: uuid::Uuid::new_v4().to_string(),
        };
        Arc::new(berth_registry::notify::Notifier::new(
            notify.clone(),
            state.storage.meta.clone(),
            source,
            state.config.public_url.clone(),
        ))
        .spawn()
    };
    Ok(Background {
        scheduler,
        dispatcher,
        expiry,
        console,
        notifier,
    })
}

/// Says at start-up whether builds can run on this host and, if not,
/// exactly why (build requests are then answered 503 with the same
/// reason); berth itself serves either way.
async fn report_builds_readiness(builds: &berth_builds::Builds) {
    let c = builds.config();
    match builds.ready().await {
        Ok(()) => tracing::info!(
            runner = ?c.runner,
            sandbox = ?c.sandbox,
            per_tool_uid = c.per_tool_uid(),
            uid_base = c.uid_base,
            "builds can run"
        ),
        Err(why) => tracing::error!(
            "builds cannot run on this host: {why}. Build requests will be refused (503) until this is fixed and berth restarted; set [builds] enabled = false to switch builds off"
        ),
    }
    let missing = c.missing_lifecycle_parts();
    if !missing.is_empty() {
        tracing::warn!(
            "builds are enabled but this host lacks {}: every build will fail (BUILD_FAILURE saying so) until they are installed; set [builds] enabled = false to switch builds off",
            missing.join(", ")
        );
    }
}

impl Background {
    pub async fn stop(mut self) {
        if let Some(s) = self.scheduler.as_mut() {
            let _ = s.shutdown().await;
        }
        if let Some(d) = self.dispatcher {
            d.abort();
        }
        self.expiry.abort();
        if let Some(c) = self.console {
            c.abort();
        }
        for t in self.notifier {
            t.abort();
        }
    }
}

/// Builds the auth layer: the admin password comes from the config, else
/// BERTH_ADMIN_PASSWORD, else a file generated in the data dir; the token
/// key from its configured file, else one generated in the data dir.
pub fn auth_from_config(cfg: &Config) -> Result<berth_registry::auth::Auth, String> {
    use berth_registry::auth::{secrets, Auth};
    let admin_password = match (
        &cfg.auth.admin_password,
        std::env::var("BERTH_ADMIN_PASSWORD"),
    ) {
        (Some(p), _) => p.clone(),
        (None, Ok(p)) if !p.is_empty() => p,
        _ => {
            let path = cfg.storage.data_dir.join("admin-password");
            let existed = path.exists();
            let p = secrets::load_or_create(&path)
                .map_err(|e| format!("cannot read or create {}: {e}", path.display()))?;
            if !existed {
                tracing::info!(path = %path.display(), "generated the admin password (user `admin`)");
            }
            p
        }
    };
    let key_path = cfg
        .auth
        .token_key_file
        .clone()
        .unwrap_or_else(|| cfg.storage.data_dir.join("token-key"));
    let key = secrets::load_or_create(&key_path).map_err(|e| {
        format!(
            "cannot read or create token key {}: {e}",
            key_path.display()
        )
    })?;
    if !cfg.auth.enabled {
        tracing::warn!(
            "authentication is OFF: anyone who can reach the listener may push and delete"
        );
    }
    Ok(Auth::new(cfg.auth.clone(), admin_password, key.as_bytes()))
}
