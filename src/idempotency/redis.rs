//! Idempotency keys on Redis: an in-flight marker claimed atomically (`SET NX` with
//! expiry) so that only one replica sends, then the final answer with the retention TTL
//! and the message's fingerprint. Replay, 409 and 422 behave exactly as in memory.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    Begin, Fingerprint, IdempotencyStore, MemoryStore, Reservation, StoreError, StoredAnswer,
};
use crate::store::{FailureMode, RedisStore};

/// Claims the key with an in-flight marker, or returns what the key holds. The lease is
/// computed on Redis's clock, so replicas never compare their own clocks.
/// KEYS[1] key; ARGV: fingerprint, owner token, lease ms, retention ms.
const BEGIN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local marker = '{"state":"in_flight","fp":"' .. ARGV[1] .. '","owner":"' .. ARGV[2]
  .. '","lease_until":' .. string.format('%d', now + tonumber(ARGV[3])) .. '}'
if redis.call('SET', KEYS[1], marker, 'NX', 'PX', ARGV[4]) then
  return {'proceed', string.format('%d', now)}
end
return {'existing', string.format('%d', now), redis.call('GET', KEYS[1])}
"#;

/// Stores the answer unless the key now stands for another message.
/// KEYS[1] key; ARGV: fingerprint, record, retention ms.
const COMPLETE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, record = pcall(cjson.decode, current)
  if ok and record.fp ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// Deletes the key only while it is this holder's in-flight marker.
/// KEYS[1] key; ARGV: owner token.
const RELEASE: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, record = pcall(cjson.decode, current)
if ok and record.state == 'in_flight' and record.owner == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A key's value in Redis.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Record {
    InFlight {
        fp: String,
        owner: String,
        /// Milliseconds since the epoch, Redis's clock.
        lease_until: u64,
    },
    Done {
        fp: String,
        status: u16,
        content_type: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
        body: String,
    },
}

fn hex(fingerprint: Fingerprint) -> String {
    fingerprint.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keys under `{prefix}idem:`.
#[derive(Debug)]
pub struct RedisIdempotency {
    store: Arc<RedisStore>,
    retention: Duration,
    begin: redis::Script,
    complete: redis::Script,
    release: redis::Script,
}

impl RedisIdempotency {
    pub fn new(store: Arc<RedisStore>, retention: Duration) -> Self {
        RedisIdempotency {
            store,
            retention,
            begin: redis::Script::new(BEGIN),
            complete: redis::Script::new(COMPLETE),
            release: redis::Script::new(RELEASE),
        }
    }

    fn key(&self, key: &str) -> String {
        self.store.key(&["idem", key])
    }

    /// Runs one of the scripts on the shared connection.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.store
            .run(op, async |connection| {
                invocation.invoke_async(connection).await
            })
            .await
    }

    fn retention_ms(&self) -> u64 {
        self.retention.as_millis().max(1) as u64
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotency {
    async fn begin(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let fp = hex(fingerprint);
        let mut invocation = self.begin.prepare_invoke();
        invocation
            .key(self.key(key))
            .arg(&fp)
            .arg(&token)
            .arg(lease.as_millis().max(1) as u64)
            .arg(self.retention_ms());
        let reply: Vec<String> = self.invoke("idempotency_begin", &invocation).await?;
        let now: u64 = reply.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        match (reply.first().map(String::as_str), reply.get(2)) {
            (Some("proceed"), _) => Ok(Begin::Proceed(Reservation {
                key: key.to_string(),
                fingerprint,
                token,
                local: false,
            })),
            (Some("existing"), Some(value)) => {
                let record: Record = serde_json::from_str(value).map_err(|error| {
                    StoreError(format!(
                        "an idempotency record in the shared store is unreadable ({error})"
                    ))
                })?;
                Ok(match record {
                    Record::InFlight { fp: stored, .. } | Record::Done { fp: stored, .. }
                        if stored != fp =>
                    {
                        Begin::Mismatch
                    }
                    Record::InFlight { lease_until, .. } if lease_until > now => Begin::InFlight,
                    Record::InFlight { .. } => Begin::Abandoned,
                    Record::Done {
                        status,
                        content_type,
                        retry_after,
                        body,
                        ..
                    } => Begin::Replay(StoredAnswer {
                        status,
                        content_type,
                        retry_after,
                        body: Bytes::from(body),
                    }),
                })
            }
            _ => Err(StoreError(
                "the shared store answered the idempotency claim unexpectedly".into(),
            )),
        }
    }

    async fn complete(
        &self,
        reservation: &Reservation,
        answer: StoredAnswer,
    ) -> Result<(), StoreError> {
        let record = Record::Done {
            fp: hex(reservation.fingerprint),
            status: answer.status,
            content_type: answer.content_type,
            retry_after: answer.retry_after,
            body: String::from_utf8_lossy(&answer.body).into_owned(),
        };
        let record = serde_json::to_string(&record)
            .map_err(|error| StoreError(format!("cannot encode the answer ({error})")))?;
        let mut invocation = self.complete.prepare_invoke();
        invocation
            .key(self.key(&reservation.key))
            .arg(hex(reservation.fingerprint))
            .arg(record)
            .arg(self.retention_ms());
        let _stored: i64 = self.invoke("idempotency_complete", &invocation).await?;
        Ok(())
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(self.key(&reservation.key))
            .arg(&reservation.token);
        let _released: i64 = self.invoke("idempotency_release", &invocation).await?;
        Ok(())
    }
}

/// Redis first; this process's own store for keys seen while Redis was unreachable
/// (`fail_open`) and for answers Redis could not take.
#[derive(Debug)]
pub struct SharedIdempotency {
    redis: RedisIdempotency,
    local: MemoryStore,
    mode: FailureMode,
}

impl SharedIdempotency {
    pub fn new(store: Arc<RedisStore>, retention: Duration, local_max_keys: usize) -> Self {
        let mode = store.failure_mode;
        SharedIdempotency {
            redis: RedisIdempotency::new(store, retention),
            local: MemoryStore::new(retention, local_max_keys),
            mode,
        }
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
        match self.redis.begin(key, fingerprint, lease).await {
            Ok(begin) => Ok(begin),
            Err(error) => {
                crate::store::count_unavailable("idempotency", self.mode);
                match self.mode {
                    FailureMode::FailClosed => Err(error),
                    FailureMode::FailOpen => {
                        tracing::debug!(%error, "Idempotency-Key kept by this replica only: the shared store is unreachable (fail_open)");
                        self.local.begin(key, fingerprint, lease).await
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
        if reservation.local {
            return self.local.complete(reservation, answer).await;
        }
        if let Err(error) = self.redis.complete(reservation, answer.clone()).await {
            // Kept here so that a retry on this replica still gets it; a retry elsewhere
            // finds the marker, then (its lease over) an unknown outcome.
            self.local
                .remember(&reservation.key, reservation.fingerprint, answer);
            return Err(error);
        }
        Ok(())
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        if reservation.local {
            return self.local.release(reservation).await;
        }
        // If this fails, the marker stays until its lease ends; a retry meanwhile gets
        // 409, then an unknown outcome: never a second send.
        self.redis.release(reservation).await
    }
}
