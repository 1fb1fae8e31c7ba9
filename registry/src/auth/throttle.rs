//! Password guessing, bounded. Failed logins slow down further attempts at
//! the same account from the same address (so one address's mistakes never
//! slow another account's logins), and attempts in flight are capped per
//! account, per address, and overall for the expensive password hash: a
//! caller past a cap is refused at once (429) instead of queueing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failures allowed before attempts are delayed.
const FREE_FAILURES: u32 = 5;
const BASE_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// A failure count is forgotten after this long without failures.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Bounds memory under a flood of distinct addresses and names.
const MAX_TRACKED: usize = 100_000;
/// Account names are tracked by at most this many characters.
const NAME_KEY_CHARS: usize = 64;

#[derive(Default)]
pub struct LoginThrottle {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    failures: HashMap<(IpAddr, String), (u32, Instant)>,
    by_account: HashMap<String, usize>,
    by_address: HashMap<IpAddr, usize>,
}

/// Which in-flight cap refused an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Account(usize),
    Address(usize),
}

/// Holds a place among the attempts in flight; gives it back when dropped.
pub struct Permit {
    state: Arc<Mutex<State>>,
    slot: Slot,
}

enum Slot {
    Account(String),
    Address(IpAddr),
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        match &self.slot {
            Slot::Account(a) => release(&mut s.by_account, a),
            Slot::Address(ip) => release(&mut s.by_address, ip),
        }
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn name_key(user: &str) -> String {
    user.chars().take(NAME_KEY_CHARS).collect()
}

impl LoginThrottle {
    fn enter(&self, slot: Slot, limit: usize) -> Result<Permit, Busy> {
        let mut s = lock(&self.state);
        let (n, busy) = match &slot {
            Slot::Account(a) => (
                s.by_account.entry(a.clone()).or_insert(0),
                Busy::Account(limit),
            ),
            Slot::Address(ip) => (s.by_address.entry(*ip).or_insert(0), Busy::Address(limit)),
        };
        if *n >= limit {
            return Err(busy);
        }
        *n += 1;
        drop(s);
        Ok(Permit {
            state: self.state.clone(),
            slot,
        })
    }

    /// A place among the attempts in flight for `user`; held for the whole
    /// attempt, delay included, so guessing one account in parallel does
    /// not multiply its rate.
    pub fn enter_account(&self, user: &str, limit: usize) -> Result<Permit, Busy> {
        self.enter(Slot::Account(name_key(user)), limit)
    }

    /// A place among the checks in flight from `ip`; held only while the
    /// password is checked, so a delayed attempt does not block the
    /// address's other accounts.
    pub fn enter_address(&self, ip: IpAddr, limit: usize) -> Result<Permit, Busy> {
        self.enter(Slot::Address(ip), limit)
    }

    /// How long an attempt at `user` from `ip` must wait before it is checked.
    pub fn delay_for(&self, ip: IpAddr, user: &str) -> Duration {
        let s = lock(&self.state);
        match s.failures.get(&(ip, name_key(user))) {
            Some((n, last)) if *n >= FREE_FAILURES && last.elapsed() < FORGET_AFTER => {
                let doublings = (*n - FREE_FAILURES).min(16);
                (BASE_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
            }
            _ => Duration::ZERO,
        }
    }

    pub fn failed(&self, ip: IpAddr, user: &str) -> u32 {
        let mut s = lock(&self.state);
        if s.failures.len() >= MAX_TRACKED {
            s.failures
                .retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
            if s.failures.len() >= MAX_TRACKED {
                s.failures.clear();
            }
        }
        let entry = s
            .failures
            .entry((ip, name_key(user)))
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
        entry.0
    }

    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        lock(&self.state).failures.remove(&(ip, name_key(user)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_per_account_and_address_and_reset_on_success() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.delay_for(ip, "tool-a"), Duration::ZERO);
            t.failed(ip, "tool-a");
        }
        assert_eq!(t.delay_for(ip, "tool-a"), BASE_DELAY);
        // Another account from the same address is not slowed.
        assert_eq!(t.delay_for(ip, "tool-b"), Duration::ZERO);
        t.failed(ip, "tool-a");
        assert_eq!(t.delay_for(ip, "tool-a"), BASE_DELAY * 2);
        for _ in 0..20 {
            t.failed(ip, "tool-a");
        }
        assert_eq!(t.delay_for(ip, "tool-a"), MAX_DELAY);
        t.succeeded(ip, "tool-a");
        assert_eq!(t.delay_for(ip, "tool-a"), Duration::ZERO);
    }

    #[test]
    fn in_flight_attempts_are_capped() {
        let t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a1 = t.enter_account("tool-a", 2).ok().unwrap();
        let _a2 = t.enter_account("tool-a", 2).ok().unwrap();
        assert_eq!(t.enter_account("tool-a", 2).err(), Some(Busy::Account(2)));
        assert!(t.enter_account("tool-b", 2).is_ok());
        drop(a1);
        assert!(t.enter_account("tool-a", 2).is_ok());
        let _i1 = t.enter_address(ip, 1).ok().unwrap();
        assert_eq!(t.enter_address(ip, 1).err(), Some(Busy::Address(1)));
    }
}
