//! Fetching sources with the real `git`: resolve a ref to a commit
//! (`git ls-remote`) when the build is requested, and fetch exactly that
//! commit into the build's workspace when it runs.

use crate::logs::BuildLog;
use std::path::Path;
use std::time::Duration;
use tokio::process::Command;

const GIT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot reach the repository {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("ref {reference:?} does not exist in {url}")]
    UnknownRef { url: String, reference: String },
    #[error("git {0}")]
    Failed(String),
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn git(args: &[&str], cwd: Option<&Path>) -> Result<std::process::Output, GitError> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .kill_on_drop(true);
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            GitError::Failed(format!(
                "{} timed out after {GIT_TIMEOUT:?}",
                args.join(" ")
            ))
        })?
        .map_err(|e| GitError::Failed(format!("cannot run git: {e}")))
}

/// Resolves `reference` (a branch, tag, `HEAD`, or a full commit id) in
/// the repository at `url` to a commit id.
pub async fn resolve(url: &str, reference: &str) -> Result<String, GitError> {
    if is_commit(reference) {
        return Ok(reference.to_ascii_lowercase());
    }
    let out = git(&["ls-remote", "--", url, reference], None).await?;
    if !out.status.success() {
        return Err(GitError::Unreachable {
            url: url.into(),
            detail: String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(300)
                .collect(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let refs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
    // Prefer an exact name, then a branch, then a tag (peeled first).
    let candidates = [
        reference.to_owned(),
        format!("refs/heads/{reference}"),
        format!("refs/tags/{reference}^{{}}"),
        format!("refs/tags/{reference}"),
    ];
    candidates
        .iter()
        .find_map(|c| {
            refs.iter()
                .find(|(_, name)| name == c)
                .map(|(sha, _)| sha.to_string())
        })
        .ok_or_else(|| GitError::UnknownRef {
            url: url.into(),
            reference: reference.into(),
        })
}

/// Fetches exactly `commit` of `url` (via `reference`) into `dir`.
pub async fn checkout(
    url: &str,
    reference: &str,
    commit: &str,
    dir: &Path,
    log: &BuildLog,
) -> Result<(), GitError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| GitError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = git(&refs, Some(dir)).await?;
        for l in String::from_utf8_lossy(&out.stderr)
            .lines()
            .chain(String::from_utf8_lossy(&out.stdout).lines())
        {
            log.line("git", l).await;
        }
        if out.status.success() {
            Ok(())
        } else {
            Err(GitError::Failed(format!(
                "{} failed ({})",
                args.join(" "),
                out.status
            )))
        }
    };
    run(vec!["init".into(), "-q".into()]).await?;
    let wanted = if is_commit(reference) {
        commit.to_owned()
    } else {
        reference.to_owned()
    };
    if run(vec![
        "fetch".into(),
        "-q".into(),
        "--depth".into(),
        "1".into(),
        "--".into(),
        url.into(),
        wanted,
    ])
    .await
    .is_err()
    {
        run(vec![
            "fetch".into(),
            "-q".into(),
            "--".into(),
            url.into(),
            commit.into(),
        ])
        .await?;
    }
    // The ref may have moved since it was resolved: build what was resolved.
    if run(vec![
        "checkout".into(),
        "-q".into(),
        "--detach".into(),
        commit.into(),
    ])
    .await
    .is_err()
    {
        run(vec![
            "fetch".into(),
            "-q".into(),
            "--".into(),
            url.into(),
            commit.into(),
        ])
        .await?;
        run(vec![
            "checkout".into(),
            "-q".into(),
            "--detach".into(),
            commit.into(),
        ])
        .await?;
    }
    let _ = tokio::fs::remove_dir_all(dir.join(".git")).await;
    log.line("git", &format!("checked out {commit}")).await;
    Ok(())
}
