//! Leases on jobs that must run on one replica at a time (GC's jobs, usage
//! sampling, build record pruning, a notification endpoint's deliveries),
//! and schedule slots run once across replicas.
//!
//! With PostgreSQL a lease is a row of `job_leases` (holder, expiry, the
//! last slot run), taken with a locked read and a conditional update
//! (`Metadata::acquire_lease`), renewed every third of its lifetime while
//! the holder works, and given back at the end. A replica that dies
//! stops renewing; its lease expires and the next tick on another replica
//! takes it. With SQLite (one process per data dir) a lease is always
//! granted: the callers' own in-process locks are enough there.

use crate::meta::LeaseOutcome;
use crate::{Metadata, StorageError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The lifetime of a lease unless its user says otherwise: long enough
/// that a slow database round trip never loses a live holder its lease,
/// short enough that a dead holder's job runs again soon.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// What asking for a lease gave.
pub enum Taken {
    Lease(Lease),
    /// Another replica holds it (its id).
    Held(String),
    /// The schedule slot has been run already.
    SlotDone,
}

/// A held lease. Renewed in the background until `release` (or drop,
/// after which it simply expires).
pub struct Lease {
    meta: Option<Metadata>,
    job: String,
    lost: Arc<AtomicBool>,
    renew: Option<tokio::task::JoinHandle<()>>,
    /// GC runs of the job another replica had left unfinished, marked
    /// `interrupted` when this lease was taken.
    pub interrupted: usize,
}

impl Lease {
    /// Takes the lease of `job` for `ttl` (with `slot`, only if that
    /// schedule slot, in unix milliseconds, was not run yet).
    pub async fn acquire(
        meta: &Metadata,
        job: &str,
        ttl: Duration,
        slot: Option<i64>,
    ) -> Result<Taken, StorageError> {
        if !meta.shared() {
            return Ok(Taken::Lease(Lease {
                meta: None,
                job: job.to_owned(),
                lost: Arc::default(),
                renew: None,
                interrupted: 0,
            }));
        }
        let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        match meta.acquire_lease(job, ttl_ms, slot).await? {
            LeaseOutcome::Held { holder } => Ok(Taken::Held(holder)),
            LeaseOutcome::SlotDone => Ok(Taken::SlotDone),
            LeaseOutcome::Acquired { interrupted } => {
                let lost = Arc::new(AtomicBool::new(false));
                let renew = {
                    let (meta, job, lost) = (meta.clone(), job.to_owned(), lost.clone());
                    tokio::spawn(async move {
                        // (A zero period would panic; configs refuse < 1 s.)
                        let mut every =
                            tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
                        every.tick().await;
                        loop {
                            every.tick().await;
                            match meta.renew_lease(&job, ttl_ms).await {
                                Ok(true) => {}
                                Ok(false) => {
                                    tracing::warn!(job, "lost the job's lease (it expired and another replica took it)");
                                    lost.store(true, Ordering::SeqCst);
                                    return;
                                }
                                // Kept trying: the lease is good until it expires.
                                Err(e) => {
                                    tracing::warn!(job, error = %e, "cannot renew the job's lease")
                                }
                            }
                        }
                    })
                };
                Ok(Taken::Lease(Lease {
                    meta: Some(meta.clone()),
                    job: job.to_owned(),
                    lost,
                    renew: Some(renew),
                    interrupted,
                }))
            }
        }
    }

    /// True once another replica has taken the lease over (this holder
    /// should stop, e.g. a deliverer, lest two deliver at once).
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stops renewing and gives the lease back, so the next tick anywhere
    /// can take it at once.
    pub async fn release(mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
        if let Some(meta) = self.meta.take() {
            if let Err(e) = meta.release_lease(&self.job).await {
                tracing::warn!(job = self.job, error = %e, "cannot release the job's lease; it expires on its own");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renew.take() {
            r.abort();
        }
    }
}
