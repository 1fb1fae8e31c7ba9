//! berth-gc: keeps storage bounded while pushes go on. Two jobs, each
//! scheduled by cron (tokio-cron-scheduler) and triggerable by the admin:
//!
//! - tag cleanup (every 5 minutes by default): per-namespace retention;
//! - untagged GC (hourly): untagged manifests past their grace period, then
//!   blob links nothing needs, then blobs linked nowhere and their objects,
//!   orphan objects, expired uploads, and a quota reconcile.
//!
//! Safety: planning reads a snapshot; every deletion re-checks its item in
//! the write transaction that removes it (SQLite serialises that against
//! pushes); blob objects are deleted after their rows, under per-digest
//! locks shared with upload completion. No global lock, no read-only mode.
//!
//! One run of a job at a time: a mutex per job in the process, and with
//! PostgreSQL the job's lease across replicas (`berth_storage::lease`).
//! A scheduled tick runs its schedule slot once wherever it fires: the
//! lease records the last slot run, and a replica whose tick finds its
//! slot taken skips it. A run whose replica died is marked `interrupted`
//! by the replica that takes the lease next.

pub mod jobs;
pub mod metrics;
pub mod report;
pub mod retention;
pub mod scheduler;

pub use report::{JobKind, RunReport};
pub use retention::RetentionPolicy;

use berth_storage::lease::{Lease, Taken};
use berth_storage::{now_ms, Storage, StorageError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// The `[gc]` settings, read straight from the config file (every key
/// documented in config.example.toml); `validate` checks the schedules.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Run the jobs on their schedules (the admin trigger works regardless).
    pub enabled: bool,
    pub tag_cleanup_schedule: String,
    pub untagged_schedule: String,
    #[serde(with = "humantime_serde")]
    pub untagged_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub blob_grace: Duration,
    pub retention: RetentionPolicy,
    /// With several replicas (PostgreSQL): how long a job's lease lasts
    /// unrenewed, i.e. how soon another replica runs the job after the
    /// one running it died. Renewed every third of it while running.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl GcConfig {
    /// The schedules are cron lines tokio-cron-scheduler accepts.
    pub fn validate(&self) -> Result<(), String> {
        scheduler::validate(&self.tag_cleanup_schedule)
            .map_err(|e| format!("[gc] tag_cleanup_schedule: {e}"))?;
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(format!(
                "[gc] lease_ttl = {:?} is too short: a lease is renewed every third of it, so it must be at least 1s",
                self.lease_ttl
            ));
        }
        scheduler::validate(&self.untagged_schedule)
            .map_err(|e| format!("[gc] untagged_schedule: {e}"))
    }
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            tag_cleanup_schedule: "0 */5 * * * *".into(),
            untagged_schedule: "0 0 * * * *".into(),
            untagged_grace: Duration::from_secs(3600),
            blob_grace: Duration::from_secs(3600),
            retention: RetentionPolicy::default(),
            lease_ttl: berth_storage::lease::DEFAULT_TTL,
        }
    }
}

/// How long a manual run waits for the same job running on another
/// replica before it is refused (`RunRefused::Busy`): well inside the
/// admin CLI's 60 s, so the admin hears why rather than a timeout.
const BUSY_WAIT: Duration = Duration::from_secs(20);

/// Why a manual run did not start.
#[derive(Debug, thiserror::Error)]
pub enum RunRefused {
    #[error("{job} is already running on replica {holder}; ask again when it has finished")]
    Busy { job: &'static str, holder: String },
    #[error("cannot take the job's lease: {0}")]
    Storage(#[from] StorageError),
}

/// The GC engine: configuration, one lock per job (a job never runs twice
/// at once), metrics.
pub struct Gc {
    storage: Storage,
    config: GcConfig,
    tag_cleanup: Mutex<()>,
    untagged: Mutex<()>,
    pub metrics: metrics::GcMetrics,
}

impl Gc {
    pub fn new(storage: Storage, config: GcConfig) -> Arc<Gc> {
        Arc::new(Gc {
            storage,
            config,
            tag_cleanup: Mutex::new(()),
            untagged: Mutex::new(()),
            metrics: metrics::GcMetrics::new(),
        })
    }

    pub fn config(&self) -> &GcConfig {
        &self.config
    }

    fn lock(&self, job: JobKind) -> &Mutex<()> {
        match job {
            JobKind::TagCleanup => &self.tag_cleanup,
            JobKind::Untagged => &self.untagged,
        }
    }

    /// Runs `job` now (waiting for a run of the same job in progress to
    /// finish first, on this replica or, up to `BUSY_WAIT`, on another)
    /// and returns its report.
    pub async fn run(
        &self,
        job: JobKind,
        dry_run: bool,
        trigger: &str,
    ) -> Result<RunReport, RunRefused> {
        let _guard = self.lock(job).lock().await;
        let waited_since = std::time::Instant::now();
        loop {
            match Lease::acquire(
                &self.storage.meta,
                job.as_str(),
                self.config.lease_ttl,
                None,
            )
            .await?
            {
                Taken::Lease(lease) => {
                    return Ok(self.run_leased(job, dry_run, trigger, lease).await)
                }
                Taken::Held(holder) if waited_since.elapsed() >= BUSY_WAIT => {
                    return Err(RunRefused::Busy {
                        job: job.as_str(),
                        holder,
                    })
                }
                // Held (SlotDone cannot be: no slot was asked for).
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The scheduler's entry: skips the tick if the job is still running
    /// (here or on another replica), so a slow run never overlaps the next
    /// one, or if another replica ran this schedule slot already.
    pub async fn run_if_idle(&self, job: JobKind) -> Option<RunReport> {
        let Ok(_guard) = self.lock(job).try_lock() else {
            tracing::warn!(
                job = job.as_str(),
                "previous run still in progress; skipping this tick"
            );
            return None;
        };
        let schedule = match job {
            JobKind::TagCleanup => &self.config.tag_cleanup_schedule,
            JobKind::Untagged => &self.config.untagged_schedule,
        };
        let slot = scheduler::slot(schedule, now_ms());
        match Lease::acquire(
            &self.storage.meta,
            job.as_str(),
            self.config.lease_ttl,
            slot,
        )
        .await
        {
            Ok(Taken::Lease(lease)) => {
                tracing::info!(
                    job = job.as_str(),
                    slot = slot.unwrap_or_default(),
                    "running the schedule slot"
                );
                Some(self.run_leased(job, false, "schedule", lease).await)
            }
            Ok(Taken::Held(holder)) => {
                tracing::info!(
                    job = job.as_str(),
                    holder,
                    "running on another replica; skipping this tick"
                );
                None
            }
            Ok(Taken::SlotDone) => {
                tracing::debug!(job = job.as_str(), ?slot, "another replica ran this slot");
                None
            }
            Err(e) => {
                // Without the lease nobody can tell whether another
                // replica runs it: skipped, the next tick tries again.
                tracing::warn!(job = job.as_str(), error = %e, "cannot take the job's lease; skipping this tick");
                None
            }
        }
    }

    async fn run_leased(
        &self,
        job: JobKind,
        dry_run: bool,
        trigger: &str,
        lease: Lease,
    ) -> RunReport {
        if lease.interrupted > 0 {
            tracing::warn!(
                job = job.as_str(),
                runs = lease.interrupted,
                "marked runs of a replica that stopped mid-run as interrupted"
            );
        }
        let report = self.run_locked(job, dry_run, trigger).await;
        lease.release().await;
        report
    }

    async fn run_locked(&self, job: JobKind, dry_run: bool, trigger: &str) -> RunReport {
        let mut report = RunReport::new(job, dry_run, trigger, now_ms());
        match self
            .storage
            .meta
            .start_gc_run(
                job.as_str(),
                dry_run,
                trigger,
                report.started_ms,
                report.stored(),
            )
            .await
        {
            Ok(id) => report.id = id,
            Err(e) => report
                .errors
                .push(format!("could not record the run's start: {e}")),
        }
        let outcome = match job {
            JobKind::TagCleanup => {
                jobs::tag_cleanup(&self.storage, &self.config, &mut report).await
            }
            JobKind::Untagged => jobs::untagged(&self.storage, &self.config, &mut report).await,
        };
        if let Err(e) = outcome {
            report.errors.push(e.to_string());
        }
        report.removed.sort();
        report.finished_ms = now_ms();
        report.status = if report.errors.is_empty() {
            "ok"
        } else {
            "failed"
        }
        .into();
        if report.id != 0 {
            if let Err(e) = self
                .storage
                .meta
                .finish_gc_run(report.id, report.finished_ms, report.stored())
                .await
            {
                report
                    .errors
                    .push(format!("could not record the run's report: {e}"));
            }
        }
        self.metrics.observe(&report);
        if !dry_run {
            // The change feed hears of real runs (a summary, not the items).
            let event = berth_storage::meta::NewEvent {
                action: match job {
                    JobKind::TagCleanup => "tag-cleanup",
                    JobKind::Untagged => "gc",
                }
                .into(),
                actor: Some("gc".into()),
                detail: Some(serde_json::json!({
                    "run": report.id,
                    "trigger": report.trigger,
                    "status": report.status,
                    "tags_removed": report.tags_removed,
                    "manifests_removed": report.manifests_removed,
                    "blob_links_removed": report.blob_links_removed,
                    "blobs_removed": report.blobs_removed,
                    "bytes_freed": report.bytes_freed,
                    "freed_per_namespace": report.freed_per_namespace,
                    "duration_ms": report.finished_ms - report.started_ms,
                })),
                ..Default::default()
            };
            if let Err(e) = self.storage.meta.record_event(event).await {
                tracing::warn!(error = %e, "cannot record the run in the change feed");
            }
        }
        tracing::info!(
            job = job.as_str(),
            dry_run,
            trigger,
            status = %report.status,
            tags = report.tags_removed,
            manifests = report.manifests_removed,
            blob_links = report.blob_links_removed,
            blobs = report.blobs_removed,
            orphans = report.orphan_objects_removed,
            bytes_freed = report.bytes_freed,
            duration_ms = report.finished_ms - report.started_ms,
            "gc run finished"
        );
        report
    }
}
