//! Acceptances written together ([`crate::store::group`]): the enqueues that arrive
//! while one is in Redis go in the next `ENQUEUE` run. Each caller's messages stay one
//! group there, queued whole or not at all.

use std::sync::Arc;

use redis::aio::MultiplexedConnection;

use super::{Message, encode};
use crate::store::group::Grouped;
use crate::store::{RedisStore, StoreError};

/// One message's arguments to the `ENQUEUE` script.
pub(super) struct Row {
    key: String,
    id: String,
    json: String,
    created_ms: u64,
    retention_ms: u64,
    due_ms: u64,
}

impl Row {
    /// `message`, stored at `key`, kept `retention` past its expiry.
    pub(super) fn new(
        key: String,
        message: &Message,
        now_ms: u64,
        retention_ms: u64,
    ) -> Result<Self, StoreError> {
        Ok(Row {
            key,
            id: message.id.clone(),
            json: encode(message)?,
            created_ms: message.created_ms,
            // Past its expiry and retention a message is forgotten even if no replica
            // ever ran again to close it.
            retention_ms: message.expires_ms.saturating_sub(message.created_ms) + retention_ms,
            due_ms: message.due_later(now_ms).unwrap_or(0),
        })
    }
}

/// A caller's messages, queued whole or not at all.
pub(super) struct Group {
    pub rows: Vec<Row>,
    pub max_queued: usize,
}

/// The keys every call names first: open, the fresh stream, waiting.
pub(super) struct QueueKeys {
    pub open: String,
    pub stream: String,
    pub waiting: String,
}

/// `ENQUEUE` runs: whether each group was queued (`false`: the queue is full).
pub(super) struct Enqueues {
    pub store: Arc<RedisStore>,
    pub script: redis::Script,
    pub keys: QueueKeys,
}

impl Grouped for Enqueues {
    type Item = Group;
    type Answer = bool;

    fn weight(group: &Group) -> usize {
        group.rows.len()
    }

    /// One `ENQUEUE` run for `groups`: whether each was queued.
    async fn call(&self, groups: &[Group]) -> Result<Vec<bool>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(&self.keys.open)
            .key(&self.keys.stream)
            .key(&self.keys.waiting);
        for group in groups {
            invocation.arg(group.rows.len()).arg(group.max_queued);
            for row in &group.rows {
                invocation
                    .key(&row.key)
                    .arg(&row.id)
                    .arg(&row.json)
                    .arg(row.created_ms)
                    .arg(row.retention_ms)
                    .arg(row.due_ms);
            }
        }
        let queued: Vec<i64> = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                invocation.invoke_async(c).await
            })
            .await?;
        Ok(queued.into_iter().map(|flag| flag == 1).collect())
    }
}
