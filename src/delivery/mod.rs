//! Outbound delivery: the request the relay sends, what comes back, and the tower
//! stack between the route handler and the Jelou client.

pub mod outcome;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tower::util::BoxCloneSyncService;
use url::Url;
use utoipa::ToSchema;

use crate::config::Bot;
use crate::domain::Recipient;

/// One message on its way to Jelou. The body is serialized once, so every attempt and
/// the dry run show the very same bytes.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub bot: Arc<Bot>,
    pub recipient: Recipient,
    pub url: Url,
    pub body: Bytes,
    pub request_id: String,
}

/// Jelou accepted the message.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub status: u16,
    pub body: Value,
    pub attempts: u32,
}

/// Could a retry of this request send the message a second time?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
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

/// The whole outbound path as one cloneable service.
pub type DeliveryService = BoxCloneSyncService<Outbound, Delivered, DeliveryFailure>;

/// Assembles the delivery stack over the upstream (Jelou client or sandbox).
///
/// Outer to inner, as layers are added: deadline -> rate limits -> concurrency limit ->
/// retry with budget -> per-attempt timeout -> upstream. Today the stack is the upstream
/// alone, whose own request timeout is the deadline.
pub fn stack<S>(upstream: S) -> DeliveryService
where
    S: tower::Service<Outbound, Response = Delivered, Error = DeliveryFailure>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(upstream)
}
