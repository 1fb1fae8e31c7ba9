//! The `berth` binary: command line and wiring only. Everything it starts
//! lives in the workspace crates (see ARCHITECTURE.md).

mod admin_client;
mod config;
mod gc_cli;
mod quota_cli;

use berth_registry::{RegistryConfig, State};
use berth_storage::{Storage, StorageConfig};
use clap::{Parser, Subcommand};
use config::{Config, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "An OCI image registry for tool-hosting platforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        /// Config file (TOML); see config.example.toml.
        #[arg(long, env = "BERTH_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:5000].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where metadata, blobs and uploads live [default: ./berth-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Query and set quotas on a running berth.
    Quota {
        #[command(subcommand)]
        command: quota_cli::QuotaCommand,
    },
    /// Run garbage collection now and read past runs, on a running berth.
    Gc {
        #[command(subcommand)]
        command: gc_cli::GcCommand,
    },
    /// Manage namespaces on a running berth.
    Namespace {
        #[command(subcommand)]
        command: NamespaceCommand,
    },
}

#[derive(Subcommand)]
enum NamespaceCommand {
    /// Create (or rotate) the namespace's account and print its secret,
    /// which is shown only this once. With --revoke, delete the account.
    Credentials {
        namespace: String,
        #[arg(long)]
        revoke: bool,
        #[command(flatten)]
        connection: admin_client::Connection,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let mut cfg = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("berth: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::default(),
            };
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(d) = data_dir {
                cfg.storage.data_dir = d;
            }
            init_logging(&cfg);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("berth: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Quota { command } => report(quota_cli::run(command)),
        Command::Gc { command } => report(gc_cli::run(command)),
        Command::Namespace {
            command:
                NamespaceCommand::Credentials {
                    namespace,
                    revoke,
                    connection,
                },
        } => report(namespace_credentials(&namespace, revoke, &connection)),
    }
}

/// Prints a CLI result: output on stdout, errors on stderr with exit 1.
fn report(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berth: {e}");
            ExitCode::FAILURE
        }
    }
}

fn namespace_credentials(
    ns: &str,
    revoke: bool,
    c: &admin_client::Connection,
) -> Result<String, String> {
    let client = admin_client::AdminClient::connect(c)?;
    let path = format!("/admin/v1/namespaces/{ns}/credentials");
    if revoke {
        client.call_empty("DELETE", &path)?;
        return Ok(format!("credentials of {ns} revoked"));
    }
    let credentials: berth_registry::api::Credentials = client.call("POST", &path, None::<&()>)?;
    serde_json::to_string_pretty(&credentials).map_err(|e| e.to_string())
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(cfg: Config) -> Result<(), String> {
    cfg.limits.validate()?;
    // Everything berth writes (database, blobs, staging, secrets, logs) is
    // for berth alone; builds get their own directories explicitly.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
    let fd_budget = raise_fd_limit();
    let storage_config = StorageConfig {
        data_dir: cfg.storage.data_dir.clone(),
        synchronous: cfg.storage.sqlite_synchronous,
        uploads: cfg.limits.upload_limits(),
    };
    // Opening runs migrations and touches the filesystem: keep it off the
    // async workers like every other blocking call.
    let storage = tokio::task::spawn_blocking(move || Storage::open(&storage_config))
        .await
        .map_err(|e| format!("storage start-up task failed: {e}"))?
        .map_err(|e| {
            format!(
                "cannot open data dir {}: {e}",
                cfg.storage.data_dir.display()
            )
        })?;
    storage.meta.set_quota_policy(cfg.quota.policy());
    storage.meta.set_blob_grace(cfg.gc.blob_grace);
    let gc_config = cfg.gc.engine_config()?;
    match storage.meta.interrupt_unfinished_gc_runs().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            runs = n,
            "marked GC runs cut short by the last shutdown as interrupted"
        ),
        Err(e) => return Err(format!("cannot read GC run records: {e}")),
    }
    let gc = berth_gc::Gc::new(storage.clone(), gc_config.clone());
    let builds_config = cfg.builds.engine_config(&cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        listen = %addr,
        data_dir = %cfg.storage.data_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berth is serving"
    );
    let auth: Arc<berth_registry::auth::Auth> = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || auth_from_config(&cfg))
            .await
            .map_err(|e| format!("auth start-up task failed: {e}"))??
            .into()
    };
    let builds = berth_builds::Builds::new(storage.clone(), builds_config, auth.clone());
    let dispatcher = if cfg.builds.enabled {
        report_builds_readiness(&builds).await;
        match builds.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                builds = n,
                "builds running when berth stopped were marked failed"
            ),
            Err(e) => return Err(format!("cannot read build records: {e}")),
        }
        Some(tokio::spawn(builds.clone().dispatch()))
    } else {
        None
    };
    let state = Arc::new(State {
        auth,
        storage: storage.clone(),
        config: RegistryConfig {
            chunk_min_length: cfg.registry.chunk_min_length,
            shutdown_grace: cfg.server.shutdown_grace,
            metrics_public: cfg.metrics.public,
            limits: cfg.limits.connection_limits(fd_budget),
        },
        metrics: {
            let m = berth_registry::metrics::Metrics::new();
            m.register(gc.metrics.collectors());
            m
        },
        gc: gc.clone(),
        builds,
    });
    let mut scheduler = if gc_config.enabled {
        Some(
            berth_gc::scheduler::start(gc.clone())
                .await
                .map_err(|e| format!("cannot start the GC scheduler: {e}"))?,
        )
    } else {
        tracing::warn!("scheduled GC is off ([gc] enabled = false)");
        None
    };
    let expiry = tokio::spawn(storage.uploads.clone().run_expiry());
    berth_registry::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    if let Some(s) = scheduler.as_mut() {
        let _ = s.shutdown().await;
    }
    if let Some(d) = dispatcher {
        d.abort();
    }
    expiry.abort();
    storage.close().await;
    tracing::info!("berth stopped cleanly");
    Ok(())
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
    if c.runner == berth_builds::RunnerKind::Process && !c.lifecycle_dir.join("creator").exists() {
        tracing::warn!(
            lifecycle_dir = %c.lifecycle_dir.display(),
            "the CNB lifecycle is not installed there ([builds] lifecycle_dir): builds will fail until it is"
        );
    }
}

/// Builds the auth layer: the admin password comes from the config, else
/// BERTH_ADMIN_PASSWORD, else a file generated in the data dir; the token
/// key from its configured file, else one generated in the data dir.
fn auth_from_config(cfg: &Config) -> Result<berth_registry::auth::Auth, String> {
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
    Ok(Auth::new(
        cfg.auth.registry_config(&cfg.limits),
        admin_password,
        key.as_bytes(),
    ))
}

/// Descriptors kept back from connections: SQLite (writer, readers, WAL),
/// the listener, logs, git and build processes' pipes, the checkpointer.
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one (a registry's work is
/// open files and sockets) and returns how many descriptors connections
/// may use; `max_connections` is held under it so that berth refuses a
/// connection before it would run out of descriptors for everyone.
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    let budget = lim.rlim_cur.saturating_sub(RESERVED_FDS);
    tracing::info!(
        open_files = lim.rlim_cur,
        for_connections = budget,
        "file descriptor budget"
    );
    Some(budget)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
