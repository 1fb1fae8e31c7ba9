//! What the web console asks the metadata store, beyond what the APIs
//! already ask: a page of the quota list sorted and filtered in the
//! database, a namespace's tags with their image sizes, builds across
//! tools, and storage over time (samples kept by `sample_usage`).

use super::NamespaceQuota;

/// What the quota list can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaSort {
    Name,
    #[default]
    Used,
    /// The effective limit; unlimited namespaces sort as the largest.
    Limit,
    Percent,
    Repositories,
}

impl QuotaSort {
    pub const ALL: [QuotaSort; 5] = [
        QuotaSort::Name,
        QuotaSort::Used,
        QuotaSort::Limit,
        QuotaSort::Percent,
        QuotaSort::Repositories,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QuotaSort::Name => "name",
            QuotaSort::Used => "used",
            QuotaSort::Limit => "limit",
            QuotaSort::Percent => "percent",
            QuotaSort::Repositories => "repositories",
        }
    }

    pub fn parse(s: &str) -> Option<QuotaSort> {
        QuotaSort::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One page of the quota list.
#[derive(Debug, Clone, Default)]
pub struct QuotaQuery {
    pub sort: QuotaSort,
    pub descending: bool,
    /// Only namespaces with a limit using at least this percentage of it.
    pub min_percent: Option<f64>,
    /// Only namespaces whose name contains this text.
    pub name_contains: Option<String>,
    pub offset: u64,
    pub limit: u32,
}

#[derive(Debug, Clone, Default)]
pub struct QuotaPage {
    /// Namespaces the registry knows.
    pub total: u64,
    /// Namespaces the filters let through.
    pub matching: u64,
    pub rows: Vec<NamespaceQuota>,
}

/// A tag with the image it names and what that image occupies (its
/// manifest plus the blobs it names; an index counts only itself).
#[derive(Debug, Clone)]
pub struct TagInfo {
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub bytes: u64,
    /// When the tag last moved.
    pub updated_ms: i64,
    /// When the manifest was pushed.
    pub pushed_ms: i64,
}

/// One value of a series over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsagePoint {
    pub at_ms: i64,
    pub bytes: u64,
}

/// The registry's totals at one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub at_ms: i64,
    /// What namespaces are charged (the quota ledger, summed).
    pub used_bytes: u64,
    /// Every blob and manifest once: what the store holds.
    pub stored_bytes: u64,
    /// Every repository's blobs and manifests counted in each: what the
    /// registry would hold without deduplication.
    pub linked_bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub namespaces: u64,
}

impl UsageTotals {
    /// Bytes deduplication saves (shared layers stored once).
    pub fn dedup_saved(&self) -> u64 {
        self.linked_bytes.saturating_sub(self.stored_bytes)
    }
}

/// How much history `sample_usage` keeps.
#[derive(Debug, Clone, Copy)]
pub struct SampleRetention {
    /// Samples older than this go (each namespace keeps its newest one,
    /// the value its chart starts from).
    pub keep_ms: i64,
    /// At most this many namespace samples; the oldest go first.
    pub max_rows: u64,
}

/// What one sampling pass did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleReport {
    /// Namespaces whose usage changed since their last sample.
    pub recorded: usize,
    pub pruned: usize,
    pub totals: UsageTotals,
}
