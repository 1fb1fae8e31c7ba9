//! Owns connections: the accept loop, the connection limits (overall and
//! per client address), hyper's HTTP/1.1 settings, request-body pacing and
//! graceful shutdown. Everything that wraps a connection (TLS, limits)
//! happens here, once, before a request reaches `handle`.

use crate::request_body::{BodyPace, RequestBody};
use crate::State;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Connection-level limits (`[limits]` in the config).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections overall; past it new ones get a 503 and are closed.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64); 0 = no limit
    /// (for a registry behind a proxy, where every client has its address).
    pub max_connections_per_address: usize,
    /// Time a client has to send a request's headers, and that an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    pub body_pace: BodyPace,
    /// Largest request head (line and headers) read into memory.
    pub max_header_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            max_connections_per_address: 128,
            header_timeout: Duration::from_secs(30),
            body_pace: BodyPace::default(),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Open connections, overall and by client address.
#[derive(Default)]
struct ConnectionCounts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Which limit turned a connection away.
enum Refusal {
    Total(usize),
    Address(usize),
}

/// Counts a connection while it lives.
struct ConnectionSlot {
    counts: Arc<Mutex<ConnectionCounts>>,
    key: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.by_address.remove(&self.key);
            }
        }
    }
}

/// The unit a per-address limit counts: the address itself for IPv4, its
/// /64 for IPv6 (one subscriber usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

fn admit(
    counts: &Arc<Mutex<ConnectionCounts>>,
    limits: &ConnectionLimits,
    peer: IpAddr,
) -> Result<ConnectionSlot, Refusal> {
    let key = address_key(peer);
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if c.total >= limits.max_connections {
        return Err(Refusal::Total(limits.max_connections));
    }
    let mine = c.by_address.get(&key).copied().unwrap_or(0);
    if limits.max_connections_per_address > 0 && mine >= limits.max_connections_per_address {
        return Err(Refusal::Address(limits.max_connections_per_address));
    }
    c.total += 1;
    *c.by_address.entry(key).or_insert(0) += 1;
    Ok(ConnectionSlot {
        counts: counts.clone(),
        key,
    })
}

/// Answers a connection over a limit without reading its request, then
/// closes it. The body is the OCI error shape, like every other refusal.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let (status, code, message) = match refusal {
        Refusal::Address(n) => (
            "429 Too Many Requests",
            "TOOMANYREQUESTS",
            format!("too many open connections from your address (limit {n}, [limits] max_connections_per_address); close some and retry"),
        ),
        Refusal::Total(n) => (
            "503 Service Unavailable",
            "UNAVAILABLE",
            format!("the registry is at its connection limit ({n}, [limits] max_connections); retry shortly"),
        ),
    };
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serves connections from `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish (up to the shutdown grace).
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
    let limits = state.config.limits.clone();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep
                    // serving the connections already open.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match admit(&counts, &limits, peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                state.metrics.limit_refused(match refusal {
                    Refusal::Total(_) => "max_connections",
                    Refusal::Address(_) => "max_connections_per_address",
                });
                tokio::spawn(refuse(stream, refusal));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let pace = limits.body_pace;
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move {
                let req = req.map(|b| RequestBody::new(b, Some(pace)));
                Ok::<_, std::convert::Infallible>(logged(&state, req, peer).await)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown grace; closing them");
    }
    Ok(())
}

/// Answers one request and records it (metrics, access log).
async fn logged(
    state: &State,
    req: Request<RequestBody>,
    peer: SocketAddr,
) -> Response<crate::body::Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = crate::handle(state, req, peer.ip()).await;
    let bytes = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| hyper::body::Body::size_hint(resp.body()).exact());
    state.metrics.observe(
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    tracing::info!(
        target: "berth::access",
        %peer,
        %method,
        path,
        status = resp.status().as_u16(),
        bytes,
        duration_us = started.elapsed().as_micros() as u64,
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_and_total_limits() {
        let limits = ConnectionLimits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ConnectionLimits::default()
        };
        let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admit(&counts, &limits, a).ok().unwrap();
        let _a2 = admit(&counts, &limits, a).ok().unwrap();
        assert!(matches!(
            admit(&counts, &limits, a),
            Err(Refusal::Address(2))
        ));
        let _b1 = admit(&counts, &limits, b).ok().unwrap();
        assert!(matches!(admit(&counts, &limits, b), Err(Refusal::Total(3))));
        drop(a1);
        assert!(admit(&counts, &limits, b).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let x: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(x), address_key(y));
        assert_ne!(address_key(x), address_key(z));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
