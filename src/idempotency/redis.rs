//! Idempotency keys on Redis: an in-flight marker claimed atomically (`SET NX` with
//! expiry) so that only one replica sends, then the final answer with the retention TTL
//! and the message's fingerprint. Replay, 409 and 422 behave exactly as in memory.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Begin, Fingerprint, IdempotencyStore, Reservation, StoreError, StoredAnswer};
use crate::store::RedisStore;

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
        #[serde(default, skip_serializing_if = "Option::is_none")]
        location: Option<String>,
        body: String,
    },
}

fn hex(fingerprint: Fingerprint) -> String {
    hex::encode(fingerprint.0)
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
        self.begin_as(key, fingerprint, lease, new_token()).await
    }

    async fn complete(
        &self,
        reservation: &Reservation,
        answer: StoredAnswer,
    ) -> Result<(), StoreError> {
        self.store_answer(&reservation.key, reservation.fingerprint, answer)
            .await
    }

    async fn release(&self, reservation: &Reservation) -> Result<(), StoreError> {
        self.release_claim(&reservation.key, &reservation.token)
            .await
            .map(drop)
    }
}

/// Tells one holder's claim from another's.
pub(super) fn new_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

impl RedisIdempotency {
    /// Claims `key` with `token`: the caller knows the token even when the call fails, so
    /// a claim that lands after its caller gave up can be taken back.
    pub(super) async fn begin_as(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        lease: Duration,
        token: String,
    ) -> Result<Begin, StoreError> {
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
                    StoreError::new(format!(
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
                        location,
                        body,
                        ..
                    } => Begin::Replay(StoredAnswer {
                        status,
                        content_type,
                        retry_after,
                        location,
                        body: Bytes::from(body),
                    }),
                })
            }
            _ => Err(StoreError::new(
                "the shared store answered the idempotency claim unexpectedly",
            )),
        }
    }

    /// Stores `answer` for `key` unless the key now stands for another message.
    pub(super) async fn store_answer(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        answer: StoredAnswer,
    ) -> Result<(), StoreError> {
        let record = Record::Done {
            fp: hex(fingerprint),
            status: answer.status,
            content_type: answer.content_type,
            retry_after: answer.retry_after,
            location: answer.location,
            body: String::from_utf8_lossy(&answer.body).into_owned(),
        };
        let record = serde_json::to_string(&record)
            .map_err(|error| StoreError::new(format!("cannot encode the answer ({error})")))?;
        let mut invocation = self.complete.prepare_invoke();
        invocation
            .key(self.key(key))
            .arg(hex(fingerprint))
            .arg(record)
            .arg(self.retention_ms());
        let _stored: i64 = self.invoke("idempotency_complete", &invocation).await?;
        Ok(())
    }

    /// Deletes `key` while it is the in-flight claim of `token`; whether it did.
    pub(super) async fn release_claim(&self, key: &str, token: &str) -> Result<bool, StoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(self.key(key)).arg(token);
        let released: i64 = self.invoke("idempotency_release", &invocation).await?;
        Ok(released == 1)
    }
}
