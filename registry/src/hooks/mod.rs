//! Build triggers' hooks: what a forge's push delivery must prove and
//! what berth keeps to bound them. `signature`: derived secrets, GitLab's
//! token and the Hub signature (GitHub, Gitea, Forgejo); `payload`: the
//! forge, the event and the push, typed. The endpoints are in
//! `handlers::triggers`, the route in `surfaces::hooks`.
//!
//! Bounds: a body is at most [`MAX_HOOK_BODY`]; deliveries whose signature
//! holds count against their tool's `[limits] hooks_per_tool_per_minute`
//! (429 past it); deliveries that fail (unknown hook, missing or wrong
//! signature) count against their address in a throttle of their own,
//! the login throttle's rules: after 5 failures each further failure is
//! answered only after 250 ms doubling to 8 s, with at most
//! `logins_per_address` such answers pending per address (429 past it).
//! Deliveries that pass are never slowed by another's failures.

pub mod payload;
pub mod signature;

use crate::auth::throttle::LoginThrottle;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use signature::HookKey;

/// Largest delivery accepted (413 past it). GitHub caps payloads at
/// 25 MB, but a push lists at most 20 commits (GitLab) or 2048 (GitHub,
/// with their file lists): ordinary pushes are a few KiB to a few hundred.
pub const MAX_HOOK_BODY: usize = 1024 * 1024;

/// Hook ids: 32 lowercase hex digits.
pub fn valid_hook_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new random hook id.
pub fn new_hook_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    signature::hex(&bytes)
}

/// The hooks' settings and state, shared by all requests.
pub struct Hooks {
    pub key: HookKey,
    /// Verified deliveries per tool per minute.
    pub per_tool_per_minute: usize,
    /// Failed deliveries' answers pending per address.
    pub failures_per_address: usize,
    rate: Mutex<HashMap<String, VecDeque<Instant>>>,
    failures: LoginThrottle,
}

/// The throttle's key for failed deliveries (one per address).
const FAILURES: &str = "hook deliveries";
/// Tools tracked before idle ones are forgotten.
const MAX_TRACKED_TOOLS: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(60);

impl Hooks {
    pub fn new(key: HookKey, per_tool_per_minute: usize, failures_per_address: usize) -> Hooks {
        Hooks {
            key,
            per_tool_per_minute,
            failures_per_address,
            rate: Mutex::new(HashMap::new()),
            failures: LoginThrottle::default(),
        }
    }

    /// Takes one of `tool`'s deliveries of the last minute; `Err` with the
    /// seconds until one frees when all are taken.
    pub fn take(&self, tool: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if rate.len() >= MAX_TRACKED_TOOLS && !rate.contains_key(tool) {
            rate.retain(|_, seen| seen.back().is_some_and(|t| now - *t < WINDOW));
        }
        let seen = rate.entry(tool.to_owned()).or_default();
        while seen.front().is_some_and(|t| now - *t >= WINDOW) {
            seen.pop_front();
        }
        if seen.len() >= self.per_tool_per_minute {
            let oldest = seen.front().copied().unwrap_or(now);
            return Err((WINDOW.saturating_sub(now - oldest)).as_secs().max(1));
        }
        seen.push_back(now);
        Ok(())
    }

    /// Answers a failed delivery from `ip`: counts it and waits as the
    /// throttle says. `Err` when the address already has
    /// `failures_per_address` such answers pending (answer 429 at once).
    pub async fn failed(&self, ip: IpAddr) -> Result<(), ()> {
        let _pending = self
            .failures
            .enter_address(ip, self.failures_per_address)
            .map_err(|_| ())?;
        let delay = self.failures.delay_for(ip, FAILURES);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.failures.failed(ip, FAILURES);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex() {
        let (a, b) = (new_hook_id(), new_hook_id());
        assert!(valid_hook_id(&a) && valid_hook_id(&b) && a != b);
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789",
            "../../etc/passwd",
            &"a".repeat(33),
        ] {
            assert!(!valid_hook_id(bad), "{bad}");
        }
    }

    #[test]
    fn deliveries_are_limited_per_tool() {
        let h = Hooks::new(HookKey::new(b"k"), 3, 2);
        for _ in 0..3 {
            assert!(h.take("a").is_ok());
        }
        let wait = h.take("a").unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(h.take("b").is_ok(), "another tool is not affected");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_slow_down_and_are_capped_per_address() {
        let h = std::sync::Arc::new(Hooks::new(HookKey::new(b"k"), 3, 1));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            h.failed(ip).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the first five are free");
        let slow = {
            let h = h.clone();
            tokio::spawn(async move { h.failed(ip).await })
        };
        tokio::task::yield_now().await;
        assert!(
            h.failed(ip).await.is_err(),
            "one pending answer per address"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(
            h.failed(other).await.is_ok(),
            "another address is not held up"
        );
        slow.await.unwrap().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(250));
    }
}
