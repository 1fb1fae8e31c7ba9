//! berth-conformance: a black-box OCI distribution-spec suite. It speaks
//! HTTP only and depends on no berth crate, so the same checks run against
//! berth (in `cargo test`), registry:2, zot or anything else with a URL.
//!
//! Each check uses its own fresh repositories under the given namespace and
//! content unique to the run, so checks are independent and re-runnable.

pub mod checks;
pub mod client;
pub mod fixtures;

use checks::CheckResult;
use client::Client;
use fixtures::Ctx;

/// Which registry to test and how to log in.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// Repositories are created under this prefix, e.g. `tool-conformance`.
    pub namespace: String,
    pub credentials: Option<(String, String)>,
}

/// Whether the spec requires a behaviour or only allows it. Registries are
/// compared on both; berth must pass all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Required,
    Optional,
}

pub struct Check {
    pub category: &'static str,
    pub name: &'static str,
    pub level: Level,
    pub run: fn(&Ctx) -> CheckResult,
}

#[derive(Debug)]
pub struct Outcome {
    pub category: &'static str,
    pub name: &'static str,
    pub level: Level,
    pub result: CheckResult,
}

macro_rules! check {
    ($cat:literal, $level:ident, $f:ident) => {
        Check {
            category: $cat,
            name: stringify!($f),
            level: Level::$level,
            run: checks::$f,
        }
    };
}

/// Every check, in the order they run.
pub fn all_checks() -> Vec<Check> {
    vec![
        check!("pull", Required, base_endpoint),
        check!("pull", Required, manifest_get_by_tag_and_digest),
        check!("pull", Required, manifest_head),
        check!("pull", Required, manifest_unknown),
        check!("pull", Required, manifest_unknown_repository),
        check!("pull", Required, blob_get_and_head),
        check!("pull", Required, blob_unknown),
        check!("pull", Required, blob_range),
        check!("push", Required, push_monolithic_post_put),
        check!("push", Optional, push_post_with_digest),
        check!("push", Required, push_streamed_patch),
        check!("push", Required, push_chunked),
        check!("push", Required, chunk_out_of_order),
        check!("push", Required, upload_wrong_digest),
        check!("push", Required, upload_malformed_digest),
        check!("push", Required, upload_cancel),
        check!("push", Required, upload_unknown),
        check!("push", Optional, push_sha512_blob),
        check!("push", Required, mount_blob),
        check!("push", Required, mount_fallback),
        check!("push", Required, manifest_put_by_digest),
        check!("push", Optional, manifest_put_with_tag_query),
        check!("push", Required, manifest_docker_schema2),
        check!("push", Required, manifest_oci_index),
        check!("push", Required, manifest_docker_list),
        check!("push", Required, manifest_artifact_and_unknown_fields),
        check!("push", Required, manifest_missing_blob),
        check!("push", Required, manifest_invalid),
        check!("push", Required, manifest_digest_mismatch),
        check!("push", Required, manifest_too_large),
        check!("push", Required, manifest_subject_header),
        check!("discovery", Required, tags_list),
        check!("discovery", Required, tags_pagination),
        check!("discovery", Required, tags_unknown_repository),
        check!("discovery", Optional, catalog),
        check!("discovery", Required, referrers),
        check!("discovery", Required, referrers_unknown_subject),
        check!("management", Required, delete_tag),
        check!("management", Required, delete_manifest),
        check!("management", Required, delete_blob),
        check!("management", Required, delete_keeps_shared_blob),
        check!("bad-input", Required, invalid_names),
        check!("bad-input", Required, path_tricks),
    ]
}

/// Runs the checks whose name contains `filter` (all when empty).
pub fn run(target: &Target, filter: &str) -> Vec<Outcome> {
    let ctx = Ctx::new(
        Client::new(&target.url, target.credentials.clone()),
        &target.namespace,
    );
    all_checks()
        .into_iter()
        .filter(|c| c.name.contains(filter))
        .map(|c| Outcome {
            category: c.category,
            name: c.name,
            level: c.level,
            result: (c.run)(&ctx),
        })
        .collect()
}

/// A human-readable report, one line per check and a summary line.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        let level = match o.level {
            Level::Required => "",
            Level::Optional => " (optional)",
        };
        match &o.result {
            Ok(()) => out.push_str(&format!("PASS {:<10} {}{level}\n", o.category, o.name)),
            Err(e) => out.push_str(&format!("FAIL {:<10} {}{level}: {e}\n", o.category, o.name)),
        }
    }
    let passed = outcomes.iter().filter(|o| o.result.is_ok()).count();
    let required_failed = outcomes
        .iter()
        .filter(|o| o.result.is_err() && o.level == Level::Required)
        .count();
    let optional_failed = outcomes
        .iter()
        .filter(|o| o.result.is_err() && o.level == Level::Optional)
        .count();
    out.push_str(&format!(
        "conformance: {passed} of {} checks passed; {required_failed} required and {optional_failed} optional failed\n",
        outcomes.len()
    ));
    out
}
