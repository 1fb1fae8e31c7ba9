//! The distribution spec's grammar for repository names and tags, and the
//! namespace a repository belongs to. Everything that reaches the database or
//! a path has passed through here, so a name can never carry `..`, `%2F` or
//! other path tricks.

use std::fmt;

/// Longest repository name accepted (registry:2 uses the same bound).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the grammar allows: one leading character plus 127.
pub const MAX_TAG_LEN: usize = 128;

/// A validated repository name such as `tool-foo/web`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is {0} characters long; the limit is {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("invalid repository name {0:?}: path components must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)* and be separated by '/'")]
    Grammar(String),
    #[error("invalid tag {0:?}: tags must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    Tag(String),
}

impl RepoName {
    pub fn parse(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong(s.len()));
        }
        if !s.split('/').all(valid_component) {
            return Err(NameError::Grammar(s.chars().take(160).collect()));
        }
        Ok(RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace (first path segment) that owns this repository and is
    /// charged for its storage: `tool-foo/web` belongs to `tool-foo`.
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: '.', '_', '__' or one or more '-'.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// Validates a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Tag(tag.chars().take(160).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "a",
            "tool-foo/web",
            "library/ubuntu",
            "a.b_c__d---e/f0",
            "toolforge/run",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_path_tricks_and_bad_grammar() {
        for bad in [
            "", "..", "a/../b", "a/./b", "A", "a//b", "/a", "a/", "a%2Fb", "a___b", "-a", "a-",
            "a..b",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(matches!(
            RepoName::parse(&"a".repeat(300)),
            Err(NameError::TooLong(300))
        ));
    }

    #[test]
    fn namespace_is_first_segment() {
        assert_eq!(
            RepoName::parse("tool-foo/web/x").unwrap().namespace(),
            "tool-foo"
        );
        assert_eq!(RepoName::parse("single").unwrap().namespace(), "single");
    }

    #[test]
    fn tags() {
        assert!(validate_tag("latest").is_ok());
        assert!(validate_tag("_v1.2-rc.3").is_ok());
        assert!(validate_tag(&"a".repeat(128)).is_ok());
        assert!(validate_tag(&"a".repeat(129)).is_err());
        assert!(validate_tag(".hidden").is_err());
        assert!(validate_tag("a/b").is_err());
        assert!(validate_tag("").is_err());
    }
}
