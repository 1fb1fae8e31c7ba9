//! berth-registry: the HTTP service. One hyper listener carries the whole
//! surface: the OCI distribution API (`/v2/...`), `/token`, `/admin/v1/...`
//! and `/healthz`. Layering: `routes` parses, `auth` decides, `handlers`
//! call berth-storage, `error` shapes every failure as the OCI error body.

pub mod api;
pub mod auth;
pub mod body;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod ranges;
pub mod request_body;
pub mod routes;
pub mod server;

use auth::Action;
use berth_storage::Storage;
use body::Body;
use error::{ApiError, ApiResult, Code};
use handlers::{
    admin, blobs, builds, discovery, gc, manifests, method_not_allowed, quota, token, uploads,
};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use request_body::RequestBody;
use routes::Route;
use std::net::IpAddr;
use std::time::Duration;

pub use server::{serve, ConnectionLimits};

/// Settings of the HTTP surface (the `[server]` and `[registry]` config).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Advertised as `OCI-Chunk-Min-Length` on upload start, when set.
    pub chunk_min_length: Option<u64>,
    /// How long in-flight requests may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Whether `/metrics` answers without admin credentials.
    pub metrics_public: bool,
    /// Connection limits and request-body pacing.
    pub limits: ConnectionLimits,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            chunk_min_length: None,
            shutdown_grace: Duration::from_secs(30),
            metrics_public: true,
            limits: ConnectionLimits::default(),
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
pub async fn handle(state: &State, req: Request<RequestBody>, peer: IpAddr) -> Response<Body> {
    let is_v2 = req.uri().path().starts_with("/v2");
    let mut resp = match dispatch(state, req, peer).await {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(limit) = e.limit {
                state.metrics.limit_refused(limit);
            }
            e.into_response()
        }
    };
    let headers = resp.headers_mut();
    if is_v2 {
        headers.insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
    }
    // Whatever a client stored is served as data, never as a page a
    // browser would render or run (stored manifests, error messages that
    // echo a name, logs).
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(http::header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("default-src 'none'; sandbox"));
    resp
}

async fn dispatch(
    state: &State,
    req: Request<RequestBody>,
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
            // Per-namespace figures only for namespaces the caller may
            // read: private ones stay the admin's (and their owner's).
            let text = state
                .metrics
                .render(&state.storage, |ns| auth.may_list(&caller, ns))
                .await?;
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
