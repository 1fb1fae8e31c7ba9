//! Owns connections: the accept loop, the connection limits (overall and
//! per client address), TLS (handshake bounded in time, ALPN h2 or
//! http/1.1), hyper's HTTP/1.1 and HTTP/2 settings, the forwarded-header
//! rules (`proxy`), request-body pacing and graceful shutdown. Everything
//! that wraps a connection happens here, once, before a request reaches
//! `handle`.
//!
//! What a client gets is bounded per address (IPv6: per /64) by
//! `max_connections_per_address` and overall by `max_connections`: an
//! HTTP/1.1 connection holds one slot; an HTTP/2 connection holds one for
//! itself and one more for each request in flight past its first, so one
//! multiplexed connection buys no more concurrent requests than as many
//! HTTP/1.1 connections would. The slots key on the TCP peer (behind a
//! proxy: the proxy), never on a forwarded address.

use crate::auth::ClientCertificate;
use crate::proxy::Origin;
use crate::request_body::{BodyPace, RequestBody};
use crate::tls::Tls;
use crate::State;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Connection-level limits (`[limits]` in the config).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections overall; past it new ones get a 503 and are closed.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64); 0 = no limit.
    /// HTTP/2 requests in flight past a connection's first count too.
    pub max_connections_per_address: usize,
    /// Time a client has to send a request's headers, and that an idle
    /// keep-alive connection (HTTP/1.1, or HTTP/2 without open streams)
    /// stays open.
    pub header_timeout: Duration,
    pub body_pace: BodyPace,
    /// Largest request head (line and headers) read into memory; on
    /// HTTP/2 the largest header list.
    pub max_header_bytes: usize,
    /// Time a client has to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_streams_per_connection: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            max_connections_per_address: 128,
            header_timeout: Duration::from_secs(30),
            body_pace: BodyPace::default(),
            max_header_bytes: 64 * 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            max_streams_per_connection: 100,
        }
    }
}

/// HTTP/2 flow control and buffers, per connection: what one connection
/// can make berth hold in memory whatever its client does.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_SEND_BUFFER: usize = 64 * 1024;
/// Streams a client may open and reset at once before the connection is
/// closed (the "rapid reset" attack), and streams berth resets for errors.
const H2_PENDING_RESETS: usize = 20;
const H2_ERROR_RESETS: usize = 256;
/// The answer to plain HTTP on the TLS listener.
const PLAIN_HTTP_ANSWER: &str = "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 57\r\nconnection: close\r\n\r\nThis port speaks TLS only: use https:// to reach berth.\r\n";
/// How long a refused connection is given to take its answer.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

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

impl Refusal {
    fn limit(&self) -> &'static str {
        match self {
            Refusal::Total(_) => "max_connections",
            Refusal::Address(_) => "max_connections_per_address",
        }
    }

    fn status_code_message(&self) -> (&'static str, &'static str, String) {
        match self {
            Refusal::Address(n) => (
                "429 Too Many Requests",
                "TOOMANYREQUESTS",
                format!("too many open connections from your address (limit {n}, [limits] max_connections_per_address; HTTP/2 requests in flight count too); close some and retry"),
            ),
            Refusal::Total(n) => (
                "503 Service Unavailable",
                "UNAVAILABLE",
                format!("the registry is at its connection limit ({n}, [limits] max_connections); retry shortly"),
            ),
        }
    }

    /// The same refusal as an answer to one HTTP/2 request.
    fn response(&self) -> Response<crate::body::Body> {
        let (_, code, message) = self.status_code_message();
        let e = match self {
            Refusal::Address(_) => crate::error::ApiError::too_many(self.limit(), message),
            Refusal::Total(_) => crate::error::ApiError::unavailable(message),
        };
        debug_assert_eq!(e.code.as_str(), code);
        let mut resp = e.into_response();
        resp.headers_mut().insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        resp
    }
}

/// Answers a connection over a limit without reading its request, then
/// closes it. The body is the OCI error shape, like every other refusal.
/// On a TLS listener the handshake is made first (offering only
/// http/1.1), so the client can read why; all of it within a few seconds.
async fn refuse(stream: TcpStream, refusal: Refusal, tls: Option<Arc<Tls>>) {
    let (status, code, message) = refusal.status_code_message();
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        match tls {
            None => write_and_close(stream, response.as_bytes()).await,
            Some(tls) => {
                if let Ok(mut s) = tls.refusal_acceptor().accept(stream).await {
                    // A TLS client sends its request right after the
                    // handshake; read it first so that closing does not
                    // reset the connection under the answer.
                    read_head(&mut s).await;
                    write_and_close(s, response.as_bytes()).await
                }
            }
        }
    })
    .await;
}

/// Reads a request head (up to 16 KiB, for at most a second) and drops it.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while seen.len() < 16 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
}

async fn write_and_close<S: AsyncWrite + Unpin>(mut stream: S, bytes: &[u8]) {
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
}

/// Serves connections from `listener` (over TLS when `tls` is given) until
/// `shutdown` resolves, then stops accepting and lets in-flight requests
/// finish (up to the shutdown grace).
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
    let limits = state.config.limits.clone();
    // `stop` tells connections to finish; each holds a `done` sender, so
    // the channel closes when the last connection has ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
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
                state.metrics.limit_refused(refusal.limit());
                tokio::spawn(refuse(stream, refusal, tls.clone()));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            state: state.clone(),
            counts: counts.clone(),
            peer,
            stop: stop_rx.clone(),
            _done: done_tx.clone(),
            _slot: slot,
        };
        tokio::spawn(conn.run(stream, tls.clone()));
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    stop_tx.send_replace(true);
    drop(done_tx);
    if tokio::time::timeout(state.config.shutdown_grace, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within the shutdown grace; closing them");
    }
    Ok(())
}

/// One accepted connection, holding its slot while it lives.
struct Connection {
    state: Arc<State>,
    counts: Arc<Mutex<ConnectionCounts>>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
    _slot: ConnectionSlot,
}

/// What every request of a connection shares.
struct ConnInfo {
    peer: SocketAddr,
    tls: bool,
    /// The verified client certificate's identity, if it maps to one.
    cert: Option<ClientCertificate>,
    /// HTTP/2: requests in flight (for stream slots and the idle timeout).
    activity: Option<Arc<Activity>>,
}

impl Connection {
    /// Each kind of connection's state is allocated as it starts (boxed):
    /// inline, the largest (a TLS session, ~40 KiB) made every spawned
    /// connection that large, plain keep-alive ones included.
    async fn run(self, stream: TcpStream, tls: Option<Arc<Tls>>) {
        match tls {
            None => {
                let info = ConnInfo {
                    peer: self.peer,
                    tls: false,
                    cert: None,
                    activity: None,
                };
                Box::pin(self.serve_h1(TokioIo::new(stream), info)).await
            }
            Some(tls) => Box::pin(self.run_tls(stream, tls)).await,
        }
    }

    async fn run_tls(mut self, stream: TcpStream, tls: Arc<Tls>) {
        let timeout = self.state.config.limits.tls_handshake_timeout;
        let handshake = tokio::time::timeout(timeout, async {
            // Plain HTTP sent to the TLS port: say so instead of a
            // handshake error the client cannot explain.
            let mut first = [0u8; 1];
            if matches!(stream.peek(&mut first).await, Ok(1)) && first[0].is_ascii_alphabetic() {
                write_and_close(stream, PLAIN_HTTP_ANSWER.as_bytes()).await;
                return None;
            }
            Some(tls.acceptor().accept(stream).await)
        });
        let stream = tokio::select! {
            r = handshake => match r {
                Ok(None) => return,
                Ok(Some(Ok(s))) => s,
                Ok(Some(Err(e))) => {
                    let certificate = e
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<rustls::Error>())
                        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                    if certificate {
                        tracing::info!(peer = %self.peer, error = %e, "TLS handshake failed: client certificate refused");
                    } else {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    }
                    return;
                }
                Err(_) => {
                    self.state.metrics.limit_refused("tls_handshake_timeout");
                    tracing::info!(peer = %self.peer, ?timeout, "TLS handshake not finished in time ([limits] tls_handshake_timeout); connection closed");
                    return;
                }
            },
            _ = self.stop.wait_for(|s| *s) => return,
        };
        let (_, session) = stream.get_ref();
        let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        let cert = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|der| self.client_certificate(der));
        let info = ConnInfo {
            peer: self.peer,
            tls: true,
            cert,
            activity: h2.then(Activity::new),
        };
        if h2 {
            self.serve_h2(TokioIo::new(stream), info).await
        } else {
            self.serve_h1(TokioIo::new(stream), info).await
        }
    }

    /// The identity a verified client certificate stands for, or `None`
    /// (logged) when it stands for none: the connection is then served as
    /// if it had presented no certificate.
    fn client_certificate(&self, der: &[u8]) -> Option<ClientCertificate> {
        let Some(subject) = crate::tls::describe(der) else {
            tracing::warn!(peer = %self.peer, "client certificate verified but its subject does not parse; served without it");
            return None;
        };
        match self.state.auth.client_certificate(&subject) {
            Ok(c) => {
                tracing::debug!(peer = %self.peer, namespace = %c.namespace, serial = %subject.serial, "client certificate");
                Some(c)
            }
            Err(why) => {
                tracing::warn!(peer = %self.peer, serial = %subject.serial, "client certificate not used: {why}");
                None
            }
        }
    }

    fn service(
        &self,
        info: ConnInfo,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Tracked>,
        Error = std::convert::Infallible,
        Future = impl Future<Output = Result<Response<Tracked>, std::convert::Infallible>> + Send,
    > + Clone {
        let info = Arc::new(info);
        let state = self.state.clone();
        let counts = self.counts.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (info, state, counts) = (info.clone(), state.clone(), counts.clone());
            // hyper keeps room for this future in every connection from
            // its start, so it is kept small: the surfaces other than the
            // registry's own are boxed where `dispatch` calls them (boxing
            // all of `answer` copied tens of KiB per request).
            async move { Ok(answer(&state, &counts, &info, req).await) }
        })
    }

    async fn serve_h1<I>(mut self, io: I, info: ConnInfo)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let limits = &self.state.config.limits;
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192))
            .serve_connection(io, self.service(info));
        drive(conn, &mut self.stop, None, self.peer).await;
    }

    async fn serve_h2<I>(mut self, io: I, info: ConnInfo)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let limits = &self.state.config.limits;
        let activity = info.activity.clone();
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_streams_per_connection)
            .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_pending_accept_reset_streams(H2_PENDING_RESETS)
            .max_local_error_reset_streams(H2_ERROR_RESETS)
            .keep_alive_interval(limits.header_timeout)
            .keep_alive_timeout(limits.header_timeout)
            .serve_connection(io, self.service(info));
        let idle = activity.map(|a| (a, limits.header_timeout));
        drive(conn, &mut self.stop, idle, self.peer).await;
    }
}

/// Runs a connection to its end; on shutdown, or when an HTTP/2
/// connection has had no request in flight for the idle timeout, asks it
/// to finish gracefully (the request in flight completes).
async fn drive<C>(
    conn: C,
    stop: &mut watch::Receiver<bool>,
    idle: Option<(Arc<Activity>, Duration)>,
    peer: SocketAddr,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let idle_timeout = idle.as_ref().map(|(_, t)| *t);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stop.wait_for(|s| *s) => None,
        _ = async {
            match &idle {
                Some((activity, timeout)) => activity.idle_expired(*timeout).await,
                None => std::future::pending().await,
            }
        } => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            match idle_timeout {
                // Shutdown: the grace period in `serve` bounds the wait.
                None => conn.await,
                Some(t) => match tokio::time::timeout(t, conn.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => return,
                },
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Requests in flight on an HTTP/2 connection, since when none is, and the
/// places its requests hold beyond the connection's own.
///
/// The places belong to the connection, not to the request that took each
/// one: whichever request ends, the connection then holds
/// `max(1, admitted)` places. (Tying a place to its request overcounted:
/// when the request on the connection's own place ended first, the others
/// kept theirs, and two requests in flight held three places.)
struct Activity {
    state: Mutex<ActivityState>,
}

struct ActivityState {
    /// Every request in flight, refused ones included (they keep the
    /// connection from being idle while their answer is sent).
    in_flight: usize,
    /// Requests in flight that were given a place.
    admitted: usize,
    /// The places beyond the connection's own: `admitted - 1` of them.
    extra: Vec<ConnectionSlot>,
    idle_since: tokio::time::Instant,
}

/// A request's part in its connection's activity, given back on drop.
struct ActivityGuard {
    activity: Arc<Activity>,
    admitted: bool,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                admitted: 0,
                extra: Vec::new(),
                idle_since: tokio::time::Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request in. The first admitted request uses the
    /// connection's own place; each further one needs a place of its own,
    /// which `admit` gives or refuses. A refused request is still counted
    /// in flight until its answer is sent, and the refusal is returned
    /// with its guard.
    fn begin(
        self: &Arc<Self>,
        admit: impl FnOnce() -> Result<ConnectionSlot, Refusal>,
    ) -> Result<ActivityGuard, (ActivityGuard, Refusal)> {
        let mut s = self.lock();
        s.in_flight += 1;
        let guard = |admitted| ActivityGuard {
            activity: self.clone(),
            admitted,
        };
        if s.admitted > 0 {
            match admit() {
                Ok(slot) => s.extra.push(slot),
                Err(refusal) => return Err((guard(false), refusal)),
            }
        }
        s.admitted += 1;
        Ok(guard(true))
    }

    /// Resolves once no request has been in flight for `timeout`.
    async fn idle_expired(&self, timeout: Duration) {
        loop {
            let wait = {
                let s = self.lock();
                if s.in_flight > 0 {
                    timeout
                } else {
                    match timeout.checked_sub(s.idle_since.elapsed()) {
                        Some(left) if !left.is_zero() => left,
                        _ => return,
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        let released = {
            let mut s = self.activity.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            s.idle_since = tokio::time::Instant::now();
            if self.admitted {
                s.admitted = s.admitted.saturating_sub(1);
            }
            let keep = s.admitted.saturating_sub(1).min(s.extra.len());
            s.extra.split_off(keep)
        };
        // Given back outside the activity lock.
        drop(released);
    }
}

/// A response body that holds its request's part in its HTTP/2
/// connection's activity (and so its place) until it has been sent.
pub struct Tracked {
    inner: crate::body::Body,
    _activity: Option<ActivityGuard>,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// One request: its HTTP/2 stream slot if it needs one, the forwarded
/// headers judged, the client certificate's identity attached, answered
/// and logged.
async fn answer(
    state: &State,
    counts: &Arc<Mutex<ConnectionCounts>>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<Tracked> {
    let mut activity = None;
    if let Some(a) = &conn.activity {
        match a.begin(|| admit(counts, &state.config.limits, conn.peer.ip())) {
            Ok(guard) => activity = Some(guard),
            Err((guard, refusal)) => {
                state.metrics.limit_refused(refusal.limit());
                tracing::info!(
                    target: "berth::access",
                    peer = %conn.peer,
                    method = %req.method(),
                    path = req.uri().path(),
                    status = if matches!(refusal, Refusal::Address(_)) { 429 } else { 503 },
                    "HTTP/2 request refused: no slot left"
                );
                return refusal.response().map(|inner| Tracked {
                    inner,
                    _activity: Some(guard),
                });
            }
        }
    }
    let (mut parts, body) = req.into_parts();
    let origin =
        state
            .config
            .forwarding
            .apply(&mut parts.headers, &parts.uri, conn.peer.ip(), conn.tls);
    if let Some(c) = &conn.cert {
        parts.extensions.insert(c.clone());
    }
    let req = Request::from_parts(
        parts,
        RequestBody::new(body, Some(state.config.limits.body_pace)),
    );
    logged(state, req, origin, conn.peer)
        .await
        .map(|inner| Tracked {
            inner,
            _activity: activity,
        })
}

/// Answers one request and records it (metrics, access log). `client` is
/// the forwarded address when a trusted proxy sent the request, else the
/// peer's; `peer` is the TCP peer.
async fn logged(
    state: &State,
    req: Request<RequestBody>,
    origin: Origin,
    peer: SocketAddr,
) -> Response<crate::body::Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let version = req.version();
    let resp = crate::handle(state, req, origin.client).await;
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
        client = %origin.client,
        %peer,
        %method,
        path,
        ?version,
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

    #[tokio::test(start_paused = true)]
    async fn http2_idle_is_counted_from_the_last_request() {
        let a = Activity::new();
        let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
        let limits = ConnectionLimits::default();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let first = a.begin(|| admit(&counts, &limits, peer)).ok().unwrap();
        let second = a.begin(|| admit(&counts, &limits, peer)).ok().unwrap();
        let timeout = Duration::from_secs(30);
        // Requests in flight: never idle.
        assert!(
            tokio::time::timeout(Duration::from_secs(120), a.idle_expired(timeout))
                .await
                .is_err()
        );
        drop(first);
        drop(second);
        let started = tokio::time::Instant::now();
        a.idle_expired(timeout).await;
        assert!(started.elapsed() >= timeout);
    }

    /// Whichever request ends first, an HTTP/2 connection holds one place
    /// per request in flight (at least its own), never more.
    #[test]
    fn http2_places_follow_the_requests_in_flight_whichever_ends() {
        let limits = ConnectionLimits {
            max_connections_per_address: 3,
            ..ConnectionLimits::default()
        };
        let counts = Arc::new(Mutex::new(ConnectionCounts::default()));
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let held = || counts.lock().unwrap().by_address.get(&peer).copied();
        let connection = admit(&counts, &limits, peer).ok().unwrap();
        let a = Activity::new();
        let begin = || a.begin(|| admit(&counts, &limits, peer));
        let on_own_place = begin().ok().unwrap();
        let second = begin().ok().unwrap();
        let third = begin().ok().unwrap();
        assert_eq!(held(), Some(3));
        let (refused, why) = begin().err().unwrap();
        assert!(matches!(why, Refusal::Address(3)));
        drop(refused);
        assert_eq!(held(), Some(3));
        // The request on the connection's own place ends first: two in
        // flight hold two places, and a new one fits.
        drop(on_own_place);
        assert_eq!(held(), Some(2));
        let fourth = begin().ok().unwrap();
        assert_eq!(held(), Some(3));
        drop((second, third, fourth));
        assert_eq!(held(), Some(1));
        drop(connection);
        assert_eq!(held(), None);
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
