//! Shared harness for the end-to-end tests: the real `berth` binary on a
//! free loopback port with a temporary data dir, a private dockerd, OCI
//! image layouts made from scratch, and small HTTP helpers.
#![allow(dead_code)]

use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The admin password every test berth runs with.
pub const ADMIN_PASSWORD: &str = "test-admin-password";

pub fn admin() -> Option<(String, String)> {
    Some(("admin".to_owned(), ADMIN_PASSWORD.to_owned()))
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A running `berth serve`. Killed (SIGKILL) when dropped.
pub struct Berth {
    pub child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Berth {
    pub fn start(data_dir: &Path) -> Berth {
        Berth::start_on(data_dir, free_port())
    }

    pub fn start_on(data_dir: &Path, port: u16) -> Berth {
        Berth::start_with(data_dir, port, "")
    }

    /// Starts berth with `config` (TOML) as its config file.
    pub fn start_with(data_dir: &Path, port: u16, config: &str) -> Berth {
        Berth::start_limited(data_dir, port, config, None)
    }

    /// Like `start_with`, and with `open_files` as the process's hard and
    /// soft RLIMIT_NOFILE (what `ulimit -n` sets), when given.
    pub fn start_limited(
        data_dir: &Path,
        port: u16,
        config: &str,
        open_files: Option<u64>,
    ) -> Berth {
        let child = Berth::spawn(data_dir, port, config, open_files);
        let log = data_dir.with_extension(format!("{port}.log"));
        let berth = Berth {
            child: Some(child),
            port,
            data_dir: data_dir.to_owned(),
            log,
        };
        berth.wait_healthy();
        berth
    }

    /// Spawns `berth serve` without waiting for it (its log goes to
    /// `<data dir>.<port>.log`).
    pub fn spawn(data_dir: &Path, port: u16, config: &str, open_files: Option<u64>) -> Child {
        Berth::spawn_at(
            data_dir,
            &format!("127.0.0.1:{port}"),
            port,
            config,
            open_files,
        )
    }

    /// Starts berth without `BERTH_ADMIN_PASSWORD`, so its admin password
    /// is the generated one (the data dir's file, or the replicas' shared
    /// one with PostgreSQL).
    pub fn start_generated(data_dir: &Path, port: u16, config: &str) -> Berth {
        let listen = format!("127.0.0.1:{port}");
        let child = Berth::spawn_env(data_dir, &listen, port, config, None, None);
        let berth = Berth {
            child: Some(child),
            port,
            data_dir: data_dir.to_owned(),
            log: data_dir.with_extension(format!("{port}.log")),
        };
        berth.wait_healthy();
        berth
    }

    /// Like `spawn`, listening on `listen` (an address with `port`).
    pub fn spawn_at(
        data_dir: &Path,
        listen: &str,
        port: u16,
        config: &str,
        open_files: Option<u64>,
    ) -> Child {
        Berth::spawn_env(
            data_dir,
            listen,
            port,
            config,
            open_files,
            Some(ADMIN_PASSWORD),
        )
    }

    /// `spawn_at` with `admin_password` as `BERTH_ADMIN_PASSWORD` (none:
    /// unset).
    fn spawn_env(
        data_dir: &Path,
        listen: &str,
        port: u16,
        config: &str,
        open_files: Option<u64>,
        admin_password: Option<&str>,
    ) -> Child {
        use std::os::unix::process::CommandExt;
        let log = data_dir.with_extension(format!("{port}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let config_path = data_dir.with_extension(format!("{port}.toml"));
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        if let Some(n) = open_files {
            // SAFETY: setrlimit is async-signal-safe; runs in the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info");
        match admin_password {
            Some(p) => cmd.env("BERTH_ADMIN_PASSWORD", p),
            None => cmd.env_remove("BERTH_ADMIN_PASSWORD"),
        };
        cmd.stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start berth")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Open file descriptors of the berth process.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory of the berth process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// host:port, as image references name the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn wait_healthy(&self) {
        // Each probe is short: something else listening on the port may
        // accept and never answer, and the loop must get back to asking
        // whether berth exited.
        let probe: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let url = format!("{}/healthz", self.url());
        self.wait_until_healthy("berth", || {
            probe.get(&url).call().is_ok_and(|r| r.status() == 200)
        });
    }

    /// Polls `healthy` for up to 30 s. Panics with berth's log (naming it
    /// `what`) when time runs out or when berth exits first: a berth that
    /// exited (its port taken since `free_port`, say) must not pass for
    /// healthy through whatever answers on its port now.
    pub fn wait_until_healthy(&self, what: &str, mut healthy: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.exited() {
                panic!(
                    "{what} exited before it became healthy; log:\n{}",
                    self.log_text()
                );
            }
            if healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{what} did not become healthy; log:\n{}", self.log_text());
    }

    /// Whether the process has exited (a zombie not yet waited for),
    /// without reaping it: `wait` still reports its status.
    fn exited(&self) -> bool {
        let Some(child) = self.child.as_ref() else {
            return true;
        };
        std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .ok()
            .and_then(|stat| {
                // The state follows the command name's closing parenthesis.
                let (_, rest) = stat.rsplit_once(')')?;
                rest.split_whitespace().next().map(|state| state == "Z")
            })
            .unwrap_or(true)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, sig) };
    }

    /// Waits for the process to exit and returns its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }

    /// Creates (or rotates) the account of `namespace`; returns its password.
    pub fn namespace_credentials(&self, namespace: &str) -> String {
        let mut r = http_agent()
            .post(&format!(
                "{}/admin/v1/namespaces/{namespace}/credentials",
                self.url()
            ))
            .header("authorization", basic("admin", ADMIN_PASSWORD))
            .send_empty()
            .unwrap();
        assert!(
            r.status() == 201 || r.status() == 200,
            "creating credentials: {}\n{}",
            r.status(),
            self.log_text()
        );
        let v: serde_json::Value =
            serde_json::from_slice(&r.body_mut().read_to_vec().unwrap()).unwrap();
        assert_eq!(v["username"], namespace);
        v["password"].as_str().unwrap().to_owned()
    }

    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait();
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// GET returning (status, headers, body).
pub fn get(url: &str, accept: Option<&str>) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
    match accept {
        Some(a) => request("GET", url, &[("accept", a)]),
        None => request("GET", url, &[]),
    }
}

/// Any bodiless request with the given headers: (status, headers, body).
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
    send(method, url, headers, Vec::new())
}

/// Any request with a body: (status, headers, body).
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, ureq::http::HeaderMap, Vec<u8>) {
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut r = http_agent()
        .run(builder.body(body).unwrap())
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    (status, headers, body)
}

/// `skopeo copy` from `src` to `dst` over plain HTTP, no retries (a
/// failure is the registry's to explain), with `extra` flags.
pub fn skopeo_copy(src: &str, dst: &str, extra: &[&str]) {
    run(Command::new(tool("skopeo"))
        .args([
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--retry-times=0",
        ])
        .args(extra)
        .arg(src)
        .arg(dst));
}

/// A binary of berth-test-tools (`cnb-creator`, `rr-proxy`), built once per
/// test process: `cargo test` does not rebuild another package's binary,
/// and a stale one fails in ways that look like berth's fault.
pub fn test_tool(name: &'static str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let path = Path::new(env!("CARGO_BIN_EXE_berth")).with_file_name(name);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if !built.contains(&name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).args(["build", "-p", "berth-test-tools", "--bin", name]));
        assert!(path.exists(), "{} missing", path.display());
        built.push(name);
    }
    path
}

/// A JSON request (`body` serialised) with an optional `Authorization`;
/// the status and the answer as JSON (`Null` when it is not JSON).
pub fn send_json(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    if let Some(a) = authorization {
        b = b.header("authorization", a);
    }
    let body = body
        .map(|v| serde_json::to_vec(&v).unwrap())
        .unwrap_or_default();
    let req = b
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let mut r = http_agent()
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_vec().unwrap();
    (
        status,
        serde_json::from_slice(&text).unwrap_or(serde_json::Value::Null),
    )
}

pub const MANIFEST_ACCEPT: &str = berth_conformance::client::MANIFEST_ACCEPT;

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
}

/// Runs a command expected to fail; returns its stderr and stdout.
pub fn run_failing(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} should have failed");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// Finds a client tool, or fails the test saying how to get it. These
/// tests exercise real clients, so a missing tool is a failure, not a skip.
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed; run scripts/install-test-deps (README, 'Running the tests')");
}

// ------------------------------------------------------- OCI layouts ----

/// A blob in an image.
pub struct LayoutBlob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// Builds a gzip'd tar layer holding `files` (path, contents), and returns
/// it with the digest of the uncompressed tar (the config's diff_id).
pub fn tar_gz_layer(files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let mut tar_bytes = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut tar_bytes);
        for (path, contents) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder.append_data(&mut header, path, *contents).unwrap();
        }
        builder.finish().unwrap();
    }
    let diff_id = sha256(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Writes an OCI image layout at `dir` holding one image tagged `tag`,
/// made of `layers` unique to `seed`. Returns the layer blobs.
pub fn write_oci_layout(dir: &Path, tag: &str, seed: &str, layers: usize) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = sha256(bytes);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_blobs = Vec::new();
    for i in 0..layers {
        let content = format!("layer {i} of {seed}\n").repeat(200);
        let big: Vec<u8> = (0..(64 * 1024))
            .map(|j| ((j * 31 + i * 7) % 251) as u8)
            .collect();
        let (gz, diff_id) = tar_gz_layer(&[
            (&format!("app/file-{i}.txt"), content.as_bytes()),
            (&format!("app/data-{i}.bin"), &big),
        ]);
        let d = put(&gz);
        layer_descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": gz.len()
        }));
        diff_ids.push(diff_id);
        layer_blobs.push(gz);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/app/run"], "Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "berth e2e test"}]
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layer_descs
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}
            }]
        }))
        .unwrap(),
    )
    .unwrap();
    layer_blobs
}

/// Copies an OCI layout's `tag` into the registry as `image` (host/repo:tag)
/// with skopeo, logged in as `creds` (user:password).
pub fn skopeo_push_layout(layout: &Path, tag: &str, image: &str, creds: &str) {
    skopeo_copy(
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{image}"),
        &["--dest-creds", creds],
    );
}

/// `len` bytes that do not compress (a multiplicative hash of the index),
/// the same every time: a blob too large to be kept inline.
pub fn incompressible(len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

// ------------------------------------------------------------ dockerd ----

/// A dockerd of our own on a private socket, with its data in a temp dir.
pub struct Dockerd {
    child: Child,
    pub socket: PathBuf,
    dir: PathBuf,
}

impl Dockerd {
    pub fn start(dir: &Path) -> Dockerd {
        Dockerd::start_in(dir, Command::new(tool("dockerd")))
    }

    /// A dockerd with an `/etc/docker` and `/etc/hosts` of its own (bound
    /// over the host's in a private mount namespace): its registry
    /// certificates are `certs_d()` (dockerd reads them only from
    /// `/etc/docker/certs.d`), and `hosts` lines are all the names it
    /// resolves from files.
    pub fn start_private_etc(dir: &Path, hosts: &str) -> Dockerd {
        let etc = dir.join("etc-docker");
        std::fs::create_dir_all(etc.join("certs.d")).unwrap();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        let mut cmd = Command::new(tool("unshare"));
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/docker && mount --bind "$2" /etc/hosts && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(&etc)
            .arg(dir.join("hosts"))
            .arg(tool("dockerd"));
        Dockerd::start_in(dir, cmd)
    }

    /// Where this daemon's registry certificates go (`start_private_etc`).
    pub fn certs_d(&self) -> PathBuf {
        self.dir.join("etc-docker/certs.d")
    }

    fn start_in(dir: &Path, mut command: Command) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = command
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args([
                "--storage-driver=vfs",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd {
            child,
            socket,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = d
                .cmd()
                .arg("version")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return d;
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd did not start; log:\n{}",
                    std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `docker login` with the password on stdin; the output either way.
    pub fn login(&self, host: &str, user: &str, password: &str) -> Result<String, String> {
        let mut child = self
            .cmd()
            .args(["login", host, "--username", user, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// A `docker` command talking to this daemon.
    pub fn cmd(&self) -> Command {
        // Prefer the client packaged with the daemon: same API version.
        let docker = if Path::new("/usr/bin/docker").exists() {
            PathBuf::from("/usr/bin/docker")
        } else {
            tool("docker")
        };
        let mut c = Command::new(docker);
        c.arg("-H").arg(format!("unix://{}", self.socket.display()));
        c.env("DOCKER_CONFIG", self.dir.join("client-config"));
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines from a reader until one contains `needle` (for logs).
pub fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(f) = std::fs::File::open(path) {
            if BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains(needle))
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
