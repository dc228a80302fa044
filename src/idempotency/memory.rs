//! Idempotency keys in this process: bounded, TTL-evicted, for a single replica.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Begin, Fingerprint, IdempotencyStore, Reservation, StoreError, StoredAnswer};

#[derive(Debug)]
enum Slot {
    InFlight,
    Done(StoredAnswer),
}

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    expires_at: Instant,
    slot: Slot,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    /// Keys in the order their expiry was set; every entry has the same retention, so
    /// this is also expiry order. Records of refreshed or removed entries are skipped.
    order: VecDeque<(Instant, String)>,
}

/// Bounded, TTL-evicted, for a single replica.
#[derive(Debug)]
pub struct MemoryStore {
    entries: Mutex<Entries>,
    retention: Duration,
    max_keys: usize,
}

impl MemoryStore {
    pub fn new(retention: Duration, max_keys: usize) -> Self {
        MemoryStore {
            entries: Mutex::new(Entries::default()),
            retention,
            max_keys: max_keys.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What `begin` would answer for a key this store holds, without claiming it.
    pub fn lookup(&self, key: &str, fingerprint: Fingerprint) -> Option<Begin> {
        let now = Instant::now();
        let entries = self.lock();
        let entry = entries.by_key.get(key).filter(|e| e.expires_at > now)?;
        Some(entry.state_for(fingerprint))
    }

    /// Keeps `answer` for `key` whether or not the key was claimed here.
    pub fn remember(&self, key: &str, fingerprint: Fingerprint, answer: StoredAnswer) {
        let mut entries = self.lock();
        entries.evict(Instant::now(), self.max_keys);
        self.keep_answer(&mut entries, key, fingerprint, answer);
    }

    /// Stores `answer` under `key` for the retention period.
    fn keep_answer(
        &self,
        entries: &mut Entries,
        key: &str,
        fingerprint: Fingerprint,
        answer: StoredAnswer,
    ) {
        entries.insert(
            key,
            Entry {
                fingerprint,
                expires_at: Instant::now() + self.retention,
                slot: Slot::Done(answer),
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves consistent data (every change is one
        // map operation), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entry {
    fn state_for(&self, fingerprint: Fingerprint) -> Begin {
        match (&self.slot, self.fingerprint == fingerprint) {
            (_, false) => Begin::Mismatch,
            (Slot::InFlight, true) => Begin::InFlight,
            (Slot::Done(answer), true) => Begin::Replay(answer.clone()),
        }
    }
}

impl Entries {
    /// Drops expired entries and, while the store is full, the oldest answered ones. An
    /// in-flight claim is never dropped before it expires: its send may be under way, and
    /// a second request with its key would send again. Returns whether one more fits.
    fn evict(&mut self, now: Instant, max_keys: usize) -> bool {
        let mut passed_over = 0;
        while let Some((expires_at, key)) = self.order.front().cloned() {
            let live = self
                .by_key
                .get(&key)
                .map(|e| (e.expires_at, matches!(e.slot, Slot::InFlight)));
            let over_capacity = self.by_key.len() >= max_keys;
            match live {
                Some((at, in_flight)) if at == expires_at && (at <= now || over_capacity) => {
                    if in_flight && at > now {
                        // Kept: its record goes behind the others, once around at most.
                        if passed_over >= self.order.len() {
                            break;
                        }
                        passed_over += 1;
                        self.order.rotate_left(1);
                        continue;
                    }
                    if at > now {
                        tracing::warn!(
                            max_keys,
                            "idempotency store full: evicting the oldest key before its retention ends"
                        );
                    }
                    self.by_key.remove(&key);
                    self.order.pop_front();
                }
                Some((at, _)) if at == expires_at => break,
                // A stale record: the entry was refreshed or removed since.
                _ => {
                    self.order.pop_front();
                }
            }
        }
        self.by_key.len() < max_keys
    }

    fn insert(&mut self, key: &str, entry: Entry) {
        self.order.push_back((entry.expires_at, key.to_string()));
        self.by_key.insert(key.to_string(), entry);
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn begin(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        _lease: Duration,
    ) -> Result<Begin, StoreError> {
        // In one process a claim cannot outlive its holder: the send task always ends.
        let now = Instant::now();
        let mut entries = self.lock();
        let room = entries.evict(now, self.max_keys);
        if let Some(entry) = entries.by_key.get(key)
            && entry.expires_at > now
        {
            return Ok(entry.state_for(fingerprint));
        }
        if !room {
            tracing::warn!(
                max_keys = self.max_keys,
                "idempotency store full of keys being sent: refusing new keys for now"
            );
            return Ok(Begin::Full);
        }
        entries.insert(
            key,
            Entry {
                fingerprint,
                expires_at: now + self.retention,
                slot: Slot::InFlight,
            },
        );
        Ok(Begin::Proceed(Reservation {
            key: key.to_string(),
            fingerprint,
            token: String::new(),
            local: true,
        }))
    }

    async fn complete(
        &self,
        reservation: &Reservation,
        answer: StoredAnswer,
    ) -> Result<(), StoreError> {
        let key = reservation.key.as_str();
        let mut entries = self.lock();
        let Some(fingerprint) = entries.by_key.get(key).map(|e| e.fingerprint) else {
            return Ok(());
        };
        self.keep_answer(&mut entries, key, fingerprint, answer);
        Ok(())
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let mut entries = self.lock();
        if matches!(
            entries.by_key.get(&reservation.key).map(|e| &e.slot),
            Some(Slot::InFlight)
        ) {
            entries.by_key.remove(&reservation.key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idempotency::is_valid_key;
    use bytes::Bytes;

    fn answer(status: u16) -> StoredAnswer {
        StoredAnswer {
            status,
            content_type: "application/json".into(),
            retry_after: None,
            location: None,
            body: Bytes::from_static(b"{}"),
        }
    }

    const A: Fingerprint = Fingerprint([1; 32]);
    const B: Fingerprint = Fingerprint([2; 32]);
    const LEASE: Duration = Duration::from_secs(10);

    async fn claim(store: &MemoryStore, key: &str, fingerprint: Fingerprint) -> Reservation {
        match store.begin(key, fingerprint, LEASE).await.unwrap() {
            Begin::Proceed(reservation) => reservation,
            other => panic!("expected to claim {key}, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_claim_being_sent_is_never_evicted_and_a_full_store_refuses_new_keys() {
        let store = MemoryStore::new(Duration::from_secs(60), 2);
        let a = claim(&store, "a", A).await;
        let b = claim(&store, "b", A).await;
        // Both keys are being sent: nothing may go, so a third waits.
        assert_eq!(store.begin("c", A, LEASE).await.unwrap(), Begin::Full);
        assert_eq!(store.begin("a", A, LEASE).await.unwrap(), Begin::InFlight);
        // Once b has its answer it may be evicted for c; a, still in flight, stays.
        store.complete(&b, answer(200)).await.unwrap();
        claim(&store, "c", A).await;
        assert_eq!(store.begin("a", A, LEASE).await.unwrap(), Begin::InFlight);
        assert_eq!(store.lookup("b", A), None);
        store.complete(&a, answer(200)).await.unwrap();
        assert_eq!(store.lookup("a", A), Some(Begin::Replay(answer(200))));
    }

    #[tokio::test]
    async fn proceed_in_flight_replay_mismatch() {
        let store = MemoryStore::new(Duration::from_secs(60), 10);
        let held = claim(&store, "k", A).await;
        assert_eq!(store.begin("k", A, LEASE).await.unwrap(), Begin::InFlight);
        assert_eq!(store.begin("k", B, LEASE).await.unwrap(), Begin::Mismatch);
        store.complete(&held, answer(200)).await.unwrap();
        assert_eq!(
            store.begin("k", A, LEASE).await.unwrap(),
            Begin::Replay(answer(200))
        );
        assert_eq!(store.begin("k", B, LEASE).await.unwrap(), Begin::Mismatch);
        assert_eq!(store.lookup("k", A), Some(Begin::Replay(answer(200))));
        assert_eq!(store.lookup("absent", A), None);
    }

    #[tokio::test]
    async fn release_frees_the_key() {
        let store = MemoryStore::new(Duration::from_secs(60), 10);
        let held = claim(&store, "k", A).await;
        store.release(&held).await.unwrap();
        claim(&store, "k", B).await;
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_retention() {
        let store = MemoryStore::new(Duration::from_secs(60), 10);
        let held = claim(&store, "k", A).await;
        store.complete(&held, answer(200)).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(
            store.begin("k", A, LEASE).await.unwrap(),
            Begin::Replay(_)
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        claim(&store, "k", B).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        claim(&store, "other", A).await;
        assert_eq!(store.len(), 1, "expired keys are evicted");
    }

    #[tokio::test]
    async fn the_store_is_bounded() {
        let store = MemoryStore::new(Duration::from_secs(60), 3);
        for key in ["a", "b", "c", "d", "e"] {
            let held = claim(&store, key, A).await;
            store.complete(&held, answer(200)).await.unwrap();
        }
        assert!(store.len() <= 3);
        assert!(matches!(
            store.begin("e", A, LEASE).await.unwrap(),
            Begin::Replay(_)
        ));
    }

    #[test]
    fn key_rules() {
        assert!(is_valid_key(b"order-42"));
        assert!(is_valid_key(&[b'a'; 255]));
        assert!(!is_valid_key(&[b'a'; 256]));
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key(b"a\nb"));
        assert!(!is_valid_key("ñ".as_bytes()));
    }
}
