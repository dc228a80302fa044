//! GCRA on Redis: one atomic script per check, the same algorithm and parameters as the
//! in-memory limiter (`gcra`), so switching backends changes nothing for callers.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::domain::RateSettings;
use crate::store::group::{GroupCommit, Grouped};
use crate::store::{RedisStore, StoreError};

/// Admits one cell or says how long to wait, without spending anything on a refusal.
/// The theoretical arrival time (TAT) is kept in microseconds of Redis's own clock, so
/// replicas with skewed clocks still share one schedule; the key expires when the
/// bucket is full again.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + interval - interval * burst
if allow_at > now then
  return math.ceil(allow_at - now)
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"#;

/// Reservations, each its own group of keys, judged in order: each reserves the next
/// cell of every one of its keys (each with its own interval and burst), now or later,
/// when all of them come before its horizon (microseconds from now), and answers the
/// wait until the last of them (0: now), or -1 when one would come later (nothing
/// spent). One reservation holds a message's recipient and bot limits, so no cell of one
/// is spent when the other has none. ARGV: per reservation its key count, its horizon,
/// then each key's interval and burst; KEYS: the keys, in the same order.
const GCRA_RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local waits = {}
local a, k = 1, 1
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  local latest = now + tonumber(ARGV[a + 1])
  a = a + 2
  local at = now
  local tats = {}
  for i = 0, n - 1 do
    local interval = tonumber(ARGV[a + 2 * i])
    local burst = tonumber(ARGV[a + 2 * i + 1])
    local tat = tonumber(redis.call('GET', KEYS[k + i])) or now
    if tat < now then tat = now end
    local allow_at = tat + interval - interval * burst
    if allow_at > latest then
      at = nil
      break
    end
    if allow_at > at then at = allow_at end
    tats[i] = tat + interval
  end
  if at then
    for i = 0, n - 1 do
      redis.call('SET', KEYS[k + i], string.format('%d', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
    end
    waits[#waits + 1] = math.ceil(at - now)
  else
    waits[#waits + 1] = -1
  end
  a = a + 2 * n
  k = k + n
end
return waits
"#;

/// What a check is about.
#[derive(Debug, Clone, Copy)]
pub enum Limit<'a> {
    Bot(&'a str),
    Recipient { bot: &'a str, to: &'a str },
}

/// The shared limiter; keys live under `{prefix}rate:`.
#[derive(Debug)]
pub struct SharedLimiter {
    store: Arc<RedisStore>,
    script: redis::Script,
    /// Reservations made together (started by the first).
    reserves: OnceLock<GroupCommit<Reserves>>,
}

impl SharedLimiter {
    pub fn new(store: Arc<RedisStore>) -> Self {
        SharedLimiter {
            store,
            script: redis::Script::new(GCRA),
            reserves: OnceLock::new(),
        }
    }

    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// The Redis key of a limit. Recipients' numbers are hashed: a store operator sees
    /// no phone number.
    fn key(&self, limit: Limit<'_>) -> String {
        match limit {
            Limit::Bot(bot) => self.store.key(&["rate", "bot", bot]),
            Limit::Recipient { bot, to } => {
                let hashed = hex::encode(&Sha256::digest(to.as_bytes())[..12]);
                self.store.key(&["rate", "to", bot, &hashed])
            }
        }
    }

    /// `None` when a cell was taken; otherwise how long until one is free.
    pub async fn check(
        &self,
        limit: Limit<'_>,
        rate: &RateSettings,
    ) -> Result<Option<Duration>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.key(limit))
            .arg(interval_us(rate))
            .arg(rate.burst.max(1));
        let wait_us: u64 = self
            .store
            .run("rate_limit", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us)))
    }

    /// Reserves a cell of every limit no later than `latest`: when the last of them
    /// is, or `None` (nothing spent).
    pub async fn reserve(
        &self,
        limits: &[(Limit<'_>, RateSettings)],
        latest: Instant,
    ) -> Result<Option<Instant>, StoreError> {
        let reservation = Reservation {
            horizon_us: latest.saturating_duration_since(Instant::now()).as_micros() as u64,
            cells: limits
                .iter()
                .map(|(limit, rate)| (self.key(*limit), interval_us(rate), rate.burst.max(1)))
                .collect(),
        };
        let reserves = self.reserves.get_or_init(|| {
            let reserves = Reserves {
                store: self.store.clone(),
                script: redis::Script::new(GCRA_RESERVE),
            };
            GroupCommit::start(reserves, self.store.runtime())
        });
        let wait_us = reserves.submit(reservation).await?;
        Ok(u64::try_from(wait_us)
            .ok()
            .map(|wait| Instant::now() + Duration::from_micros(wait)))
    }
}

/// One reservation: its horizon (µs from now) and each key's interval (µs) and burst.
struct Reservation {
    horizon_us: u64,
    cells: Vec<(String, u64, u32)>,
}

/// `GCRA_RESERVE` runs: each reservation's wait in µs, -1 when refused.
struct Reserves {
    store: Arc<RedisStore>,
    script: redis::Script,
}

impl Grouped for Reserves {
    type Item = Reservation;
    type Answer = i64;

    fn weight(reservation: &Reservation) -> usize {
        reservation.cells.len()
    }

    async fn call(&self, reservations: &[Reservation]) -> Result<Vec<i64>, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        for reservation in reservations {
            invocation
                .arg(reservation.cells.len())
                .arg(reservation.horizon_us);
            for (key, interval, burst) in &reservation.cells {
                invocation.key(key).arg(interval).arg(burst);
            }
        }
        self.store
            .run("rate_limit", async |connection| {
                invocation.invoke_async(connection).await
            })
            .await
    }
}

/// Microseconds between two cells of `rate`.
fn interval_us(rate: &RateSettings) -> u64 {
    (1e6 / rate.rate_per_second.max(1e-9)).round().max(1.0) as u64
}
