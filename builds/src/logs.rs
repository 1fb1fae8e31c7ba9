//! Build logs: one file per build under `<data>/builds/logs/`, a line per
//! output line with a timestamp and where it came from. Files outlive
//! build records; their own retention removes them.

use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

pub struct BuildLog {
    path: PathBuf,
    file: Mutex<tokio::fs::File>,
}

impl BuildLog {
    pub async fn create(path: &Path) -> std::io::Result<BuildLog> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        Ok(BuildLog {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `text` as one line from `source` (e.g. `berth`, `git`,
    /// `lifecycle`), timestamped. Logging never fails a build.
    pub async fn line(&self, source: &str, text: &str) {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let line = format!("{now} [{source}] {}\n", text.trim_end());
        let mut f = self.file.lock().await;
        if let Err(e) = f.write_all(line.as_bytes()).await {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write build log");
        }
        let _ = f.flush().await;
    }
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
