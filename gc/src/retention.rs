//! Tag retention: which tags of a repository cleanup removes. Pure
//! functions over the tags as the database saw them, so every rule is
//! table-tested without a registry.

use berth_storage::meta::{RetentionOverride, TagRow};
use regex::Regex;
use std::time::Duration;

/// The rules for one namespace (`[gc.retention]` for the default).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep this many of the most recently pushed (unprotected) tags.
    pub keep_last: u32,
    /// Tags never removed (`latest` by default).
    pub protected_tags: Vec<String>,
    /// Remove unprotected tags older than this, even among the newest.
    #[serde(with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// Tags matching this are never removed.
    #[serde(deserialize_with = "pattern")]
    pub keep_pattern: Option<Regex>,
}

/// A keep pattern from the config file, compiled as it is read.
fn pattern<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Regex>, D::Error> {
    use serde::Deserialize;
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(p) => compile_pattern(&p)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep_last: 5,
            protected_tags: vec!["latest".into()],
            max_age: None,
            keep_pattern: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("keep_pattern {pattern:?} is not a valid regular expression: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// Compiles a keep pattern; anchoring is the caller's choice (`^v\d+$`).
pub fn compile_pattern(pattern: &str) -> Result<Regex, PatternError> {
    Regex::new(pattern).map_err(|e| PatternError {
        pattern: pattern.to_owned(),
        reason: e.to_string(),
    })
}

impl RetentionPolicy {
    /// This policy with a namespace's override applied field by field.
    pub fn with_override(&self, o: &RetentionOverride) -> Result<RetentionPolicy, PatternError> {
        Ok(RetentionPolicy {
            keep_last: o.keep_last.unwrap_or(self.keep_last),
            protected_tags: o
                .protected_tags
                .clone()
                .unwrap_or_else(|| self.protected_tags.clone()),
            max_age: o
                .max_age_ms
                .map(|ms| Duration::from_millis(ms.max(0) as u64))
                .or(self.max_age),
            keep_pattern: match &o.keep_pattern {
                Some(p) => Some(compile_pattern(p)?),
                None => self.keep_pattern.clone(),
            },
        })
    }

    fn protects(&self, tag: &TagRow) -> bool {
        tag.pinned
            || self.protected_tags.iter().any(|p| p == &tag.tag)
            || self
                .keep_pattern
                .as_ref()
                .is_some_and(|r| r.is_match(&tag.tag))
    }

    /// The tags of ONE repository to remove. `tags` must be newest first
    /// (as `Metadata::gc_tags` returns them). Several tags on one digest
    /// are judged one by one.
    pub fn select<'a>(&self, tags: &'a [TagRow], now_ms: i64) -> Vec<&'a TagRow> {
        let mut kept_recent = 0u32;
        let mut remove = Vec::new();
        for t in tags {
            if self.protects(t) {
                continue;
            }
            let too_old = self
                .max_age
                .is_some_and(|age| now_ms - t.updated_ms > age.as_millis() as i64);
            if !too_old && kept_recent < self.keep_last {
                kept_recent += 1;
            } else {
                remove.push(t);
            }
        }
        remove
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000;
    const DAY: i64 = 86_400_000;

    /// Tags named `name:age_days[:pinned][@digest]`, newest first.
    fn tags(spec: &[&str]) -> Vec<TagRow> {
        let mut v: Vec<TagRow> = spec
            .iter()
            .map(|s| {
                let (s, digest) = s.split_once('@').unwrap_or((s, "d"));
                let parts: Vec<&str> = s.split(':').collect();
                TagRow {
                    repo_id: 1,
                    repository: "tool-a/app".into(),
                    namespace: "tool-a".into(),
                    tag: parts[0].into(),
                    digest: digest.into(),
                    updated_ms: NOW - parts[1].parse::<i64>().unwrap() * DAY,
                    pinned: parts.get(2) == Some(&"pinned"),
                }
            })
            .collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.updated_ms));
        v
    }

    fn removed(policy: &RetentionPolicy, spec: &[&str]) -> Vec<String> {
        let t = tags(spec);
        let mut r: Vec<String> = policy
            .select(&t, NOW)
            .into_iter()
            .map(|t| t.tag.clone())
            .collect();
        r.sort();
        r
    }

    fn policy(keep_last: u32, max_age_days: Option<u64>, pattern: Option<&str>) -> RetentionPolicy {
        RetentionPolicy {
            keep_last,
            protected_tags: vec!["latest".into()],
            max_age: max_age_days.map(|d| Duration::from_secs(d * 86_400)),
            keep_pattern: pattern.map(|p| compile_pattern(p).unwrap()),
        }
    }

    #[test]
    fn retention_table() {
        let seven = [
            "latest:9", "v7:1", "v6:2", "v5:3", "v4:4", "v3:5", "v2:6", "v1:7",
        ];
        let cases: Vec<(&str, RetentionPolicy, Vec<&str>, Vec<&str>)> = vec![
            (
                "keep_last alone",
                policy(3, None, None),
                seven.to_vec(),
                vec!["v1", "v2", "v3", "v4"],
            ),
            (
                "keep_last 0 keeps only protected",
                policy(0, None, None),
                seven.to_vec(),
                vec!["v1", "v2", "v3", "v4", "v5", "v6", "v7"],
            ),
            (
                "max_age alone",
                policy(100, Some(4), None),
                seven.to_vec(),
                vec!["v1", "v2", "v3"],
            ),
            (
                "pattern alone",
                policy(0, None, Some("^v[13]$")),
                seven.to_vec(),
                vec!["v2", "v4", "v5", "v6", "v7"],
            ),
            (
                "combined",
                policy(2, Some(5), Some("^v1$")),
                seven.to_vec(),
                vec!["v2", "v3", "v4", "v5"],
            ),
            (
                "latest kept even when old",
                policy(1, Some(1), None),
                vec!["latest:400", "v1:0"],
                vec![],
            ),
            (
                "pinned kept",
                policy(0, Some(1), None),
                vec!["v9:30:pinned", "v8:30"],
                vec!["v8"],
            ),
            (
                "several tags on one digest judged per tag",
                policy(1, None, None),
                vec!["a:1@x", "b:2@x", "c:3@y"],
                vec!["b", "c"],
            ),
            (
                "nothing to do",
                policy(5, None, None),
                vec!["v1:1", "v2:2"],
                vec![],
            ),
        ];
        for (name, p, spec, want) in cases {
            let want: Vec<String> = want.into_iter().map(String::from).collect();
            assert_eq!(removed(&p, &spec), want, "{name}");
        }
    }

    #[test]
    fn overrides_apply_per_field() {
        let base = policy(5, Some(30), None);
        let o = RetentionOverride {
            keep_last: Some(1),
            keep_pattern: Some("^release-".into()),
            ..Default::default()
        };
        let p = base.with_override(&o).unwrap();
        assert_eq!(p.keep_last, 1);
        assert_eq!(p.max_age, Some(Duration::from_secs(30 * 86_400)));
        assert!(p.keep_pattern.unwrap().is_match("release-1"));
        let bad = RetentionOverride {
            keep_pattern: Some("(".into()),
            ..Default::default()
        };
        assert!(base.with_override(&bad).is_err());
    }
}
