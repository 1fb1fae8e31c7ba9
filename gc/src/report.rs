//! What a GC run did (or, dry, would do): counts, bytes, the items
//! themselves, errors. Stored in `gc_runs` and returned by the admin API.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Items listed per kind in a stored report; counts are always exact.
pub const LISTED_ITEMS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    TagCleanup,
    Untagged,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::TagCleanup => "tag-cleanup",
            JobKind::Untagged => "untagged",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "tag-cleanup" => Some(JobKind::TagCleanup),
            "untagged" => Some(JobKind::Untagged),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovedTag {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemovedItem {
    pub repository: String,
    pub digest: String,
    pub size: u64,
}

/// The items a run removed (or would remove), sorted for comparison.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Removed {
    pub tags: Vec<RemovedTag>,
    pub manifests: Vec<RemovedItem>,
    pub blob_links: Vec<RemovedItem>,
    pub blobs: Vec<RemovedItem>,
    pub orphan_objects: Vec<RemovedItem>,
}

impl Removed {
    pub fn sort(&mut self) {
        self.tags
            .sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
        for list in [
            &mut self.manifests,
            &mut self.blob_links,
            &mut self.blobs,
            &mut self.orphan_objects,
        ] {
            list.sort_by(|a, b| (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest)));
        }
    }

    fn truncated(&self) -> Removed {
        let cut = |v: &Vec<RemovedItem>| v.iter().take(LISTED_ITEMS).cloned().collect();
        Removed {
            tags: self.tags.iter().take(LISTED_ITEMS).cloned().collect(),
            manifests: cut(&self.manifests),
            blob_links: cut(&self.blob_links),
            blobs: cut(&self.blobs),
            orphan_objects: cut(&self.orphan_objects),
        }
    }
}

/// The admin API's and `gc_runs`' shape of a run (read back by the CLI,
/// and from rows written by older versions: missing fields default).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Row id in `gc_runs` (0 until recorded).
    pub id: i64,
    pub job: JobKind,
    pub dry_run: bool,
    /// `schedule` or `admin`.
    pub trigger: String,
    /// `running`, `ok`, `failed` (errors hold why) or `interrupted`.
    pub status: String,
    pub started_ms: i64,
    #[serde(default)]
    pub finished_ms: i64,
    #[serde(default)]
    pub tags_removed: usize,
    #[serde(default)]
    pub manifests_removed: usize,
    #[serde(default)]
    pub blob_links_removed: usize,
    #[serde(default)]
    pub blobs_removed: usize,
    #[serde(default)]
    pub orphan_objects_removed: usize,
    #[serde(default)]
    pub uploads_expired: usize,
    /// Bytes of blob objects deleted from the store.
    #[serde(default)]
    pub bytes_freed: u64,
    /// Quota each namespace got back.
    #[serde(default)]
    pub freed_per_namespace: BTreeMap<String, u64>,
    /// Namespaces whose quota ledger the run's reconcile pass corrected.
    #[serde(default)]
    pub quota_drift_fixed: usize,
    /// Milliseconds spent in each phase of the run.
    #[serde(default)]
    pub phases_ms: BTreeMap<String, u64>,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub removed: Removed,
}

impl RunReport {
    pub fn new(job: JobKind, dry_run: bool, trigger: &str, started_ms: i64) -> RunReport {
        RunReport {
            id: 0,
            job,
            dry_run,
            trigger: trigger.to_owned(),
            status: "running".into(),
            started_ms,
            finished_ms: 0,
            tags_removed: 0,
            manifests_removed: 0,
            blob_links_removed: 0,
            blobs_removed: 0,
            orphan_objects_removed: 0,
            uploads_expired: 0,
            bytes_freed: 0,
            freed_per_namespace: BTreeMap::new(),
            quota_drift_fixed: 0,
            phases_ms: BTreeMap::new(),
            errors: Vec::new(),
            removed: Removed::default(),
        }
    }

    /// The JSON kept in `gc_runs`: everything, with item lists capped.
    pub fn stored(&self) -> serde_json::Value {
        let mut copy = self.clone();
        copy.removed = self.removed.truncated();
        serde_json::to_value(copy).expect("reports serialize")
    }
}
