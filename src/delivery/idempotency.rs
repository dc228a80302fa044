//! Idempotency keys (IETF draft "The Idempotency-Key HTTP Header Field", Stripe's
//! semantics): the same key and message replay the stored answer without calling
//! Jelou; a key only ever stands for one message.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::Outbound;

/// 1 to 255 printable ASCII characters (space included).
pub fn is_valid_key(key: &[u8]) -> bool {
    (1..=255).contains(&key.len()) && key.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// The key as stored: namespaced per caller, so two callers never share answers.
pub fn scoped_key(caller: &str, key: &str) -> String {
    format!("{caller}\u{1f}{key}")
}

/// A digest of the message a key stands for: bot, path, query and body, with JSON
/// object keys sorted, so the same message in another key order is the same message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

pub fn fingerprint(outbound: &Outbound) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(outbound.bot.alias.as_bytes());
    hasher.update([0]);
    hasher.update(outbound.url.as_str().as_bytes());
    hasher.update([0]);
    match serde_json::from_slice::<Value>(&outbound.body) {
        Ok(value) => canonical(&value, &mut hasher),
        Err(_) => hasher.update(&outbound.body),
    }
    Fingerprint(hasher.finalize().into())
}

fn canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for key in keys {
                hasher.update(serde_json::to_string(key).unwrap_or_default().as_bytes());
                hasher.update(b":");
                canonical(&map[key], hasher);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                canonical(item, hasher);
                hasher.update(b",");
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

/// An HTTP answer as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

/// A key this request holds while it sends: complete it with the answer, or release it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub key: String,
    pub fingerprint: Fingerprint,
    /// Tells this holder's marker from another's (a shared store only).
    pub token: String,
    /// Held in this process's store (always, with the memory backend; with Redis, only
    /// while Redis was unreachable under `fail_open`).
    pub local: bool,
}

/// What a request with a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key is new (or was released): this request sends, and must complete or release.
    Proceed(Reservation),
    /// The same message was answered before: replay it.
    Replay(StoredAnswer),
    /// The same key is being sent right now by another request.
    InFlight,
    /// Another replica began sending this message and stopped (its lease ran out)
    /// without recording an answer: Jelou may or may not have sent it.
    Abandoned,
    /// The key was used for a different message.
    Mismatch,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Where keys live. In memory by default; a shared store serves several replicas.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + fmt::Debug {
    /// Claims `key` for this message, or says what became of it. A shared store keeps the
    /// claim for `lease` (the request's deadline and a margin); past it without an answer,
    /// the claim is taken as abandoned.
    async fn begin(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError>;
    /// Stores the final answer for the retention period.
    async fn complete(
        &self,
        reservation: &Reservation,
        answer: StoredAnswer,
    ) -> Result<(), StoreError>;
    /// Frees the key: the message provably was not sent, so the caller may try again.
    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError>;
}

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
    fn evict(&mut self, now: Instant, max_keys: usize) {
        while let Some((expires_at, key)) = self.order.front().cloned() {
            let live = self.by_key.get(&key).map(|e| e.expires_at);
            let over_capacity = self.by_key.len() >= max_keys;
            match live {
                Some(at) if at == expires_at && (at <= now || over_capacity) => {
                    if at > now {
                        tracing::warn!(
                            max_keys,
                            "idempotency store full: evicting the oldest key before its retention ends"
                        );
                    }
                    self.by_key.remove(&key);
                    self.order.pop_front();
                }
                Some(at) if at == expires_at => break,
                // A stale record: the entry was refreshed or removed since.
                _ => {
                    self.order.pop_front();
                }
            }
        }
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
        entries.evict(now, self.max_keys);
        if let Some(entry) = entries.by_key.get(key)
            && entry.expires_at > now
        {
            return Ok(entry.state_for(fingerprint));
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

    fn answer(status: u16) -> StoredAnswer {
        StoredAnswer {
            status,
            content_type: "application/json".into(),
            retry_after: None,
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
