//! The shared store (Redis): one multiplexed connection, re-established when lost, for
//! every replica's rate-limit state and idempotency keys; a timeout on every call; and a
//! health flag that `/readyz`, the fallbacks and the metrics read.

mod connection;
pub mod group;
mod resolver;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::time::Instant;
use utoipa::ToSchema;

use connection::Connection;
use resolver::HickoryResolver;

/// How often the store is pinged, so that its state is known without traffic and a
/// store marked down is tried again.
const PING_INTERVAL: Duration = Duration::from_millis(500);

/// A call to the shared store failed; the text names the target, never its password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct StoreError {
    detail: String,
    /// The call went out and no answer came in time (a stalled Redis may still carry
    /// it out when it resumes), or the answer could not be read.
    unanswered: bool,
}

impl StoreError {
    /// A call the store refused, or one that never reached it: nothing was done.
    pub fn new(detail: impl Into<String>) -> StoreError {
        StoreError {
            detail: detail.into(),
            unanswered: false,
        }
    }

    /// A call that went out and was not answered in time, or whose answer could not be
    /// read.
    fn unanswered(detail: String) -> StoreError {
        StoreError {
            detail,
            unanswered: true,
        }
    }

    /// The same failure, for a caller whose own write had not gone out yet: what the
    /// call may still do (create a stream's group, say) changes nothing it promises.
    pub fn before_the_write(self) -> StoreError {
        StoreError {
            unanswered: false,
            ..self
        }
    }

    /// Whether the store may still carry the call out: it went out and no answer came
    /// within `store.timeout_ms`. A connection that fails, or an error Redis answers,
    /// is taken as a call not carried out.
    pub fn may_have_run(&self) -> bool {
        self.unanswered
    }
}

/// Where rate-limit state and idempotency keys live.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Memory,
    Redis(RedisConfig),
}

#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The full URL, password included: only the store's client sees it.
    pub url: secrecy::SecretString,
    /// The URL without credentials, for logs and `/readyz`.
    pub target: String,
    pub key_prefix: String,
    /// The most any one Redis call may take.
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    /// Replicas sharing the budget: with Redis down (`fail_open`), each replica applies
    /// every limit divided by this.
    pub expected_replicas: u32,
}

/// What the relay does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Keep sending: local limits at each limit divided by the expected replicas,
    /// idempotency in this process only (best effort).
    FailOpen,
    /// Refuse sends with 503 `overloaded`, delivery `not_sent`.
    FailClosed,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::FailOpen => "fail_open",
            FailureMode::FailClosed => "fail_closed",
        }
    }
}

/// What `/readyz` says of the store.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoreStatus {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// `up`, or `down` while Redis cannot be reached.
    pub state: &'static str,
    /// `fail_open` or `fail_closed` (Redis only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<&'static str>,
    /// The Redis address, without credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The store the application runs with, as `/readyz` and the handlers see it.
#[derive(Debug, Clone)]
pub enum Store {
    Memory,
    Redis(Arc<RedisStore>),
}

impl Store {
    /// Opens the store for `config`. Redis is connected lazily: the relay starts (and
    /// reports `down`) while Redis is unreachable, and connects once it is there.
    pub fn open(config: &StoreConfig) -> Result<Store, String> {
        match config {
            StoreConfig::Memory => Ok(Store::Memory),
            StoreConfig::Redis(redis) => Ok(Store::Redis(RedisStore::open(redis)?)),
        }
    }

    pub fn status(&self) -> StoreStatus {
        match self {
            Store::Memory => StoreStatus {
                backend: "memory",
                state: "up",
                failure_mode: None,
                target: None,
            },
            Store::Redis(redis) => StoreStatus {
                backend: "redis",
                state: if redis.is_up() { "up" } else { "down" },
                failure_mode: Some(redis.failure_mode.as_str()),
                target: Some(redis.target.clone()),
            },
        }
    }
}

/// One Redis connection shared by every request.
pub struct RedisStore {
    connection: Connection,
    prefix: String,
    timeout: Duration,
    target: String,
    pub failure_mode: FailureMode,
    pub expected_replicas: u32,
    up: AtomicBool,
    /// The runtime the store was opened on, which outlives the per-core workers: its
    /// background tasks run there.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Creates the client and starts the pinger; must run inside the Tokio runtime.
    pub fn open(config: &RedisConfig) -> Result<Arc<RedisStore>, String> {
        // The URL holds the password: errors name the target only.
        let client = redis::Client::open(config.url.expose_secret()).map_err(|error| {
            format!(
                "store.redis_url ({}) is not usable: {}",
                config.target,
                describe(&error)
            )
        })?;
        let connection = Connection {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                // Names resolve without the C library's resolver (absent from the
                // static, scratch container image).
                .set_dns_resolver(HickoryResolver::default()),
            current: tokio::sync::Mutex::new(None),
        };
        let store = Arc::new(RedisStore {
            connection,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            target: config.target.clone(),
            failure_mode: config.failure_mode,
            expected_replicas: config.expected_replicas,
            // Unknown until the first ping; requests try Redis meanwhile.
            up: AtomicBool::new(true),
            runtime: tokio::runtime::Handle::current(),
        });
        metrics::gauge!(crate::metrics::STORE_UP).set(1.0);
        tokio::spawn(ping_forever(Arc::downgrade(&store)));
        Ok(store)
    }

    /// The runtime for the store's background tasks.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    /// `prefix` + `parts` joined with `:`.
    pub fn key(&self, parts: &[&str]) -> String {
        let len = parts.iter().map(|p| p.len() + 1).sum::<usize>();
        let mut key = String::with_capacity(self.prefix.len() + len);
        key.push_str(&self.prefix);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    /// Runs `command` on the shared connection, connecting first if there is none; a
    /// connection that failed is dropped, and the next call connects anew. Bounded by
    /// the store timeout, timed, and keeping the health flag. While the store is marked
    /// down, calls fail at once without waiting: the pinger brings it back.
    pub async fn run<T, F>(&self, op: &'static str, command: F) -> Result<T, StoreError>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    {
        if !self.is_up() {
            metrics::counter!(crate::metrics::STORE_ERRORS, "op" => op, "kind" => "down")
                .increment(1);
            return Err(StoreError::new(format!(
                "the shared store ({}) is unreachable",
                self.target
            )));
        }
        let sent = AtomicBool::new(false);
        self.timed(op, self.connection.run(command, &sent), &sent)
            .await
    }

    /// `call`, which has gone out to Redis once `sent` is set.
    async fn timed<T, F>(
        &self,
        op: &'static str,
        call: F,
        sent: &AtomicBool,
    ) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, call).await;
        let elapsed = started.elapsed().as_secs_f64();
        // The third member: whether Redis gave no answer of its own (an error reply is
        // one: the call was refused, not carried out).
        let outcome = match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(("error", describe(&error), error.code().is_none())),
            Err(_elapsed) => {
                // A connection that does not answer may never answer: start afresh.
                self.connection.reset();
                Err((
                    "timeout",
                    format!("no answer within {} ms", self.timeout.as_millis()),
                    true,
                ))
            }
        };
        let label = if outcome.is_ok() { "ok" } else { "error" };
        metrics::histogram!(crate::metrics::STORE_DURATION, "op" => op, "result" => label)
            .record(elapsed);
        match outcome {
            Ok(value) => {
                self.mark(true);
                Ok(value)
            }
            Err((kind, detail, unanswered)) => {
                metrics::counter!(crate::metrics::STORE_ERRORS, "op" => op, "kind" => kind)
                    .increment(1);
                self.mark(false);
                let detail = format!("the shared store ({}) failed: {detail}", self.target);
                // Sent and never answered: a stalled Redis may still carry it out.
                Err(if unanswered && sent.load(Ordering::Relaxed) {
                    StoreError::unanswered(detail)
                } else {
                    StoreError::new(detail)
                })
            }
        }
    }

    fn mark(&self, up: bool) {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            metrics::gauge!(crate::metrics::STORE_UP).set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!(store = %self.target, "shared store reachable again");
            } else {
                tracing::warn!(
                    store = %self.target,
                    failure_mode = self.failure_mode.as_str(),
                    "shared store unreachable"
                );
            }
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let sent = AtomicBool::new(false);
        let ping = async |connection: &mut MultiplexedConnection| {
            redis::cmd("PING").query_async::<String>(connection).await
        };
        self.timed("ping", self.connection.run(ping, &sent), &sent)
            .await
            .map(drop)
    }
}

/// Pings until the store is dropped.
async fn ping_forever(store: Weak<RedisStore>) {
    let mut ticks = tokio::time::interval(PING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else { return };
        if let Err(error) = store.ping().await {
            tracing::debug!(%error, "store ping failed");
        }
    }
}

/// A Redis error in words that cannot carry the URL or its password.
fn describe(error: &redis::RedisError) -> String {
    match error.code() {
        Some(code) => format!("{} ({code})", error.category()),
        None => error.category().to_string(),
    }
}

/// Counts one use of the fallback (`fail_open`) or one refusal (`fail_closed`).
pub fn count_unavailable(what: &'static str, mode: FailureMode) {
    let action = match mode {
        FailureMode::FailOpen => "fallback",
        FailureMode::FailClosed => "refused",
    };
    metrics::counter!(crate::metrics::STORE_UNAVAILABLE, "what" => what, "action" => action)
        .increment(1);
}
