//! Build logs: one file per build under `<data>/builds/logs/` (directory
//! 0700, files 0600: only berth reads them, and serves them to the tool),
//! a line per output line with a timestamp and where it came from. A log
//! holds at most `max_bytes` of the build's own output (berth's lines
//! always go in), lines are cut at [`MAX_LINE`], so build code cannot fill
//! the disk or berth's memory. Files outlive build records; their own
//! retention removes them. [`follow`] reads a log as a stream, waiting for
//! more while the build runs.
//!
//! With several replicas (PostgreSQL) the replica writing a log also ships
//! what it writes to the database (`build_log_chunks`, in batches: at once
//! for berth's own lines, else every 64 KiB or 250 ms, and every 500 ms
//! while the build is quiet), so any replica can serve it ([`follow_shared`]);
//! the file stays the writer's own copy and SQLite's only one.

use berth_storage::Metadata;
use bytes::Bytes;
use futures_util::Stream;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// Longest line kept from a process's output; longer ones are cut.
pub const MAX_LINE: usize = 16 << 10;

/// How often a followed log is polled for more.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub struct BuildLog {
    path: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    shipper: Option<Arc<Shipper>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// A shipped batch grows to at most this before it goes.
const SHIP_BYTES: usize = 64 << 10;
/// A batch waits at most this long for more lines before it goes.
const SHIP_EVERY: Duration = Duration::from_millis(250);

/// Ships a log's lines to the database for the other replicas.
struct Shipper {
    meta: Metadata,
    build: String,
    /// Lines not shipped yet, and when the last batch went. Held across
    /// the insert, so batches go in order.
    pending: Mutex<(Vec<u8>, std::time::Instant)>,
}

impl Shipper {
    async fn push(&self, line: &[u8], at_once: bool) {
        let mut p = self.pending.lock().await;
        p.0.extend_from_slice(line);
        if at_once || p.0.len() >= SHIP_BYTES || p.1.elapsed() >= SHIP_EVERY {
            self.ship(&mut p).await;
        }
    }

    async fn flush(&self) {
        let mut p = self.pending.lock().await;
        self.ship(&mut p).await;
    }

    async fn ship(&self, p: &mut (Vec<u8>, std::time::Instant)) {
        p.1 = std::time::Instant::now();
        if p.0.is_empty() {
            return;
        }
        let data = std::mem::take(&mut p.0);
        // Logging never fails a build: a lost batch is a gap in what other
        // replicas show (the file has it).
        if let Err(e) = self.meta.append_build_log(&self.build, data).await {
            tracing::warn!(build = %self.build, error = %e, "cannot ship build log lines to the database");
        }
    }
}

impl Drop for BuildLog {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        // What is still pending goes out after the log is dropped.
        if let (Some(s), Ok(rt)) = (self.shipper.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { s.flush().await });
        }
    }
}

struct State {
    file: tokio::fs::File,
    written: u64,
    truncated: bool,
}

/// Creates `dir` (and parents) readable by berth only.
pub async fn private_dir(dir: &Path) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await
}

impl BuildLog {
    /// Opens (appending) or creates the log at `path`, mode 0600.
    pub async fn create(path: &Path, max_bytes: u64) -> std::io::Result<BuildLog> {
        BuildLog::create_shared(path, max_bytes, None).await
    }

    /// Like `create`; with `shared` (the database and the build's id),
    /// what is written is also shipped there for the other replicas.
    pub async fn create_shared(
        path: &Path,
        max_bytes: u64,
        shared: Option<(Metadata, String)>,
    ) -> std::io::Result<BuildLog> {
        if let Some(dir) = path.parent() {
            private_dir(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await?;
        let written = file.metadata().await?.len();
        let shipper = shared.map(|(meta, build)| {
            Arc::new(Shipper {
                meta,
                build,
                pending: Mutex::new((Vec::new(), std::time::Instant::now())),
            })
        });
        // While the build is quiet, what it printed last still goes out.
        let ticker = shipper.as_ref().map(|s| {
            let s = Arc::downgrade(s);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(2 * SHIP_EVERY);
                loop {
                    every.tick().await;
                    match s.upgrade() {
                        Some(s) => s.flush().await,
                        None => return,
                    }
                }
            })
        });
        Ok(BuildLog {
            path: path.to_owned(),
            max_bytes,
            state: Mutex::new(State {
                file,
                written,
                truncated: false,
            }),
            shipper,
            ticker,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `text` as one line from `source` (e.g. `berth`, `git`,
    /// `lifecycle`), timestamped. Logging never fails a build. Past
    /// `max_bytes`, only berth's own lines are kept.
    pub async fn line(&self, source: &str, text: &str) {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mut line = format!("{now} [{source}] {}\n", text.trim_end());
        let mut s = self.state.lock().await;
        if source != "berth" && s.written + line.len() as u64 > self.max_bytes {
            if s.truncated {
                return;
            }
            s.truncated = true;
            line = format!(
                "{now} [berth] the log reached its limit of {} bytes ([builds] max_log_bytes); the build's further output is not kept\n",
                self.max_bytes
            );
        }
        s.written += line.len() as u64;
        if let Err(e) = s.file.write_all(line.as_bytes()).await {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write build log");
        }
        let _ = s.file.flush().await;
        // Still under the file's lock: lines reach the database in the
        // order the file has them.
        if let Some(shipper) = &self.shipper {
            shipper.push(line.as_bytes(), source == "berth").await;
        }
    }
}

/// Copies `reader` into `log` line by line as `source`, cutting lines at
/// [`MAX_LINE`] (memory stays bounded whatever the process prints).
pub async fn pump(reader: impl AsyncRead + Unpin, log: &BuildLog, source: &str) {
    let mut reader = reader;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut rest = &buf[..n];
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            if pending.len() < MAX_LINE {
                let room = MAX_LINE - pending.len();
                pending.extend_from_slice(&rest[..i.min(room)]);
            }
            log.line(source, &String::from_utf8_lossy(&pending)).await;
            pending.clear();
            rest = &rest[i + 1..];
        }
        let room = MAX_LINE.saturating_sub(pending.len());
        pending.extend_from_slice(&rest[..rest.len().min(room)]);
    }
    if !pending.is_empty() {
        log.line(source, &String::from_utf8_lossy(&pending)).await;
    }
}

/// A log as a body: chunks of text.
pub type LogStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where a followed log's bytes come from: its file, or (several
/// replicas) the database's copy. `Ok(None)`: nothing more for now.
trait LogSource: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

/// The log file, opened on the first read.
struct FileSource {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl LogSource for FileSource {
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        if self.file.is_none() {
            let f = tokio::fs::File::open(&self.path)
                .await
                .map_err(|e| format!("the build log cannot be read: {e}"))?;
            self.file = Some(f);
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => Ok(None),
            Ok(n) => {
                buf.truncate(n);
                Ok(Some(Bytes::from(buf)))
            }
            Err(e) => Err(format!("reading the build log failed: {e}")),
        }
    }
}

/// The database's pieces of a build's log, after the last one read.
struct SharedSource {
    meta: Metadata,
    build: String,
    after: i64,
}

impl LogSource for SharedSource {
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        let pieces = self
            .meta
            .build_log_after(&self.build, self.after, 64)
            .await
            .map_err(|e| format!("the build log cannot be read: {e}"))?;
        if pieces.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (seq, data) in pieces {
            self.after = seq;
            out.extend_from_slice(&data);
        }
        Ok(Some(Bytes::from(out)))
    }
}

/// Reads the log at `path`. With `follow`, waits for more (polling every
/// 200 ms) until `finished()` says the build ended, then sends what was
/// written last and ends. `hold` is kept until the stream ends or is
/// dropped (a slot of the follow cap). A log that cannot be read ends the
/// stream with an `error:` line (the answer's status is already sent).
pub fn follow<F, Fut, H>(path: PathBuf, follow: bool, finished: F, hold: H) -> LogStream
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
    H: Send + 'static,
{
    stream(FileSource { path, file: None }, follow, finished, hold)
}

/// Reads build `build`'s log from the database (several replicas: it may
/// be running, or have run, on another one), as `follow` reads a file.
pub fn follow_shared<F, Fut, H>(
    meta: Metadata,
    build: String,
    follow: bool,
    finished: F,
    hold: H,
) -> LogStream
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
    H: Send + 'static,
{
    let source = SharedSource {
        meta,
        build,
        after: 0,
    };
    stream(source, follow, finished, hold)
}

/// A log source as a stream: what there is; with `follow`, polled until
/// the build has finished.
fn stream<S, F, Fut, H>(source: S, follow: bool, finished: F, hold: H) -> LogStream
where
    S: LogSource,
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
    H: Send + 'static,
{
    struct Cursor<S, F, H> {
        source: S,
        done: bool,
        finished: F,
        _hold: H,
    }
    let start = Cursor {
        source,
        done: false,
        finished,
        _hold: hold,
    };
    Box::pin(futures_util::stream::unfold(
        start,
        move |mut c| async move {
            if c.done {
                return None;
            }
            loop {
                // Checked before reading, so the lines written just before the
                // end are read after it is seen.
                let finished = !follow || (c.finished)().await;
                match c.source.next().await {
                    Ok(None) if finished => return None,
                    Ok(None) => tokio::time::sleep(FOLLOW_POLL).await,
                    Ok(Some(chunk)) => return Some((Ok(chunk), c)),
                    Err(what) => {
                        c.done = true;
                        return Some((Ok(Bytes::from(format!("error: {what}\n"))), c));
                    }
                }
            }
        },
    ))
}

/// Removes log files last written before `cutoff` (a SystemTime).
pub async fn expire(dir: &Path, cutoff: std::time::SystemTime) -> usize {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return 0;
    };
    let mut removed = 0;
    while let Ok(Some(e)) = entries.next_entry().await {
        let old = e
            .metadata()
            .await
            .and_then(|m| m.modified())
            .map(|m| m < cutoff)
            .unwrap_or(false);
        if old && tokio::fs::remove_file(e.path()).await.is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn output_is_capped_and_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/b.log");
        let log = BuildLog::create(&path, 4096).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // One line of 100 KiB without a newline, then many short ones.
        let mut input = vec![b'a'; 100 << 10];
        input.extend(b"\nshort\n".repeat(1000));
        pump(&input[..], &log, "lifecycle").await;
        log.line("berth", "BUILD_SUCCESS: done").await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 4096 + 512, "{}", text.len());
        assert!(text.contains("max_log_bytes"), "{text}");
        assert!(text.ends_with("[berth] BUILD_SUCCESS: done\n"), "{text}");
        let first = text.lines().next().unwrap();
        assert!(first.len() < MAX_LINE + 100, "{}", first.len());
    }

    #[tokio::test]
    async fn following_ends_when_the_build_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let log = BuildLog::create(&path, 1 << 20).await.unwrap();
        log.line("berth", "one").await;
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let held = Arc::new(());
        let stream = follow(
            path.clone(),
            true,
            move || {
                let d = d.clone();
                async move { d.load(Ordering::SeqCst) }
            },
            held.clone(),
        );
        let reader = tokio::spawn(async move {
            stream
                .map(|c| String::from_utf8(c.unwrap().to_vec()).unwrap())
                .collect::<String>()
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        log.line("berth", "two").await;
        done.store(true, Ordering::SeqCst);
        let text = reader.await.unwrap();
        assert!(text.contains("one") && text.contains("two"), "{text}");
        assert_eq!(Arc::strong_count(&held), 1, "the hold is released");
    }
}
