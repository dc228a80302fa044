//! Delivery: the tower stack between the send handler and Jelou (deadline, rate
//! limits, concurrency, retry, attempt), read top to bottom in [`stack`].

pub mod attempt;
pub mod concurrency;
pub mod deadline;
pub mod failure;
mod gcra;
pub mod journal;
mod paced;
pub mod rate_limit;
pub mod retry;
mod shared_limits;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub use failure::{DeliveryFailure, DeliveryState, FailureKind};
pub use paced::{AfterFailure, Paced};

use crate::domain::RateSettings;
use crate::jelou::{FlowRequest, Verdict};
use crate::store::Store;

/// One message on its way to Jelou, with its deadline and the record of its attempts.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The request Jelou receives, built once.
    pub request: Arc<FlowRequest>,
    /// When the whole delivery must be over, every attempt and wait included.
    pub deadline: Instant,
    /// Shared by the attempts of this one message.
    pub journal: Arc<journal::Journal>,
}

impl Outbound {
    pub fn new(request: FlowRequest, deadline: Instant) -> Self {
        Outbound {
            request: Arc::new(request),
            deadline,
            journal: Arc::default(),
        }
    }
}

/// Jelou accepted the message.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub status: u16,
    pub body: Value,
    pub attempts: u32,
}

/// Failure classes whose outcome is unknown; retrying them may send a message twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UnsafeRetry {
    #[serde(rename = "500")]
    InternalServerError,
    #[serde(rename = "502")]
    BadGateway,
    #[serde(rename = "504")]
    GatewayTimeout,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "connection_lost")]
    ConnectionLost,
}

/// The delivery stack's settings, validated by `config`.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// One deadline per request, covering every attempt and wait.
    pub deadline: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The longest `Retry-After` the relay waits out itself.
    pub retry_after_cap: Duration,
    pub retry_budget_percent: f32,
    pub retry_budget_min_per_second: u32,
    pub retry_unsafe: Vec<UnsafeRetry>,
    pub max_in_flight: usize,
    pub max_waiting: usize,
    pub rate_limit_max_wait: Duration,
    /// The most one attempt may take.
    pub request_timeout: Duration,
    /// WhatsApp's pair limit: messages to one recipient from one bot.
    pub recipients: RateSettings,
}

/// The whole outbound path as one cloneable service.
pub type DeliveryService = BoxCloneSyncService<Outbound, Delivered, DeliveryFailure>;

/// What every delivery layer's `call` returns.
pub type DeliveryFuture = Pin<Box<dyn Future<Output = Result<Delivered, DeliveryFailure>> + Send>>;

/// The bound every delivery layer puts on the service it wraps.
pub trait DeliveryInner:
    tower::Service<Outbound, Response = Delivered, Error = DeliveryFailure, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> DeliveryInner for S where
    S: tower::Service<
            Outbound,
            Response = Delivered,
            Error = DeliveryFailure,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// What the stack delivers through: Jelou's client, or the sandbox.
pub trait Upstream:
    tower::Service<Arc<FlowRequest>, Response = Verdict, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Upstream for S where
    S: tower::Service<
            Arc<FlowRequest>,
            Response = Verdict,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A bounded count of waiting requests, shared by the layers that make requests wait.
#[derive(Debug, Clone)]
pub struct WaitQueue {
    waiting: Arc<AtomicUsize>,
    max: usize,
}

impl WaitQueue {
    pub fn new(max: usize) -> Self {
        WaitQueue {
            waiting: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A place in the queue, or `None` when it is full. Dropping the slot (also when the
    /// request is cancelled by its deadline) gives the place back.
    pub fn enter(&self) -> Option<WaitSlot> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(WaitSlot(self.waiting.clone()))
    }
}

pub struct WaitSlot(Arc<AtomicUsize>);

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The two ways out to Jelou, sharing the limits, the permits, the retry policy and
/// budget, the per-attempt timeout and the upstream (credentials included).
#[derive(Clone)]
pub struct Delivery {
    /// A synchronous send: the whole stack, retries and waits within one deadline.
    pub send: DeliveryService,
    /// A queued send: paced by reservation and tried one attempt at a time.
    pub paced: Paced,
}

/// Assembles the delivery stack over the upstream (Jelou client or sandbox), outer to
/// inner, and the queue's path over the same parts.
/// `exported_spans`: whether spans go to a trace exporter (attempt spans then carry
/// OpenTelemetry's HTTP attributes).
pub fn stack(
    delivery: &DeliveryConfig,
    upstream: impl Upstream,
    store: &Store,
    exported_spans: bool,
) -> Delivery {
    let queue = WaitQueue::new(delivery.max_waiting);
    let limits = Arc::new(match store {
        Store::Memory => rate_limit::Limits::new(
            &delivery.recipients,
            delivery.rate_limit_max_wait,
            queue.clone(),
        ),
        Store::Redis(redis) => rate_limit::Limits::shared(
            &delivery.recipients,
            delivery.rate_limit_max_wait,
            queue.clone(),
            redis.clone(),
        ),
    });
    let concurrency = concurrency::ConcurrencyLayer::new(delivery.max_in_flight, queue);
    let retry = retry::RetryPolicy::new(delivery);
    let attempt = attempt::AttemptLayer::new(delivery.request_timeout, exported_spans);
    let service = ServiceBuilder::new()
        // One deadline over everything below; the final attempt count and delivery
        // state are read from the journal here.
        .layer(deadline::DeadlineLayer)
        // Rate limits before the concurrency limit: a request waiting for WhatsApp
        // capacity must not hold one of the permits to Jelou.
        .layer(rate_limit::RateLimitLayer::new(limits.clone()))
        // Outside the retry: a request keeps its permit for its whole retry sequence.
        .layer(concurrency.clone())
        .layer(tower::retry::RetryLayer::new(retry.clone()))
        // Each attempt: journaled, and bounded by the per-attempt timeout and the deadline.
        .layer(attempt.clone())
        .service(upstream.clone());
    let one_attempt = ServiceBuilder::new().layer(attempt).service(upstream);
    Delivery {
        send: BoxCloneSyncService::new(service),
        paced: Paced::new(
            limits,
            concurrency.permits(),
            BoxCloneSyncService::new(one_attempt),
            retry,
            delivery.request_timeout,
        ),
    }
}
