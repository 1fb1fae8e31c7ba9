//! Recently read manifests by (repository, reference), each valid only for
//! the write generation it was read at.
//!
//! Bounded by the bytes it holds and evicting one entry at a time: the
//! cache it replaces started over when full, and dropping 4,096 entries at
//! once under its lock stalled both async workers about every 4,096 misses.
//! With random tags over a million manifests (where nearly every GET
//! misses) that stall alone put the manifest GET p99 at 2.5-2.9 ms, against
//! 1.3-1.5 ms without it (BENCHMARKS.md, round 6).
//!
//! A write commit does not clear anything: it bumps the generation, and an
//! entry read at an older one is a miss (and is replaced or evicted in
//! time). So a read that began before a commit never serves what it saw
//! after the commit, the rule the whole-cache generation kept before.

use crate::meta::types::StoredManifest;
use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};
use std::sync::Arc;

/// Manifest bytes (and keys) kept at most.
const CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// A typical entry, for sizing the cache's tables (a manifest of a few KiB).
const TYPICAL_ENTRY_BYTES: u64 = 4 * 1024;
/// Larger manifests are served from the database each time (rare: a
/// typical manifest is a few KiB), so one tenant's large manifests cannot
/// push everyone's out.
const ITEM_MAX_BYTES: u64 = 256 * 1024;
/// What an entry costs beyond its bytes and key (the map's slot, the
/// `Arc`, the strings' headers).
const ENTRY_OVERHEAD_BYTES: u64 = 128;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    repo: String,
    reference: String,
}

/// The lookup form of `Key`, so a hit allocates nothing.
#[derive(Hash)]
struct KeyRef<'a> {
    repo: &'a str,
    reference: &'a str,
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.repo == key.repo && self.reference == key.reference
    }
}

/// Cloned out of the cache on every hit: a generation and a shared
/// manifest, no copy of its bytes.
#[derive(Clone)]
struct Entry {
    generation: u64,
    manifest: Arc<StoredManifest>,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Key, Entry> for ByBytes {
    fn weight(&self, key: &Key, entry: &Entry) -> u64 {
        weight(&key.repo, &key.reference, &entry.manifest)
    }
}

fn weight(repo: &str, reference: &str, m: &StoredManifest) -> u64 {
    (m.bytes.len() + m.digest.len() + m.media_type.len() + repo.len() + reference.len()) as u64
        + ENTRY_OVERHEAD_BYTES
}

pub(super) struct ManifestCache {
    entries: Cache<Key, Entry, ByBytes>,
}

impl Default for ManifestCache {
    fn default() -> Self {
        Self {
            entries: Cache::with_weighter(
                (CAPACITY_BYTES / TYPICAL_ENTRY_BYTES) as usize,
                CAPACITY_BYTES,
                ByBytes,
            ),
        }
    }
}

impl ManifestCache {
    /// The manifest cached for `repo` and `reference` if it was read at
    /// `generation` (the current one).
    pub(super) fn get(
        &self,
        generation: u64,
        repo: &str,
        reference: &str,
    ) -> Option<Arc<StoredManifest>> {
        self.entries
            .get(&KeyRef { repo, reference })
            .filter(|e| e.generation == generation)
            .map(|e| e.manifest)
    }

    /// Keeps what a read that began at `read_generation` found. If a write
    /// committed since, the entry is already stale and is never served.
    pub(super) fn put(
        &self,
        read_generation: u64,
        repo: &str,
        reference: &str,
        m: &StoredManifest,
    ) {
        if weight(repo, reference, m) > ITEM_MAX_BYTES {
            return;
        }
        self.entries.insert(
            Key {
                repo: repo.to_owned(),
                reference: reference.to_owned(),
            },
            Entry {
                generation: read_generation,
                manifest: Arc::new(m.clone()),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(body: &[u8]) -> StoredManifest {
        StoredManifest {
            digest: "sha256:00".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: body.len() as u64,
            bytes: body.to_vec(),
        }
    }

    #[test]
    fn an_entry_serves_only_its_own_generation() {
        let cache = ManifestCache::default();
        cache.put(7, "tool-a/app", "v1", &manifest(b"{}"));
        assert_eq!(
            cache.get(7, "tool-a/app", "v1").map(|m| m.bytes.clone()),
            Some(b"{}".to_vec())
        );
        assert!(
            cache.get(8, "tool-a/app", "v1").is_none(),
            "a write committed since"
        );
        assert!(cache.get(7, "tool-a/app", "v2").is_none());
        assert!(cache.get(7, "tool-b/app", "v1").is_none());
    }

    #[test]
    fn a_manifest_over_the_item_bound_is_not_kept() {
        let cache = ManifestCache::default();
        cache.put(
            1,
            "tool-a/app",
            "big",
            &manifest(&vec![b' '; ITEM_MAX_BYTES as usize]),
        );
        assert!(cache.get(1, "tool-a/app", "big").is_none());
    }

    #[test]
    fn the_bytes_held_stay_under_the_capacity() {
        let cache = ManifestCache::default();
        let body = vec![b' '; 200 * 1024];
        for i in 0..1_000 {
            cache.put(1, "tool-a/app", &format!("v{i}"), &manifest(&body));
        }
        assert!(
            cache.entries.weight() <= CAPACITY_BYTES,
            "{}",
            cache.entries.weight()
        );
        let kept = (0..1_000)
            .filter(|i| cache.get(1, "tool-a/app", &format!("v{i}")).is_some())
            .count();
        assert!(kept > 0 && kept < 1_000, "kept {kept}");
    }
}
