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
    tracing::info!(
        backend = ?storage.meta.backend(),
        replica = storage.meta.replica_id().unwrap_or("-"),
        "metadata opened"
    );
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
    let shared = shared_secrets(cfg, &storage.meta).await?;
    let auth: Arc<berth_registry::auth::Auth> = {
        let cfg = cfg.clone();
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || auth_from_config(&cfg, &shared))
            .await
            .map_err(|e| format!("auth start-up task failed: {e}"))??
            .into()
    };
    let builds = berth_builds::Builds::new(storage.clone(), builds_config, auth.clone());
    let hooks = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || hooks_from_config(&cfg, shared.hook_key))
            .await
            .map_err(|e| format!("hooks start-up task failed: {e}"))??
    };
    let ui = berth_registry::ui::Console::new(cfg.ui.clone(), &storage.meta);
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
        ui,
        hooks,
    }))
}

/// Build triggers' hooks: their secrets derive from the hook key
/// (`<data dir>/hook-key`, generated on first start, mode 0600; with
/// PostgreSQL the one in the database, see `shared_secrets`; replacing it
/// changes every hook's secret), their limits from `[limits]`.
fn hooks_from_config(
    cfg: &Config,
    shared_key: Option<String>,
) -> Result<berth_registry::hooks::Hooks, String> {
    let key = match shared_key {
        Some(k) => k,
        None => {
            let path = cfg.storage.data_dir.join("hook-key");
            berth_registry::auth::secrets::load_or_create(&path)
                .map_err(|e| format!("cannot read or create hook key {}: {e}", path.display()))?
        }
    };
    Ok(berth_registry::hooks::Hooks::new(
        berth_registry::hooks::HookKey::new(key.as_bytes()),
        cfg.limits.hooks_per_tool_per_minute,
        cfg.limits.logins_per_address,
    ))
}

/// The secrets replicas sharing a PostgreSQL database must agree on, as
/// the database holds them; `None` where the data dir's file (or the
/// config) is the source: always with SQLite. No `Debug`: it holds secrets.
#[derive(Clone, Default)]
struct SharedSecrets {
    /// Unless `[auth] admin_password` or `BERTH_ADMIN_PASSWORD` sets it.
    admin_password: Option<String>,
    /// Unless `[auth] token_key_file` names a file (which then wins).
    token_key: Option<String>,
    hook_key: Option<String>,
}

/// With PostgreSQL, each generated secret is created once in the database
/// (`shared_secrets`: insert if absent, then read back, so two replicas
/// starting together agree) and read from there. A data dir's existing
/// file is what gets stored first, so an installation moving to
/// PostgreSQL keeps its tokens, hook secrets and admin password valid.
async fn shared_secrets(
    cfg: &Config,
    meta: &berth_storage::Metadata,
) -> Result<SharedSecrets, String> {
    if !meta.shared() {
        return Ok(SharedSecrets::default());
    }
    let admin_given = cfg.auth.admin_password.is_some()
        || std::env::var("BERTH_ADMIN_PASSWORD").is_ok_and(|p| !p.is_empty());
    let shared = |name: &'static str| async move {
        let path = cfg.storage.data_dir.join(name);
        let candidate = match tokio::fs::read_to_string(&path).await {
            Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
            Ok(_) => berth_registry::auth::secrets::generate_secret(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                berth_registry::auth::secrets::generate_secret()
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        meta.shared_secret(name, candidate)
            .await
            .map_err(|e| format!("cannot read or store the shared {name}: {e}"))
    };
    Ok(SharedSecrets {
        admin_password: if admin_given {
            None
        } else {
            Some(shared("admin-password").await?)
        },
        token_key: if cfg.auth.token_key_file.is_some() {
            None
        } else {
            Some(shared("token-key").await?)
        },
        hook_key: Some(shared("hook-key").await?),
    })
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
/// BERTH_ADMIN_PASSWORD, else the one generated once (a file in the data
/// dir, or with PostgreSQL the database's, written to the data dir's file
/// too so the operator can read it); the token key from its configured
/// file, else the database's (PostgreSQL), else a file generated in the
/// data dir.
fn auth_from_config(
    cfg: &Config,
    shared: &SharedSecrets,
) -> Result<berth_registry::auth::Auth, String> {
    use berth_registry::auth::{secrets, Auth};
    let admin_password = match (
        &cfg.auth.admin_password,
        std::env::var("BERTH_ADMIN_PASSWORD"),
        &shared.admin_password,
    ) {
        (Some(p), _, _) => p.clone(),
        (None, Ok(p), _) if !p.is_empty() => p,
        (_, _, Some(p)) => {
            let path = cfg.storage.data_dir.join("admin-password");
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            if on_disk.trim() != p {
                secrets::write_secret(&path, p)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), "wrote the replicas' shared admin password (user `admin`)");
            }
            p.clone()
        }
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
    let key = match (&cfg.auth.token_key_file, &shared.token_key) {
        (None, Some(k)) => k.clone(),
        (file, _) => {
            let key_path = file
                .clone()
                .unwrap_or_else(|| cfg.storage.data_dir.join("token-key"));
            secrets::load_or_create(&key_path).map_err(|e| {
                format!(
                    "cannot read or create token key {}: {e}",
                    key_path.display()
                )
            })?
        }
    };
    if !cfg.auth.enabled {
        tracing::warn!(
            "authentication is OFF: anyone who can reach the listener may push and delete"
        );
    }
    Ok(Auth::new(cfg.auth.clone(), admin_password, key.as_bytes()))
}
