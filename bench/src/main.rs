//! berth-bench: a load generator for any OCI registry URL, and `compare`,
//! which runs berth and registry:2 (Debian's `docker-registry`) side by side
//! on loopback with fresh data dirs and prints one table with both figures,
//! the ratio, the machine's limits measured in the same run and berth's RSS.
//!
//!     berth-bench run --url http://127.0.0.1:5000 [--username U --password P]
//!     berth-bench compare --berth target/release/berth --registry /usr/bin/docker-registry
//!
//! `compare` reports the median of `--runs` runs of each scenario, adds
//! berth at `sqlite_synchronous = "full"` for small pushes, the wrk
//! comparison with nginx (`wrk`), and 10,000 idle connections (`idle`).

mod fast;
mod idle;
mod load;
mod wrk;

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
        /// Runs of each scenario; the table shows the median.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Idle connections held open in the idle-connections scenario.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
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
        "bench/wrk",
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
        (
            "small image push (16 clients)",
            "images/s",
            small_image_push,
        ),
        (
            "blob push, monolithic, 16 x 64 MiB",
            "MB/s",
            blob_push_monolithic,
        ),
        (
            "blob push, chunked, 16 x 64 MiB / 8 MiB",
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
    Ok(fast::push_images(target, 16, 16 * 1024, d))
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

/// 1 GiB per run, as the steady rate needs several seconds of writing.
const BLOBS_PER_RUN: usize = 16;

fn blob_push_monolithic(t: &Target, _: Duration) -> Result<Figures, String> {
    sequential_pushes(t, BLOBS_PER_RUN, false)
}

fn blob_push_chunked(t: &Target, _: Duration) -> Result<Figures, String> {
    sequential_pushes(t, BLOBS_PER_RUN, true)
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
        let r = c.send("GET", &format!("/v2/bench/blobs/blobs/{digest}"), &[], &[])?;
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
            &[],
        )?
        .body;
    for i in 0..100 {
        let r = conn.send(
            "PUT",
            &format!("/v2/bench/tags/manifests/t{i:03}"),
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            &m,
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

/// MB/s of writing `files` files of `mib_each` MiB in 8 MiB writes, each
/// fsynced before the next is started; the files are removed after.
fn fsync_write_rate(dir: &Path, files: usize, mib_each: usize) -> f64 {
    let chunk = content(2, 8 * MIB);
    let paths: Vec<_> = (0..files)
        .map(|i| dir.join(format!("fsync-probe-{i}")))
        .collect();
    let t = Instant::now();
    for path in &paths {
        let mut f = std::fs::File::create(path).unwrap();
        for _ in 0..mib_each / 8 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let mbs = (files * mib_each * MIB) as f64 / t.elapsed().as_secs_f64() / 1e6;
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
    mbs
}

/// The machine's write-and-fsync limit, measured once at the start: one
/// 512 MiB file.
fn limit_fsync_write(dir: &Path) -> f64 {
    fsync_write_rate(dir, 1, 512)
}

/// The machine's limit for what a blob push must do: 16 files of 64 MiB,
/// each written and fsynced before the next is started (one durable blob
/// per request), after a `sync` so that no earlier writing is still being
/// flushed. MB/s. Run beside each berth blob-push run, as this disk's rate
/// moves by 2x between minutes.
fn limit_fsync_files(dir: &Path) -> f64 {
    sync_disks();
    fsync_write_rate(dir, 16, 64)
}

/// Flushes every dirty page to disk, so that a run does not pay for the
/// writing of the one before it.
fn sync_disks() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// CPU seconds (user + system) process `pid` ("self" for this one) has
/// used, from /proc/<pid>/stat.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it start at
    // `state` (field 3), so utime (14) and stime (15) are 11 and 12 here.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / per_second
}

/// One run of a scenario against the server `pid`, after a `sync`, with
/// the CPU it and this load generator used.
fn run_measured(
    pid: u32,
    run: impl FnOnce() -> Result<Figures, String>,
) -> Result<Figures, String> {
    sync_disks();
    let pid = pid.to_string();
    let (server, client) = (cpu_seconds(&pid), cpu_seconds("self"));
    let mut f = run()?;
    f.server_cpu_s = cpu_seconds(&pid) - server;
    f.client_cpu_s = cpu_seconds("self") - client;
    Ok(f)
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

pub struct Proc(pub Child);

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

/// berth on a fresh data dir under `dir/name`, with `extra` config.
fn start_berth(bin: &Path, dir: &Path, name: &str, extra: &str) -> (Proc, Target) {
    let port = free_port();
    let config = dir.join(format!("{name}.toml"));
    // No scheduled GC: a tag cleanup falls on every fifth minute of the
    // clock and (keeping the last 5 tags) would delete the tags the
    // scenarios read and add writes registry:2 never does. GC is
    // measured on its own (`cargo bench --bench gc`).
    std::fs::write(&config, format!("[auth]\ntoken_ttl = \"2h\"\n[quota]\ndefault_limit = \"unlimited\"\n[log]\nlevel = \"warn\"\n[gc]\nenabled = false\n{extra}")).unwrap();
    let child = Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join(format!("{name}-data")))
        .arg("--config")
        .arg(&config)
        .env("BERTH_ADMIN_PASSWORD", "bench")
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).expect("berth's log"))
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

/// The median of `runs` runs of `run` by the scenario's headline figure.
fn median_of(
    runs: usize,
    unit: &str,
    mut run: impl FnMut() -> Result<Figures, String>,
) -> Result<(Figures, Vec<f64>), String> {
    let mut all = (0..runs.max(1))
        .map(|_| run())
        .collect::<Result<Vec<_>, _>>()?;
    all.sort_by(|a, b| headline(unit, a).total_cmp(&headline(unit, b)));
    let each = all.iter().map(|f| headline(unit, f)).collect();
    Ok((all[all.len() / 2].clone(), each))
}

struct Options<'a> {
    seconds: u64,
    filter: &'a str,
    runs: usize,
    idle: usize,
}

/// Free space a whole comparison needs under the temporary directory: both
/// registries keep every run's blobs (16 GB were there by the 1 GiB push of
/// one run), with room to spare.
const COMPARE_NEEDS_BYTES: u64 = 20 << 30;

/// The comparison's data directory, removed however the run ends (a panic
/// too: a run that died on a full disk left 16 GB behind).
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bytes an unprivileged process may still write on the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn compare(berth_bin: &Path, registry_bin: &Path, o: &Options) {
    let tmp = std::env::temp_dir();
    if let Some(free) = free_bytes(&tmp) {
        if free < COMPARE_NEEDS_BYTES {
            eprintln!(
                "berth-bench compare: {} has {} GiB free and a full comparison writes up to {} GiB there; free some space (or set TMPDIR) and run again",
                tmp.display(),
                free >> 30,
                COMPARE_NEEDS_BYTES >> 30
            );
            std::process::exit(2);
        }
    }
    let scratch = ScratchDir(tmp.join(format!("berth-bench-{}", std::process::id())));
    let dir = scratch.0.clone();
    std::fs::create_dir_all(&dir).unwrap();
    println!("measuring the machine's limits...");
    let (sha, fsync, lo) = (limit_sha256(), limit_fsync_write(&dir), limit_loopback());
    let (berth, bt) = start_berth(berth_bin, &dir, "berth", "");
    let (registry, rt) = start_registry(registry_bin, &dir);
    let registry_pid = registry.0.id();
    bt.authorize(&scopes()).expect("berth token");
    rt.authorize(&scopes()).expect("registry token");
    let pid = berth.0.id();
    let idle_rss = rss_kib(pid, "VmRSS:");
    let peak = Arc::new(AtomicU64::new(idle_rss));
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
    let d = Duration::from_secs(o.seconds);
    let mut rows = Vec::new();
    // Beside each berth run of a blob push: the disk's limit right then.
    let mut probes: Vec<(&str, Vec<(f64, f64)>)> = Vec::new();
    for (name, unit, run) in scenarios() {
        if !name.contains(o.filter) {
            continue;
        }
        println!("{name}...");
        let writes_blobs = name.starts_with("blob push");
        let mut beside = Vec::new();
        let (b, bs) = median_of(o.runs, unit, || {
            let probe = writes_blobs.then(|| limit_fsync_files(&dir));
            let f = run_measured(pid, || run(&bt, d))?;
            if let Some(p) = probe {
                beside.push((p, headline(unit, &f)));
            }
            Ok(f)
        })
        .unwrap_or_else(|e| panic!("berth, {name}: {e}"));
        let (r, rs) = median_of(o.runs, unit, || run_measured(registry_pid, || run(&rt, d)))
            .unwrap_or_else(|e| panic!("registry:2, {name}: {e}"));
        if writes_blobs {
            probes.push((name, beside));
        }
        rows.push((name.to_owned(), unit, b, r, bs, rs));
    }
    // Small pushes again with berth at its power-loss-safe setting.
    if "small image push, sqlite_synchronous = full".contains(o.filter) {
        println!("small image push, sqlite_synchronous = full...");
        let (full, ft) = start_berth(
            berth_bin,
            &dir,
            "berth-full",
            "[storage]\nsqlite_synchronous = \"full\"\n",
        );
        ft.authorize(&scopes()).expect("berth token");
        let unit = "images/s";
        let full_pid = full.0.id();
        let (b, bs) = median_of(o.runs, unit, || {
            run_measured(full_pid, || small_image_push(&ft, d))
        })
        .expect("berth (full)");
        let (r, rs) = median_of(o.runs, unit, || {
            run_measured(registry_pid, || small_image_push(&rt, d))
        })
        .expect("registry:2");
        rows.push((
            "small image push (16 clients), berth at sqlite_synchronous = full".into(),
            unit,
            b,
            r,
            bs,
            rs,
        ));
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

    println!(
        "\n| scenario | unit | berth | registry:2 | ratio | berth p50 / p99 ms | registry:2 p50 / p99 ms |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, unit, b, r, _, _) in &rows {
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
    println!("\nCPU per operation in the median run (ms of CPU; cores busy = CPU s / wall s), server and load generator:\n");
    println!("| scenario | berth ms/op | its load gen ms/op | cores busy (berth + gen) | registry:2 ms/op | its load gen ms/op | cores busy |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, _, b, r, _, _) in &rows {
        let per_op = |cpu: f64, f: &Figures| 1000.0 * cpu / (f.ops.max(1) as f64);
        let busy = |f: &Figures| (f.server_cpu_s + f.client_cpu_s) / f.seconds.max(1e-9);
        println!(
            "| {name} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.2} |",
            per_op(b.server_cpu_s, b),
            per_op(b.client_cpu_s, b),
            busy(b),
            per_op(r.server_cpu_s, r),
            per_op(r.client_cpu_s, r),
            busy(r)
        );
    }
    for (name, beside) in &probes {
        let each = beside
            .iter()
            .map(|(p, b)| {
                format!(
                    "{b:.0} MB/s beside {p:.0} ({:.0}%)",
                    100.0 * b / p.max(1e-9)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut ratios: Vec<f64> = beside.iter().map(|(p, b)| b / p.max(1e-9)).collect();
        ratios.sort_by(f64::total_cmp);
        let median = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
        println!(
            "\n{name}: berth against the 16 x 64 MiB fsynced-files probe run just before each run: {each}; median {:.0}%",
            100.0 * median
        );
    }
    println!("\nEach run (berth; registry:2), the table shows the median:");
    for (name, _, _, _, bs, rs) in &rows {
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("- {name}: {}; {}", fmt(bs), fmt(rs));
    }
    let wrk_rows = if "wrk".contains(o.filter) || o.filter.is_empty() {
        // A berth of its own, as nginx serves a fresh directory: the main
        // one holds every image the scenarios pushed, and its scheduled
        // tag cleanup wakes every 5 minutes.
        let (_fresh, ft) = start_berth(berth_bin, &dir, "berth-wrk", "");
        ft.authorize(&scopes()).expect("berth token");
        wrk_comparison(&dir, &ft, &rt, o)
    } else {
        Vec::new()
    };
    let idle_report = if "idle".contains(o.filter) || o.filter.is_empty() {
        Some(idle_connections(berth_bin, &dir, o))
    } else {
        None
    };

    if !wrk_rows.is_empty() {
        println!(
            "\nwrk, 1 thread, 32 connections, {} s (median of {}):\n",
            o.seconds, o.runs
        );
        println!(
            "| what | berth | registry:2 | nginx | berth / nginx | berth p99 ms | nginx p99 ms |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (what, unit, b, r, n) in &wrk_rows {
            let v = |f: &wrk::WrkFigures| f.headline(unit);
            println!(
                "| {what} ({unit}) | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2} | {:.2} |",
                v(b),
                v(r),
                v(n),
                v(b) / v(n).max(1e-9),
                b.p99_ms,
                n.p99_ms
            );
            if b.errors + r.errors + n.errors > 0 {
                println!(
                    "|  ↳ errors | {} | {} | {} | | | |",
                    b.errors, r.errors, n.errors
                );
            }
        }
    }
    if let Some(report) = idle_report {
        println!("\n{report}");
    }
    println!("\nmachine: sha256 {sha:.0} MB/s; file write + fsync {fsync:.0} MB/s; loopback TCP {lo:.0} MB/s");
    println!(
        "berth RSS: idle {} MiB; before the 1 GiB push {} MiB, peak during it {} MiB (+{} MiB), pushed at {:.0} MB/s; high-water mark of the whole run {} MiB",
        idle_rss / 1024,
        before / 1024,
        big_peak / 1024,
        big_peak.saturating_sub(before) / 1024,
        1024.0 * MIB as f64 / big_secs / 1e6,
        hwm / 1024
    );
    drop(berth);
    drop(scratch);
}

/// wrk against berth, registry:2 and nginx serving the same manifest and
/// the same 64 MiB blob: (what, unit, berth, registry:2, nginx).
fn wrk_comparison(
    dir: &Path,
    bt: &Target,
    rt: &Target,
    o: &Options,
) -> Vec<(
    &'static str,
    &'static str,
    wrk::WrkFigures,
    wrk::WrkFigures,
    wrk::WrkFigures,
)> {
    println!("wrk: manifest and 64 MiB blob from berth, registry:2 and nginx...");
    let root = dir.join("nginx-root");
    let manifest_path = "/v2/bench/wrk/manifests/v1";
    let blob = content(424_242, BIG_BLOB);
    let digest = sha256(&blob);
    let blob_path = format!("/v2/bench/wrk/blobs/{digest}");
    let mut manifest = Vec::new();
    for t in [bt, rt] {
        let conn = Conn::new(t);
        push_image(&conn, "bench/wrk", "v1", 1, 4096).expect("push the wrk image");
        conn.push_blob("bench/wrk", &blob, &digest)
            .expect("push the wrk blob");
        manifest = conn
            .send("GET", manifest_path, &[("accept", ACCEPT)], &[])
            .expect("manifest")
            .body;
    }
    // nginx serves berth's manifest bytes (both registries hold their own
    // copy of an image of the same shape and size).
    for (path, bytes) in [(manifest_path, &manifest), (blob_path.as_str(), &blob)] {
        let file = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, bytes).unwrap();
    }
    let port = free_port();
    let _nginx = match wrk::start_nginx(&root, dir, port) {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: {e}");
            return Vec::new();
        }
    };
    let nginx_url = format!("http://127.0.0.1:{port}");
    wait_up_path(&format!("{nginx_url}{manifest_path}"));
    let auth = |t: &Target| -> Vec<(&'static str, String)> {
        let mut h = vec![("Accept", ACCEPT.to_owned())];
        if let Some(a) = t.authorization() {
            h.push(("Authorization", a));
        }
        h
    };
    let mut out = Vec::new();
    for (what, unit, path) in [
        ("manifest GET", "req/s", manifest_path.to_owned()),
        ("64 MiB blob GET", "MB/s", blob_path.clone()),
    ] {
        let one = |url: &str, headers: &[(&str, String)]| {
            let mut runs: Vec<wrk::WrkFigures> = (0..o.runs.max(1))
                .map(|_| wrk::run(&format!("{url}{path}"), headers, 32, o.seconds).expect("wrk"))
                .collect();
            runs.sort_by(|a, b| a.headline(unit).total_cmp(&b.headline(unit)));
            runs[runs.len() / 2].clone()
        };
        let b = one(&bt.url, &auth(bt));
        let r = one(&rt.url, &auth(rt));
        let n = one(&nginx_url, &[]);
        out.push((what, unit, b, r, n));
    }
    out
}

fn wait_up_path(url: &str) {
    for _ in 0..400 {
        if ureq::get(url).call().is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{url} did not come up");
}

/// `o.idle` idle keep-alive connections to a berth whose limits allow
/// them: its RSS before and after, and the active clients' latency
/// (manifest GET, 32 connections) with them open.
fn idle_connections(berth_bin: &Path, dir: &Path, o: &Options) -> String {
    println!("{} idle connections...", o.idle);
    // berth keeps `max_connections` under half its descriptors (a
    // connection may hold a file too) and inherits this process's limit,
    // which an unprivileged process cannot raise past the hard one.
    let open_files = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    let can_hold = (open_files.saturating_sub(256) / 2).saturating_sub(200);
    let idle = o.idle.min(can_hold);
    let clamp = (idle < o.idle).then(|| {
        format!(
            " ({} asked; berth can hold {can_hold} beside active clients under this machine's hard limit of {open_files} open files, 2 per connection)",
            o.idle
        )
    });
    let (berth, t) = start_berth(
        berth_bin,
        dir,
        "berth-idle",
        &format!(
            "[limits]\nmax_connections = {}\nmax_connections_per_address = 0\nheader_timeout = \"300s\"\n",
            idle + 1024
        ),
    );
    t.authorize(&scopes()).expect("berth token");
    let pid = berth.0.id();
    let d = Duration::from_secs(o.seconds);
    let quiet = match manifest_get(&t, d) {
        Ok(f) => f,
        Err(e) => return format!("idle connections: manifest GET failed: {e}"),
    };
    let before = rss_kib(pid, "VmRSS:");
    let addr = t.url.trim_start_matches("http://").to_owned();
    let opened_at = Instant::now();
    let (conns, failure) = idle::open_idle(&addr, idle);
    let opened_in = opened_at.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid, "VmRSS:");
    let busy = manifest_get(&t, d);
    let held = conns.len();
    drop(conns);
    let busy = match busy {
        Ok(f) => f,
        Err(e) => {
            let log = std::fs::read_to_string(dir.join("berth-idle.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return format!(
                "{held} idle connections: berth RSS {} -> {} MiB; then manifest GET failed: {e}; berth's log ends: {tail:?}",
                before / 1024,
                after / 1024,
            );
        }
    };
    format!(
        "{held} idle keep-alive connections{}{} (opened in {:.1} s): berth RSS {} -> {} MiB, {:.1} KiB per connection; \
         manifest GET at 32 connections: {:.0} req/s, p99 {:.2} ms without them, {:.0} req/s, p99 {:.2} ms with them",
        clamp.unwrap_or_default(),
        failure.map(|f| format!(" (stopped: {f})")).unwrap_or_default(),
        opened_in.as_secs_f64(),
        before / 1024,
        after / 1024,
        after.saturating_sub(before) as f64 / held.max(1) as f64,
        quiet.per_second,
        quiet.p99_ms,
        busy.per_second,
        busy.p99_ms
    )
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
            runs,
            idle,
        } => compare(
            &berth,
            &registry,
            &Options {
                seconds,
                filter: &filter,
                runs,
                idle,
            },
        ),
    }
}
