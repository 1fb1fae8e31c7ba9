//! The queue: builds wait as BUILD_PENDING records; the dispatcher starts
//! them while fewer than `max_parallel` run (and fewer than
//! `per_tool_parallel` for that tool), recovers what a dead process left
//! running, and prunes old records.
//!
//! With several replicas on one PostgreSQL database every replica's
//! dispatcher claims from the one queue (`claim_build`: `FOR UPDATE SKIP
//! LOCKED` under a claim lock, recording the replica): a build is claimed
//! once; `per_tool_parallel` counts the tool's running builds on every
//! replica (tenant fairness), `max_parallel` this replica's (its host's
//! capacity). Recovery fails only builds whose replica's heartbeat went
//! stale, at start and every `RECOVER_EVERY`. A cancel asked on another
//! replica is a flag on the record this replica polls for its builds.

use crate::{logs, Builds, Running};
use berth_storage::meta::builds::BuildStatus;
use berth_storage::StorageError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a replica (PostgreSQL) looks for builds whose replica
/// stopped: a few heartbeats' worth, so such a build fails within about
/// `REPLICA_STALE_MS` plus this.
const RECOVER_EVERY: Duration = Duration::from_secs(10);

impl Builds {
    /// At start: builds a dead process left running have failed, and
    /// their workspaces go.
    pub async fn recover(&self) -> Result<usize, StorageError> {
        let failed = self.fail_orphans().await?;
        let work = self.config.dir.join("work");
        if let Err(e) = tokio::fs::remove_dir_all(&work).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %work.display(), error = %e, "cannot remove old build workspaces");
            }
        }
        Ok(failed)
    }

    /// Fails the builds a stopped process left running: with SQLite every
    /// running build (this process just started); with PostgreSQL those
    /// whose replica's heartbeat is stale, never a live replica's.
    async fn fail_orphans(&self) -> Result<usize, StorageError> {
        let message = if self.storage.meta.shared() {
            "the replica running it stopped; start it again"
        } else {
            "berth restarted while the build was running; start it again"
        };
        self.storage.meta.fail_orphaned_builds(message).await
    }

    /// The dispatcher: starts queued builds as runners free up. Runs until
    /// the task is dropped.
    pub async fn dispatch(self: Arc<Self>) {
        let mut last_log_expiry = std::time::Instant::now() - Duration::from_secs(3600);
        let mut last_recovery = std::time::Instant::now();
        loop {
            let started = if self.storage.meta.shared() {
                self.claim_queued().await
            } else {
                self.start_queued().await
            };
            if let Err(e) = started {
                tracing::warn!(error = %e, "build dispatcher");
            }
            if self.storage.meta.shared() {
                if let Err(e) = self.cancel_requested().await {
                    tracing::warn!(error = %e, "build dispatcher: cancel requests");
                }
                if last_recovery.elapsed() >= RECOVER_EVERY {
                    last_recovery = std::time::Instant::now();
                    match self.fail_orphans().await {
                        Ok(0) => {}
                        Ok(n) => tracing::warn!(builds = n, "failed builds whose replica stopped"),
                        Err(e) => tracing::warn!(error = %e, "build recovery"),
                    }
                }
            }
            if last_log_expiry.elapsed() >= Duration::from_secs(3600) {
                last_log_expiry = std::time::Instant::now();
                let cutoff = std::time::SystemTime::now() - self.config.log_retention;
                let n = logs::expire(&self.logs_dir(), cutoff).await;
                if n > 0 {
                    tracing::info!(removed = n, "expired build logs");
                }
                if self.storage.meta.shared() {
                    let before = cutoff
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
                        .unwrap_or(0);
                    match self.storage.meta.expire_build_logs(before).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(pieces = n, "expired build logs in the database"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot expire build logs in the database")
                        }
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// PostgreSQL: claims queued builds from the shared queue while the
    /// caps allow, and runs each here.
    async fn claim_queued(self: &Arc<Self>) -> Result<(), StorageError> {
        while let Some(b) = self
            .storage
            .meta
            .claim_build(self.config.max_parallel, self.config.per_tool_parallel)
            .await?
        {
            self.run_claimed(b);
        }
        Ok(())
    }

    /// PostgreSQL: cancels this replica's builds someone asked to cancel
    /// (on any replica).
    async fn cancel_requested(&self) -> Result<(), StorageError> {
        for id in self.storage.meta.cancel_requested_builds().await? {
            if let Some(r) = self.running().get(&id) {
                let _ = r.cancel.send(true);
            }
        }
        Ok(())
    }

    /// Runs a build this process moved to running.
    fn run_claimed(self: &Arc<Self>, b: berth_storage::meta::builds::BuildRecord) {
        let (cancel, cancelled) = watch::channel(false);
        self.running().insert(
            b.id.clone(),
            Running {
                tool: b.tool.clone(),
                cancel,
            },
        );
        let me = self.clone();
        tokio::spawn(async move {
            let id = b.id.clone();
            me.execute(b, cancelled).await;
            me.running().remove(&id);
            me.wake.notify_one();
        });
    }

    /// SQLite (one process): starts queued builds under the caps counted
    /// from the running-build map, each claimed with a conditional update.
    async fn start_queued(self: &Arc<Self>) -> Result<(), StorageError> {
        for b in self.storage.meta.pending_builds().await? {
            let (total, for_tool) = {
                let running = self.running();
                (
                    running.len(),
                    running.values().filter(|r| r.tool == b.tool).count(),
                )
            };
            if total >= self.config.max_parallel {
                break;
            }
            if for_tool >= self.config.per_tool_parallel {
                continue;
            }
            if !self
                .storage
                .meta
                .transition_build(
                    &b.id,
                    BuildStatus::Pending,
                    BuildStatus::Running,
                    "running".into(),
                    None,
                )
                .await?
            {
                continue; // cancelled meanwhile
            }
            // Read again now that it left PENDING: until then a newer push
            // could replace its commit (coalescing), and after it nothing
            // can, so what runs is what the record says.
            let b = match self.storage.meta.build(&b.id).await? {
                Some(b) => b,
                None => continue, // deleted meanwhile
            };
            self.run_claimed(b);
        }
        Ok(())
    }

    /// Keeps the newest `keep_successful` successful and `keep_failed`
    /// unsuccessful records per tool and image; logs stay on disk.
    pub(crate) async fn prune(&self, tool: &str, image: &str) -> Result<(), StorageError> {
        let (mut ok, mut bad) = (0, 0);
        for b in self.storage.meta.builds_of(tool).await? {
            if b.image_name != image || !b.status.is_finished() {
                continue;
            }
            let keep = if b.status == BuildStatus::Success {
                ok += 1;
                ok <= self.config.keep_successful
            } else {
                bad += 1;
                bad <= self.config.keep_failed
            };
            if !keep {
                self.storage.meta.delete_build(&b.id).await?;
            }
        }
        Ok(())
    }

    /// True once `id` is in a final state (for log following).
    pub async fn finished(&self, id: &str) -> bool {
        match self.storage.meta.build(id).await {
            Ok(Some(b)) => b.status.is_finished(),
            _ => true,
        }
    }
}
