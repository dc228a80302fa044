//! Asynchronous sends: messages accepted now and sent later, paced by the bot and
//! recipient limits, retried while provably unsent until they expire, and never sent
//! twice. Kept in this process ([`MemoryQueue`]) or in Redis Streams for every replica
//! ([`RedisQueue`]); the [`worker`] takes messages from either.
//!
//! A message's life: `queued` -> (`sending` -> `queued` on a retry)* -> `sent`,
//! `failed`, `unknown` or `expired`; or `queued` -> `canceled`. Every change is written
//! against the version the writer read, so of two replicas holding the same message
//! only one can start its attempt.

mod memory;
pub mod message;
pub mod pacing;
mod redis;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryQueue;
pub use message::{Message, MessageError, MessageStatus, Notice, Status};
pub use redis::RedisQueue;

use crate::store::{Store, StoreError};

/// The `async` section, validated.
#[derive(Debug, Clone)]
pub struct AsyncConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_ttl: Duration,
    pub retention: Duration,
    pub max_queued: usize,
    pub backoff_cap: Duration,
    pub claim_idle: Duration,
    /// The most messages one batch may hold.
    pub max_batch: usize,
}

/// Where a message goes after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Queued, to be taken at this time (ms since the epoch).
    Due(u64),
    /// An attempt is out; past this time without an answer it is `unknown`.
    Leased(u64),
    /// Final: kept readable this long, then forgotten.
    Final(Duration),
}

/// A message taken from the queue by this replica, with the entry that holds it.
#[derive(Debug, Clone)]
pub struct Taken {
    pub entry: String,
    pub message: Message,
}

/// What the queue answers.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The store refused the call or cannot be reached: nothing was queued or changed.
    /// Or it took the call and did not answer in time (`StoreError::may_have_run`): a
    /// stalled Redis may carry it out when it resumes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `async.max_queued` messages are waiting already.
    #[error("the queue is full")]
    Full,
}

impl QueueError {
    /// Whether the call may yet be carried out: the messages may be queued, and then sent.
    pub fn may_have_run(&self) -> bool {
        matches!(self, QueueError::Store(error) if error.may_have_run())
    }
}

/// Open messages (queued or sending) and the creation time of the oldest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Depth {
    pub open: u64,
    pub oldest_ms: Option<u64>,
}

/// Where queued messages live.
#[async_trait]
pub trait QueueStore: Send + Sync + std::fmt::Debug {
    /// Queues every message of `messages`, or none when that would make more than
    /// `max_queued` open messages. One whose `not_before_ms` is later than now waits
    /// until then; the others are ready at once.
    async fn enqueue(&self, messages: &[Message], max_queued: usize) -> Result<(), QueueError>;
    /// The message, with its current version; `None` past its retention.
    async fn get(&self, id: &str) -> Result<Option<Message>, QueueError>;
    /// Writes `message` if the stored one is still at `message.version`, and places it;
    /// acknowledges `entry` when given; records `notice` (of a final status) in the same
    /// step. `Ok(None)`: another writer came first.
    async fn change(
        &self,
        message: &Message,
        placement: Placement,
        entry: Option<&str>,
        notice: Option<&Notice>,
    ) -> Result<Option<u64>, QueueError>;
    /// Up to `max` notices due by `now`, each held until `hold_until` (so that no other
    /// replica takes it while this one tries).
    async fn notices_due(
        &self,
        now_ms: u64,
        max: usize,
        hold_until: u64,
    ) -> Result<Vec<Notice>, QueueError>;
    /// A notice delivered, or given up: forgotten.
    async fn notice_done(&self, id: &str) -> Result<(), QueueError>;
    /// A notice to try again at `at` (its attempts counted).
    async fn notice_retry(&self, notice: &Notice, at: u64) -> Result<(), QueueError>;
    /// Notices not yet delivered.
    async fn notices_pending(&self) -> Result<u64, QueueError>;
    /// Up to `max` messages ready to go, taken by this replica (with messages another
    /// replica took and left idle past the claim time).
    async fn take(&self, max: usize) -> Result<Vec<Taken>, QueueError>;
    /// Lets go of an entry whose message is no longer this replica's to handle.
    async fn drop_entry(&self, entry: &str) -> Result<(), QueueError>;
    /// Moves messages whose wait is over to the ready queue.
    async fn promote(&self, now_ms: u64) -> Result<(), QueueError>;
    /// When the next waiting message is due (ms since the epoch), if any waits.
    async fn next_due(&self) -> Result<Option<u64>, QueueError>;
    /// Messages whose attempt lease passed without an answer.
    async fn lapsed(&self, now_ms: u64) -> Result<Vec<String>, QueueError>;
    async fn depth(&self) -> Result<Depth, QueueError>;
    /// Frees what no replica needs any more (the Redis streams' finished entries).
    async fn tidy(&self) -> Result<(), QueueError> {
        Ok(())
    }
    /// Messages still queued: logged at exit when they live in this process.
    async fn remaining(&self) -> Vec<Message>;
    /// Whether messages survive this process.
    fn durable(&self) -> bool;
}

/// The queue for `store`.
pub fn open(store: &Store, config: &AsyncConfig) -> Arc<dyn QueueStore> {
    match store {
        Store::Memory => Arc::new(MemoryQueue::new()),
        Store::Redis(redis) => Arc::new(RedisQueue::new(
            redis.clone(),
            config.claim_idle,
            config.retention,
        )),
    }
}
