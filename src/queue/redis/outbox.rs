//! The outbox in Redis: notices of final statuses waiting to be delivered as callbacks,
//! in a sorted set by their next try (`outbox:due`) with each notice's JSON beside it.

use redis::aio::MultiplexedConnection;

use super::RedisQueue;
use crate::queue::{Notice, QueueError};
use crate::store::StoreError;

impl RedisQueue {
    pub(super) fn outbox_key(&self) -> String {
        self.store.key(&["outbox", "due"])
    }

    pub(super) fn notice_key(&self, id: &str) -> String {
        self.store.key(&["outbox", "notice", id])
    }

    pub(super) async fn due_notices(
        &self,
        now_ms: u64,
        max: usize,
        hold_until: u64,
    ) -> Result<Vec<Notice>, QueueError> {
        let mut invocation = self.take_notices.prepare_invoke();
        invocation
            .key(self.outbox_key())
            .arg(now_ms)
            .arg(max)
            .arg(hold_until);
        let ids: Vec<String> = self
            .store
            .run("callbacks", async |c: &mut MultiplexedConnection| {
                invocation.invoke_async(c).await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.notice_key(id)).collect();
        let bodies: Vec<Option<String>> = self
            .store
            .run("callbacks", async |c: &mut MultiplexedConnection| {
                redis::cmd("MGET").arg(&keys).query_async(c).await
            })
            .await?;
        let mut notices = Vec::with_capacity(ids.len());
        for (id, body) in ids.iter().zip(bodies) {
            match body.and_then(|b| serde_json::from_str::<Notice>(&b).ok()) {
                Some(notice) => notices.push(notice),
                None => self.forget_notice(id).await?,
            }
        }
        Ok(notices)
    }

    pub(super) async fn forget_notice(&self, id: &str) -> Result<(), QueueError> {
        let (outbox, key) = (self.outbox_key(), self.notice_key(id));
        self.store
            .run("callbacks", async |c: &mut MultiplexedConnection| {
                redis::pipe()
                    .cmd("ZREM")
                    .arg(&outbox)
                    .arg(id)
                    .ignore()
                    .cmd("DEL")
                    .arg(&key)
                    .ignore()
                    .query_async::<()>(c)
                    .await
            })
            .await?;
        Ok(())
    }

    pub(super) async fn reschedule_notice(
        &self,
        notice: &Notice,
        at: u64,
    ) -> Result<(), QueueError> {
        let json = serde_json::to_string(notice)
            .map_err(|e| StoreError::new(format!("cannot encode a notice: {e}")))?;
        let (outbox, key) = (self.outbox_key(), self.notice_key(&notice.id));
        self.store
            .run("callbacks", async |c: &mut MultiplexedConnection| {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .ignore()
                    .cmd("ZADD")
                    .arg(&outbox)
                    .arg(at)
                    .arg(&notice.id)
                    .ignore()
                    .query_async::<()>(c)
                    .await
            })
            .await?;
        Ok(())
    }

    pub(super) async fn count_notices(&self) -> Result<u64, QueueError> {
        let outbox = self.outbox_key();
        Ok(self
            .store
            .run("callbacks", async |c: &mut MultiplexedConnection| {
                redis::cmd("ZCARD").arg(&outbox).query_async(c).await
            })
            .await?)
    }
}
