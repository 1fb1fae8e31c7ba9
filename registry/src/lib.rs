//! berth-registry: the HTTP service. One hyper listener carries the whole
//! surface: the OCI distribution API (`/v2/...`), `/token`, `/admin/v1/...`
//! and `/healthz`. Layering: `routes` parses, `auth` decides, `handlers`
//! call berth-storage, `error` shapes every failure as the OCI error body.

pub mod auth;
pub mod body;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod routes;

use auth::Action;
use berth_storage::Storage;
use body::Body;
use error::{ApiError, ApiResult, Code};
use handlers::{
    admin, blobs, builds, discovery, gc, manifests, method_not_allowed, quota, token, uploads,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use routes::Route;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Settings of the HTTP surface (the `[server]` and `[registry]` config).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Advertised as `OCI-Chunk-Min-Length` on upload start, when set.
    pub chunk_min_length: Option<u64>,
    /// How long in-flight requests may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Whether `/metrics` answers without admin credentials.
    pub metrics_public: bool,
    /// A blob HEAD refreshes the blob's last use when it is older than
    /// this; keep it well under the GC blob grace period.
    pub touch_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            chunk_min_length: None,
            shutdown_grace: Duration::from_secs(30),
            metrics_public: true,
            touch_interval: Duration::from_secs(60),
        }
    }
}

/// Everything a handler needs, shared by all connections.
pub struct State {
    pub storage: Storage,
    pub config: RegistryConfig,
    pub auth: std::sync::Arc<auth::Auth>,
    pub metrics: metrics::Metrics,
    pub gc: std::sync::Arc<berth_gc::Gc>,
    pub builds: std::sync::Arc<berth_builds::Builds>,
}

/// Answers one request. Never fails: errors become OCI error responses.
pub async fn handle(state: &State, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let is_v2 = req.uri().path().starts_with("/v2");
    let mut resp = match dispatch(state, req, peer).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    if is_v2 {
        resp.headers_mut().insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
    }
    resp
}

async fn dispatch(
    state: &State,
    req: Request<Incoming>,
    peer: IpAddr,
) -> ApiResult<Response<Body>> {
    let route = routes::parse(req.uri().path())?.ok_or_else(|| {
        ApiError::not_found(
            Code::NameUnknown,
            format!("no such endpoint: {}", req.uri().path()),
        )
    })?;
    let method = req.method().clone();
    match route {
        Route::Healthz => return health(state).await,
        Route::Token => return token::token(state, req, peer).await,
        _ => {}
    }
    let auth = &state.auth;
    let caller = auth
        .authenticate(&state.storage.meta, req.headers(), peer)
        .await?;
    let head = method == Method::HEAD;
    let headers = req.headers();
    match route {
        Route::Healthz | Route::Token => unreachable!("answered above"),
        Route::NamespaceCredentials(ns) => {
            auth.require_admin(&caller)?;
            admin::namespace_credentials(state, &method, &ns).await
        }
        Route::Quotas => {
            auth.require_admin(&caller)?;
            match method {
                Method::GET => quota::list(state, req.uri().query()).await,
                m => Err(method_not_allowed(&m)),
            }
        }
        Route::QuotaReconcile => {
            auth.require_admin(&caller)?;
            match method {
                Method::POST => quota::reconcile(state).await,
                m => Err(method_not_allowed(&m)),
            }
        }
        Route::GcRun(job) => {
            auth.require_admin(&caller)?;
            gc::run(state, &job, &method, req.uri().query()).await
        }
        Route::GcRuns => {
            auth.require_admin(&caller)?;
            gc::runs(state, &method, req.uri().query()).await
        }
        Route::Pins => {
            auth.require_admin(&caller)?;
            gc::pins(state, req).await
        }
        Route::Pin(id) => {
            auth.require_admin(&caller)?;
            gc::pin(state, &id, &method).await
        }
        Route::Retention => {
            auth.require_admin(&caller)?;
            gc::retention(state, &method).await
        }
        Route::RetentionNamespace(ns) => {
            auth.require_admin(&caller)?;
            gc::retention_namespace(state, &ns, req).await
        }
        Route::Quota(ns) => {
            auth.require_admin(&caller)?;
            quota::namespace(state, &ns, req).await
        }
        Route::ToolQuota(tool) => {
            let ns = state.builds.namespace(&tool);
            auth.require_owner(&caller, &ns)?;
            match method {
                Method::GET => quota::tool(state, &ns).await,
                m => Err(method_not_allowed(&m)),
            }
        }
        Route::Builds(tool) => {
            auth.require_owner(&caller, &state.builds.namespace(&tool))?;
            builds::collection(state, &tool, req).await
        }
        Route::Build(tool, id) => {
            auth.require_owner(&caller, &state.builds.namespace(&tool))?;
            builds::one(state, &tool, &id, &method, req.uri().query()).await
        }
        Route::BuildLogs(tool, id) => {
            auth.require_owner(&caller, &state.builds.namespace(&tool))?;
            builds::logs(state, &tool, &id, &method, req.uri().query()).await
        }
        Route::BuildCancel(tool, id) => {
            auth.require_owner(&caller, &state.builds.namespace(&tool))?;
            builds::cancel(state, &tool, &id, &method).await
        }
        Route::Clean(tool) => {
            auth.require_owner(&caller, &state.builds.namespace(&tool))?;
            builds::clean(state, &tool, &method).await
        }
        Route::Metrics => {
            if !state.config.metrics_public {
                auth.require_admin(&caller)?;
            }
            let text = state.metrics.render(&state.storage).await?;
            let mut resp = Response::new(body::full(text));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(resp)
        }
        Route::AdminUnknown => {
            auth.require_admin(&caller)?;
            Err(ApiError::not_found(
                Code::Unsupported,
                format!("no such admin endpoint: {}", req.uri().path()),
            ))
        }
        Route::Base => {
            auth.require_known(&caller, headers)?;
            Ok(body::json_response(StatusCode::OK, &serde_json::json!({})))
        }
        Route::Catalog => match method {
            Method::GET => {
                discovery::catalog(state, req.uri().query(), |ns| auth.may_list(&caller, ns)).await
            }
            m => Err(method_not_allowed(&m)),
        },
        Route::Tags(repo) => {
            auth.require(&caller, headers, &repo, Action::Pull)?;
            match method {
                Method::GET => discovery::tags(state, &repo, req.uri().query()).await,
                m => Err(method_not_allowed(&m)),
            }
        }
        Route::Referrers(repo, digest) => {
            auth.require(&caller, headers, &repo, Action::Pull)?;
            match method {
                Method::GET => discovery::referrers(state, &repo, &digest, req.uri().query()).await,
                m => Err(method_not_allowed(&m)),
            }
        }
        Route::Manifest(repo, reference) => match method {
            Method::GET | Method::HEAD => {
                auth.require(&caller, headers, &repo, Action::Pull)?;
                manifests::get(state, &repo, &reference, head).await
            }
            Method::PUT => {
                auth.require(&caller, headers, &repo, Action::Push)?;
                manifests::put(state, &repo, &reference, req).await
            }
            Method::DELETE => {
                auth.require(&caller, headers, &repo, Action::Delete)?;
                manifests::delete(state, &repo, &reference).await
            }
            m => Err(method_not_allowed(&m)),
        },
        Route::Blob(repo, digest) => match method {
            Method::GET | Method::HEAD => {
                auth.require(&caller, headers, &repo, Action::Pull)?;
                blobs::get(state, &repo, &digest, headers, head).await
            }
            Method::DELETE => {
                auth.require(&caller, headers, &repo, Action::Delete)?;
                blobs::delete(state, &repo, &digest).await
            }
            m => Err(method_not_allowed(&m)),
        },
        Route::UploadStart(repo) => {
            auth.require(&caller, headers, &repo, Action::Push)?;
            match method {
                // A mount needs pull rights on the source; without them the
                // client gets an ordinary upload and learns nothing.
                Method::POST => {
                    uploads::start(state, &repo, req, |from| {
                        auth.may(&caller, from, Action::Pull)
                    })
                    .await
                }
                m => Err(method_not_allowed(&m)),
            }
        }
        Route::Upload(repo, id) => {
            auth.require(&caller, headers, &repo, Action::Push)?;
            match method {
                Method::PATCH => uploads::patch(state, &repo, &id, req).await,
                Method::PUT => uploads::put(state, &repo, &id, req).await,
                Method::GET => uploads::status(state, &repo, &id).await,
                Method::DELETE => uploads::cancel(state, &repo, &id).await,
                m => Err(method_not_allowed(&m)),
            }
        }
    }
}

/// `/healthz`: 200 when the database and the blob store both answer.
async fn health(state: &State) -> ApiResult<Response<Body>> {
    let db = state.storage.meta.ping().await;
    let blobs = state.storage.blobs.ping().await;
    match (db, blobs) {
        (Ok(()), Ok(())) => Ok(body::json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (db, blobs) => {
            let detail = serde_json::json!({
                "database": db.err().map(|e| e.to_string()).unwrap_or_else(|| "ok".into()),
                "blob_store": blobs.err().map(|e| e.to_string()).unwrap_or_else(|| "ok".into()),
            });
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Unavailable,
                "storage is not answering",
            )
            .with_detail(detail))
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish (up to the shutdown grace).
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(logged(&state, req, peer).await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
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

async fn logged(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = handle(state, req, peer.ip()).await;
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
