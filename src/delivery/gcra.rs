//! GCRA (the generic cell rate algorithm) in this process, with the same arithmetic as
//! the Redis script in `shared_limits`: a limit is one theoretical arrival time (TAT)
//! per key.
//!
//! Kept here rather than in `governor` (which the caller rate in `api::auth` still
//! uses) because the queue needs what governor cannot do: *reserve* the next free
//! cell, even one in the future, so that a backlog of queued messages is paced onto
//! distinct send times instead of every message re-checking the limit each time a cell
//! frees. A synchronous send and a queued one must share one schedule per bot and per
//! recipient, so both go through this table.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::RateSettings;

/// How often (in operations) keys whose bucket is full again are forgotten.
const SWEEP_EVERY: u64 = 4096;

/// The interval between cells and the burst of `rate`, in nanoseconds.
fn cell(rate: &RateSettings) -> (u64, u64) {
    let interval = (1e9 / rate.rate_per_second.max(1e-9)).round().max(1.0) as u64;
    (interval, u64::from(rate.burst.max(1)))
}

/// One TAT per key, in nanoseconds since the table was made.
#[derive(Debug)]
pub struct Table<K> {
    origin: Instant,
    tats: Mutex<HashMap<K, u64>>,
    operations: AtomicU64,
}

impl<K: Hash + Eq> Table<K> {
    pub fn new() -> Self {
        Table {
            origin: Instant::now(),
            tats: Mutex::new(HashMap::new()),
            operations: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    /// Takes a cell of `key` now, or says how long until one is free (spending nothing).
    pub fn check<Q>(&self, key: &Q, rate: &RateSettings) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (interval, burst) = cell(rate);
        let now = self.now();
        let mut tats = self.lock(now);
        Self::update(&mut tats, key, now, |tat| {
            let allow_at = (tat + interval).saturating_sub(interval * burst);
            if allow_at > now {
                return (None, Some(Duration::from_nanos(allow_at - now)));
            }
            (Some(tat + interval), None)
        })
    }

    /// When the next cell of `key` is free, spending nothing.
    pub fn next_free<Q>(&self, key: &Q, rate: &RateSettings) -> Instant
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (interval, burst) = cell(rate);
        let now = self.now();
        let tats = self.lock(now);
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        self.at((tat + interval).saturating_sub(interval * burst).max(now))
    }

    /// Takes the next free cell of `key`, now or later, when it comes no later than
    /// `latest`; returns when it is. `None`: no cell is free by then (nothing spent).
    pub fn reserve<Q>(&self, key: &Q, rate: &RateSettings, latest: Instant) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let (interval, burst) = cell(rate);
        let now = self.now();
        let mut tats = self.lock(now);
        Self::update(&mut tats, key, now, |tat| {
            let at = self.at((tat + interval).saturating_sub(interval * burst).max(now));
            if at > latest {
                return (None, None);
            }
            (Some(tat + interval), Some(at))
        })
    }

    /// Hands `decide` the TAT of `key` (`now` when it has none or an older one) and
    /// stores the TAT `decide` returns, if any: one lookup for a key already there.
    fn update<Q, R>(
        tats: &mut HashMap<K, u64>,
        key: &Q,
        now: u64,
        decide: impl FnOnce(u64) -> (Option<u64>, R),
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(stored) = tats.get_mut(key) {
            let (tat, out) = decide((*stored).max(now));
            if let Some(tat) = tat {
                *stored = tat;
            }
            return out;
        }
        let (tat, out) = decide(now);
        if let Some(tat) = tat {
            tats.insert(key.to_owned(), tat);
        }
        out
    }

    /// The table, now and then without the keys that are back at full burst.
    fn lock(&self, now: u64) -> std::sync::MutexGuard<'_, HashMap<K, u64>> {
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.operations.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            tats.retain(|_, tat| *tat > now);
            tats.shrink_to_fit();
        }
        tats
    }
}

impl<K: Hash + Eq> Default for Table<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(rate_per_second: f64, burst: u32) -> RateSettings {
        RateSettings {
            rate_per_second,
            burst,
        }
    }

    #[test]
    fn a_burst_then_one_cell_per_interval() {
        let table: Table<String> = Table::new();
        let limit = rate(10.0, 3);
        for _ in 0..3 {
            assert_eq!(table.check("bot", &limit), None);
        }
        let wait = table.check("bot", &limit).expect("the burst is spent");
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90));
        // A refusal spends nothing.
        let again = table.check("bot", &limit).expect("still spent");
        assert!(again <= wait);
        // Another key has its own burst.
        assert_eq!(table.check("other", &limit), None);
    }

    #[test]
    fn reservations_are_spaced_one_interval_apart_after_the_burst() {
        let table: Table<String> = Table::new();
        let limit = rate(10.0, 2);
        let far = Instant::now() + Duration::from_secs(60);
        let times: Vec<Instant> = (0..5)
            .map(|_| table.reserve("bot", &limit, far).expect("a cell"))
            .collect();
        let first = times[0];
        let offsets: Vec<u128> = times.iter().map(|t| (*t - first).as_millis()).collect();
        // Two at once (the burst), then 100 ms apart.
        assert!(offsets[1] < 5, "{offsets:?}");
        for (n, pair) in offsets.windows(2).enumerate().skip(1) {
            let gap = pair[1] - pair[0];
            assert!((95..=105).contains(&gap), "gap {n}: {offsets:?}");
        }
        // A synchronous check now sees the reserved schedule.
        assert!(table.check("bot", &limit).is_some());
    }

    #[test]
    fn a_reservation_past_the_latest_time_spends_nothing() {
        let table: Table<String> = Table::new();
        let limit = rate(1.0, 1);
        let soon = Instant::now() + Duration::from_millis(500);
        assert!(table.reserve("bot", &limit, soon).is_some());
        assert_eq!(table.reserve("bot", &limit, soon), None);
        assert!(table.next_free("bot", &limit) > soon);
        let later = Instant::now() + Duration::from_secs(5);
        let at = table
            .reserve("bot", &limit, later)
            .expect("a cell within 5 s");
        assert!(at > soon);
    }
}
