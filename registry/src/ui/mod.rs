//! The web console (`/ui/`): server-rendered HTML (maud) for admins and
//! tools, charts drawn here as SVG, one small script for live build logs,
//! every asset compiled into the binary. The surface (`surfaces::ui`)
//! decides access and checks CSRF tokens; `pages` gathers what a page shows
//! through the same storage calls and handlers the APIs use, and `views`
//! renders it.
//!
//! What the console holds is bounded: sessions (`session`: overall and per
//! account, each with one CSRF token), request-rate samples (a ring of
//! `RATE_SAMPLES`), form bodies (`FORM_BYTES`), pages (`MAX_PAGE_SIZE`
//! rows); live logs take the builds' `log_follows_*` slots.

pub mod chart;
pub mod pages;
pub mod session;
pub mod views;

use crate::metrics::RequestTotals;
use berth_storage::lease::{self, Lease, Taken};
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest form body the console reads.
pub const FORM_BYTES: usize = 64 * 1024;
/// Rows one page of a list may ask for.
pub const MAX_PAGE_SIZE: u32 = 500;
/// How often the request counters are sampled for the overview's rates.
pub const RATE_EVERY: Duration = Duration::from_secs(15);
/// Rate samples kept (10 minutes' worth).
pub const RATE_SAMPLES: usize = 41;

/// The `[ui]` settings, read straight from the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Serve the console at all.
    pub enabled: bool,
    /// A session ends this long after sign-in...
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// ...or after this long unused.
    #[serde(with = "humantime_serde")]
    pub session_idle: Duration,
    /// Sessions open at once, overall; past it sign-ins get 429.
    pub sessions: usize,
    /// Sessions per account; a new one ends the account's oldest.
    pub sessions_per_account: usize,
    /// Mark cookies `Secure`. Unset: when the request came over TLS.
    pub secure_cookies: Option<bool>,
    /// Rows per page of the quota list (a request may ask for up to 500).
    pub page_size: u32,
    /// How often usage per namespace and in total is sampled.
    #[serde(with = "humantime_serde")]
    pub usage_sample_interval: Duration,
    /// How long samples are kept.
    #[serde(with = "humantime_serde")]
    pub usage_retention: Duration,
    /// Namespace samples kept at most (oldest go first).
    pub usage_max_rows: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            session_ttl: Duration::from_secs(12 * 3600),
            session_idle: Duration::from_secs(3600),
            sessions: 10_000,
            sessions_per_account: 8,
            secure_cookies: None,
            page_size: 50,
            usage_sample_interval: Duration::from_secs(3600),
            usage_retention: Duration::from_secs(30 * 24 * 3600),
            usage_max_rows: 1_000_000,
        }
    }
}

impl UiConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.sessions == 0 || self.sessions_per_account == 0 {
            return Err("[ui] sessions and sessions_per_account must be at least 1".into());
        }
        if self.session_ttl.is_zero() || self.session_idle.is_zero() {
            return Err("[ui] session_ttl and session_idle must be more than 0s".into());
        }
        if self.page_size == 0 || self.page_size > MAX_PAGE_SIZE {
            return Err(format!("[ui] page_size must be 1 to {MAX_PAGE_SIZE}"));
        }
        if self.usage_sample_interval < Duration::from_secs(60) {
            return Err("[ui] usage_sample_interval must be at least 1m".into());
        }
        Ok(())
    }
}

/// A request that arrived over TLS carries this extension (the TLS
/// listener inserts it), so cookies are marked `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// The console's shared state.
pub struct Console {
    pub config: UiConfig,
    pub sessions: session::Sessions,
    rates: Mutex<VecDeque<(Instant, RequestTotals)>>,
    started: Instant,
}

/// Requests per second over the last minutes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub window: Duration,
    pub requests: f64,
    pub client_errors: f64,
    pub server_errors: f64,
}

impl Console {
    /// The console; its sessions are kept in `meta` when replicas share
    /// it (PostgreSQL), else in memory.
    pub fn new(config: UiConfig, meta: &berth_storage::Metadata) -> Console {
        let sessions = session::Sessions::for_store(
            session::SessionLimits {
                max: config.sessions,
                per_account: config.sessions_per_account,
                ttl: config.session_ttl,
                idle: config.session_idle,
            },
            meta,
        );
        Console {
            config,
            sessions,
            rates: Mutex::new(VecDeque::with_capacity(RATE_SAMPLES)),
            started: Instant::now(),
        }
    }

    /// Keeps one sample of the request counters (every `RATE_EVERY`).
    pub fn sample_rates(&self, totals: RequestTotals) {
        let mut r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RATE_SAMPLES {
            r.pop_front();
        }
        r.push_back((Instant::now(), totals));
    }

    /// Rates between the oldest kept sample and `now` (since start when
    /// none is kept yet).
    pub fn rates(&self, now: RequestTotals) -> Rates {
        let r = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let (at, then) = r
            .front()
            .copied()
            .unwrap_or((self.started, RequestTotals::default()));
        let secs = at.elapsed().as_secs_f64().max(1.0);
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
        Rates {
            window: at.elapsed(),
            requests: per(now.requests, then.requests),
            client_errors: per(now.client_errors, then.client_errors),
            server_errors: per(now.server_errors, then.server_errors),
        }
    }

    /// Whether to mark cookies `Secure` for this request.
    pub fn secure(&self, req: &http::request::Parts) -> bool {
        self.config
            .secure_cookies
            .unwrap_or_else(|| req.extensions.get::<OverTls>().is_some())
    }
}

/// The console's background work: request-rate samples every
/// `RATE_EVERY`, and usage samples every `usage_sample_interval` (the
/// first at start), pruned to `usage_retention` and `usage_max_rows`.
pub async fn run_sampler(state: std::sync::Arc<crate::State>) {
    let keep = berth_storage::meta::console::SampleRetention {
        keep_ms: state
            .ui
            .config
            .usage_retention
            .as_millis()
            .min(i64::MAX as u128) as i64,
        max_rows: state.ui.config.usage_max_rows,
    };
    let mut ticker = tokio::time::interval(RATE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_usage = Instant::now();
    loop {
        ticker.tick().await;
        state.ui.sample_rates(state.metrics.request_totals());
        if Instant::now() < next_usage {
            continue;
        }
        next_usage = Instant::now() + state.ui.config.usage_sample_interval;
        // With several replicas, one sample per interval across them: the
        // interval's window is the slot, taken under the sampler's lease.
        let every_ms = state
            .ui
            .config
            .usage_sample_interval
            .as_millis()
            .clamp(1, i64::MAX as u128) as i64;
        let now = berth_storage::now_ms();
        let slot = now - now.rem_euclid(every_ms);
        let lease = match Lease::acquire(
            &state.storage.meta,
            "usage-sample",
            lease::DEFAULT_TTL,
            Some(slot),
        )
        .await
        {
            Ok(Taken::Lease(l)) => l,
            Ok(_) => continue, // another replica sampled (or is sampling) this interval
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the sampler's lease; next try at the next interval");
                continue;
            }
        };
        let started = Instant::now();
        let sampled = state.storage.meta.sample_usage(now, keep).await;
        lease.release().await;
        match sampled {
            Ok(r) => tracing::info!(
                namespaces_changed = r.recorded,
                pruned = r.pruned,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "usage sampled"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "usage sampling failed; next try at the next interval")
            }
        }
    }
}
