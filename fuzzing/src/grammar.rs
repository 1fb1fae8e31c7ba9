//! Target `digest`: the identifiers every path and row is built from —
//! `Digest` (FromStr), `RepoName::parse` and tag validation — each checked
//! against an independent reading of the distribution spec's grammar.

use berth_storage::names::{validate_tag, MAX_NAME_LEN, MAX_TAG_LEN};
use berth_storage::{Digest, RepoName};

pub fn digest(data: &[u8]) {
    let s = crate::text(data);
    let s = s.as_ref();

    match s.parse::<Digest>() {
        Ok(d) => {
            assert!(spec_digest(s), "accepted digest {s:?}");
            assert_eq!(d.to_string(), s, "a digest prints as parsed");
            assert_eq!(format!("{}:{}", d.algorithm().name(), d.hex()), s);
        }
        Err(e) => {
            assert!(!spec_digest(s), "refused digest {s:?}: {e}");
            assert!(e.to_string().len() < 2048, "error message is bounded");
        }
    }

    match RepoName::parse(s) {
        Ok(n) => {
            assert!(spec_name(s), "accepted name {s:?}");
            assert_eq!(n.as_str(), s);
            let ns = n.namespace();
            assert!(!ns.is_empty() && !ns.contains('/') && s.starts_with(ns));
            assert!(RepoName::parse(ns).is_ok(), "a namespace is a name");
        }
        Err(e) => {
            assert!(!spec_name(s), "refused name {s:?}: {e}");
            assert!(e.to_string().len() < 2048, "error message is bounded");
        }
    }

    match validate_tag(s) {
        Ok(()) => assert!(spec_tag(s), "accepted tag {s:?}"),
        Err(e) => {
            assert!(!spec_tag(s), "refused tag {s:?}: {e}");
            assert!(e.to_string().len() < 2048, "error message is bounded");
        }
    }
}

/// `sha256:` + 64 or `sha512:` + 128 lowercase hex digits.
fn spec_digest(s: &str) -> bool {
    let lower_hex =
        |h: &str, n: usize| h.len() == n && h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    match s.split_once(':') {
        Some(("sha256", h)) => lower_hex(h, 64),
        Some(("sha512", h)) => lower_hex(h, 128),
        _ => false,
    }
}

/// `<component>(/<component>)*`, at most 255 bytes, where a component is
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: runs of [a-z0-9] separated by
/// exactly one separator run, which is `.`, `_`, `__` or any number of `-`.
fn spec_name(s: &str) -> bool {
    fn component(c: &str) -> bool {
        let is_alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
        // Split into maximal runs of alnum and non-alnum characters.
        let mut runs: Vec<(bool, String)> = Vec::new();
        for ch in c.chars() {
            let a = is_alnum(ch);
            match runs.last_mut() {
                Some((kind, run)) if *kind == a => run.push(ch),
                _ => runs.push((a, ch.to_string())),
            }
        }
        let Some(first) = runs.first() else {
            return false;
        };
        let last = runs.last().expect("not empty");
        first.0
            && last.0
            && runs.iter().all(|(alnum, run)| {
                *alnum || run == "." || run == "_" || run == "__" || run.chars().all(|c| c == '-')
            })
    }
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(component)
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn spec_tag(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    s.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
