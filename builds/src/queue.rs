//! The queue: builds wait as BUILD_PENDING records; the dispatcher starts
//! them while fewer than `max_parallel` run (and fewer than
//! `per_tool_parallel` for that tool), recovers what a dead process left
//! running, and prunes old records.

use crate::{logs, Builds, Running};
use berth_storage::meta::builds::BuildStatus;
use berth_storage::StorageError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

impl Builds {
    /// At start: builds a dead process left running have failed, and
    /// their workspaces go.
    pub async fn recover(&self) -> Result<usize, StorageError> {
        let failed = self
            .storage
            .meta
            .fail_orphaned_builds("berth restarted while the build was running; start it again")
            .await?;
        let work = self.config.dir.join("work");
        if let Err(e) = tokio::fs::remove_dir_all(&work).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %work.display(), error = %e, "cannot remove old build workspaces");
            }
        }
        Ok(failed)
    }

    /// The dispatcher: starts queued builds as runners free up. Runs until
    /// the task is dropped.
    pub async fn dispatch(self: Arc<Self>) {
        let mut last_log_expiry = std::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if let Err(e) = self.start_queued().await {
                tracing::warn!(error = %e, "build dispatcher");
            }
            if last_log_expiry.elapsed() >= Duration::from_secs(3600) {
                last_log_expiry = std::time::Instant::now();
                let cutoff = std::time::SystemTime::now() - self.config.log_retention;
                let n = logs::expire(&self.logs_dir(), cutoff).await;
                if n > 0 {
                    tracing::info!(removed = n, "expired build logs");
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

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
