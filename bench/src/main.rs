//! berth-bench: a load generator for any OCI registry URL, and `compare`,
//! which runs berth and registry:2 (Debian's `docker-registry`) side by side
//! on loopback with fresh data dirs and prints one table with both figures,
//! the ratio, the machine's limits measured in the same run and berth's RSS.
//!
//!     berth-bench run --url http://127.0.0.1:5000 [--username U --password P]
//!     berth-bench compare --berth target/release/berth --registry /usr/bin/docker-registry

mod fast;
mod load;

use clap::{Parser, Subcommand};
use load::{content, micros_since, push_image, sha256, timed, Conn, Figures, Target, ACCEPT};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Load generator and berth-vs-registry:2 comparison")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scenarios against one registry and print JSON figures.
    Run {
        #[arg(long)]
        url: String,
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        password: Option<String>,
        /// Seconds per timed scenario.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Only scenarios whose name contains this.
        #[arg(long, default_value = "")]
        filter: String,
    },
    /// Start berth and registry:2, run everything against both, print the table.
    Compare {
        #[arg(long)]
        berth: PathBuf,
        #[arg(long, default_value = "/usr/bin/docker-registry")]
        registry: PathBuf,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value = "")]
        filter: String,
    },
}

const MIB: usize = 1024 * 1024;
const BIG_BLOB: usize = 64 * MIB;

/// Every repository the scenarios touch (one token covers them all).
fn scopes() -> Vec<String> {
    let mut s: Vec<String> = [
        "bench/get",
        "bench/blobs",
        "bench/chunked",
        "bench/tags",
        "bench/big",
    ]
    .iter()
    .map(|r| format!("repository:{r}:pull,push"))
    .collect();
    s.extend((0..16).map(|i| format!("repository:bench/push{i}:pull,push")));
    s.push("registry:catalog:*".into());
    s
}

type Scenario = (
    &'static str,
    &'static str,
    fn(&Target, Duration) -> Result<Figures, String>,
);

/// (name, what the headline figure is, the run).
fn scenarios() -> Vec<Scenario> {
    vec![
        ("manifest GET by tag (32 conns)", "req/s", manifest_get),
        ("manifest HEAD by tag (32 conns)", "req/s", manifest_head),
        ("small image push (8 clients)", "images/s", small_image_push),
        ("blob push, monolithic 64 MiB", "MB/s", blob_push_monolithic),
        (
            "blob push, chunked 64 MiB / 8 MiB",
            "MB/s",
            blob_push_chunked,
        ),
        ("blob pull + verify 64 MiB (4 conns)", "MB/s", blob_pull),
        ("tags list, 100 tags (8 conns)", "req/s", tags_list),
        ("catalog n=100 (8 conns)", "req/s", catalog),
    ]
}

fn get_loop(target: &Target, d: Duration, method: &'static str) -> Result<Figures, String> {
    let conn = Conn::new(target);
    push_image(&conn, "bench/get", "v1", 1, 4096)?;
    Ok(fast::hammer(
        target,
        method,
        "/v2/bench/get/manifests/v1",
        Some(ACCEPT),
        32,
        d,
    ))
}

fn manifest_get(t: &Target, d: Duration) -> Result<Figures, String> {
    get_loop(t, d, "GET")
}

fn manifest_head(t: &Target, d: Duration) -> Result<Figures, String> {
    get_loop(t, d, "HEAD")
}

fn small_image_push(target: &Target, d: Duration) -> Result<Figures, String> {
    Ok(fast::push_images(target, 8, 16 * 1024, d))
}

/// Pushes `count` blobs of `size` one after another; MB/s of the whole.
fn sequential_pushes(target: &Target, count: usize, chunked: bool) -> Result<Figures, String> {
    let conn = Conn::new(target);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let blobs: Vec<(Vec<u8>, String)> = (0..count)
        .map(|i| {
            let b = content(run + i as u64, BIG_BLOB);
            let d = sha256(&b);
            (b, d)
        })
        .collect();
    let mut lat = Vec::new();
    let started = Instant::now();
    for (b, d) in &blobs {
        let t0 = Instant::now();
        if chunked {
            conn.push_blob_chunked("bench/chunked", b, d, 8 * MIB)?;
        } else {
            conn.push_blob("bench/blobs", b, d)?;
        }
        lat.push(micros_since(t0));
    }
    Ok(Figures::from_latencies(
        lat,
        0,
        started.elapsed().as_secs_f64(),
        BIG_BLOB as u64,
    ))
}

fn blob_push_monolithic(t: &Target, _: Duration) -> Result<Figures, String> {
    sequential_pushes(t, 8, false)
}

fn blob_push_chunked(t: &Target, _: Duration) -> Result<Figures, String> {
    sequential_pushes(t, 8, true)
}

fn blob_pull(target: &Target, d: Duration) -> Result<Figures, String> {
    let conn = Conn::new(target);
    let blobs: Vec<String> = (0..4)
        .map(|i| {
            let b = content(7000 + i, BIG_BLOB);
            let digest = sha256(&b);
            conn.push_blob("bench/blobs", &b, &digest).map(|_| digest)
        })
        .collect::<Result<_, _>>()?;
    let blobs = Arc::new(blobs);
    Ok(timed(target, 4, d, BIG_BLOB as u64, move |c, t, i| {
        let digest = &blobs[(t + i as usize) % blobs.len()];
        let r = c.send(
            "GET",
            &format!("/v2/bench/blobs/blobs/{digest}"),
            &[],
            Vec::new(),
        )?;
        if r.status != 200 || &sha256(&r.body) != digest {
            return Err(format!("blob GET: HTTP {} or digest mismatch", r.status));
        }
        Ok(())
    }))
}

fn tags_list(target: &Target, d: Duration) -> Result<Figures, String> {
    let conn = Conn::new(target);
    push_image(&conn, "bench/tags", "base", 3, 1024)?;
    let m = conn
        .send(
            "GET",
            "/v2/bench/tags/manifests/base",
            &[("accept", ACCEPT)],
            Vec::new(),
        )?
        .body;
    for i in 0..100 {
        let r = conn.send(
            "PUT",
            &format!("/v2/bench/tags/manifests/t{i:03}"),
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            m.clone(),
        )?;
        if r.status != 201 {
            return Err(format!("tag PUT: HTTP {}", r.status));
        }
    }
    Ok(fast::hammer(
        target,
        "GET",
        "/v2/bench/tags/tags/list",
        None,
        8,
        d,
    ))
}

fn catalog(target: &Target, d: Duration) -> Result<Figures, String> {
    Ok(fast::hammer(
        target,
        "GET",
        "/v2/_catalog?n=100",
        None,
        8,
        d,
    ))
}

// ------------------------------------------------------ machine limits ----

fn limit_sha256() -> f64 {
    let data = content(1, 256 * MIB);
    let t = Instant::now();
    let _ = sha256(&data);
    256.0 * MIB as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn limit_fsync_write(dir: &Path) -> f64 {
    let path = dir.join("fsync-probe");
    let chunk = content(2, 8 * MIB);
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for _ in 0..64 {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    let mbs = 512.0 * MIB as f64 / t.elapsed().as_secs_f64() / 1e6;
    let _ = std::fs::remove_file(path);
    mbs
}

fn limit_loopback() -> f64 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let total = 2048 * MIB;
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; MIB];
        let mut n = 0;
        while n < total {
            let r = s.read(&mut buf).unwrap();
            if r == 0 {
                break;
            }
            n += r;
        }
    });
    let chunk = vec![7u8; MIB];
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    for _ in 0..2048 {
        s.write_all(&chunk).unwrap();
    }
    drop(s);
    reader.join().unwrap();
    total as f64 / t.elapsed().as_secs_f64() / 1e6
}

// ----------------------------------------------------------- processes ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_up(url: &str) {
    for _ in 0..400 {
        if ureq::get(&format!("{url}/v2/")).call().is_ok()
            || ureq::get(&format!("{url}/healthz")).call().is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{url} did not come up");
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn start_berth(bin: &Path, dir: &Path) -> (Proc, Target) {
    let port = free_port();
    let config = dir.join("berth.toml");
    std::fs::write(&config, "[auth]\ntoken_ttl = \"2h\"\n[quota]\ndefault_limit = \"unlimited\"\n[log]\nlevel = \"warn\"\n").unwrap();
    let child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("berth-data"))
        .arg("--config")
        .arg(&config)
        .env("BERTH_ADMIN_PASSWORD", "bench")
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth");
    let url = format!("http://127.0.0.1:{port}");
    wait_up(&url);
    (
        Proc(child),
        Target::new(&url, Some(("admin".into(), "bench".into()))),
    )
}

fn start_registry(bin: &Path, dir: &Path) -> (Proc, Target) {
    let port = free_port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry-data").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start docker-registry");
    let url = format!("http://127.0.0.1:{port}");
    wait_up(&url);
    (Proc(child), Target::new(&url, None))
}

fn headline(unit: &str, f: &Figures) -> f64 {
    if unit == "MB/s" {
        f.mb_per_second
    } else {
        f.per_second
    }
}

fn compare(berth_bin: &Path, registry_bin: &Path, seconds: u64, filter: &str) {
    let dir = std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("measuring the machine's limits...");
    let (sha, fsync, lo) = (limit_sha256(), limit_fsync_write(&dir), limit_loopback());
    let (berth, bt) = start_berth(berth_bin, &dir);
    let (_registry, rt) = start_registry(registry_bin, &dir);
    bt.authorize(&scopes()).expect("berth token");
    rt.authorize(&scopes()).expect("registry token");
    let pid = berth.0.id();
    let idle = rss_kib(pid, "VmRSS:");
    let peak = Arc::new(AtomicU64::new(idle));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let d = Duration::from_secs(seconds);
    let mut rows = Vec::new();
    for (name, unit, run) in scenarios() {
        if !name.contains(filter) {
            continue;
        }
        println!("{name}...");
        let b = run(&bt, d).unwrap_or_else(|e| panic!("berth, {name}: {e}"));
        let r = run(&rt, d).unwrap_or_else(|e| panic!("registry:2, {name}: {e}"));
        rows.push((name, unit, b, r));
    }
    // A 1 GiB push: berth's memory must not grow with the blob.
    let before = rss_kib(pid, "VmRSS:");
    peak.store(before, Ordering::Relaxed);
    let t = Instant::now();
    Conn::new(&bt)
        .push_streamed("bench/big", 1024 * MIB as u64)
        .expect("1 GiB push");
    let big_secs = t.elapsed().as_secs_f64();
    let big_peak = peak.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let hwm = rss_kib(pid, "VmHWM:");

    println!("\n| scenario | unit | berth | registry:2 | ratio | berth p50 / p99 ms | registry:2 p50 / p99 ms |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, unit, b, r) in &rows {
        let (bv, rv) = (headline(unit, b), headline(unit, r));
        println!(
            "| {name} | {unit} | {bv:.1} | {rv:.1} | {:.1}x | {:.2} / {:.2} | {:.2} / {:.2} |",
            bv / rv.max(1e-9),
            b.p50_ms,
            b.p99_ms,
            r.p50_ms,
            r.p99_ms
        );
        if b.errors + r.errors > 0 {
            println!("|  ↳ errors | | {} | {} | | | |", b.errors, r.errors);
        }
    }
    println!("\nmachine: sha256 {sha:.0} MB/s; file write + fsync {fsync:.0} MB/s; loopback TCP {lo:.0} MB/s");
    println!(
        "berth RSS: idle {} MiB; before the 1 GiB push {} MiB, peak during it {} MiB (+{} MiB), pushed at {:.0} MB/s; high-water mark of the whole run {} MiB",
        idle / 1024,
        before / 1024,
        big_peak / 1024,
        big_peak.saturating_sub(before) / 1024,
        1024.0 * MIB as f64 / big_secs / 1e6,
        hwm / 1024
    );
    drop(berth);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    match Cli::parse().command {
        Cmd::Run {
            url,
            username,
            password,
            seconds,
            filter,
        } => {
            let target = Target::new(&url, username.zip(password));
            target.authorize(&scopes()).expect("authorization");
            for (name, unit, run) in scenarios() {
                if !name.contains(&filter) {
                    continue;
                }
                match run(&target, Duration::from_secs(seconds)) {
                    Ok(f) => println!(
                        "{}",
                        serde_json::json!({ "scenario": name, "unit": unit, "figures": f })
                    ),
                    Err(e) => println!("{}", serde_json::json!({ "scenario": name, "error": e })),
                }
            }
        }
        Cmd::Compare {
            berth,
            registry,
            seconds,
            filter,
        } => compare(&berth, &registry, seconds, &filter),
    }
}
