//! The bodies of berth's fuzz targets, one public function per target,
//! each taking the fuzzer's bytes. `fuzz/` (cargo-fuzz, nightly) wraps each
//! in `fuzz_target!`; `tests/fuzz_regressions.rs` replays the checked-in
//! corpora and every past crash through the same functions on stable.
//!
//! A target fails by panicking: a panic inside berth, or an invariant
//! (checked here) that does not hold.

mod config;
mod grammar;
mod manifest;
mod ranges;
mod request;
mod route;
mod token;

pub use config::config;
pub use grammar::digest;
pub use manifest::manifest;
pub use ranges::range;
pub use request::request;
pub use route::route;
pub use token::token;

/// A target: its name (of `fuzz/fuzz_targets/<name>.rs` and of its corpus
/// directories) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("manifest", manifest),
    ("route", route),
    ("range", range),
    ("digest", digest),
    ("token", token),
    ("config", config),
    ("request", request),
];

/// Text for targets that take a string: the bytes as UTF-8 when they are,
/// else with invalid sequences replaced.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
