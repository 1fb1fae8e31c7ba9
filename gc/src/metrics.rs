//! Prometheus counters and last-run gauges for the GC jobs. The registry
//! crate registers these collectors in its `/metrics` registry.

use crate::report::RunReport;
use prometheus::core::Collector;
use prometheus::{GaugeVec, IntCounterVec, Opts};

#[derive(Clone)]
pub struct GcMetrics {
    runs: IntCounterVec,
    removed: IntCounterVec,
    bytes_freed: IntCounterVec,
    last_run: GaugeVec,
    last_duration: GaugeVec,
    last_success: GaugeVec,
}

impl Default for GcMetrics {
    fn default() -> Self {
        GcMetrics::new()
    }
}

impl GcMetrics {
    pub fn new() -> GcMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["job"]).expect("valid metric")
        };
        GcMetrics {
            runs: counter(
                "gc_runs_total",
                "GC runs, by job, dry-run and status",
                &["job", "dry_run", "status"],
            ),
            removed: counter(
                "gc_removed_total",
                "Items removed by real GC runs, by job and kind",
                &["job", "kind"],
            ),
            bytes_freed: counter(
                "gc_bytes_freed_total",
                "Bytes of blob objects deleted by GC",
                &["job"],
            ),
            last_run: gauge(
                "gc_last_run_timestamp_seconds",
                "When each job last finished (unix seconds)",
            ),
            last_duration: gauge(
                "gc_last_run_duration_seconds",
                "How long each job's last run took",
            ),
            last_success: gauge(
                "gc_last_run_success",
                "1 if each job's last run finished without errors",
            ),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.runs.clone()),
            Box::new(self.removed.clone()),
            Box::new(self.bytes_freed.clone()),
            Box::new(self.last_run.clone()),
            Box::new(self.last_duration.clone()),
            Box::new(self.last_success.clone()),
        ]
    }

    pub fn observe(&self, r: &RunReport) {
        let job = r.job.as_str();
        self.runs
            .with_label_values(&[job, &r.dry_run.to_string(), &r.status])
            .inc();
        if r.dry_run {
            return;
        }
        for (kind, n) in [
            ("tags", r.tags_removed),
            ("manifests", r.manifests_removed),
            ("blob_links", r.blob_links_removed),
            ("blobs", r.blobs_removed),
            ("orphan_objects", r.orphan_objects_removed),
            ("uploads", r.uploads_expired),
        ] {
            self.removed
                .with_label_values(&[job, kind])
                .inc_by(n as u64);
        }
        self.bytes_freed
            .with_label_values(&[job])
            .inc_by(r.bytes_freed);
        self.last_run
            .with_label_values(&[job])
            .set(r.finished_ms as f64 / 1000.0);
        self.last_duration
            .with_label_values(&[job])
            .set((r.finished_ms - r.started_ms) as f64 / 1000.0);
        self.last_success
            .with_label_values(&[job])
            .set(if r.errors.is_empty() { 1.0 } else { 0.0 });
    }
}
