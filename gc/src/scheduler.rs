//! Drives the jobs from their cron schedules (tokio-cron-scheduler's
//! 6-field form, e.g. "0 */5 * * * *").

use crate::{Gc, JobKind};
use std::sync::Arc;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

/// Starts the schedules; keep the returned scheduler and shut it down on exit.
pub async fn start(gc: Arc<Gc>) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    for (job, schedule) in [
        (
            JobKind::TagCleanup,
            gc.config().tag_cleanup_schedule.clone(),
        ),
        (JobKind::Untagged, gc.config().untagged_schedule.clone()),
    ] {
        let gc = gc.clone();
        scheduler
            .add(Job::new_async(
                schedule.as_str(),
                move |_id, _scheduler| {
                    let gc = gc.clone();
                    Box::pin(async move {
                        gc.run_if_idle(job).await;
                    })
                },
            )?)
            .await?;
        tracing::info!(job = job.as_str(), schedule, "gc job scheduled");
    }
    scheduler.start().await?;
    Ok(scheduler)
}

/// Checks a cron line without scheduling anything (config validation).
pub fn validate(schedule: &str) -> Result<(), String> {
    Job::new_async(schedule, |_id, _s| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| {
            format!("{schedule:?} is not a 6-field cron schedule such as \"0 */5 * * * *\": {e}")
        })
}
