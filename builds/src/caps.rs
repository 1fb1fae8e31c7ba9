//! Caps on what one tool can make berth hold at once through the build
//! API (git resolutions, followed logs), per tool and overall. Taking a
//! slot never waits: over a cap the caller is refused at once (the API
//! answers 429 naming the limit) and every other tool keeps its share.
//! A slot is a [`Permit`], given back when it is dropped.

use crate::BuildError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One kind of thing that is capped.
pub struct Cap {
    inner: Arc<Inner>,
}

struct Inner {
    /// What is counted, for messages ("git resolutions").
    what: &'static str,
    /// Config keys (under `[builds]`) and values of the two caps.
    per_tool_key: &'static str,
    per_tool: usize,
    total_key: &'static str,
    total: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_tool: HashMap<String, usize>,
}

impl Inner {
    fn held(&self) -> MutexGuard<'_, Held> {
        // The counts stay consistent even if a holder panicked: every
        // change is one statement.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A slot of a [`Cap`]; dropping it gives the slot back.
pub struct Permit {
    inner: Arc<Inner>,
    tool: String,
}

impl Cap {
    pub fn new(
        what: &'static str,
        per_tool_key: &'static str,
        per_tool: usize,
        total_key: &'static str,
        total: usize,
    ) -> Cap {
        Cap {
            inner: Arc::new(Inner {
                what,
                per_tool_key,
                per_tool,
                total_key,
                total,
                held: Mutex::new(Held::default()),
            }),
        }
    }

    /// A slot for `tool`, or `BuildError::TooMany` naming the cap reached.
    pub fn try_acquire(&self, tool: &str) -> Result<Permit, BuildError> {
        let i = &self.inner;
        let mut held = i.held();
        let mine = held.by_tool.get(tool).copied().unwrap_or(0);
        if mine >= i.per_tool {
            return Err(BuildError::TooMany {
                limit: i.per_tool_key,
                message: format!(
                    "tool {tool} already has {mine} {} in progress, its limit ([builds] {} = {}); wait for one to finish",
                    i.what, i.per_tool_key, i.per_tool
                ),
            });
        }
        if held.total >= i.total {
            return Err(BuildError::TooMany {
                limit: i.total_key,
                message: format!(
                    "the registry has {} {} in progress, its limit ([builds] {} = {}); retry shortly",
                    held.total, i.what, i.total_key, i.total
                ),
            });
        }
        held.total += 1;
        *held.by_tool.entry(tool.to_owned()).or_default() += 1;
        Ok(Permit {
            inner: i.clone(),
            tool: tool.to_owned(),
        })
    }

    /// How many slots `tool` holds (for tests and metrics).
    pub fn held_by(&self, tool: &str) -> usize {
        self.inner.held().by_tool.get(tool).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = self.inner.held();
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_tool.get_mut(&self.tool) {
            *n -= 1;
            if *n == 0 {
                held.by_tool.remove(&self.tool);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_by(r: Result<Permit, BuildError>) -> &'static str {
        match r {
            Err(BuildError::TooMany { limit, .. }) => limit,
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("should be refused"),
        }
    }

    #[test]
    fn per_tool_then_total_and_slots_come_back() {
        let cap = Cap::new("things", "things_per_tool", 2, "things_total", 3);
        let a1 = cap.try_acquire("a").unwrap();
        let _a2 = cap.try_acquire("a").unwrap();
        assert_eq!(refused_by(cap.try_acquire("a")), "things_per_tool");
        let _b1 = cap.try_acquire("b").unwrap();
        assert_eq!(refused_by(cap.try_acquire("c")), "things_total");
        drop(a1);
        assert_eq!(cap.held_by("a"), 1);
        let _c1 = cap.try_acquire("c").unwrap();
        match cap.try_acquire("d") {
            Err(BuildError::TooMany { message, .. }) => {
                assert!(message.contains("things_total = 3"), "{message}")
            }
            _ => panic!("should be refused"),
        }
    }
}
