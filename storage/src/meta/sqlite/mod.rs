//! Registry metadata in SQLite. One writer connection lives on a dedicated
//! thread and runs each write inside a `BEGIN IMMEDIATE` transaction, so
//! writes are serialised (the basis of GC and quota safety); reads use a
//! small pool of connections, on tokio's blocking threads except point
//! reads (a few index probes), which run on the calling task's thread
//! (`read_point`). All of berth's SQL lives in this directory.
//!
//! Group commit: the writer takes every write queued behind the one it
//! woke for (up to `GROUP_MAX`) into one transaction, each in its own
//! savepoint, so a write that fails or is refused rolls back alone, and
//! they all commit together: with `sqlite_synchronous = "full"` one fsync
//! serves the whole group. A write's caller hears back only after the
//! group's commit, so nothing is acknowledged before it is durable.

mod builds;
mod console;
mod events;
mod export;
mod fixture;
mod gc;
mod integrity;
mod liveness;
mod manifest_cache;
mod queries;
mod quota;
mod schema;
mod sessions;
mod tokens;
mod triggers;
mod wal_vfs;

pub(crate) use export::export_tables;
pub(crate) use integrity::Integrity;

use super::types::*;

use crate::StorageError;
use manifest_cache::ManifestCache;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, Semaphore};

/// How hard SQLite flushes on commit (`[storage] sqlite_synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Durable across process crashes; a power loss may lose the last commits.
    #[default]
    Normal,
    /// Durable across power loss, at the cost of an fsync per commit.
    Full,
}

/// One write: runs in its savepoint of the group's transaction and hands
/// back what to tell its caller once the group's commit succeeded or
/// failed (`None`: it told its caller already; it changed nothing).
type WriteJob = Box<dyn FnOnce(&Transaction<'_>) -> Option<Completion> + Send>;
type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Most writes committed in one transaction.
const GROUP_MAX: usize = 64;

/// A reader connection out of the pool, put back when dropped (also when
/// the read panics), so the pool never shrinks below its semaphore.
/// Taken only while holding one of `reader_slots`' permits.
struct PooledReader<'a> {
    inner: &'a Inner,
    conn: Option<Connection>,
}

impl<'a> PooledReader<'a> {
    fn take(inner: &'a Inner) -> Result<PooledReader<'a>, StorageError> {
        let conn = inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .ok_or(StorageError::Closed)?;
        Ok(PooledReader {
            inner,
            conn: Some(conn),
        })
    }
}

impl std::ops::Deref for PooledReader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("taken until dropped")
    }
}

impl Drop for PooledReader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

/// Handle to the metadata database. Cheap to clone.
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Option<(mpsc::Sender<WriteJob>, JoinHandle<()>)>>,
    /// Stops the checkpointer thread when dropped or sent to.
    checkpointer: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Semaphore,
    path: PathBuf,
    quota: RwLock<Arc<QuotaPolicy>>,
    /// Bumped after every committed write; cached reads are valid only for
    /// the generation they were read at.
    generation: Arc<AtomicU64>,
    manifests: ManifestCache,
    /// See `liveness`: how often a HEAD records a blob's use.
    touch_interval_ms: AtomicU64,
    /// See `events`: whether changes are recorded in the feed.
    events_on: std::sync::atomic::AtomicBool,
}

const READERS: usize = 4;

/// Prepared statements each connection keeps.
const STATEMENT_CACHE: usize = 256;

/// WAL frames (pages) past which the checkpointer makes the WAL start over
/// (16,384 frames of 4 KiB: 64 MiB).
const WAL_RESTART_FRAMES: i64 = 16_384;

/// The size the WAL file is cut back to after it starts over. Under a
/// steady push load it holds 120-480 MiB of frames by the time the
/// checkpointer (every `CHECKPOINT_EVERY`) makes it start over; cutting it
/// back to 64 MiB each time, and then extending it again, cost a sixth of
/// small-push throughput (the file system freeing and allocating the same
/// blocks, 100+ ms stalls in the p99). The price is up to this much disk
/// held by the WAL between busy periods; it is removed when berth stops.
const WAL_KEEP_BYTES: i64 = 512 * 1024 * 1024;

/// The writer's page cache. The writer touches random b-tree pages
/// (digests are random keys); SQLite's default 2 MiB cache made it read
/// back and evict pages on every transaction, and 64 MiB keeps the hot
/// index pages. But while the database is smaller than 1 GiB, every
/// commit also walks the whole cache: a b-tree rebalance parks a page
/// under the page number of SQLite's lock byte (1 GiB in) while it swaps
/// two, which leaves the cache's highest page number past the end of the
/// database, and the commit's cut-back of the cache to the database's
/// size then scans every entry (22% of the writer's time in small pushes
/// on a new registry). So the cache is 16 MiB until the database reaches
/// 1 GiB (checked every `CHECK_EVERY` commits), 64 MiB from there on.
struct WriterCache {
    lock_page: i64,
    /// Whether the database has reached 1 GiB; it stays so.
    large: bool,
    commits: u32,
}

impl WriterCache {
    const SMALL_KIB: i64 = 16 * 1024;
    const LARGE_KIB: i64 = 64 * 1024;
    const CHECK_EVERY: u32 = 1024;

    fn new(writer: &Connection) -> rusqlite::Result<WriterCache> {
        let page_size: i64 = writer.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let mut cache = WriterCache {
            lock_page: (1 << 30) / page_size.max(512) + 1,
            large: false,
            commits: 0,
        };
        cache.large = cache.past_lock_page(writer)?;
        cache.apply(writer)?;
        Ok(cache)
    }

    fn past_lock_page(&self, writer: &Connection) -> rusqlite::Result<bool> {
        let pages: i64 = writer.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        Ok(pages >= self.lock_page)
    }

    fn apply(&self, writer: &Connection) -> rusqlite::Result<()> {
        let kib = if self.large {
            Self::LARGE_KIB
        } else {
            Self::SMALL_KIB
        };
        writer.pragma_update(None, "cache_size", -kib)
    }

    fn after_commit(&mut self, writer: &Connection) {
        self.commits = self.commits.wrapping_add(1);
        if self.large || !self.commits.is_multiple_of(Self::CHECK_EVERY) {
            return;
        }
        let grown = self.past_lock_page(writer).and_then(|past| {
            self.large = past;
            if past {
                self.apply(writer)?;
            }
            Ok(())
        });
        if let Err(e) = grown {
            tracing::warn!(error = %e, "could not size the writer's page cache");
        }
    }
}

/// How long a RESTART checkpoint may hold writers while it waits for
/// readers to leave the old WAL.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path, synchronous: Synchronous) -> Result<Sqlite, StorageError> {
        // The writer alone writes WAL frames; its VFS hands each commit's
        // frames to the kernel in one write (see `wal_vfs`).
        let vfs = wal_vfs::register().map_err(StorageError::Internal)?;
        let mut writer = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(
            None,
            "synchronous",
            match synchronous {
                Synchronous::Normal => "NORMAL",
                Synchronous::Full => "FULL",
            },
        )?;
        writer.pragma_update(None, "foreign_keys", "ON")?;
        let mut writer_cache = WriterCache::new(&writer)?;
        // After the WAL starts over, its file is cut back to this size.
        writer.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)?;
        // Checkpoints run on their own thread (below): an automatic one
        // would run inside some push's commit and, after a long read had
        // let the WAL grow, stall it for as long as the copy takes.
        writer.pragma_update(None, "wal_autocheckpoint", 0)?;
        writer.busy_timeout(std::time::Duration::from_secs(30))?;
        tune(&writer)?;
        // Each write job runs in a savepoint (group commit), whose journal
        // of the pages it changed spilled to a temporary file past 64 KiB
        // (the bundled SQLite keeps temporary data in files): a GC batch
        // created, wrote and deleted a file per commit, a fifth of the
        // writer's time in tag cleanup. In memory, it is bounded by one
        // job's changes. (The writer holds no temporary tables.)
        writer.pragma_update(None, "temp_store", "MEMORY")?;
        schema::migrate(&mut writer)?;

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.busy_timeout(std::time::Duration::from_secs(30))?;
            tune(&r)?;
            readers.push(r);
        }

        let checkpointer = spawn_checkpointer(path)?;
        let generation = Arc::new(AtomicU64::new(0));
        let generation_for_writer = generation.clone();
        let (tx, rx) = mpsc::channel::<WriteJob>();
        let handle = std::thread::Builder::new()
            .name("berth-sqlite-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < GROUP_MAX {
                        match rx.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    run_group(&mut writer, group, &generation_for_writer);
                    writer_cache.after_commit(&writer);
                }
                // Dropping the last connection checkpoints the WAL.
                drop(writer);
            })?;
        Ok(Sqlite {
            inner: Arc::new(Inner {
                writer: Mutex::new(Some((tx, handle))),
                checkpointer: Mutex::new(Some(checkpointer)),
                readers: Mutex::new(readers),
                reader_slots: Semaphore::new(READERS),
                path: path.to_owned(),
                quota: RwLock::new(Arc::new(QuotaPolicy::default())),
                generation,
                manifests: ManifestCache::default(),
                touch_interval_ms: AtomicU64::new(60_000),
                events_on: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Replaces the configured quota limits; the next write uses them.
    pub fn set_quota_policy(&self, policy: QuotaPolicy) {
        *self.inner.quota.write().expect("quota policy lock") = Arc::new(policy);
    }

    pub fn quota_policy(&self) -> Arc<QuotaPolicy> {
        self.inner.quota.read().expect("quota policy lock").clone()
    }

    /// The current write generation (see `cache_manifest`).
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::SeqCst)
    }

    /// A cached manifest if nothing was written since it was read.
    pub(crate) fn cached_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Option<Arc<StoredManifest>> {
        self.inner.manifests.get(self.generation(), repo, reference)
    }

    /// Caches what a read that started at `read_generation` found; it is
    /// never served if a write committed since. Skipped at once when one
    /// already has, so that a slow read does not replace what a newer read
    /// cached for the same key.
    pub(crate) fn cache_manifest(
        &self,
        read_generation: u64,
        repo: &str,
        reference: &str,
        m: &StoredManifest,
    ) {
        if self.generation() == read_generation {
            self.inner
                .manifests
                .put(read_generation, repo, reference, m)
        }
    }

    pub fn schema_version() -> usize {
        schema::latest_version()
    }

    /// Runs `f` inside one IMMEDIATE write transaction on the writer thread.
    /// The transaction commits when `f` returns `Ok` and rolls back otherwise.
    async fn write<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        self.write_if(|_| true, f).await
    }

    /// Like `write`, but commits only when `keep` approves the result: a
    /// write that ends in a refusal (quota, a missing blob) is rolled back,
    /// so it leaves no trace (no empty repository, no namespace row).
    async fn write_if<T, F>(&self, keep: fn(&T) -> bool, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |tx: &Transaction<'_>| {
            // Prepared once (execute_batch would parse them every time).
            let savepoint = |sql: &str| tx.prepare_cached(sql).and_then(|mut s| s.execute([]));
            if let Err(e) = savepoint("SAVEPOINT write") {
                let _ = done_tx.send(Err(e.into()));
                return None;
            }
            let outcome = f(tx);
            let keep_it = matches!(&outcome, Ok(v) if keep(v));
            let ended = if keep_it {
                savepoint("RELEASE write")
            } else {
                savepoint("ROLLBACK TO write").and_then(|_| savepoint("RELEASE write"))
            }
            .map(|_| ());
            match (outcome, ended) {
                (Ok(value), Ok(())) if keep_it => {
                    Some(Box::new(move |committed: Result<(), StorageError>| {
                        let _ = done_tx.send(committed.map(|()| value));
                    }) as Completion)
                }
                (outcome, Ok(())) => {
                    let _ = done_tx.send(outcome);
                    None
                }
                (_, Err(e)) => {
                    let _ = done_tx.send(Err(e.into()));
                    None
                }
            }
        });
        {
            let guard = self.inner.writer.lock().expect("writer lock");
            let (sender, _) = guard.as_ref().ok_or(StorageError::Closed)?;
            sender.send(job).map_err(|_| StorageError::Closed)?;
        }
        done_rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Runs `f` with a read-only connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let _slot = self
            .inner
            .reader_slots
            .acquire()
            .await
            .map_err(|_| StorageError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&*PooledReader::take(&inner)?))
            .await
            .map_err(|e| StorageError::Internal(format!("reader task failed: {e}")))?
    }

    /// Runs a point read (a few index probes, tens of microseconds) on the
    /// calling task's own thread when a reader connection is free at once,
    /// else as `read` does. Handing such a read to a blocking thread cost
    /// more than the read itself: with a million manifests, where GETs miss
    /// the manifest cache, half of a GET's samples were waking the blocking
    /// thread and then the task again. Holding an async worker for a point
    /// read costs less than those two wake-ups. Only reads bounded by an
    /// index lookup come here; anything that scans goes through `read`.
    async fn read_point<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        if let Ok(_slot) = self.inner.reader_slots.try_acquire() {
            return f(&*PooledReader::take(&self.inner)?);
        }
        self.read(f).await
    }

    /// Finishes queued writes, then closes every connection. Later calls fail
    /// with `StorageError::Closed`.
    pub async fn close(&self) {
        self.inner.reader_slots.close();
        let writer = self.inner.writer.lock().expect("writer lock").take();
        self.inner.readers.lock().expect("reader pool lock").clear();
        if let Some((sender, handle)) = writer {
            drop(sender);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        let checkpointer = self
            .inner
            .checkpointer
            .lock()
            .expect("checkpointer lock")
            .take();
        if let Some((stop, handle)) = checkpointer {
            let _ = stop.send(());
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs a group of writes in one IMMEDIATE transaction (see the module's
/// doc), commits it, bumps the generation, then tells each kept write's
/// caller how the commit went.
fn run_group(conn: &mut Connection, group: Vec<WriteJob>, generation: &AtomicU64) {
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            // None of them ran; dropping them tells each caller so (its
            // answer channel closes: StorageError::Closed).
            tracing::error!(error = %e, "could not begin a write transaction");
            drop(group);
            return;
        }
    };
    let kept: Vec<Completion> = group.into_iter().filter_map(|job| job(&tx)).collect();
    let committed = if kept.is_empty() {
        tx.rollback().map_err(StorageError::from)
    } else {
        tx.commit().map_err(StorageError::from)
    };
    if committed.is_ok() && !kept.is_empty() {
        // After the commit: a read that began before it cannot cache what
        // it saw (see `cache_manifest`).
        generation.fetch_add(1, Ordering::SeqCst);
    }
    for done in kept {
        done(match &committed {
            Ok(()) => Ok(()),
            Err(e) => Err(StorageError::Internal(format!("commit failed: {e}"))),
        });
    }
}

/// What every connection of berth's gets: statements prepared once.
///
/// SQLite re-prepares (re-parses and re-plans) a statement on every new
/// binding when a bound value took part in planning it; some of berth's
/// joins on a bound key did, on every execution (a tenth of GC's writer
/// time at platform scale; the parser showed in manifest GETs too). The query
/// planner stability guarantee (QPSG) plans once, whatever is bound. And
/// rusqlite keeps only 16 prepared statements by default, fewer than the
/// writer uses (a push, GC's checked deletions).
pub(super) fn tune(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// A thread with its own connection that checkpoints the WAL in PASSIVE
/// mode (never blocking the writer or readers), and fully when stopped.
fn spawn_checkpointer(path: &Path) -> Result<(mpsc::Sender<()>, JoinHandle<()>), StorageError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("berth-sqlite-checkpoint".into())
        .spawn(move || {
            // The frames in the WAL (the pragma's second column).
            let checkpoint = |mode: &str| -> Option<i64> {
                match conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(1)) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::warn!(error = %e, mode, "WAL checkpoint failed");
                        None
                    }
                }
            };
            loop {
                match stop_rx.recv_timeout(CHECKPOINT_EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // Passive checkpoints copy frames back but never
                        // make the WAL start over while writes keep coming
                        // (it restarts only after a checkpoint that caught
                        // up with no write in between): under a steady
                        // push load it grew by gigabytes. Past the limit,
                        // a RESTART copies the little a passive one left
                        // and holds writers back only for that long.
                        //
                        // A RESTART takes the write lock and then waits for
                        // readers still on the old WAL. A long read (GC's
                        // plan reads one snapshot for seconds) made it hold
                        // every push for the whole 5 s busy timeout; so it
                        // waits 20 ms at most and otherwise tries again on
                        // the next tick.
                        if let Some(frames) = checkpoint("PASSIVE") {
                            if frames > WAL_RESTART_FRAMES {
                                let _ = conn.busy_timeout(RESTART_WAIT);
                                checkpoint("RESTART");
                                let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
                            }
                        }
                    }
                    _ => {
                        checkpoint("TRUNCATE");
                        return;
                    }
                }
            }
        })?;
    Ok((stop_tx, handle))
}
