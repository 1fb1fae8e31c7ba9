//! Prometheus metrics at `/metrics`. Request counters are updated as
//! requests finish; per-namespace quota gauges are read from the ledger at
//! scrape time, so they are never stale and cost nothing between scrapes.

use berth_storage::Storage;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    quota_used: IntGaugeVec,
    quota_limit: IntGaugeVec,
    uploads_open: IntGauge,
}

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
        let quota_used = IntGaugeVec::new(
            Opts::new(
                "namespace_used_bytes",
                "Bytes a namespace uses (quota ledger)",
            ),
            &["namespace"],
        )
        .expect("valid metric");
        let quota_limit = IntGaugeVec::new(
            Opts::new(
                "namespace_limit_bytes",
                "A namespace's quota limit in bytes (absent when unlimited)",
            ),
            &["namespace"],
        )
        .expect("valid metric");
        let uploads_open =
            IntGauge::new("uploads_open", "Blob uploads in progress").expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(quota_used.clone()),
            Box::new(quota_limit.clone()),
            Box::new(uploads_open.clone()),
        ] {
            registry.register(c).expect("metrics register once");
        }
        Metrics {
            registry,
            requests,
            duration,
            quota_used,
            quota_limit,
            uploads_open,
        }
    }

    /// Adds collectors from other parts (e.g. the GC jobs' counters).
    pub fn register(&self, collectors: Vec<Box<dyn prometheus::core::Collector>>) {
        for c in collectors {
            self.registry.register(c).expect("metrics register once");
        }
    }

    pub fn observe(&self, method: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[method, &status.to_string()])
            .inc();
        self.duration.with_label_values(&[method]).observe(seconds);
    }

    /// Refreshes the gauges from storage and renders the text format.
    pub async fn render(&self, storage: &Storage) -> Result<String, berth_storage::StorageError> {
        let quotas = storage.meta.quota_list().await?;
        self.quota_used.reset();
        self.quota_limit.reset();
        for q in quotas {
            self.quota_used
                .with_label_values(&[&q.namespace])
                .set(q.used_bytes as i64);
            if let Some(l) = q.limit_bytes {
                self.quota_limit
                    .with_label_values(&[&q.namespace])
                    .set(l.min(i64::MAX as u64) as i64);
            }
        }
        self.uploads_open.set(storage.uploads.open_count() as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        Ok(String::from_utf8(out).expect("the text format is UTF-8"))
    }
}
