//! What a build trigger decides about a push, apart from HTTP and forges:
//! which refs its pattern matches, and whether the repository a payload
//! names is the trigger's source.
//!
//! Ref patterns: a branch name (`main`, `release/v2`) matches that branch
//! (`refs/heads/<name>`) only; a full ref (`refs/heads/...`,
//! `refs/tags/...`) matches that ref; `*` in either matches any run of
//! characters except `/` (`release/*`, `refs/tags/v*`). No pattern means
//! the repository's default branch, as each push's payload names it.

use crate::request::check_ref;

/// Longest ref pattern accepted.
const MAX_PATTERN: usize = 255;

/// Why `pattern` cannot be a trigger's ref pattern, if it cannot: with
/// each `*` taken for a character, it must be a valid git ref (the rules
/// a build's `ref` follows), and not a commit id.
pub fn check_ref_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_PATTERN {
        return Err(format!(
            "ref {} must be a branch name, a full ref (refs/heads/..., refs/tags/...) or such a pattern with *, at most {MAX_PATTERN} characters",
            crate::source::shown(pattern)
        ));
    }
    if crate::git::is_commit(pattern) || pattern == "HEAD" {
        return Err(format!(
            "ref {} names no branch: a trigger's ref is a branch, a full ref or a pattern of them",
            crate::source::shown(pattern)
        ));
    }
    check_ref(&pattern.replace('*', "x")).map_err(|_| {
        format!(
            "ref {} is not a git branch, full ref or pattern of them (* matches within one path segment)",
            crate::source::shown(pattern)
        )
    })
}

/// Whether a push to `pushed` (a full ref, e.g. `refs/heads/main`)
/// matches `pattern`; with no pattern, whether it is the default branch
/// the payload named (`None`: the payload did not say, so it does not).
pub fn ref_matches(pattern: Option<&str>, pushed: &str, default_branch: Option<&str>) -> bool {
    match pattern {
        None => default_branch.filter(|b| !b.is_empty()).is_some_and(|b| {
            pushed == format!("refs/heads/{}", b.trim_start_matches("refs/heads/"))
        }),
        Some(p) if p.starts_with("refs/") => glob(p, pushed),
        Some(p) => pushed
            .strip_prefix("refs/heads/")
            .is_some_and(|branch| glob(p, branch)),
    }
}

/// `*` matches any run of characters but `/`; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    // Iterative matching with one backtrack point (the last `*`):
    // linear-ish, no recursion on attacker-chosen refs.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star.filter(|&(_, st)| t[st] != b'/') {
            // Let the last `*` take one more character (never a `/`).
            star = Some((sp, st + 1));
            pi = sp + 1;
            ti = st + 1;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A repository URL reduced to what identifies the repository: the host
/// (lowercase) and port as the `url` crate normalises them, and the path
/// without a trailing `/` or `.git`; http and https name the same
/// repository. None when `raw` is no URL with a host (or a file path).
pub fn repository_key(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw.trim()).ok()?;
    let scheme = match url.scheme() {
        "http" | "https" => "http(s)",
        "file" => "file",
        _ => return None,
    };
    let mut path = url.path().trim_end_matches('/');
    if let Some(p) = path.strip_suffix(".git") {
        path = p.trim_end_matches('/');
    }
    let host = url.host_str().unwrap_or("");
    // `port()` is None for the scheme's default port.
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{scheme}://{host}{port}{path}"))
}

/// Whether `a` and `b` name the same repository (see [`repository_key`]).
pub fn same_repository(a: &str, b: &str) -> bool {
    matches!((repository_key(a), repository_key(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_checked() {
        for ok in ["main", "release/*", "refs/heads/main", "refs/tags/v*", "*"] {
            assert!(check_ref_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "HEAD",
            "a..b",
            "-x",
            "a b",
            "x?",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(check_ref_pattern(bad).is_err(), "{bad:?}");
        }
        assert!(check_ref_pattern(&"a".repeat(300)).is_err());
    }

    #[test]
    fn refs_match_branches_tags_and_the_default_branch() {
        let m = |p: Option<&str>, r: &str| ref_matches(p, r, Some("main"));
        assert!(m(None, "refs/heads/main"));
        assert!(!m(None, "refs/heads/dev"));
        assert!(!m(None, "refs/tags/main"));
        assert!(!ref_matches(None, "refs/heads/main", None));
        assert!(!ref_matches(None, "refs/heads/main", Some("")));
        assert!(m(Some("dev"), "refs/heads/dev"));
        assert!(!m(Some("dev"), "refs/tags/dev"), "a branch name is no tag");
        assert!(!m(Some("dev"), "refs/heads/dev2"));
        assert!(m(Some("release/*"), "refs/heads/release/v2"));
        assert!(
            !m(Some("release/*"), "refs/heads/release/v2/x"),
            "* stays in its segment"
        );
        assert!(!m(Some("release/*"), "refs/heads/release"));
        assert!(m(Some("refs/tags/v*"), "refs/tags/v1.2"));
        assert!(!m(Some("refs/tags/v*"), "refs/heads/v1.2"));
        assert!(m(Some("*"), "refs/heads/anything"));
        assert!(!m(Some("*"), "refs/heads/a/b"));
        assert!(m(Some("a*b*c"), "refs/heads/axxbyyc"));
        assert!(!m(Some("a*b*c"), "refs/heads/axxbyy"));
        assert!(m(Some("refs/heads/main"), "refs/heads/main"));
    }

    #[test]
    fn repository_urls_are_compared_normalised() {
        let same = [
            (
                "https://gitlab.example.org/g/p.git",
                "https://gitlab.example.org/g/p",
            ),
            (
                "https://GitLab.Example.org/g/p",
                "https://gitlab.example.org/g/p/",
            ),
            (
                "https://gitlab.example.org/g/p.git/",
                "HTTPS://gitlab.example.org/g/p",
            ),
            (
                "https://gitlab.example.org:443/g/p",
                "https://gitlab.example.org/g/p",
            ),
            (
                "http://gitlab.example.org/g/p",
                "https://gitlab.example.org/g/p.git",
            ),
            (
                "http://localhost:8080/bare.git",
                "http://LOCALHOST:8080/bare",
            ),
        ];
        for (a, b) in same {
            assert!(same_repository(a, b), "{a} = {b}");
        }
        let different = [
            (
                "https://gitlab.example.org/g/p",
                "https://gitlab.example.org/g/other",
            ),
            (
                "https://gitlab.example.org/g/p",
                "https://gitlab.example.org/G/P",
            ),
            (
                "https://gitlab.example.org/g/p",
                "https://evil.example.org/g/p",
            ),
            (
                "https://gitlab.example.org/g/p",
                "https://gitlab.example.org:8443/g/p",
            ),
            (
                "https://gitlab.example.org/g/p",
                "https://gitlab.example.org/g/p/x",
            ),
            (
                "https://gitlab.example.org/g/p",
                "git@gitlab.example.org:g/p.git",
            ),
            ("https://gitlab.example.org/g/p", ""),
            ("", ""),
        ];
        for (a, b) in different {
            assert!(!same_repository(a, b), "{a} != {b}");
        }
    }
}
