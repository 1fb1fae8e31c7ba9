//! The scenarios: each drives a registry over HTTP and returns what it
//! measured. Blocking clients on threads (ureq, keep-alive), so the figures
//! include a real client's per-request work.

use berth_conformance::client::parse_challenge;
use sha2::{Digest as _, Sha256};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ureq::http;

pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Where the registry is and how to authenticate.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub credentials: Option<(String, String)>,
    /// Bearer token (fetched from the registry's realm) or Basic, per scope.
    auth: Arc<std::sync::Mutex<Option<String>>>,
}

/// Figures of one scenario.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub ops: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub mb_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// CPU seconds (user + system) the server and this load generator
    /// used during the run; filled in by `compare`, 0 elsewhere.
    pub server_cpu_s: f64,
    pub client_cpu_s: f64,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections_per_host(256)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

impl Figures {
    /// Figures of `ops` successful operations (their latencies in
    /// microseconds) and `errors` failed ones over `seconds`.
    pub fn from_latencies(
        mut lat_us: Vec<u32>,
        errors: u64,
        seconds: f64,
        bytes_per_op: u64,
    ) -> Figures {
        lat_us.sort_unstable();
        let pct = |p: f64| {
            if lat_us.is_empty() {
                0.0
            } else {
                lat_us[((lat_us.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
            }
        };
        let ops = lat_us.len() as u64;
        Figures {
            ops,
            seconds,
            per_second: ops as f64 / seconds,
            mb_per_second: (ops * bytes_per_op) as f64 / seconds / 1e6,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            errors,
            ..Figures::default()
        }
    }
}

/// Microseconds since `t0`, as latencies are kept.
pub fn micros_since(t0: Instant) -> u32 {
    t0.elapsed().as_micros().min(u32::MAX as u128) as u32
}

impl Target {
    pub fn new(url: &str, credentials: Option<(String, String)>) -> Target {
        Target {
            url: url.trim_end_matches('/').to_owned(),
            credentials,
            auth: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// Gets a token covering `scopes` if the registry asks for one.
    pub fn authorize(&self, scopes: &[String]) -> Result<(), String> {
        let a = agent();
        let r = a
            .get(&format!("{}/v2/", self.url))
            .call()
            .map_err(|e| e.to_string())?;
        if r.status() != 401 {
            return Ok(());
        }
        let challenge = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let basic = self.credentials.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    format!("{u}:{p}")
                )
            )
        });
        if challenge.starts_with("Basic") {
            *self.auth.lock().unwrap() = basic;
            return Ok(());
        }
        let params = parse_challenge(challenge.trim_start_matches("Bearer "));
        let param = |k: &str| params.get(k).cloned().unwrap_or_default();
        let mut url = format!("{}?service={}", param("realm"), param("service"));
        for s in scopes {
            url.push_str(&format!("&scope={s}"));
        }
        let mut req = a.get(&url);
        if let Some(b) = &basic {
            req = req.header("authorization", b);
        }
        let mut r = req.call().map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_slice(&r.body_mut().read_to_vec().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .ok_or("no token in the token reply")?;
        *self.auth.lock().unwrap() = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// The Authorization header value in use, if any.
    pub fn authorization(&self) -> Option<String> {
        self.auth.lock().unwrap().clone()
    }

    fn request(&self, method: &str, path: &str) -> http::request::Builder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.url)
        };
        let mut b = http::Request::builder().method(method).uri(url);
        if let Some(a) = self.auth.lock().unwrap().as_ref() {
            b = b.header("authorization", a);
        }
        b
    }
}

/// A client bound to one target, for one thread.
pub struct Conn {
    target: Target,
    agent: ureq::Agent,
}

pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

impl Conn {
    pub fn new(target: &Target) -> Conn {
        Conn {
            target: target.clone(),
            agent: agent(),
        }
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, String> {
        let mut b = self.target.request(method, path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = self
            .agent
            .run(b.body(body).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            r.body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_vec()
                .map_err(|e| e.to_string())?
        };
        Ok(Reply {
            status,
            location,
            body,
        })
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http") {
            location.to_owned()
        } else {
            format!("{}{location}", self.target.url)
        }
    }

    /// Starts an upload; returns its Location.
    fn start_upload(&self, repo: &str) -> Result<String, String> {
        let r = self.send("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])?;
        r.location
            .filter(|_| r.status == 202)
            .ok_or_else(|| format!("upload start: HTTP {}", r.status))
    }

    /// Closes the upload at `loc` with `digest`, sending `body` as its last
    /// bytes (empty when everything was PATCHed); 201 is success.
    fn close_upload(&self, loc: &str, digest: &str, body: &[u8]) -> Result<(), String> {
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self.send(
            "PUT",
            &format!("{}{sep}digest={digest}", self.absolute(loc)),
            &[("content-type", "application/octet-stream")],
            body,
        )?;
        if r.status != 201 {
            return Err(format!(
                "closing PUT: HTTP {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        Ok(())
    }

    /// POST + PUT with the whole blob.
    pub fn push_blob(&self, repo: &str, bytes: &[u8], digest: &str) -> Result<(), String> {
        let loc = self.start_upload(repo)?;
        self.close_upload(&loc, digest, bytes)
    }

    /// POST, PATCH chunks with Content-Range, final PUT.
    pub fn push_blob_chunked(
        &self,
        repo: &str,
        bytes: &[u8],
        digest: &str,
        chunk: usize,
    ) -> Result<(), String> {
        let mut loc = self.start_upload(repo)?;
        for (i, part) in bytes.chunks(chunk).enumerate() {
            let start = i * chunk;
            let range = format!("{start}-{}", start + part.len() - 1);
            let len = part.len().to_string();
            let r = self.send(
                "PATCH",
                &self.absolute(&loc),
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-range", &range),
                    ("content-length", &len),
                ],
                part,
            )?;
            loc = r
                .location
                .filter(|_| r.status == 202)
                .ok_or_else(|| format!("chunk PATCH: HTTP {}", r.status))?;
        }
        self.close_upload(&loc, digest, &[])
    }

    /// POST, then one streamed PATCH of `total` generated bytes (hashed on
    /// the way), then PUT with the digest: a 1 GiB push without 1 GiB of
    /// client memory.
    pub fn push_streamed(&self, repo: &str, total: u64) -> Result<(), String> {
        struct Gen {
            left: u64,
            state: u64,
            hasher: Arc<std::sync::Mutex<Sha256>>,
        }
        impl Read for Gen {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = (buf.len() as u64).min(self.left) as usize;
                for b in buf[..n].iter_mut() {
                    self.state = self
                        .state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *b = (self.state >> 56) as u8;
                }
                self.hasher.lock().unwrap().update(&buf[..n]);
                self.left -= n as u64;
                Ok(n)
            }
        }
        let loc = self.start_upload(repo)?;
        let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
        let gen = Gen {
            left: total,
            state: 42,
            hasher: hasher.clone(),
        };
        let req = self
            .target
            .request("PATCH", &self.absolute(&loc))
            .header("content-type", "application/octet-stream")
            .body(ureq::SendBody::from_owned_reader(gen))
            .map_err(|e| e.to_string())?;
        let mut r = self.agent.run(req).map_err(|e| e.to_string())?;
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or("PATCH without Location")?;
        let _ = r.body_mut().read_to_vec();
        let digest = format!("sha256:{:x}", hasher.lock().unwrap().clone().finalize());
        self.close_upload(&loc, &digest, &[])
    }
}

/// Deterministic pseudo-random bytes, eight per xorshift step: the load
/// generator shares the machine's cores with the registry it measures,
/// and one byte per step was a quarter of its CPU in small pushes (a 16
/// KiB layer per image).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut bytes = Vec::with_capacity(len.next_multiple_of(8));
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// A small image: config, one layer of `layer_size`, manifest under `tag`.
pub fn push_image(
    conn: &Conn,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_size: usize,
) -> Result<String, String> {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[]}}}}").into_bytes();
    let layer = content(seed, layer_size);
    let (cd, ld) = (sha256(&config), sha256(&layer));
    conn.push_blob(repo, &config, &cd)?;
    conn.push_blob(repo, &layer, &ld)?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}]
    }))
    .unwrap();
    let r = conn.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    )?;
    if r.status != 201 {
        return Err(format!(
            "manifest PUT: HTTP {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    Ok(sha256(&manifest))
}

/// Runs `op` on `threads` threads for `duration`, collecting latencies.
pub fn timed<F>(
    target: &Target,
    threads: usize,
    duration: Duration,
    bytes_per_op: u64,
    op: F,
) -> Figures
where
    F: Fn(&Conn, usize, u64) -> Result<(), String> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, stop, target) = (op.clone(), stop.clone(), target.clone());
            std::thread::spawn(move || {
                let conn = Conn::new(&target);
                let (mut lat, mut errors, mut i) = (Vec::new(), 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match op(&conn, t, i) {
                        Ok(()) => lat.push(micros_since(t0)),
                        Err(e) => {
                            if errors == 0 {
                                eprintln!("bench: {e}");
                            }
                            errors += 1;
                        }
                    }
                    i += 1;
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().unwrap();
        all.extend(l);
        errors += e;
    }
    Figures::from_latencies(all, errors, started.elapsed().as_secs_f64(), bytes_per_op)
}
