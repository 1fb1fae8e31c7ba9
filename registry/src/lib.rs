//! berth-registry: the HTTP service. One listener (`server`) carries five
//! surfaces: the OCI distribution API (`/v2/...`), the admin's API
//! (`/admin/v1/...`), a tool's API (`/v1/tool/{tool}/...`), forges'
//! deliveries to build triggers (`/v1/hooks/{id}`), operations
//! (`/healthz`, `/metrics`, `/token`) and the web console (`/ui/...`). Layering: `routes` parses method and
//! path into one surface's operation, the surface (`surfaces::*`) decides
//! access once through `auth`, `handlers` call berth-storage, and `error`
//! shapes every failure as the OCI error body.

pub mod api;
pub mod auth;
pub mod body;
pub mod error;
pub mod handlers;
pub mod hooks;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod ranges;
pub mod request_body;
pub mod routes;
pub mod server;
pub mod surfaces;
pub mod tls;
pub mod ui;

use berth_storage::Storage;
use body::Body;
use error::{ApiError, ApiResult, Code};
use http::{HeaderValue, Request, Response};
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
    /// Which peers may forward a client's address, scheme and host.
    pub forwarding: proxy::Forwarding,
    /// `[server] public_url` (checked, no trailing slash): `Location`
    /// headers are made absolute with it.
    pub public_url: Option<String>,
    /// The notification endpoints (the admin API lists their state).
    pub notifications: std::sync::Arc<notify::NotificationsConfig>,
    /// The address berth listens on (notifications' `source.addr`).
    pub listen: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            chunk_min_length: None,
            shutdown_grace: Duration::from_secs(30),
            metrics_public: true,
            limits: ConnectionLimits::default(),
            forwarding: proxy::Forwarding::default(),
            public_url: None,
            notifications: Default::default(),
            listen: String::new(),
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
    /// The web console: its settings and sessions.
    pub ui: ui::Console,
    /// Build triggers' hooks: the key their secrets derive from, limits.
    pub hooks: hooks::Hooks,
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
    if let Some(base) = &state.config.public_url {
        // Behind a proxy the client's URL is the public one, as registry:2
        // does with `http.host`.
        let absolute = headers
            .get(http::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .filter(|l| l.starts_with('/') && !l.starts_with("//"))
            .and_then(|l| HeaderValue::from_str(&format!("{base}{l}")).ok());
        if let Some(l) = absolute {
            headers.insert(http::header::LOCATION, l);
        }
    }
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

/// Parses the request into one surface's operation and hands it over;
/// every surface but `ops` and the console (which knows callers by their
/// session cookie) needs to know who is calling first.
async fn dispatch(
    state: &State,
    req: Request<RequestBody>,
    peer: IpAddr,
) -> ApiResult<Response<Body>> {
    let route = routes::parse(req.method(), req.uri().path())?.ok_or_else(|| {
        ApiError::not_found(
            Code::NameUnknown,
            format!("no such endpoint: {}", req.uri().path()),
        )
    })?;
    let caller = match route {
        Route::Ops(op) => return surfaces::ops::handle(state, op, req, peer).await,
        Route::Ui(op) => return Box::pin(surfaces::ui::handle(state, op, req, peer)).await,
        // A forge signs its delivery; it sends no credentials of berth's.
        Route::Hook(op) => return Box::pin(surfaces::hooks::handle(state, op, req, peer)).await,
        _ => {
            state
                .auth
                .authenticate(
                    &state.storage.meta,
                    req.headers(),
                    req.extensions().get(),
                    peer,
                )
                .await?
        }
    };
    match route {
        Route::Oci(op) => surfaces::oci::handle(state, &caller, op, req).await,
        Route::Admin(op) => Box::pin(surfaces::admin::handle(state, &caller, op, req)).await,
        Route::Tool(tool, op) => {
            Box::pin(surfaces::tool::handle(state, &caller, &tool, op, req)).await
        }
        Route::Namespace(ns, op) => {
            Box::pin(surfaces::namespace::handle(state, &caller, &ns, op, req)).await
        }
        Route::Ops(_) | Route::Ui(_) | Route::Hook(_) => Err(ApiError::internal("answered above")),
    }
}
