//! What forges deliver: which forge (by its event header), which event,
//! and a push event's payload as typed structs. Only the fields a trigger
//! needs are read; everything else in the (large) payloads is ignored.
//!
//! GitLab (`X-Gitlab-Event: Push Hook` / `Tag Push Hook`): `ref`,
//! `before`, `after`, `user_username` (else `user_name`), `project`
//! (`git_http_url`, `web_url`, `default_branch`) and `repository`
//! (`git_http_url`, `homepage`).
//! GitHub, Gitea, Forgejo (`X-GitHub-Event` / `X-Gitea-Event` /
//! `X-Forgejo-Event: push`): `ref`, `before`, `after`, `deleted`,
//! `repository` (`clone_url`, `html_url`, `default_branch`) and `pusher`
//! (`name` on GitHub; `login`/`username` on Gitea and Forgejo).

use http::HeaderMap;
use serde::Deserialize;

/// Who sent a delivery, and how it proves the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// `X-Gitlab-Token`.
    GitLab,
    /// GitHub, Gitea or Forgejo: `X-Hub-Signature-256`.
    Hub,
}

/// The delivery's forge and event name, from its headers; None when no
/// forge's event header is there.
pub fn identify(headers: &HeaderMap) -> Option<(Forge, String)> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_owned())
    };
    if let Some(event) = text("x-gitlab-event") {
        return Some((Forge::GitLab, event));
    }
    // Gitea and Forgejo also send X-GitHub-Event; their own header wins.
    ["x-forgejo-event", "x-gitea-event", "x-github-event"]
        .iter()
        .find_map(|h| text(h))
        .map(|event| (Forge::Hub, event))
}

/// What kind of event a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A push of a branch or a tag.
    Push,
    /// GitHub's `ping`, sent when a hook is created.
    Ping,
    /// Anything else (issues, merge requests, ...): acknowledged, ignored.
    Other,
}

pub fn event_kind(forge: Forge, event: &str) -> EventKind {
    match (forge, event) {
        (Forge::GitLab, "Push Hook" | "Tag Push Hook") => EventKind::Push,
        (Forge::Hub, "push") => EventKind::Push,
        (Forge::Hub, "ping") => EventKind::Ping,
        _ => EventKind::Other,
    }
}

/// A push, whichever forge sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The full ref (`refs/heads/main`, `refs/tags/v1`).
    pub reference: String,
    pub before: String,
    pub after: String,
    /// The ref was deleted (after is all zeros, or `deleted: true`).
    pub deleted: bool,
    /// The repository's URLs the payload gives (clone and web).
    pub repository_urls: Vec<String>,
    pub default_branch: Option<String>,
    pub pusher: String,
}

#[derive(Debug, Deserialize)]
struct GitLabPush {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    before: String,
    after: String,
    #[serde(default)]
    user_username: Option<String>,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    project: Option<GitLabProject>,
    #[serde(default)]
    repository: Option<GitLabRepository>,
}

#[derive(Debug, Deserialize)]
struct GitLabProject {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    web_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GitLabRepository {
    #[serde(default)]
    git_http_url: Option<String>,
    #[serde(default)]
    homepage: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HubPush {
    #[serde(rename = "ref")]
    reference: String,
    #[serde(default)]
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: HubRepository,
    #[serde(default)]
    pusher: Option<HubUser>,
    #[serde(default)]
    sender: Option<HubUser>,
}

#[derive(Debug, Deserialize)]
struct HubRepository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    default_branch: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HubUser {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    login: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

impl HubUser {
    fn shown(&self) -> Option<String> {
        [&self.name, &self.login, &self.username]
            .into_iter()
            .flatten()
            .find(|s| !s.is_empty())
            .cloned()
    }
}

const ZERO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// Longest pusher name kept (it ends up in build records and logs).
const MAX_PUSHER: usize = 200;

/// Parses a push event's payload; the error says what is wrong with it.
pub fn parse_push(forge: Forge, body: &[u8]) -> Result<PushEvent, String> {
    let mut event = match forge {
        Forge::GitLab => {
            let p: GitLabPush = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let mut urls = Vec::new();
            let mut default_branch = None;
            if let Some(project) = p.project {
                urls.extend(project.git_http_url);
                urls.extend(project.web_url);
                default_branch = project.default_branch;
            }
            if let Some(repo) = p.repository {
                urls.extend(repo.git_http_url);
                urls.extend(repo.homepage);
            }
            PushEvent {
                deleted: p.after == ZERO_COMMIT,
                reference: p.reference,
                before: p.before,
                after: p.after,
                repository_urls: urls,
                default_branch,
                pusher: p
                    .user_username
                    .filter(|s| !s.is_empty())
                    .or(p.user_name)
                    .unwrap_or_default(),
            }
        }
        Forge::Hub => {
            let p: HubPush = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            PushEvent {
                deleted: p.deleted || p.after == ZERO_COMMIT,
                reference: p.reference,
                before: p.before,
                after: p.after,
                repository_urls: [p.repository.clone_url, p.repository.html_url]
                    .into_iter()
                    .flatten()
                    .collect(),
                default_branch: p.repository.default_branch,
                pusher: p
                    .pusher
                    .as_ref()
                    .and_then(HubUser::shown)
                    .or_else(|| p.sender.as_ref().and_then(HubUser::shown))
                    .unwrap_or_default(),
            }
        }
    };
    event.pusher = event.pusher.chars().take(MAX_PUSHER).collect();
    if !event.reference.starts_with("refs/") {
        return Err(format!(
            "ref {} is not a full git ref (refs/heads/..., refs/tags/...)",
            berth_builds::source::shown(&event.reference)
        ));
    }
    if !event.deleted && !berth_builds::git::is_commit(&event.after) {
        return Err(format!(
            "after {} is not a full commit id",
            berth_builds::source::shown(&event.after)
        ));
    }
    event.after = event.after.to_ascii_lowercase();
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn forges_are_told_by_their_event_header() {
        assert_eq!(
            identify(&headers(&[("x-gitlab-event", "Push Hook")])),
            Some((Forge::GitLab, "Push Hook".into()))
        );
        assert_eq!(
            identify(&headers(&[("x-github-event", "push")])),
            Some((Forge::Hub, "push".into()))
        );
        assert_eq!(
            identify(&headers(&[
                ("x-gitea-event", "push"),
                ("x-github-event", "push")
            ])),
            Some((Forge::Hub, "push".into()))
        );
        assert_eq!(
            identify(&headers(&[("x-forgejo-event", "push")])),
            Some((Forge::Hub, "push".into()))
        );
        assert_eq!(identify(&headers(&[("user-agent", "curl")])), None);
        assert_eq!(event_kind(Forge::GitLab, "Tag Push Hook"), EventKind::Push);
        assert_eq!(event_kind(Forge::GitLab, "Issue Hook"), EventKind::Other);
        assert_eq!(event_kind(Forge::Hub, "ping"), EventKind::Ping);
        assert_eq!(event_kind(Forge::Hub, "issues"), EventKind::Other);
    }

    #[test]
    fn the_documented_payloads_parse() {
        let gitlab = include_bytes!("../../../tests/fixtures/hooks/gitlab-push.json");
        let p = parse_push(Forge::GitLab, gitlab).unwrap();
        assert_eq!(p.reference, "refs/heads/master");
        assert_eq!(p.after, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
        assert_eq!(p.pusher, "jsmith");
        assert_eq!(p.default_branch.as_deref(), Some("master"));
        assert!(!p.deleted);
        assert!(p
            .repository_urls
            .contains(&"http://example.com/mike/diaspora.git".to_owned()));

        let github = include_bytes!("../../../tests/fixtures/hooks/github-push.json");
        let p = parse_push(Forge::Hub, github).unwrap();
        assert_eq!(p.reference, "refs/tags/simple-tag");
        assert!(p.deleted, "the documented example deletes a tag");
        assert_eq!(p.pusher, "Codertocat");
        assert_eq!(p.default_branch.as_deref(), Some("master"));
        assert!(p
            .repository_urls
            .contains(&"https://github.com/Codertocat/Hello-World.git".to_owned()));
    }

    #[test]
    fn malformed_payloads_say_why() {
        for (forge, body) in [
            (Forge::Hub, &b"not json"[..]),
            (Forge::Hub, br#"{"ref": "refs/heads/main"}"#),
            (Forge::Hub, br#"{"ref": "main", "after": "0123456789abcdef0123456789abcdef01234567", "repository": {}}"#),
            (Forge::Hub, br#"{"ref": "refs/heads/main", "after": "xyz", "repository": {}}"#),
            (Forge::GitLab, br#"{"ref": 5, "after": "0123456789abcdef0123456789abcdef01234567"}"#),
            (Forge::GitLab, br#"[]"#),
        ] {
            assert!(parse_push(forge, body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let p = parse_push(
            Forge::GitLab,
            br#"{"ref": "refs/heads/x", "after": "0000000000000000000000000000000000000000"}"#,
        )
        .unwrap();
        assert!(p.deleted);
    }
}
