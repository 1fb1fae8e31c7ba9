//! A faithful stand-in for the Cloud Native Buildpacks lifecycle's
//! `creator`, for tests on machines where the real (Go) lifecycle cannot be
//! installed. It accepts the same flags and environment, packs the app dir
//! into a real gzip tar layer on top of the run image it reads from the
//! registry, writes an image config with the buildpacks labels, and replays
//! the exporter's HTTP sequence (shared/reference/cnb-lifecycle.md): ping
//! and token, tag HEAD, 4 parallel blob uploads with mount POSTs for the run
//! image's layers, one PATCH without Content-Range, an empty PUT, the
//! manifest PUT, then report.toml. Nothing in berth special-cases it.

use berth_conformance::client::parse_challenge;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use ureq::http;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

struct Args {
    flags: HashMap<String, Vec<String>>,
    images: Vec<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut flags: HashMap<String, Vec<String>> = HashMap::new();
        let mut images = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix('-') {
                let name = name.trim_start_matches('-').to_owned();
                let value = it
                    .next()
                    .ok_or_else(|| format!("flag -{name} needs a value"))?;
                flags.entry(name).or_default().push(value);
            } else {
                images.push(a);
            }
        }
        Ok(Args { flags, images })
    }

    fn one(&self, name: &str) -> Result<String, String> {
        self.flags
            .get(name)
            .and_then(|v| v.last().cloned())
            .ok_or_else(|| format!("missing -{name}"))
    }
}

/// `host:port/repo/path:tag` split into host, repository and tag.
fn split_image(image: &str) -> Result<(String, String, String), String> {
    let (host, rest) = image
        .split_once('/')
        .ok_or_else(|| format!("image {image:?} has no registry host"))?;
    let (repo, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
    Ok((host.to_owned(), repo.to_owned(), tag.to_owned()))
}

struct Registry {
    agent: ureq::Agent,
    base: String,
    auth: Option<String>,
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| {
                v["errors"][0]["message"]
                    .as_str()
                    .map(|m| format!("{}: {m}", v["errors"][0]["code"].as_str().unwrap_or("?")))
            })
            .unwrap_or_else(|| {
                format!(
                    "HTTP {} {}",
                    self.status,
                    String::from_utf8_lossy(&self.body)
                )
            })
    }
}

impl Registry {
    fn send(
        &self,
        method: &str,
        path_or_url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let mut b = http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(a) = &self.auth {
            b = b.header("authorization", a);
        }
        let mut r = self
            .agent
            .run(b.body(body).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
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
            headers,
            body,
        })
    }

    /// Ping and, for Basic credentials, the token exchange the challenge
    /// asks for (a Bearer value is sent as it is).
    fn login(&mut self, scope: &str) -> Result<(), String> {
        let ping = self.send("GET", "/v2/", &[], Vec::new())?;
        if ping.status != 401
            || !self
                .auth
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic "))
        {
            return Ok(());
        }
        let challenge = ping
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let params = parse_challenge(challenge.trim_start_matches("Bearer "));
        let param = |k: &str| params.get(k).cloned().unwrap_or_default();
        let url = format!(
            "{}?service={}&scope={scope}",
            param("realm"),
            param("service")
        );
        let r = self.send("GET", &url, &[], Vec::new())?;
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("token reply: {e}"))?;
        let token = v["token"]
            .as_str()
            .or(v["access_token"].as_str())
            .ok_or("token reply has no token")?;
        self.auth = Some(format!("Bearer {token}"));
        Ok(())
    }
}

fn tar_gz(root: &Path, prefix: &str) -> Result<(Vec<u8>, String), String> {
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        b.mode(tar::HeaderMode::Deterministic);
        b.follow_symlinks(false);
        b.append_dir_all(prefix, root)
            .map_err(|e| format!("packing {}: {e}", root.display()))?;
        b.finish().map_err(|e| e.to_string())?;
    }
    let diff_id = sha256(&tar_bytes);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_bytes).map_err(|e| e.to_string())?;
    Ok((gz.finish().map_err(|e| e.to_string())?, diff_id))
}

/// The CAs trusted for https, found the way Go's crypto/x509 finds them on
/// Linux (what the real lifecycle uses): the first readable bundle of
/// Go's list, or `SSL_CERT_FILE` instead; plus every file in Go's
/// directories, or in those `SSL_CERT_DIR` (colon-separated) names instead.
fn system_roots() -> ureq::tls::RootCerts {
    const FILES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/pki/tls/cacert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    const DIRS: &[&str] = &["/etc/ssl/certs", "/etc/pki/tls/certs"];
    let files: Vec<PathBuf> = match std::env::var_os("SSL_CERT_FILE") {
        Some(f) if !f.is_empty() => vec![f.into()],
        _ => FILES.iter().map(PathBuf::from).collect(),
    };
    let dirs: Vec<PathBuf> = match std::env::var("SSL_CERT_DIR") {
        Ok(d) if !d.is_empty() => d.split(':').map(PathBuf::from).collect(),
        _ => DIRS.iter().map(PathBuf::from).collect(),
    };
    let mut pems: Vec<Vec<u8>> = files
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .into_iter()
        .collect();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                pems.push(bytes);
            }
        }
    }
    let mut certs = Vec::new();
    for pem in &pems {
        for item in ureq::tls::parse_pem(pem).flatten() {
            if let ureq::tls::PemItem::Certificate(c) = item {
                certs.push(c);
            }
        }
    }
    // Best effort, as in Go: with none found plain http still works and
    // https fails verification.
    ureq::tls::RootCerts::new_with_certs(&certs)
}

struct Blob {
    digest: String,
    bytes: Option<Vec<u8>>, // None: a run-image layer to mount
}

fn export(args: &Args) -> Result<(), String> {
    let output = args.images.first().ok_or("no output image given")?.clone();
    let (host, repo, tag) = split_image(&output)?;
    let (run_host, run_repo, run_tag) = split_image(&args.one("run-image")?)?;
    if run_host != host {
        return Err("the run image must be in the output registry".into());
    }
    let insecure = args
        .flags
        .get("insecure-registry")
        .is_some_and(|v| v.iter().any(|h| h == &host));
    let auth: HashMap<String, String> = match std::env::var("CNB_REGISTRY_AUTH") {
        Ok(j) => {
            serde_json::from_str(&j).map_err(|e| format!("CNB_REGISTRY_AUTH is not JSON: {e}"))?
        }
        Err(_) => HashMap::new(),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(system_roots())
                .build(),
        )
        .build()
        .into();
    let mut reg = Registry {
        agent,
        base: format!("{}://{host}", if insecure { "http" } else { "https" }),
        auth: auth.get(&host).cloned(),
    };
    reg.login(&format!(
        "repository:{repo}:push,pull&scope=repository:{run_repo}:pull"
    ))?;

    println!("===> ANALYZING");
    let head = reg.send(
        "HEAD",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[("accept", ACCEPT)],
        Vec::new(),
    )?;
    match head.status {
        200 => {
            for h in ["content-type", "content-length", "docker-content-digest"] {
                if !head.headers.contains_key(h) {
                    return Err(format!("previous image HEAD lacks {h}"));
                }
            }
            println!("Previous image with name {output:?} found");
        }
        404 => println!("Previous image with name {output:?} not found"),
        _ => {
            return Err(format!(
                "checking the previous image: {}",
                head.error_message()
            ))
        }
    }
    let run = reg.send(
        "GET",
        &format!("/v2/{run_repo}/manifests/{run_tag}"),
        &[("accept", ACCEPT)],
        Vec::new(),
    )?;
    if run.status != 200 {
        return Err(format!(
            "reading run image {run_repo}:{run_tag}: {}",
            run.error_message()
        ));
    }
    let run_manifest: serde_json::Value =
        serde_json::from_slice(&run.body).map_err(|e| e.to_string())?;
    let run_type = run
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(OCI_MANIFEST)
        .to_owned();
    let config_digest = run_manifest["config"]["digest"]
        .as_str()
        .ok_or("run image has no config")?;
    let run_config = reg.send(
        "GET",
        &format!("/v2/{run_repo}/blobs/{config_digest}"),
        &[],
        Vec::new(),
    )?;
    if run_config.status != 200 || sha256(&run_config.body) != config_digest {
        return Err(format!(
            "reading the run image config: {}",
            run_config.error_message()
        ));
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&run_config.body).map_err(|e| e.to_string())?;

    println!("===> DETECTING");
    let app = PathBuf::from(args.one("app")?);
    println!("1 of 1 buildpacks participating: berth/stand-in 0.0.1");
    println!("===> BUILDING");
    let (app_layer, app_diff) = tar_gz(&app, "workspace")?;
    let launch = std::env::temp_dir().join(format!("cnb-standin-{}", std::process::id()));
    std::fs::create_dir_all(launch.join("process")).map_err(|e| e.to_string())?;
    std::fs::write(
        launch.join("process").join("web"),
        "#!/bin/sh\nexec /workspace/start\n",
    )
    .map_err(|e| e.to_string())?;
    let (launch_layer, launch_diff) = tar_gz(&launch, "cnb")?;
    let _ = std::fs::remove_dir_all(&launch);
    if let Ok(cache) = args.one("cache-dir") {
        let marker = Path::new(&cache).join("builds");
        let n: u64 = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let _ = std::fs::write(&marker, format!("{}\n", n + 1));
        println!("cache {cache}: {} earlier build(s)", n);
    }

    println!("===> EXPORTING");
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or("run image config has no rootfs.diff_ids")?;
    diff_ids.push(app_diff.clone().into());
    diff_ids.push(launch_diff.clone().into());
    let labels = serde_json::json!({
        "io.buildpacks.lifecycle.metadata": serde_json::json!({"app": [{"sha": app_diff}], "runImage": {"reference": format!("{run_repo}:{run_tag}")}}).to_string(),
        "io.buildpacks.build.metadata": serde_json::json!({"buildpacks": [{"id": "berth/stand-in", "version": "0.0.1"}], "launcher": {"version": "stand-in"}}).to_string(),
        "io.buildpacks.project.metadata": serde_json::json!({"source": {"type": "git", "metadata": {}}}).to_string(),
    });
    let c = config["config"]
        .as_object_mut()
        .ok_or("run image config has no config")?;
    let merged = c.entry("Labels").or_insert_with(|| serde_json::json!({}));
    for (k, v) in labels.as_object().expect("object") {
        merged[k] = v.clone();
    }
    c.insert("Entrypoint".into(), serde_json::json!(["/cnb/process/web"]));
    c.insert("WorkingDir".into(), "/workspace".into());
    let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let docker = run_type == DOCKER_MANIFEST;
    let mut layers: Vec<serde_json::Value> = run_manifest["layers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for l in [&app_layer, &launch_layer] {
        // New layers carry the Docker layer type even under an OCI manifest,
        // as the lifecycle does.
        layers.push(
            serde_json::json!({"mediaType": DOCKER_LAYER, "digest": sha256(l), "size": l.len()}),
        );
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": if docker { DOCKER_MANIFEST } else { OCI_MANIFEST },
        "config": {"mediaType": if docker { DOCKER_CONFIG } else { OCI_CONFIG }, "digest": sha256(&config_bytes), "size": config_bytes.len()},
        "layers": layers,
    }))
    .map_err(|e| e.to_string())?;

    let mut blobs: Vec<Blob> = run_manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| Blob {
            digest: l["digest"].as_str().unwrap_or_default().to_owned(),
            bytes: None,
        })
        .collect();
    for b in [app_layer, launch_layer, config_bytes] {
        blobs.push(Blob {
            digest: sha256(&b),
            bytes: Some(b),
        });
    }
    let queue = Arc::new(Mutex::new(blobs));
    let reg = Arc::new(reg);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (queue, reg, repo, run_repo) =
                (queue.clone(), reg.clone(), repo.clone(), run_repo.clone());
            std::thread::spawn(move || -> Result<(), String> {
                loop {
                    let Some(blob) = queue.lock().expect("queue").pop() else {
                        return Ok(());
                    };
                    upload(&reg, &repo, &run_repo, blob)?;
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| "an upload thread panicked".to_string())??;
    }
    let r = reg.send(
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        &[(
            "content-type",
            if docker {
                DOCKER_MANIFEST
            } else {
                OCI_MANIFEST
            },
        )],
        manifest.clone(),
    )?;
    if r.status != 201 {
        return Err(format!("saving {output}: {}", r.error_message()));
    }
    let digest = sha256(&manifest);
    println!("*** Images ({}):", &digest[7..19]);
    println!("      {output}");
    let report = format!(
        "[image]\ntags = [\"{output}\"]\ndigest = \"{digest}\"\nmanifest-size = {}\n",
        manifest.len()
    );
    std::fs::write(args.one("report")?, report).map_err(|e| format!("writing report.toml: {e}"))?;
    Ok(())
}

/// HEAD, then POST (mounting run-image layers), one PATCH with the whole
/// blob and no Content-Range, and an empty closing PUT that must give 201.
fn upload(reg: &Registry, repo: &str, run_repo: &str, blob: Blob) -> Result<(), String> {
    let head = reg.send(
        "HEAD",
        &format!("/v2/{repo}/blobs/{}", blob.digest),
        &[],
        Vec::new(),
    )?;
    if head.status == 200 {
        println!("Reusing layer {}", blob.digest);
        return Ok(());
    }
    let Some(bytes) = blob.bytes else {
        let r = reg.send(
            "POST",
            &format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={run_repo}",
                blob.digest
            ),
            &[],
            Vec::new(),
        )?;
        if r.status == 201 {
            println!("Mounted layer {} from {run_repo}", blob.digest);
            return Ok(());
        }
        if r.status != 202 {
            return Err(format!("mounting {}: {}", blob.digest, r.error_message()));
        }
        return Err(format!(
            "run image layer {} could not be mounted and is not available to upload",
            blob.digest
        ));
    };
    let r = reg.send(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        Vec::new(),
    )?;
    if r.status != 202 {
        return Err(format!(
            "starting the upload of {}: {}",
            blob.digest,
            r.error_message()
        ));
    }
    let location = r
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("upload start without Location")?
        .to_owned();
    let r = reg.send(
        "PATCH",
        &location,
        &[("content-type", "application/octet-stream")],
        bytes,
    )?;
    if r.status != 202 {
        return Err(format!("uploading {}: {}", blob.digest, r.error_message()));
    }
    let location = r
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("PATCH without Location")?
        .to_owned();
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = reg.send(
        "PUT",
        &format!("{location}{sep}digest={}", blob.digest),
        &[],
        Vec::new(),
    )?;
    if r.status != 201 {
        return Err(format!("committing {}: {}", blob.digest, r.error_message()));
    }
    println!("Uploaded layer {}", blob.digest);
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var("CNB_PLATFORM_API")
        .map(|v| v.is_empty())
        .unwrap_or(true)
    {
        eprintln!("ERROR: CNB_PLATFORM_API must be set");
        return ExitCode::from(11);
    }
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ERROR: {e}");
            return ExitCode::from(1);
        }
    };
    match export(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: failed to export: {e}");
            ExitCode::from(62)
        }
    }
}
