//! The static-file baseline: wrk (Debian's `wrk`, an efficient C client:
//! one thread, 32 connections) against berth, registry:2 and nginx
//! (Debian's, one worker, `sendfile on`: the practical HTTP/1.1 limit on
//! this machine) serving the same manifest and the same 64 MiB blob.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// What one wrk run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WrkFigures {
    pub per_second: f64,
    pub mb_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx answers and socket errors.
    pub errors: u64,
}

impl WrkFigures {
    /// The figure a scenario is judged by, as `headline` for the other
    /// scenarios: MB/s for transfers, requests per second otherwise.
    pub fn headline(&self, unit: &str) -> f64 {
        if unit == "MB/s" {
            self.mb_per_second
        } else {
            self.per_second
        }
    }
}

/// Runs wrk against `url` for `seconds` with `conns` connections on one
/// thread, sending `headers`.
pub fn run(
    url: &str,
    headers: &[(&str, String)],
    conns: usize,
    seconds: u64,
) -> Result<WrkFigures, String> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd
        .arg(url)
        .output()
        .map_err(|e| format!("wrk (Debian package wrk) could not run: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse(&text).ok_or_else(|| format!("wrk's output not understood:\n{text}"))
}

/// Reads wrk's report (`--latency`).
fn parse(text: &str) -> Option<WrkFigures> {
    let value_after = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_owned()))
    };
    let per_second = value_after("Requests/sec:")?.parse().ok()?;
    let mb_per_second = bytes(&value_after("Transfer/sec:")?)? / 1e6;
    let pct = |p: &str| value_after(p).and_then(|v| millis(&v));
    let mut errors = value_after("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(socket) = value_after("Socket errors:") {
        errors += socket
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(WrkFigures {
        per_second,
        mb_per_second,
        p50_ms: pct("50%")?,
        p99_ms: pct("99%")?,
        errors,
    })
}

/// `412.00us`, `1.94ms`, `1.02s` in milliseconds.
fn millis(v: &str) -> Option<f64> {
    let v = v.trim();
    for (unit, factor) in [("us", 1e-3), ("ms", 1.0), ("m", 60_000.0), ("s", 1000.0)] {
        if let Some(n) = v.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    None
}

/// wrk's `3.12GB`, `123.45MB`, `980KB`, `12B` (powers of 1024) in bytes.
fn bytes(v: &str) -> Option<f64> {
    let v = v.trim();
    for (unit, factor) in [
        ("TB", 1024f64.powi(4)),
        ("GB", 1024f64.powi(3)),
        ("MB", 1024f64.powi(2)),
        ("KB", 1024.0),
        ("B", 1.0),
    ] {
        if let Some(n) = v.strip_suffix(unit) {
            return n.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    None
}

/// nginx's master and its worker, stopped together when dropped. They run
/// in a process group of their own: killing only the master left the
/// worker running, one more stray nginx after every `compare`.
pub struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        match i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the negated id signals the process group
            // this nginx leads (`process_group(0)` below); it touches no
            // memory of this process.
            Ok(group) => unsafe {
                libc::kill(-group, libc::SIGKILL);
            },
            // Not a pid Linux hands out; the master at least.
            Err(_) => {
                let _ = self.0.kill();
            }
        }
        let _ = self.0.wait();
    }
}

/// nginx serving `root` on `port`: one worker, sendfile, keep-alive
/// without a request cap, manifests with the manifest media type.
pub fn start_nginx(root: &Path, dir: &Path, port: u16) -> Result<Nginx, String> {
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log stderr error;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
               default_type application/octet-stream;\n\
               client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n  fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n  scgi_temp_path {tmp}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {root};\n\
                 location ~ /manifests/ {{ default_type application/vnd.oci.image.manifest.v1+json; }}\n  }}\n}}\n",
            pid = dir.join("nginx.pid").display(),
            tmp = dir.display(),
            root = root.display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let nginx = ["/usr/sbin/nginx", "nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists() || *p == "nginx")
        .unwrap_or("nginx");
    let child = Command::new(nginx)
        .arg("-c")
        .arg(&config)
        .arg("-e")
        .arg("stderr")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("nginx (Debian package nginx-light) could not start: {e}"))?;
    Ok(Nginx(child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrks_report() {
        let text = "Running 5s test @ http://127.0.0.1:1/v2/x\n  1 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   386.21us  120.00us   5.00ms   90.00%\n  Latency Distribution\n     50%  361.00us\n     75%  420.00us\n     90%  510.00us\n     99%    1.23ms\n  412345 requests in 5.00s, 1.50GB read\n  Non-2xx or 3xx responses: 3\nRequests/sec:  82469.00\nTransfer/sec:    307.20MB\n";
        let f = parse(text).unwrap();
        assert_eq!(f.per_second, 82469.0);
        assert!((f.mb_per_second - 307.2 * 1.048576).abs() < 0.01);
        assert!((f.p50_ms - 0.361).abs() < 1e-9 && (f.p99_ms - 1.23).abs() < 1e-9);
        assert_eq!(f.errors, 3);
    }
}
