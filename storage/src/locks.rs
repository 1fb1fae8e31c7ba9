//! Per-digest locks (striped) that order a blob's object and row changes
//! between upload completion and garbage collection.
//!
//! Without them this interleaving loses data: GC deletes a blob's row,
//! an upload of the same content renames its object into place and links
//! it (new row), then GC deletes "its" object: a row without an object.
//! Upload completion holds the digest's lock from the rename until the
//! link commits; GC holds it from the row deletion until the object is
//! gone.
//!
//! `BlobLocks` are this process's (enough with SQLite, whose data dir one
//! process holds). With PostgreSQL metadata several processes may share
//! the blobs, so the locks are the database's (advisory locks, see
//! `meta/postgres`); `DigestGuard` is either kind, and `Storage` picks.

use tokio::sync::{Mutex, MutexGuard};

/// Held digest locks, of this process or of the database. Release with
/// `release` (a database guard dropped instead closes its connection,
/// which releases it too).
pub enum DigestGuard<'a> {
    Local(Vec<MutexGuard<'a, ()>>),
    Shared(Box<crate::meta::DigestLock>),
}

impl DigestGuard<'_> {
    pub async fn release(self) {
        match self {
            DigestGuard::Local(guards) => drop(guards),
            DigestGuard::Shared(lock) => (*lock).release().await,
        }
    }
}

const STRIPES: usize = 1024;

pub struct BlobLocks {
    stripes: Vec<Mutex<()>>,
}

impl Default for BlobLocks {
    fn default() -> Self {
        BlobLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl BlobLocks {
    fn stripe(digest: &str) -> usize {
        // Digests are uniformly distributed hex: their tail is a fine hash.
        let tail = &digest.as_bytes()[digest.len().saturating_sub(8)..];
        tail.iter().fold(0usize, |acc, b| {
            acc.wrapping_mul(31).wrapping_add(*b as usize)
        }) % STRIPES
    }

    pub async fn lock(&self, digest: &str) -> MutexGuard<'_, ()> {
        self.stripes[Self::stripe(digest)].lock().await
    }

    /// Locks every digest's stripe, in stripe order (so two callers can
    /// never deadlock).
    pub async fn lock_many<'a, 'd>(
        &'a self,
        digests: impl Iterator<Item = &'d str>,
    ) -> Vec<MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = digests.map(Self::stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for s in stripes {
            guards.push(self.stripes[s].lock().await);
        }
        guards
    }
}
