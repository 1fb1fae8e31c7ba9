//! Slows down repeated failed logins from one address: after a few
//! failures each further attempt waits, doubling up to a cap, until a
//! success or a quiet period resets the count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before attempts are delayed.
const FREE_FAILURES: u32 = 5;
const BASE_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// A failure count is forgotten after this long without failures.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Bounds memory under a flood of distinct addresses.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl LoginThrottle {
    /// How long an attempt from `ip` must wait before it is checked.
    pub fn delay_for(&self, ip: IpAddr) -> Duration {
        let map = self.failures.lock().expect("throttle lock");
        match map.get(&ip) {
            Some((n, last)) if *n >= FREE_FAILURES && last.elapsed() < FORGET_AFTER => {
                let doublings = (*n - FREE_FAILURES).min(16);
                (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn failed(&self, ip: IpAddr) -> u32 {
        let mut map = self.failures.lock().expect("throttle lock");
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
        }
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
        entry.0
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().expect("throttle lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_free_failures_and_reset_on_success() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.delay_for(ip), Duration::ZERO);
            t.failed(ip);
        }
        assert_eq!(t.delay_for(ip), BASE_DELAY);
        t.failed(ip);
        assert_eq!(t.delay_for(ip), BASE_DELAY * 2);
        for _ in 0..20 {
            t.failed(ip);
        }
        assert_eq!(t.delay_for(ip), MAX_DELAY);
        t.succeeded(ip);
        assert_eq!(t.delay_for(ip), Duration::ZERO);
    }
}
