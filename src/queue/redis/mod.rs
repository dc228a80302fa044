//! The queue in Redis, shared by every replica: a stream with one consumer group holds
//! the messages ready to go; a sorted set those waiting (a retry's backoff, a reserved
//! rate-limit cell); another the attempts out, by the end of their lease; a third every
//! open message by creation (the depth, the oldest, and the `max_queued` bound). Each
//! message is a hash: its version, status and JSON record.
//!
//! Every change is one script that checks the version, so it is atomic and fenced: two
//! replicas holding the same message (one stalled past the claim time) cannot both
//! start its attempt. Entries are acknowledged as their message moves on, and each
//! sweep trims what the group is done with, so the streams hold little beyond what is
//! ready or being taken. Acceptances that arrive together are written in one call
//! ([`group`]).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{Depth, Message, Notice, Placement, QueueError, QueueStore, Taken};
use crate::store::group::GroupCommit;
use crate::store::{RedisStore, StoreError};

mod group;
mod outbox;
mod scripts;
mod stream;

use group::{Enqueues, Group, QueueKeys, Row};
use scripts::{CHANGE, ENQUEUE, PROMOTE, TAKE_NOTICES, TRIM};
use stream::{Lane, entry_message};

const GROUP: &str = "relay";

/// Messages moved to the stream per promotion call.
const PROMOTE_BATCH: usize = 500;

pub struct RedisQueue {
    store: Arc<RedisStore>,
    consumer: String,
    claim_idle: Duration,
    /// How long a final message stays readable.
    retention: Duration,
    group_ready: AtomicBool,
    last_claim: Mutex<Option<Instant>>,
    /// The writer of acceptances, started by the first enqueue.
    group: OnceLock<GroupCommit<Enqueues>>,
    change: redis::Script,
    promote: redis::Script,
    take_notices: redis::Script,
    trim: redis::Script,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// This process's name in the consumer group: host, process id, and a random part.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

impl RedisQueue {
    pub fn new(store: Arc<RedisStore>, claim_idle: Duration, retention: Duration) -> Self {
        RedisQueue {
            store,
            consumer: consumer_name(),
            claim_idle,
            retention,
            group_ready: AtomicBool::new(false),
            last_claim: Mutex::new(None),
            group: OnceLock::new(),
            change: redis::Script::new(CHANGE),
            promote: redis::Script::new(PROMOTE),
            take_notices: redis::Script::new(TAKE_NOTICES),
            trim: redis::Script::new(TRIM),
        }
    }

    pub(super) fn key(&self, part: &str) -> String {
        self.store.key(&["queue", part])
    }

    fn message_key(&self, id: &str) -> String {
        self.store.key(&["msg", id])
    }

    /// The messages of `ids`, each with its stored version.
    async fn load(&self, ids: &[&str]) -> Result<Vec<Option<Message>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.message_key(id))
                .arg("version")
                .arg("json");
        }
        let rows: Vec<(Option<u64>, Option<String>)> = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                pipe.query_async(c).await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(version, json)| {
                let mut message: Message = serde_json::from_str(&json?).ok()?;
                message.version = version?;
                Some(message)
            })
            .collect())
    }
}

fn encode(message: &Message) -> Result<String, StoreError> {
    serde_json::to_string(message)
        .map_err(|e| StoreError::new(format!("cannot encode a message: {e}")))
}

#[async_trait]
impl QueueStore for RedisQueue {
    async fn enqueue(&self, messages: &[Message], max_queued: usize) -> Result<(), QueueError> {
        // Nothing is queued yet: a group created late changes nothing.
        self.ensure_group()
            .await
            .map_err(StoreError::before_the_write)?;
        let now = super::message::now_ms();
        let retention_ms = self.retention.as_millis() as u64;
        let rows = messages
            .iter()
            .map(|message| Row::new(self.message_key(&message.id), message, now, retention_ms))
            .collect::<Result<Vec<_>, _>>()?;
        let group = self.group.get_or_init(|| {
            let keys = QueueKeys {
                open: self.key("open"),
                stream: self.key(Lane::Fresh.part()),
                waiting: self.key("waiting"),
            };
            let enqueues = Enqueues {
                store: self.store.clone(),
                script: redis::Script::new(ENQUEUE),
                keys,
            };
            GroupCommit::start(enqueues, self.store.runtime())
        });
        if !group.submit(Group { rows, max_queued }).await? {
            return Err(QueueError::Full);
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Message>, QueueError> {
        Ok(self.load(&[id]).await?.into_iter().next().flatten())
    }

    async fn change(
        &self,
        message: &Message,
        placement: Placement,
        entry: Option<&str>,
        notice: Option<&Notice>,
    ) -> Result<Option<u64>, QueueError> {
        let notice_json = match notice {
            Some(notice) => serde_json::to_string(notice)
                .map_err(|e| StoreError::new(format!("cannot encode a notice: {e}")))?,
            None => String::new(),
        };
        let (kind, at) = match placement {
            Placement::Due(at) => ("due", at),
            Placement::Leased(until) => ("leased", until),
            Placement::Final(retention) => ("final", retention.as_millis().max(1) as u64),
        };
        let (lane, entry_id) = entry.map_or((Lane::Fresh, ""), Lane::of);
        let mut invocation = self.change.prepare_invoke();
        invocation
            .key(self.message_key(&message.id))
            .key(self.key(lane.part()))
            .key(self.key("waiting"))
            .key(self.key("leases"))
            .key(self.key("open"))
            .key(self.outbox_key())
            .key(self.notice_key(&message.id))
            .arg(&message.id)
            .arg(message.version)
            .arg(message.status.as_str())
            .arg(encode(message)?)
            .arg(entry_id)
            .arg(kind)
            .arg(at)
            .arg(notice_json)
            .arg(super::message::now_ms());
        let version: i64 = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                invocation.invoke_async(c).await
            })
            .await?;
        Ok(u64::try_from(version).ok().filter(|v| *v > 0))
    }

    async fn take(&self, max: usize) -> Result<Vec<Taken>, QueueError> {
        self.ensure_group().await?;
        let mut entries = self.claim_idle(max).await?;
        if entries.len() < max {
            entries.extend(self.read_new(max - entries.len()).await?);
        }
        let mut taken = Vec::with_capacity(entries.len());
        let ids: Vec<&str> = entries
            .iter()
            .map(|(_, fields)| entry_message(fields).unwrap_or(""))
            .collect();
        let messages = self.load(&ids).await?;
        for ((entry, _), message) in entries.iter().zip(messages) {
            match message {
                Some(message) => taken.push(Taken {
                    entry: entry.clone(),
                    message,
                }),
                // Its record is gone (past its retention): nothing to send.
                None => self.drop_entry(entry).await?,
            }
        }
        Ok(taken)
    }

    async fn drop_entry(&self, entry: &str) -> Result<(), QueueError> {
        let (lane, entry) = Lane::of(entry);
        let stream = self.key(lane.part());
        self.store
            .run("queue", async |c: &mut MultiplexedConnection| {
                redis::cmd("XACK")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(entry)
                    .query_async::<()>(c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn promote(&self, now_ms: u64) -> Result<(), QueueError> {
        self.ensure_group().await?;
        let mut invocation = self.promote.prepare_invoke();
        invocation
            .key(self.key("waiting"))
            .key(self.key(Lane::Due.part()))
            .arg(now_ms)
            .arg(PROMOTE_BATCH);
        let _moved: i64 = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                invocation.invoke_async(c).await
            })
            .await?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<u64>, QueueError> {
        let waiting = self.key("waiting");
        let first: Vec<(String, f64)> = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                redis::cmd("ZRANGE")
                    .arg(&waiting)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(first.first().map(|(_, at)| *at as u64))
    }

    async fn lapsed(&self, now_ms: u64) -> Result<Vec<String>, QueueError> {
        let leases = self.key("leases");
        Ok(self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&leases)
                    .arg("-inf")
                    .arg(now_ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(100)
                    .query_async(c)
                    .await
            })
            .await?)
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let open = self.key("open");
        let (count, oldest): (u64, Vec<(String, f64)>) = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                redis::pipe()
                    .cmd("ZCARD")
                    .arg(&open)
                    .cmd("ZRANGE")
                    .arg(&open)
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(Depth {
            open: count,
            oldest_ms: oldest.first().map(|(_, created)| *created as u64),
        })
    }

    async fn tidy(&self) -> Result<(), QueueError> {
        self.trim_streams().await?;
        Ok(())
    }

    async fn notices_due(
        &self,
        now_ms: u64,
        max: usize,
        hold_until: u64,
    ) -> Result<Vec<Notice>, QueueError> {
        self.due_notices(now_ms, max, hold_until).await
    }

    async fn notice_done(&self, id: &str) -> Result<(), QueueError> {
        self.forget_notice(id).await
    }

    async fn notice_retry(&self, notice: &Notice, at: u64) -> Result<(), QueueError> {
        self.reschedule_notice(notice, at).await
    }

    async fn notices_pending(&self) -> Result<u64, QueueError> {
        self.count_notices().await
    }

    async fn remaining(&self) -> Vec<Message> {
        Vec::new()
    }

    fn durable(&self) -> bool {
        true
    }
}
