//! Reading the streams as one consumer of their group: entries another consumer took
//! and left idle past the claim time, then new ones. Two lanes: messages whose wait is
//! over (promoted from the waiting set: their reserved cell is now) come before messages
//! just accepted, so a large batch arriving never delays a send that is due.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use super::{GROUP, RedisQueue};
use crate::store::StoreError;

/// Entries as (lane-qualified entry id, fields).
pub(super) type StreamEntries = Vec<(String, Vec<String>)>;

/// A stream of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// Promoted from the waiting set: due now.
    Due,
    /// Just accepted.
    Fresh,
}

impl Lane {
    pub(super) const ALL: [Lane; 2] = [Lane::Due, Lane::Fresh];

    /// The key's last part.
    pub(super) fn part(self) -> &'static str {
        match self {
            Lane::Due => "due",
            Lane::Fresh => "stream",
        }
    }

    /// `lane:entry id`, as `Taken::entry` carries it.
    fn qualify(self, id: &str) -> String {
        format!("{}:{id}", self.part())
    }

    /// The lane and the stream's own id of a qualified entry.
    pub(super) fn of(entry: &str) -> (Lane, &str) {
        match entry.split_once(':') {
            Some(("due", id)) => (Lane::Due, id),
            Some((_, id)) => (Lane::Fresh, id),
            None => (Lane::Fresh, entry),
        }
    }
}

/// The message id in an entry's fields (`id`, then the id).
pub(super) fn entry_message(fields: &[String]) -> Option<&str> {
    fields
        .chunks(2)
        .find(|pair| pair.first().is_some_and(|f| f == "id"))
        .and_then(|pair| pair.get(1))
        .map(String::as_str)
}

impl RedisQueue {
    /// Creates the stream and its group once (from the start of the stream, so that
    /// entries written before the group existed are read too).
    pub(super) async fn ensure_group(&self) -> Result<(), StoreError> {
        if self.group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        for lane in Lane::ALL {
            let stream = self.key(lane.part());
            let created: Result<(), StoreError> = self
                .store
                .run("queue", async |c: &mut MultiplexedConnection| {
                    let result: redis::RedisResult<()> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async(c)
                        .await;
                    match result {
                        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
                        other => other,
                    }
                })
                .await;
            created?;
        }
        self.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Entries idle past the claim time, taken over from the replica that held them.
    pub(super) async fn claim_idle(&self, max: usize) -> Result<StreamEntries, StoreError> {
        {
            let mut last = self.last_claim.lock().unwrap_or_else(|p| p.into_inner());
            let every = (self.claim_idle / 2).max(Duration::from_millis(100));
            if last.is_some_and(|at| at.elapsed() < every) {
                return Ok(Vec::new());
            }
            *last = Some(Instant::now());
        }
        let mut claimed = Vec::new();
        for lane in Lane::ALL {
            if claimed.len() >= max {
                break;
            }
            claimed.extend(self.claim_lane(lane, max - claimed.len()).await?);
        }
        Ok(claimed)
    }

    async fn claim_lane(&self, lane: Lane, max: usize) -> Result<StreamEntries, StoreError> {
        let stream = self.key(lane.part());
        let idle = self.claim_idle.as_millis() as u64;
        let reply: redis::Value = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(c)
                    .await
            })
            .await?;
        // [next cursor, entries, deleted ids]; a deleted entry may show as nil.
        let redis::Value::Array(parts) = reply else {
            return Ok(Vec::new());
        };
        let Some(redis::Value::Array(entries)) = parts.into_iter().nth(1) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .into_iter()
            .filter_map(|entry| redis::from_redis_value::<(String, Vec<String>)>(entry).ok())
            .map(|(id, fields)| (lane.qualify(&id), fields))
            .collect())
    }

    /// New entries, up to `max` from each stream, in one read: those due first, then
    /// those just accepted.
    pub(super) async fn read_new(&self, max: usize) -> Result<StreamEntries, StoreError> {
        let streams = Lane::ALL.map(|lane| self.key(lane.part()));
        let reply: Result<Option<Vec<(String, StreamEntries)>>, StoreError> = self
            .store
            .run("queue", async |c: &mut MultiplexedConnection| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(max)
                    .arg("STREAMS")
                    .arg(&streams)
                    .arg(&Lane::ALL.map(|_| ">"))
                    .query_async(c)
                    .await
            })
            .await;
        match reply {
            Ok(reply) => {
                let mut lanes: [StreamEntries; Lane::ALL.len()] = Default::default();
                for (key, entries) in reply.into_iter().flatten() {
                    let Some(i) = streams.iter().position(|stream| *stream == key) else {
                        continue;
                    };
                    let lane = Lane::ALL[i];
                    lanes[i].extend(
                        entries
                            .into_iter()
                            .map(|(id, fields)| (lane.qualify(&id), fields)),
                    );
                }
                Ok(lanes.into_iter().flatten().collect())
            }
            Err(error) => {
                // Redis lost the group (restarted without persistence): make it again.
                self.group_ready.store(false, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Drops the entries the group is done with (`scripts::TRIM`).
    pub(super) async fn trim_streams(&self) -> Result<(), StoreError> {
        let mut invocation = self.trim.prepare_invoke();
        for lane in Lane::ALL {
            invocation.key(self.key(lane.part()));
        }
        invocation.arg(GROUP);
        self.store
            .run("queue", async |c: &mut MultiplexedConnection| {
                invocation.invoke_async::<i64>(c).await
            })
            .await?;
        Ok(())
    }
}
