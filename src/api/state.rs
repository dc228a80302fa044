//! What every handler shares, built once from the configuration.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::auth::Gate;
use crate::config::{RelayConfig, UpstreamMode};
use crate::delivery::{self, Delivery};
use crate::domain::BotRegistry;
use crate::idempotency::{IdempotencyStore, MemoryStore, SharedIdempotency};
use crate::jelou::{CredentialBook, JelouClient, JelouUrls, Sandbox};
use crate::queue::worker::Worker;
use crate::queue::{self, AsyncConfig, QueueStore};
use crate::store::Store;
use std::sync::atomic::{AtomicBool, Ordering};

/// What every handler shares: one allocation, so a clone per request is one count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    pub bots: Arc<BotRegistry>,
    /// Which bots have credentials: the dry run says so (never what they are).
    pub credentials: CredentialBook,
    /// Where each bot's calls go.
    pub urls: Arc<JelouUrls>,
    pub body_limit: usize,
    /// The largest batch body.
    pub batch_body_limit: usize,
    pub sandbox: bool,
    pub delivery: Delivery,
    pub readiness: Readiness,
    /// The default (and longest) deadline of a send.
    pub deadline: Duration,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub idempotency_required: bool,
    /// Where rate-limit state and idempotency keys live; `/readyz` reports its state.
    pub store: Store,
    pub gate: Arc<Gate>,
    /// One permit per request being handled.
    pub permits: Arc<Semaphore>,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    pub body_read_timeout: Duration,
    /// The asynchronous sends' queue, when `async.enabled`.
    pub queue: Option<Arc<dyn QueueStore>>,
    pub asynchronous: AsyncConfig,
    /// Wakes this replica's worker when a message is queued.
    pub wake: Arc<Notify>,
    /// Callers told of their messages' final statuses.
    pub subscribers: Arc<BTreeSet<String>>,
}

impl AppState {
    /// The state for `config`, with the delivery stack over Jelou or the sandbox.
    pub fn from_config(config: &RelayConfig) -> Result<AppState, String> {
        // The recorder is installed before any metric is touched.
        crate::metrics::handle();
        let store = Store::open(&config.store)?;
        // The subscriber is installed first (`main`): whether it exports spans is known.
        let exported = crate::telemetry::exporting();
        let delivery = match config.mode {
            UpstreamMode::Sandbox => delivery::stack(&config.delivery, Sandbox, &store, exported),
            UpstreamMode::Jelou => delivery::stack(
                &config.delivery,
                JelouClient::new(config.connect_timeout, config.credentials.clone())?,
                &store,
                exported,
            ),
        };
        let retention = config.idempotency.retention;
        let idempotency: Arc<dyn IdempotencyStore> = match &store {
            Store::Memory => Arc::new(MemoryStore::new(retention, config.idempotency.max_keys)),
            Store::Redis(redis) => Arc::new(SharedIdempotency::new(
                redis.clone(),
                retention,
                config.idempotency.max_keys,
            )),
        };
        let store_for_queue = store.clone();
        Ok(AppState(Arc::new(Shared {
            bots: Arc::new(config.bots.clone()),
            credentials: config.credentials.clone(),
            urls: Arc::new(JelouUrls::new(
                config.base_url.clone(),
                config.bots.bots().map(|bot| bot.id.as_str()),
            )),
            body_limit: config.body_limit_bytes,
            batch_body_limit: config.batch_body_limit_bytes,
            sandbox: config.mode == UpstreamMode::Sandbox,
            delivery,
            readiness: Readiness::new(),
            deadline: config.delivery.deadline,
            idempotency,
            idempotency_required: config.idempotency.required,
            store,
            gate: Arc::new(Gate::new(config.callers.clone())),
            permits: Arc::new(Semaphore::new(config.max_in_flight)),
            max_header_bytes: config.max_header_bytes,
            max_json_depth: config.max_json_depth,
            body_read_timeout: config.body_read_timeout,
            queue: config
                .asynchronous
                .enabled
                .then(|| queue::open(&store_for_queue, &config.asynchronous)),
            asynchronous: config.asynchronous.clone(),
            wake: Arc::new(Notify::new()),
            subscribers: Arc::new(config.callbacks.endpoints.keys().cloned().collect()),
        })))
    }

    /// This replica's queue worker, when asynchronous sending is on.
    pub fn worker(&self) -> Option<Worker> {
        Some(Worker {
            queue: self.queue.clone()?,
            paced: self.delivery.paced.clone(),
            bots: self.bots.clone(),
            config: self.asynchronous.clone(),
            wake: self.wake.clone(),
            subscribers: self.subscribers.clone(),
        })
    }
}

/// Flips to not-ready when shutdown begins, so the load balancer stops sending.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn new() -> Self {
        Readiness(Arc::new(AtomicBool::new(true)))
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}
