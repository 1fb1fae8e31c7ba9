//! A real PostgreSQL server for tests, started once per test process and
//! stopped when the process ends, however it ends. Shared by the storage
//! tests (`storage/tests/*.rs`) and the end-to-end tests (`tests/postgres.rs`
//! includes this file by path).
//!
//! - The binaries: `initdb`, `pg_ctl` and `psql` from `BERTH_PG_BIN` if
//!   set, else `/usr/local/bin`, else the newest `/usr/lib/postgresql/*/bin`
//!   (Debian's `postgresql` package), else `PATH`.
//! - The server lives in a fresh temporary directory, listens on a Unix
//!   socket in that directory (what the tests use),
//!   trusts local connections (user `berth`), and runs with fsync off:
//!   test data need not survive a power loss.
//! - initdb and postgres refuse to run as root. As root (CI), they run as
//!   `nobody` through `setpriv` (util-linux), the directory owned by it.
//! - Stopping: a watchdog process (its own session, so a Ctrl-C to the
//!   tests does not kill it first) reads a pipe from this process; when the
//!   pipe closes (this process exited, panicked or was killed, even by
//!   SIGKILL) it stops the server (`pg_ctl stop -m immediate`) and removes
//!   the directory. Statics are never dropped, so a Drop guard could not.
//! - Each test gets its own database (`fresh_database`), created from
//!   `template0`: tests never see each other's rows.
//! - It also listens with TLS on a loopback TCP port, its certificate for
//!   `localhost` issued by a CA made at start (`tls_url`, `tls_ca`), for
//!   the tests of `sslmode=require` (PostgreSQL has no TLS on sockets).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub struct Server {
    /// Where the socket is (the server's directory).
    pub dir: PathBuf,
    /// The loopback port of the TLS listener.
    pub tls_port: u16,
    psql: PathBuf,
    /// Kept open for the life of the process: closing it stops the server.
    _watchdog: ChildStdin,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The superuser every test connects as (trust authentication).
pub const USER: &str = "berth";

/// A database's URL over TCP with `sslmode=require` (host `localhost`,
/// which the server's certificate names).
pub fn tls_url(db: &str) -> String {
    format!(
        "postgres://{USER}@localhost:{}/{db}?sslmode=require",
        server().tls_port
    )
}

/// The CA (PEM file) that issued the server's certificate.
pub fn tls_ca() -> PathBuf {
    server().dir.join("ca.pem")
}

/// The process's server, started on first use. Panics (failing the test)
/// with the reason when PostgreSQL cannot be started: these tests exercise
/// a real server, so a missing one is a failure, not a skip.
pub fn server() -> &'static Server {
    match SERVER.get_or_init(start) {
        Ok(s) => s,
        Err(e) => panic!("cannot start PostgreSQL for the tests: {e}"),
    }
}

/// A new, empty database on the process's server; its URL.
pub fn fresh_database() -> String {
    let s = server();
    let name = format!("berth_test_{}", DATABASES.fetch_add(1, Ordering::SeqCst));
    let out = Command::new(&s.psql)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&s.dir)
        .args(["-p", &s.tls_port.to_string()])
        .args(["-U", USER, "-d", "postgres", "-c"])
        .arg(format!("CREATE DATABASE {name} TEMPLATE template0"))
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "CREATE DATABASE {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.url(&name)
}

/// Runs `sql` in database `db` (the name, as in its URL's path); the
/// rows as psql's unaligned output (`|` between columns).
pub fn psql(db: &str, sql: &str) -> String {
    let s = server();
    let out = Command::new(&s.psql)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&s.dir)
        .args(["-p", &s.tls_port.to_string()])
        .args(["-U", USER, "-d", db, "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The database name in a URL made by `fresh_database`.
pub fn database_of(url: &str) -> &str {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit_once('/').map(|(_, db)| db).unwrap_or(path)
}

impl Server {
    /// The psql client the harness uses (for a session a test keeps open).
    pub fn psql_binary(&self) -> &Path {
        &self.psql
    }

    /// The URL of database `name` on this server (over its socket, whose
    /// name carries the port).
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{USER}@/{name}?host={}&port={}",
            self.dir.display(),
            self.tls_port
        )
    }
}

/// Where the PostgreSQL binaries are.
pub fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("BERTH_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if Path::new("/usr/local/bin/initdb").exists() && Path::new("/usr/local/bin/pg_ctl").exists() {
        return Ok(PathBuf::from("/usr/local/bin"));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        if Path::new(dir).join("initdb").exists() {
            return Ok(PathBuf::from(dir));
        }
    }
    Err(
        "initdb not found in BERTH_PG_BIN, /usr/local/bin, /usr/lib/postgresql/*/bin or PATH; \
         run scripts/install-test-deps (Debian's postgresql package)"
            .into(),
    )
}

/// psql: beside initdb, or the client package's.
fn psql_binary(bin: &Path) -> PathBuf {
    for p in [bin.join("psql"), PathBuf::from("/usr/bin/psql")] {
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("psql")
}

/// The unprivileged user PostgreSQL runs as when we are root.
fn unprivileged() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "nobody"])
            .output()
            .map_err(|e| format!("id {flag} nobody: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "no user nobody to run PostgreSQL as (initdb refuses root)".to_string())
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// `program args...`, as the unprivileged user when there is one.
fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    match user {
        None => Command::new(program),
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            c
        }
    }
}

fn run(mut c: Command, what: &str) -> Result<(), String> {
    let out = c.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn start() -> Result<Server, String> {
    let bin = bin_dir()?;
    let user = unprivileged()?;
    let dir = std::env::temp_dir().join(format!(
        "berth-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let log = dir.join("postgres.log");

    // The watchdog first, so that a failure below still cleans up.
    let mut stop = command(&bin.join("pg_ctl"), user);
    stop.arg("-D").arg(&data).args(["-m", "immediate", "stop"]);
    let stop_line: Vec<String> = std::iter::once(stop.get_program())
        .chain(stop.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut watchdog = Command::new("sh");
    watchdog
        .arg("-c")
        .arg(r#"cat >/dev/null; [ -f "$DIR/data/postmaster.pid" ] && "$@"; rm -rf "$DIR""#)
        .arg("sh")
        .args(&stop_line)
        .env("DIR", &dir)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; runs in the child before exec.
    unsafe {
        watchdog.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = watchdog.spawn().map_err(|e| format!("watchdog: {e}"))?;
    let pipe = child.stdin.take().ok_or("watchdog without stdin")?;

    let mut initdb = command(&bin.join("initdb"), user);
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            USER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .current_dir(&dir);
    run(initdb, "initdb")?;
    // The TLS listener's certificate, from a CA of this run.
    let ca_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth test PostgreSQL CA");
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .and_then(|p| p.signed_by(&server_key, &issuer))
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).map_err(|e| e.to_string())?;
    for (name, pem) in [
        ("server.crt", server_cert.pem()),
        ("server.key", server_key.serialize_pem()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, pem).map_err(|e| e.to_string())?;
        // PostgreSQL refuses a key others may read, and reads it as the
        // server's user.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
    }
    // The port is free when `free_port`-style probing asks, not
    // necessarily when the server binds it: a start that failed on a
    // taken address is tried again on another.
    let mut attempt = 0;
    let tls_port = loop {
        attempt += 1;
        let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| e.to_string())?;
        let mut pg_ctl = command(&bin.join("pg_ctl"), user);
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-k {dir} -c listen_addresses=127.0.0.1 -p {tls_port} -c ssl=on \
                 -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key \
                 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=400 -c shared_buffers=32MB",
                dir = dir.display()
            ))
            .arg("start")
            .current_dir(&dir)
            .stdout(Stdio::null());
        match run(pg_ctl, "pg_ctl start") {
            Ok(()) => break tls_port,
            Err(e) => {
                let server_log = std::fs::read_to_string(&log).unwrap_or_default();
                if attempt < 3 && server_log.contains("Address already in use") {
                    continue;
                }
                return Err(format!("{e}\nserver log:\n{server_log}"));
            }
        }
    };
    Ok(Server {
        dir,
        tls_port,
        psql: psql_binary(&bin),
        _watchdog: pipe,
    })
}
