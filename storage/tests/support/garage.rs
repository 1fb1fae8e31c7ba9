//! A real S3 server for tests: Garage (crates.io `garage`), started once
//! per test process and stopped when the process ends, however it ends.
//! Shared by the storage tests (`storage/tests/*.rs`) and the end-to-end
//! tests (`tests/s3.rs` includes this file by path), like `postgres.rs`.
//!
//! - The binary: `BERTH_GARAGE_BIN` if set, else `garage` on `PATH`, else
//!   `$BERTH_GARAGE_ROOT/bin/garage` (default `~/.cache/berth-garage`,
//!   where `scripts/install-test-deps` builds it: `cargo install garage
//!   --version 2.5.0 --locked --no-default-features --features
//!   sqlite,bundled-libs`). Without one,
//!   the tests that need it print why and return, unless `CI` is set: there
//!   a missing server is a failure.
//! - The server lives in a fresh temporary directory (metadata in SQLite,
//!   replication factor 1) and listens on two free loopback ports (RPC and
//!   the S3 API, region `garage`).
//! - Stopping: the server runs under a watchdog shell (its own session)
//!   that reads a pipe from this process; when the pipe closes (this
//!   process exited or was killed, even by SIGKILL) it kills the server
//!   and removes the directory.
//! - Each test gets its own bucket (`fresh_bucket`), readable and writable
//!   with the one key the harness made.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

pub struct Server {
    pub dir: PathBuf,
    /// `http://127.0.0.1:<port>`: the S3 API.
    pub endpoint: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
    bin: PathBuf,
    config: PathBuf,
    _watchdog: ChildStdin,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static BUCKETS: AtomicUsize = AtomicUsize::new(0);

/// The process's server, started on first use; `None` (after printing
/// why) when no Garage binary is installed and `CI` is unset. Panics when
/// one is installed but cannot be started, or when `CI` is set.
pub fn server() -> Option<&'static Server> {
    let binary = match binary() {
        Ok(b) => b,
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("{e}");
            }
            eprintln!("skipped: {e}");
            return None;
        }
    };
    match SERVER.get_or_init(|| start(binary)) {
        Ok(s) => Some(s),
        Err(e) => panic!("cannot start Garage for the tests: {e}"),
    }
}

/// A new, empty bucket on the process's server; its name.
pub fn fresh_bucket(s: &Server) -> String {
    let name = format!(
        "berth-{}-{}",
        std::process::id(),
        BUCKETS.fetch_add(1, Ordering::SeqCst)
    );
    s.garage(&["bucket", "create", &name])
        .unwrap_or_else(|e| panic!("{e}"));
    s.garage(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        &name,
        "--key",
        "berth-key",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    name
}

impl Server {
    /// Runs the garage CLI against this server; its standard output.
    pub fn garage(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| format!("garage {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "garage {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// berth's `[storage.s3]` section for `bucket`, as TOML.
    pub fn config_toml(&self, bucket: &str) -> String {
        format!(
            "[storage.s3]\nbucket = \"{bucket}\"\nendpoint = \"{}\"\nregion = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nallow_http = true\n",
            self.endpoint, self.region, self.key_id, self.secret
        )
    }
}

/// Where the garage binary is.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("BERTH_GARAGE_BIN") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("garage");
        if p.is_file() {
            return Ok(p);
        }
    }
    let cached = std::env::var_os("BERTH_GARAGE_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/berth-garage")))
        .map(|root| root.join("bin/garage"));
    if let Some(built) = cached {
        if built.is_file() {
            return Ok(built);
        }
    }
    Err(
        "no Garage binary (BERTH_GARAGE_BIN, garage on PATH, ~/.cache/berth-garage/bin): \
         the S3 tests need one; scripts/install-test-deps installs it"
            .into(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn random_hex(bytes: usize) -> String {
    let mut out = String::new();
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}

/// Calls `f` every 100 ms until it succeeds, at most `attempts` times; its
/// last answer.
fn poll<T>(attempts: usize, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let mut last = f();
    for _ in 1..attempts {
        if last.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        last = f();
    }
    last
}

/// Starts a server; a start that is never ready (a port taken between
/// `free_port` and the server's bind, say) is retried with fresh ports in
/// a fresh directory, a few times.
fn start(bin: PathBuf) -> Result<Server, String> {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match start_once(&bin) {
            Ok(server) => return Ok(server),
            Err(e) => failures.push(e),
        }
    }
    Err(failures.join("\n--- next attempt ---\n"))
}

fn start_once(bin: &Path) -> Result<Server, String> {
    let dir = std::env::temp_dir().join(format!(
        "berth-garage-{}-{}",
        std::process::id(),
        random_hex(4)
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (rpc, api) = (free_port(), free_port());
    let config = dir.join("garage.toml");
    std::fs::write(
        &config,
        format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{api}"
root_domain = ".s3.garage.localhost"
"#,
            dir = dir.display(),
            secret = random_hex(32),
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = dir.join("garage.log");
    // The watchdog runs the server, and kills it when the pipe closes.
    let mut watchdog = Command::new("sh");
    watchdog
        .arg("-c")
        .arg(
            r#""$BIN" -c "$DIR/garage.toml" server >"$DIR/garage.log" 2>&1 & pid=$!
cat >/dev/null; kill "$pid" 2>/dev/null; wait "$pid"; rm -rf "$DIR""#,
        )
        .env("BIN", bin)
        .env("DIR", &dir)
        .env("RUST_LOG", "garage=warn")
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
    let mut server = Server {
        dir: dir.clone(),
        endpoint: format!("http://127.0.0.1:{api}"),
        region: "garage".into(),
        key_id: String::new(),
        secret: String::new(),
        bin: bin.to_owned(),
        config,
        _watchdog: pipe,
    };
    let with_log = |e: String| {
        format!(
            "{e}\nserver log ({}):\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    // Ready when the CLI reaches it over RPC (a readiness wait, bounded by
    // attempts, not a timed assertion). `node id` alone is not enough: it
    // reads the node key from the metadata directory, which the server
    // writes before its RPC listener is up, and the `layout assign` after
    // it would meet a refused connection. `status` needs the RPC.
    let node = poll(300, || {
        server
            .garage(&["node", "id", "-q"])
            .and_then(|node| server.garage(&["status"]).map(|_| node))
    })
    .map_err(with_log)?;
    // The S3 listener binds on its own; a port taken since `free_port`
    // shows here, and `start` tries again elsewhere.
    let s3_address = format!("127.0.0.1:{api}");
    poll(100, || {
        std::net::TcpStream::connect(&s3_address)
            .map(drop)
            .map_err(|e| format!("S3 API at {s3_address}: {e}"))
    })
    .map_err(with_log)?;
    let node = node.trim().split('@').next().unwrap_or("").to_owned();
    server
        .garage(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])
        .map_err(with_log)?;
    server
        .garage(&["layout", "apply", "--version", "1"])
        .map_err(with_log)?;
    let key = server
        .garage(&["key", "create", "berth-key"])
        .map_err(with_log)?;
    let field = |name: &str| {
        key.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .ok_or_else(|| format!("no {name:?} in garage key create's output:\n{key}"))
    };
    server.key_id = field("Key ID")?;
    server.secret = field("Secret key")?;
    Ok(server)
}
