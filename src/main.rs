//! The `berth` binary: the command line only. The wiring of a registry
//! from its config is the library's (`berth::app`), and everything it
//! starts lives in the workspace crates (see ARCHITECTURE.md).

mod admin_client;
mod gc_cli;
mod quota_cli;
mod token_cli;

use berth::app;
use berth::config::{self, Config, LogFormat};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Create, list and revoke API tokens on a running berth.
    Token {
        #[command(subcommand)]
        command: token_cli::TokenCommand,
    },
    /// Manage namespaces on a running berth.
    Namespace {
        #[command(subcommand)]
        command: NamespaceCommand,
    },
    /// Check a data dir: every blob row has its object (else data was
    /// lost), and what is left for GC. Read-only, safe while berth runs.
    /// Exits 1 when data is missing.
    Fsck {
        /// The data dir to check.
        #[arg(long, default_value = "./berth-data")]
        data_dir: PathBuf,
        /// Check the storage this config names instead: its metadata
        /// (PostgreSQL, or SQLite in its data dir) against its blob store
        /// (its bucket, or its data dir).
        #[arg(long, conflicts_with = "data_dir")]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Move an embedded installation (SQLite and blob files in a data dir)
    /// to the storage another config names: metadata into its PostgreSQL
    /// database (which must be new), blobs into its `[storage.s3]` bucket,
    /// or into its data dir when that is another directory. Stop berth first; the source is only read, so a
    /// failed run can be repeated. Start berth with the new config after.
    Migrate {
        /// The embedded installation's data dir.
        #[arg(long, default_value = "./berth-data")]
        data_dir: PathBuf,
        /// The config berth will run with afterwards ([storage] database_url required).
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        json: bool,
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
        Command::Token { command } => report(token_cli::run(command)),
        Command::Namespace {
            command:
                NamespaceCommand::Credentials {
                    namespace,
                    revoke,
                    connection,
                },
        } => report(namespace_credentials(&namespace, revoke, &connection)),
        Command::Fsck {
            data_dir,
            config,
            json,
        } => fsck(&data_dir, config.as_deref(), json),
        Command::Migrate { data_dir, to, json } => migrate(&data_dir, &to, json),
    }
}

/// The runtime of a command that runs once and exits (`fsck`, `migrate`);
/// `None` after saying why it could not start.
fn one_shot_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("berth: {e}");
            None
        }
    }
}

/// `berth migrate`: the embedded store moved to the storage of `target`.
fn migrate(data_dir: &std::path::Path, target: &std::path::Path, json: bool) -> ExitCode {
    let cfg = match Config::load(target) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(pg) = cfg.storage.postgres() else {
        eprintln!(
            "berth: {} has no [storage] database_url: migrate moves an embedded data dir to PostgreSQL",
            target.display()
        );
        return ExitCode::from(2);
    };
    let Some(runtime) = one_shot_runtime() else {
        return ExitCode::FAILURE;
    };
    let same_dir = match (
        std::fs::canonicalize(data_dir),
        std::fs::canonicalize(&cfg.storage.data_dir),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let outcome = runtime.block_on(async {
        let blobs = match &cfg.storage.s3 {
            Some(s3) => Some(berth_storage::BlobStore::s3(&s3.storage_config())?),
            None if same_dir => None,
            None => Some(berth_storage::BlobStore::local(&cfg.storage.data_dir)?),
        };
        // Secrets berth generated stay valid (tokens it signed, the admin
        // password people were given, the hook secrets forges hold): with
        // PostgreSQL every replica reads them from the database.
        berth_storage::migrate::embedded_to_postgres(
            data_dir,
            &pg,
            blobs.as_ref(),
            &["token-key", "admin-password", "hook-key"],
        )
        .await
    });
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "berth: migration of {} failed, nothing was committed to PostgreSQL: {e}",
                data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("berth: {e}"),
        }
    } else {
        for (table, rows) in &report.tables {
            println!("{table:<24} {rows:>10} rows");
        }
        println!(
            "blobs: {} objects, {} copied ({} bytes), the rest already there",
            report.objects, report.objects_copied, report.bytes_copied
        );
        if !report.secrets.is_empty() {
            println!("secrets: {}", report.secrets.join(", "));
        }
        println!("done: start berth with --config {}", target.display());
    }
    ExitCode::SUCCESS
}

/// `berth fsck`: the storage integrity check, for people or as JSON.
fn fsck(data_dir: &std::path::Path, config: Option<&std::path::Path>, json: bool) -> ExitCode {
    let cfg = match config.map(Config::load).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    let data_dir = cfg
        .as_ref()
        .map_or(data_dir, |c| c.storage.data_dir.as_path());
    let Some(runtime) = one_shot_runtime() else {
        return ExitCode::FAILURE;
    };
    // The metadata and blob store the config names: PostgreSQL or the
    // data dir's SQLite, a bucket or the data dir's files.
    let s3 = cfg
        .as_ref()
        .and_then(|c| c.storage.s3.as_ref())
        .map(|s3| s3.storage_config());
    let check = async {
        match cfg.as_ref().and_then(|c| c.storage.postgres()) {
            Some(pg) => {
                let blobs = match &s3 {
                    Some(s3) => berth_storage::BlobStore::s3(s3)?,
                    None => berth_storage::BlobStore::local(data_dir)?,
                };
                berth_storage::Storage::check_integrity_postgres(&pg, &blobs).await
            }
            None => berth_storage::Storage::check_integrity(data_dir, s3).await,
        }
    };
    let report = match runtime.block_on(check) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: cannot check {}: {e}", data_dir.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("berth: {e}"),
        }
    } else {
        println!(
            "{}: {} blob rows, {} objects; {} small blobs inline in the database",
            data_dir.display(),
            report.blob_rows,
            report.objects,
            report.inline_blobs
        );
        for d in &report.rows_without_object {
            println!("MISSING  {d}: its row exists but its object does not (data loss)");
        }
        for d in &report.inline_damaged {
            println!("DAMAGED  {d}: its bytes in the database do not match its digest or size");
        }
        println!(
            "left for GC: {} orphan objects, {} unreferenced blob links, {} unlinked blob rows",
            report.orphan_objects.len(),
            report.unreferenced_links,
            report.unlinked_blob_rows
        );
        println!(
            "{}",
            if report.is_sound() {
                "no data is missing"
            } else {
                "DATA IS MISSING"
            }
        );
    }
    if report.is_sound() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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
    // Everything berth writes (database, blobs, staging, secrets, logs) is
    // for berth alone; builds get their own directories explicitly.
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
    let fd_budget = raise_fd_limit();
    let state = app::build_state(&cfg, fd_budget).await?;
    let tls = app::tls_from_config(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.server.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(
        listen = %addr,
        tls = tls.is_some(),
        data_dir = %cfg.storage.data_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berth is serving"
    );
    let background = app::start_background(&state).await?;
    let storage = state.storage.clone();
    let watch = tls
        .clone()
        .map(|t| tokio::spawn(t.watch(cfg.server.tls_reload_interval)));
    let hup = tokio::spawn(reload_on_sighup(tls.clone()));
    berth_registry::serve(listener, state, tls, shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    hup.abort();
    if let Some(w) = watch {
        w.abort();
    }
    background.stop().await;
    storage.close().await;
    tracing::info!("berth stopped cleanly");
    Ok(())
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

/// On SIGHUP, reads the TLS files again (connections already open keep
/// theirs). Without TLS there is nothing to reload, and SIGHUP no longer
/// ends berth (its default action) either way.
async fn reload_on_sighup(tls: Option<std::sync::Arc<berth_registry::tls::Tls>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP");
        return;
    };
    while hup.recv().await.is_some() {
        match &tls {
            Some(tls) => {
                tracing::info!("SIGHUP received: reading the TLS files again");
                tls.reload_logged("SIGHUP").await;
            }
            None => tracing::info!("SIGHUP received: nothing to reload (TLS is off)"),
        }
    }
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
