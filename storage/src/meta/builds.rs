//! Build records: the build queue's state, as the metadata store keeps it.

use std::collections::BTreeMap;

/// Where a build is. The names are Toolforge's (`BUILD_PENDING`, ...):
/// they are what the API shows and what the database stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BuildStatus {
    #[serde(rename = "BUILD_PENDING")]
    Pending,
    #[serde(rename = "BUILD_RUNNING")]
    Running,
    #[serde(rename = "BUILD_SUCCESS")]
    Success,
    #[serde(rename = "BUILD_FAILURE")]
    Failure,
    #[serde(rename = "BUILD_CANCELLED")]
    Cancelled,
    #[serde(rename = "BUILD_TIMEOUT")]
    Timeout,
}

impl BuildStatus {
    pub const ALL: [BuildStatus; 6] = [
        BuildStatus::Pending,
        BuildStatus::Running,
        BuildStatus::Success,
        BuildStatus::Failure,
        BuildStatus::Cancelled,
        BuildStatus::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildStatus::Pending => "BUILD_PENDING",
            BuildStatus::Running => "BUILD_RUNNING",
            BuildStatus::Success => "BUILD_SUCCESS",
            BuildStatus::Failure => "BUILD_FAILURE",
            BuildStatus::Cancelled => "BUILD_CANCELLED",
            BuildStatus::Timeout => "BUILD_TIMEOUT",
        }
    }

    pub fn parse(s: &str) -> Option<BuildStatus> {
        BuildStatus::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// A final state: the build will not change again.
    pub fn is_finished(self) -> bool {
        !matches!(self, BuildStatus::Pending | BuildStatus::Running)
    }
}

impl std::fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the build was asked to build (Toolforge's `parameters`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildParams {
    pub source_url: String,
    /// The ref as asked for (`HEAD` when none was given).
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default)]
    pub envvars: BTreeMap<String, String>,
    /// As asked for; the record's `image_name` is what was used.
    #[serde(default)]
    pub image_name: Option<String>,
    #[serde(default)]
    pub use_latest_versions: bool,
    /// The exact commit to build (a push's `after`), when the build is of
    /// one commit rather than of whatever `ref` resolves to. Absent from
    /// manual builds' parameters, so their shape is Toolforge's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// What started a build: someone asking for it (`manual`: the API or a
/// CLI), or a forge's push webhook (`push`: the pushed commit, the ref
/// it was pushed to and who pushed it, as the signed payload says).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BuildTrigger {
    #[default]
    Manual,
    Push {
        commit: String,
        #[serde(rename = "ref")]
        reference: String,
        pusher: String,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildRecord {
    pub id: String,
    pub tool: String,
    pub image_name: String,
    pub status: BuildStatus,
    pub message: String,
    pub params: BuildParams,
    pub resolved_ref: String,
    pub destination_image: String,
    pub log_path: String,
    pub created_ms: i64,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub trigger: BuildTrigger,
    /// The build trigger (hook id) that queued it, for push builds: a
    /// queued build of one trigger and ref is what a newer push to that
    /// ref replaces (coalescing).
    pub trigger_id: Option<String>,
}

/// A tool's build trigger: pushes delivered to its hook (`/v1/hooks/<id>`)
/// start builds of `source_url` with these parameters. The hook's secret
/// is not stored: it is derived from a server key, the id and
/// `generation` (bumped on rotation) by the registry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TriggerRecord {
    /// The hook id: 32 lowercase hex digits, random.
    pub id: String,
    pub tool: String,
    pub source_url: String,
    /// Which pushed refs start a build; `None`: the repository's default
    /// branch, as each push's payload names it.
    pub ref_pattern: Option<String>,
    pub image_name: Option<String>,
    pub envvars: BTreeMap<String, String>,
    pub generation: i64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Commits remembered per trigger for replay detection (every backend);
/// older ones are forgotten (a replay of a push that old is queued again).
pub const SEEN_COMMITS_KEPT: i64 = 1000;

/// What `Metadata::queue_push_build` did with a push's build.
#[derive(Debug, Clone)]
pub enum PushQueued {
    /// A new pending build.
    Queued(BuildRecord),
    /// A build of this trigger and ref was still waiting: it now builds
    /// the pushed commit instead of `replaced`.
    Coalesced {
        build: BuildRecord,
        replaced: String,
    },
    /// This trigger has already seen the commit (built, queued or
    /// replaced by a newer push): nothing was queued.
    Replay,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_by_name() {
        for s in BuildStatus::ALL {
            assert_eq!(BuildStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(BuildStatus::parse("BUILD_WHATEVER"), None);
        assert!(BuildStatus::Cancelled.is_finished() && !BuildStatus::Running.is_finished());
    }
}
