//! Prometheus metrics at `/metrics`. Request counters are updated as
//! requests finish; per-namespace quota gauges are read from the ledger at
//! scrape time, so they are never stale and cost nothing between scrapes.

use berth_storage::Storage;
use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    /// Requests, 4xx and 5xx answers since start (the console's rates).
    totals: [std::sync::atomic::AtomicU64; 3],
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    uploads_open: IntGauge,
    refusals: IntCounterVec,
}

/// Answers counted since start (`Metrics::request_totals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestTotals {
    pub requests: u64,
    pub client_errors: u64,
    pub server_errors: u64,
}

/// Methods counted under their own name; anything else is `OTHER`, so a
/// client inventing methods cannot grow the label set without bound.
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("berth".into()), None).expect("valid registry prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by method and status",
            ),
            &["method", "status"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer a request (headers; streamed bodies continue)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["method"],
        )
        .expect("valid metric");
        let uploads_open =
            IntGauge::new("uploads_open", "Blob uploads in progress").expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "limit_refusals_total",
                "Requests and connections refused because a tenant or overall limit was reached, by limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(uploads_open.clone()),
            Box::new(refusals.clone()),
        ] {
            registry.register(c).expect("metrics register once");
        }
        Metrics {
            totals: Default::default(),
            registry,
            requests,
            duration,
            uploads_open,
            refusals,
        }
    }

    /// Adds collectors from other parts (e.g. the GC jobs' counters).
    pub fn register(&self, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
        for c in collectors {
            self.registry.register(c).expect("metrics register once");
        }
    }

    pub fn observe(&self, method: &str, status: u16, seconds: f64) {
        let method = METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("OTHER");
        self.requests
            .with_label_values(&[method, &status.to_string()])
            .inc();
        self.duration.with_label_values(&[method]).observe(seconds);
        use std::sync::atomic::Ordering::Relaxed;
        self.totals[0].fetch_add(1, Relaxed);
        match status {
            400..=499 => self.totals[1].fetch_add(1, Relaxed),
            500..=599 => self.totals[2].fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    /// Requests answered since start, and how many were 4xx and 5xx.
    pub fn request_totals(&self) -> RequestTotals {
        use std::sync::atomic::Ordering::Relaxed;
        RequestTotals {
            requests: self.totals[0].load(Relaxed),
            client_errors: self.totals[1].load(Relaxed),
            server_errors: self.totals[2].load(Relaxed),
        }
    }

    /// Counts one refusal by a named limit (e.g. `uploads_per_namespace`).
    pub fn limit_refused(&self, limit: &str) {
        self.refusals.with_label_values(&[limit]).inc();
    }

    /// Renders the text format with per-namespace gauges read from the
    /// ledger now, for the namespaces `visible` lets this caller see
    /// (private namespaces are the admin's business only). The gauges are
    /// built per scrape, so two scrapers never see each other's view.
    pub async fn render(
        &self,
        storage: &Storage,
        visible: impl Fn(&str) -> bool,
    ) -> Result<String, berth_storage::StorageError> {
        let quotas = storage.meta.quota_list().await?;
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help).namespace("berth"), &["namespace"])
                .expect("valid metric")
        };
        let used = gauge(
            "namespace_used_bytes",
            "Bytes a namespace uses (quota ledger)",
        );
        let limit = gauge(
            "namespace_limit_bytes",
            "A namespace's quota limit in bytes (absent when unlimited)",
        );
        for q in quotas.iter().filter(|q| visible(&q.namespace)) {
            used.with_label_values(&[&q.namespace])
                .set(q.used_bytes.min(i64::MAX as u64) as i64);
            if let Some(l) = q.limit_bytes {
                limit
                    .with_label_values(&[&q.namespace])
                    .set(l.min(i64::MAX as u64) as i64);
            }
        }
        self.uploads_open
            .set(storage.uploads.open_count().await as i64);
        let mut families = self.registry.gather();
        families.extend(used.collect());
        families.extend(limit.collect());
        // The encoder refuses a family without series (e.g. no namespace
        // is visible to this caller yet).
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| berth_storage::StorageError::Internal(e.to_string()))?;
        String::from_utf8(out).map_err(|e| berth_storage::StorageError::Internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing too (fuzz/regressions/request/metrics-on-a-new-registry):
    /// with no namespace in the ledger, the empty gauges failed the encoder
    /// and /metrics answered 500.
    #[tokio::test]
    async fn renders_a_registry_without_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&berth_storage::StorageConfig {
            data_dir: dir.path().to_owned(),
            synchronous: berth_storage::Synchronous::Normal,
            uploads: Default::default(),
            postgres: None,
            s3: None,
        })
        .unwrap();
        let text = Metrics::new().render(&storage, |_| true).await.unwrap();
        assert!(text.contains("uploads_open"), "{text}");
        assert!(!text.contains("berth_namespace_used_bytes{"), "{text}");
        storage.close().await;
    }
}
