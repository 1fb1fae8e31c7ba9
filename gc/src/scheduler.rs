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

/// The slot a tick of `schedule` at `now_ms` runs: the schedule's latest
/// fire time, in unix milliseconds (UTC, as tokio-cron-scheduler reads the
/// schedule). Every replica's tick for one fire time names the same slot,
/// so the slot is run once (`job_leases.last_slot_ms`). Half a second of
/// slack: a tick that fires a little early still names its own slot.
pub fn slot(schedule: &str, now_ms: i64) -> Option<i64> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(schedule)
        .ok()?;
    // Whole seconds: the schedule's resolution (croner keeps a fraction).
    let secs = now_ms.saturating_add(500).div_euclid(1000);
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(secs, 0)?;
    cron.find_previous_occurrence(&at, true)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_slot_is_the_latest_fire_time() {
        // 2026-01-01T00:07:00.200Z: the 5-minute schedule's slot is :05.
        let t = 1_767_226_020_200;
        let five = super::slot("0 */5 * * * *", t).unwrap();
        assert_eq!(five, 1_767_225_900_000);
        // A tick a little early for :10 still names :10.
        let early = 1_767_226_200_000 - 300;
        assert_eq!(super::slot("0 */5 * * * *", early), Some(1_767_226_200_000));
        assert_eq!(super::slot("not cron", t), None);
    }
}
