//! The request-rate scenarios' driver: one async client thread keeping
//! `conns` HTTP/1.1 keep-alive connections busy. A thread per connection
//! (the blocking client) spent more CPU than the server under test on a
//! 2-core machine; this spends a fraction of one core.

use crate::load::{micros_since, Figures, Target};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::time::{Duration, Instant};

/// Waits for every connection's task; their latencies and error counts.
async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<u32>, u64)>>) -> (Vec<u32>, u64) {
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    (all, errors)
}

/// Sends `method path` on `conns` connections for `duration`; 200 is success.
pub fn hammer(
    target: &Target,
    method: &'static str,
    path: &str,
    accept: Option<&'static str>,
    conns: usize,
    duration: Duration,
) -> Figures {
    let host = target.url.trim_start_matches("http://").to_owned();
    let auth = target.authorization();
    let path = path.to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let tasks: Vec<_> = (0..conns)
            .map(|_| {
                let (host, auth, path) = (host.clone(), auth.clone(), path.clone());
                tokio::spawn(async move {
                    let mut lat: Vec<u32> = Vec::new();
                    let mut errors = 0u64;
                    let stream = match tokio::net::TcpStream::connect(&host).await {
                        Ok(s) => s,
                        Err(_) => return (lat, 1),
                    };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut sender, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                    else {
                        return (lat, 1);
                    };
                    tokio::spawn(conn);
                    while Instant::now() < deadline {
                        let mut req = Request::builder()
                            .method(method)
                            .uri(path.as_str())
                            .header("host", host.as_str());
                        if let Some(a) = accept {
                            req = req.header("accept", a);
                        }
                        if let Some(a) = &auth {
                            req = req.header("authorization", a.as_str());
                        }
                        let req = req.body(Empty::<Bytes>::new()).expect("request");
                        let t0 = Instant::now();
                        match sender.send_request(req).await {
                            Ok(resp) => {
                                let ok = resp.status() == 200;
                                let body = resp.into_body().collect().await;
                                if ok && body.is_ok() {
                                    lat.push(micros_since(t0));
                                } else {
                                    errors += 1;
                                }
                            }
                            Err(_) => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let (all, errors) = gather(tasks).await;
        Figures::from_latencies(all, errors, started.elapsed().as_secs_f64(), 0)
    })
}

/// Small-image pushes (config + `layer_size` layer + manifest, each blob by
/// POST then PUT with the body) from `clients` connections on one async
/// thread, for `duration`. Latency is per image.
pub fn push_images(
    target: &Target,
    clients: usize,
    layer_size: usize,
    duration: Duration,
) -> Figures {
    use http_body_util::Full;
    let host = target.url.trim_start_matches("http://").to_owned();
    let auth = target.authorization();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|t| {
                let (host, auth) = (host.clone(), auth.clone());
                tokio::spawn(async move {
                    let (mut lat, mut errors) = (Vec::<u32>::new(), 0u64);
                    let Ok(stream) = tokio::net::TcpStream::connect(&host).await else { return (lat, 1) };
                    let _ = stream.set_nodelay(true);
                    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await else {
                        return (lat, 1);
                    };
                    tokio::spawn(conn);
                    let repo = format!("bench/push{t}");
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        i += 1;
                        let seed = run ^ ((t as u64) << 40) ^ i;
                        let t0 = Instant::now();
                        let mut send = async |method: &str, uri: String, ctype: Option<&str>, body: Bytes| -> Result<(u16, Option<String>), ()> {
                            let mut req = Request::builder().method(method).uri(uri).header("host", host.as_str());
                            if let Some(c) = ctype {
                                req = req.header("content-type", c);
                            }
                            if let Some(a) = &auth {
                                req = req.header("authorization", a.as_str());
                            }
                            let resp = sender.send_request(req.body(Full::new(body)).map_err(|_| ())?).await.map_err(|_| ())?;
                            let status = resp.status().as_u16();
                            let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
                            resp.into_body().collect().await.map_err(|_| ())?;
                            Ok((status, location))
                        };
                        let config = Bytes::from(format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[]}}}}"));
                        let layer = Bytes::from(crate::load::content(seed, layer_size));
                        let (cd, ld) = (crate::load::sha256(&config), crate::load::sha256(&layer));
                        let mut ok = true;
                        for (blob, digest) in [(&config, &cd), (&layer, &ld)] {
                            let started = send("POST", format!("/v2/{repo}/blobs/uploads/"), None, Bytes::new()).await;
                            let Ok((202, Some(loc))) = started else { ok = false; break };
                            let path = loc.strip_prefix(&format!("http://{host}")).unwrap_or(&loc).to_owned();
                            let sep = if path.contains('?') { '&' } else { '?' };
                            if !matches!(send("PUT", format!("{path}{sep}digest={digest}"), Some("application/octet-stream"), blob.clone()).await, Ok((201, _))) {
                                ok = false;
                                break;
                            }
                        }
                        if ok {
                            let manifest = serde_json::to_vec(&serde_json::json!({
                                "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
                                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}]
                            }))
                            .expect("json");
                            ok = matches!(
                                send("PUT", format!("/v2/{repo}/manifests/t{i}"), Some("application/vnd.oci.image.manifest.v1+json"), Bytes::from(manifest)).await,
                                Ok((201, _))
                            );
                        }
                        if ok {
                            lat.push(micros_since(t0));
                        } else {
                            errors += 1;
                            break;
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let (all, errors) = gather(tasks).await;
        Figures::from_latencies(all, errors, started.elapsed().as_secs_f64(), layer_size as u64)
    })
}
