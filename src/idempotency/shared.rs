//! Idempotency keys shared by every replica: Redis first, this process's own store while
//! Redis cannot be reached (`fail_open`), and the settling of what an outage left behind.
//!
//! A call that times out may still be carried out when Redis answers again: a claim can
//! land after its caller was told `not_sent`, and an answer this replica kept to itself
//! during the outage is unknown to the others. So each such loose end is queued here and
//! settled in the background once Redis answers: a claim whose request was not sent is
//! taken back (only while it is still that request's in-flight claim), and an answer kept
//! locally is written to Redis (unless the key now stands for another message). Then a
//! retry with the same key on any replica sends once, or replays the answer.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::redis::{RedisIdempotency, new_token};
use super::{
    Begin, Fingerprint, IdempotencyStore, MemoryStore, Reservation, StoreError, StoredAnswer,
};
use crate::store::{FailureMode, RedisStore};

/// How often unsettled work is tried while Redis is unreachable.
const SETTLE_INTERVAL: Duration = Duration::from_millis(200);
/// A claim taken back once is taken back again this long after: a call that timed out on
/// an earlier connection may be carried out after the release on a new one.
const RELEASE_AGAIN_FOR: Duration = Duration::from_secs(2);
/// Past this, unsettled work is given up (and logged): the outage outlasted it.
const SETTLE_FOR: Duration = Duration::from_secs(600);
/// The most loose ends kept at once; past it the oldest are given up (and logged).
const MAX_PENDING: usize = 100_000;

/// A loose end left by an outage.
#[derive(Debug)]
enum Settle {
    /// Take back `token`'s claim on `key`: its request was answered `not_sent`.
    Release { key: String, token: String },
    /// Write the answer this replica kept for `key` while Redis was unreachable.
    Complete {
        key: String,
        fingerprint: Fingerprint,
        answer: StoredAnswer,
    },
}

impl Settle {
    /// What it is, for logs (never the key or the answer: they may carry a caller's data).
    fn kind(&self) -> &'static str {
        match self {
            Settle::Release { .. } => "release",
            Settle::Complete { .. } => "complete",
        }
    }
}

/// Redis first; this process's own store for keys seen while Redis was unreachable
/// (`fail_open`) and for answers Redis could not take.
#[derive(Debug)]
pub struct SharedIdempotency {
    redis: Arc<RedisIdempotency>,
    local: MemoryStore,
    mode: FailureMode,
    settle: mpsc::UnboundedSender<Settle>,
}

impl SharedIdempotency {
    /// Must run inside the Tokio runtime: it starts the task that settles loose ends.
    pub fn new(store: Arc<RedisStore>, retention: Duration, local_max_keys: usize) -> Self {
        let mode = store.failure_mode;
        let redis = Arc::new(RedisIdempotency::new(store, retention));
        let (settle, pending) = mpsc::unbounded_channel();
        tokio::spawn(settle_forever(Arc::downgrade(&redis), pending));
        SharedIdempotency {
            redis,
            local: MemoryStore::new(retention, local_max_keys),
            mode,
            settle,
        }
    }

    fn settle_later(&self, work: Settle) {
        // The task lives as long as the store; a send fails only after it ended.
        let _ = self.settle.send(work);
    }
}

#[async_trait]
impl IdempotencyStore for SharedIdempotency {
    async fn begin(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        // A key this replica handled without Redis is answered from here.
        if let Some(known) = self.local.lookup(key, fingerprint) {
            return Ok(known);
        }
        let token = new_token();
        let error = match self
            .redis
            .begin_as(key, fingerprint, lease, token.clone())
            .await
        {
            Ok(begin) => return Ok(begin),
            Err(error) => error,
        };
        crate::store::count_unavailable("idempotency", self.mode);
        match self.mode {
            FailureMode::FailClosed => {
                // Answered `not_sent`: if the claim lands late, it must not hold the key.
                self.settle_later(Settle::Release {
                    key: key.to_string(),
                    token,
                });
                Err(error)
            }
            FailureMode::FailOpen => {
                tracing::debug!(%error, "Idempotency-Key kept by this replica only: the shared store is unreachable (fail_open)");
                match self.local.begin(key, fingerprint, lease).await? {
                    // The late claim, if any, is this request's: settled when it ends.
                    Begin::Proceed(reservation) => Ok(Begin::Proceed(Reservation {
                        token,
                        ..reservation
                    })),
                    other => {
                        self.settle_later(Settle::Release {
                            key: key.to_string(),
                            token,
                        });
                        Ok(other)
                    }
                }
            }
        }
    }

    async fn complete(
        &self,
        reservation: &Reservation,
        answer: StoredAnswer,
    ) -> Result<(), StoreError> {
        let settle = || Settle::Complete {
            key: reservation.key.clone(),
            fingerprint: reservation.fingerprint,
            answer: answer.clone(),
        };
        if reservation.local {
            self.settle_later(settle());
            return self.local.complete(reservation, answer.clone()).await;
        }
        if let Err(error) = self.redis.complete(reservation, answer.clone()).await {
            // Kept here so that a retry on this replica gets it at once, and written to
            // Redis when it answers, for the other replicas.
            self.settle_later(settle());
            self.local
                .remember(&reservation.key, reservation.fingerprint, answer);
            return Err(error);
        }
        Ok(())
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let settle = || Settle::Release {
            key: reservation.key.clone(),
            token: reservation.token.clone(),
        };
        if reservation.local {
            self.settle_later(settle());
            return self.local.release(reservation).await;
        }
        if let Err(error) = self.redis.release(reservation).await {
            self.settle_later(settle());
            return Err(error);
        }
        Ok(())
    }
}

/// Work waiting for Redis, and when it was queued.
struct Pending {
    work: Settle,
    queued: Instant,
    /// A release that succeeded once, repeated until then.
    again_until: Option<Instant>,
}

/// Settles loose ends until the store is dropped.
async fn settle_forever(
    redis: Weak<RedisIdempotency>,
    mut incoming: mpsc::UnboundedReceiver<Settle>,
) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut ticks = tokio::time::interval(SETTLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            work = incoming.recv() => match work {
                Some(work) => {
                    if pending.len() >= MAX_PENDING {
                        let oldest = pending.remove(0);
                        tracing::warn!(work = oldest.work.kind(), "idempotency key left unsettled: too many waiting for the shared store");
                    }
                    pending.push(Pending { work, queued: Instant::now(), again_until: None });
                }
                None => return,
            },
            _ = ticks.tick(), if !pending.is_empty() => {
                let Some(redis) = redis.upgrade() else { return };
                let mut left = Vec::with_capacity(pending.len());
                for item in pending.drain(..) {
                    if let Some(item) = settle_one(&redis, item).await {
                        left.push(item);
                    }
                }
                pending = left;
            }
        }
    }
}

/// Tries `item` once; what is left of it.
async fn settle_one(redis: &RedisIdempotency, mut item: Pending) -> Option<Pending> {
    let now = Instant::now();
    if item.queued.elapsed() > SETTLE_FOR {
        tracing::warn!(
            work = item.work.kind(),
            "idempotency key left unsettled: the shared store stayed unreachable"
        );
        return None;
    }
    let done = match &item.work {
        Settle::Release { key, token } => redis.release_claim(key, token).await.map(|released| {
            if released {
                tracing::info!("a claim left by a failed call to the shared store was taken back");
            }
        }),
        Settle::Complete {
            key,
            fingerprint,
            answer,
        } => redis
            .store_answer(key, *fingerprint, answer.clone())
            .await
            .map(|()| {
                tracing::info!(
                    "an answer kept by this replica during an outage reached the shared store"
                )
            }),
    };
    match (done, &item.work, item.again_until) {
        (Err(_), ..) => Some(item),
        (Ok(()), Settle::Release { .. }, None) => {
            item.again_until = Some(now + RELEASE_AGAIN_FOR);
            Some(item)
        }
        (Ok(()), Settle::Release { .. }, Some(until)) if now < until => Some(item),
        (Ok(()), ..) => None,
    }
}
