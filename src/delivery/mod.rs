//! Outbound delivery: the request the relay sends, what comes back, and the tower
//! stack between the route handler and the Jelou client.

pub mod attempt;
pub mod concurrency;
pub mod deadline;
pub mod idempotency;
pub mod journal;
pub mod outcome;
pub mod rate_limit;
pub mod retry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use url::Url;
use utoipa::ToSchema;

use crate::config::{Bot, RelayConfig};
use crate::domain::Recipient;
use crate::store::Store;

/// One message on its way to Jelou. The body is serialized once, so every attempt and
/// the dry run show the very same bytes.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub bot: Arc<Bot>,
    pub recipient: Recipient,
    pub url: Url,
    pub body: Bytes,
    pub request_id: String,
    /// W3C `traceparent` for the call to Jelou: the caller's trace, the relay's span.
    pub traceparent: Option<String>,
    /// When the whole delivery must be over, every attempt and wait included.
    pub deadline: Instant,
    /// Shared by the attempts of this one message.
    pub journal: Arc<journal::Journal>,
}

/// Jelou accepted the message.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub status: u16,
    pub body: Value,
    pub attempts: u32,
}

/// Could a retry of this request send the message a second time?
/// Ordered: `Unknown` is the stronger claim, and wins when attempts are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Provably not sent: safe to retry.
    NotSent,
    /// The request reached Jelou and its fate is not known: a retry may duplicate it.
    Unknown,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::NotSent => "not_sent",
            DeliveryState::Unknown => "unknown",
        }
    }
}

/// What went wrong, in the relay's terms; `api::problem` maps each to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Jelou refused the message itself (400, 404 flow, 422, ...).
    Rejected,
    /// Jelou refused the relay's credentials or bot (401, 403, bot_not_found).
    AuthFailed,
    /// Jelou failed, could not be reached, or answered something unreadable.
    Unavailable,
    /// Jelou (or WhatsApp behind it) asked the relay to slow down.
    RateLimited,
    /// No answer in time.
    DeadlineExceeded,
    /// The relay's own bounds (in-flight limit, wait queues) are full.
    Overloaded,
}

/// Jelou's own account of an error, as far as it gave one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UpstreamError {
    /// HTTP status Jelou answered with.
    pub status: u16,
    /// Jelou's machine code, e.g. `bot_not_found`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A message that was not (or not provably) delivered.
#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    pub kind: FailureKind,
    pub delivery: DeliveryState,
    pub attempts: u32,
    /// Human-readable cause, safe to show callers.
    pub detail: String,
    pub upstream: Option<UpstreamError>,
    /// When Jelou said when to come back.
    pub retry_after: Option<Duration>,
}

impl DeliveryFailure {
    /// A refusal before anything was sent.
    pub fn refused(kind: FailureKind, detail: String, retry_after: Option<Duration>) -> Self {
        DeliveryFailure {
            kind,
            delivery: DeliveryState::NotSent,
            attempts: 0,
            detail,
            upstream: None,
            retry_after,
        }
    }
}

/// The whole outbound path as one cloneable service.
pub type DeliveryService = BoxCloneSyncService<Outbound, Delivered, DeliveryFailure>;

/// What every delivery layer's (and the upstream's) `call` returns.
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

/// Assembles the delivery stack over the upstream (Jelou client or sandbox), outer to inner.
pub fn stack<S: DeliveryInner + Sync>(
    config: &RelayConfig,
    upstream: S,
    store: &Store,
) -> DeliveryService {
    let delivery = &config.delivery;
    let queue = WaitQueue::new(delivery.max_waiting);
    let limits = Arc::new(match store {
        Store::Memory => rate_limit::Limits::new(
            &config.bots,
            &config.recipients,
            delivery.rate_limit_max_wait,
            queue.clone(),
        ),
        Store::Redis(redis) => rate_limit::Limits::shared(
            &config.bots,
            &config.recipients,
            delivery.rate_limit_max_wait,
            queue.clone(),
            redis.clone(),
        ),
    });
    let service = ServiceBuilder::new()
        // One deadline over everything below; the final attempt count and delivery
        // state are read from the journal here.
        .layer(deadline::DeadlineLayer)
        // Rate limits before the concurrency limit: a request waiting for WhatsApp
        // capacity must not hold one of the permits to Jelou.
        .layer(rate_limit::RateLimitLayer::new(limits))
        // Outside the retry: a request keeps its permit for its whole retry sequence.
        .layer(concurrency::ConcurrencyLayer::new(
            delivery.max_in_flight,
            queue,
        ))
        .layer(tower::retry::RetryLayer::new(retry::RetryPolicy::new(
            delivery,
        )))
        // Each attempt: journaled, and bounded by the per-attempt timeout and the deadline.
        .layer(attempt::AttemptLayer::new(config.request_timeout))
        .service(upstream);
    BoxCloneSyncService::new(service)
}
