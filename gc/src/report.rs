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

/// The items a run removed (or would remove), sorted for comparison: the
/// first `LISTED_ITEMS` of each kind in that order. A run at platform
/// scale removes millions of items; the counts in `RunReport` are exact,
/// and the lists stay bounded while the run goes on (the `add_*` methods),
/// so neither the running job nor the admin API's answer holds them all.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Removed {
    pub tags: Vec<RemovedTag>,
    pub manifests: Vec<RemovedItem>,
    pub blob_links: Vec<RemovedItem>,
    pub blobs: Vec<RemovedItem>,
    pub orphan_objects: Vec<RemovedItem>,
}

fn tag_order(a: &RemovedTag, b: &RemovedTag) -> std::cmp::Ordering {
    (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag))
}

fn item_order(a: &RemovedItem, b: &RemovedItem) -> std::cmp::Ordering {
    (&a.repository, &a.digest).cmp(&(&b.repository, &b.digest))
}

/// Adds `item` to a list that keeps the first `LISTED_ITEMS` in `order`:
/// the list may grow to twice that, then is cut back (amortised O(log n)
/// per item, memory bounded).
fn add_bounded<T>(list: &mut Vec<T>, item: T, order: fn(&T, &T) -> std::cmp::Ordering) {
    list.push(item);
    if list.len() >= 2 * LISTED_ITEMS {
        list.sort_by(order);
        list.truncate(LISTED_ITEMS);
    }
}

impl Removed {
    pub fn add_tag(&mut self, t: RemovedTag) {
        add_bounded(&mut self.tags, t, tag_order);
    }
    pub fn add_manifest(&mut self, m: RemovedItem) {
        add_bounded(&mut self.manifests, m, item_order);
    }
    pub fn add_blob_link(&mut self, l: RemovedItem) {
        add_bounded(&mut self.blob_links, l, item_order);
    }
    pub fn add_blob(&mut self, b: RemovedItem) {
        add_bounded(&mut self.blobs, b, item_order);
    }
    pub fn add_orphan_object(&mut self, o: RemovedItem) {
        add_bounded(&mut self.orphan_objects, o, item_order);
    }

    /// Sorts every list and cuts it to its first `LISTED_ITEMS`.
    pub fn sort(&mut self) {
        self.tags.sort_by(tag_order);
        self.tags.truncate(LISTED_ITEMS);
        for list in [
            &mut self.manifests,
            &mut self.blob_links,
            &mut self.blobs,
            &mut self.orphan_objects,
        ] {
            list.sort_by(item_order);
            list.truncate(LISTED_ITEMS);
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

    /// The JSON kept in `gc_runs` (and answered by the admin API).
    pub fn stored(&self) -> serde_json::Value {
        let mut copy = self.clone();
        copy.removed.sort();
        serde_json::to_value(copy).expect("reports serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_lists_keep_the_first_items_in_order_and_stay_bounded() {
        let mut removed = Removed::default();
        // Out of order, more than four times the listed number.
        for i in (0..5 * LISTED_ITEMS).rev() {
            removed.add_blob(RemovedItem {
                repository: String::new(),
                digest: format!("sha256:{i:08}"),
                size: 1,
            });
            assert!(removed.blobs.len() < 2 * LISTED_ITEMS);
        }
        removed.sort();
        assert_eq!(removed.blobs.len(), LISTED_ITEMS);
        let want: Vec<String> = (0..LISTED_ITEMS)
            .map(|i| format!("sha256:{i:08}"))
            .collect();
        let got: Vec<String> = removed.blobs.iter().map(|b| b.digest.clone()).collect();
        assert_eq!(got, want);
    }
}
