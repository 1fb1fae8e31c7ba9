//! A round-robin HTTP/1.1 load balancer for the multi-replica tests: each
//! *request* (not each connection) goes to the next backend, so one client
//! on one keep-alive connection still spreads an upload's POST, PATCHes
//! and PUT over every replica — the worst case for shared state, and what
//! a real balancer without session affinity does.
//!
//! ```text
//! rr-proxy --listen 127.0.0.1:0 --backend http://127.0.0.1:5001 --backend http://127.0.0.1:5002
//! ```
//!
//! Prints `listening on <addr>` once bound. Bodies stream both ways; the
//! `Host` header is passed through, so the registry builds its upload
//! `Location`s and token realm for the proxy's address. A backend that
//! refuses the connection is skipped for a request without a body (a
//! replica that was killed); a request with a body gets 502, which is what
//! a balancer answers once it has consumed part of the body. Like a
//! balancer's health check, a backend that refused a connection gets no
//! requests for the next second, then is tried again (a restarted replica
//! comes back into the rotation).
//! `GET /_rr/stats` answers `{"requests":[n0,n1,...]}` (per backend), for
//! tests to check that every replica served.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

type Body = BoxBody<Bytes, hyper::Error>;

struct Balancer {
    backends: Vec<Uri>,
    next: AtomicUsize,
    served: Vec<AtomicU64>,
    /// Per backend: milliseconds since `started` until which it is skipped.
    down_until: Vec<AtomicU64>,
    started: std::time::Instant,
    client: Client<HttpConnector, Body>,
}

fn usage() -> ! {
    eprintln!("usage: rr-proxy --listen ADDR --backend URL [--backend URL ...]");
    std::process::exit(2)
}

fn main() {
    let mut listen = None;
    let mut backends = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = Some(v),
            ("--backend", Some(v)) => match v.parse::<Uri>() {
                Ok(uri) if uri.authority().is_some() => backends.push(uri),
                _ => {
                    eprintln!("rr-proxy: backend {v:?} is not an http://host:port URL");
                    std::process::exit(2)
                }
            },
            _ => usage(),
        }
    }
    let Some(listen) = listen else { usage() };
    if backends.is_empty() {
        usage()
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rr-proxy: cannot start a runtime: {e}");
            std::process::exit(1)
        }
    };
    if let Err(e) = runtime.block_on(serve(listen, backends)) {
        eprintln!("rr-proxy: {e}");
        std::process::exit(1)
    }
}

async fn serve(listen: String, backends: Vec<Uri>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let balancer = Arc::new(Balancer {
        served: backends.iter().map(|_| AtomicU64::new(0)).collect(),
        down_until: backends.iter().map(|_| AtomicU64::new(0)).collect(),
        started: std::time::Instant::now(),
        backends,
        next: AtomicUsize::new(0),
        client: Client::builder(TokioExecutor::new()).build(connector),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let balancer = balancer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let balancer = balancer.clone();
                async move { Ok::<_, hyper::Error>(balancer.forward(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

impl Balancer {
    async fn forward(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/_rr/stats" {
            let counts: Vec<String> = self
                .served
                .iter()
                .map(|n| n.load(Ordering::Relaxed).to_string())
                .collect();
            return plain(
                StatusCode::OK,
                format!("{{\"requests\":[{}]}}", counts.join(",")),
            );
        }
        let (parts, body) = req.into_parts();
        let bodyless = !parts.headers.contains_key(hyper::header::TRANSFER_ENCODING)
            && parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes() == b"0");
        let mut body = Some(body.boxed());
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis() as u64;
        let n = self.backends.len();
        // Backends in turn from this request's, the healthy ones first.
        let mut order: Vec<usize> = (0..n).map(|k| (first + k) % n).collect();
        order.sort_by_key(|&i| self.down_until[i].load(Ordering::Relaxed) > now);
        let tries = if bodyless { n } else { 1 };
        let mut last_error = String::new();
        for &index in order.iter().take(tries) {
            let backend = &self.backends[index];
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let uri = match Uri::builder()
                .scheme("http")
                .authority(backend.authority().map(|a| a.as_str()).unwrap_or_default())
                .path_and_query(path)
                .build()
            {
                Ok(uri) => uri,
                Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let mut outgoing = Request::builder()
                .method(parts.method.clone())
                .uri(uri)
                .version(hyper::Version::HTTP_11);
            for (name, value) in &parts.headers {
                outgoing = outgoing.header(name, value);
            }
            let this_body = body
                .take()
                .unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed());
            let outgoing = match outgoing.body(this_body) {
                Ok(r) => r,
                Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
            };
            self.served[index].fetch_add(1, Ordering::Relaxed);
            match self.client.request(outgoing).await {
                Ok(response) => return response.map(|b| b.boxed()),
                Err(e) => {
                    last_error = format!("backend {backend}: {e}");
                    // Only a refused connection is safe to try elsewhere:
                    // the backend saw nothing of the request.
                    if !e.is_connect() {
                        break;
                    }
                    let now = self.started.elapsed().as_millis() as u64;
                    self.down_until[index].store(now + 1000, Ordering::Relaxed);
                }
            }
        }
        plain(StatusCode::BAD_GATEWAY, last_error)
    }
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}
