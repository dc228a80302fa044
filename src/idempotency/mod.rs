//! Idempotency keys (IETF draft "The Idempotency-Key HTTP Header Field", Stripe's
//! semantics): the same key and message replay the stored answer without calling
//! Jelou; a key only ever stands for one message. Kept in memory ([`MemoryStore`]) or
//! in Redis for every replica ([`SharedIdempotency`]).

mod fingerprint;
mod memory;
mod redis;
mod shared;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::store::StoreError;
pub use fingerprint::{Fingerprint, fingerprint};
pub use memory::MemoryStore;
pub use shared::SharedIdempotency;

/// 1 to 255 printable ASCII characters (space included).
pub fn is_valid_key(key: &[u8]) -> bool {
    (1..=255).contains(&key.len()) && key.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// The key as stored: namespaced per caller, so two callers never share answers.
pub fn scoped_key(caller: &str, key: &str) -> String {
    format!("{caller}\u{1f}{key}")
}

/// An HTTP answer as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<u64>,
    /// The resource an accepted asynchronous send created (`Location`).
    pub location: Option<String>,
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
    /// The store holds as many keys as it may, every one of them being sent: nothing can
    /// be evicted safely, so a new key must wait.
    Full,
}

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
