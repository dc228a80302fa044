//! `Prefer: respond-async`: the message is queued and answered 202 with its id; the
//! queue's worker sends it.

use std::time::Duration;

use axum::response::Response;
use http::{HeaderMap, HeaderName};

use super::answer::{answer_response, json_body, log_failure, problem_answer};
use super::schema::{QueuedResponse, QueuedStatus};
use crate::api::auth::Authenticated;
use crate::api::observe::RequestOutcome;
use crate::api::problem::ApiError;
use crate::api::state::AppState;
use crate::domain::FieldError;
use crate::idempotency::{Reservation, StoredAnswer};
use crate::jelou::FlowRequest;
use crate::queue::message::JelouBody;
use crate::queue::message::{new_id, now_ms};
use crate::queue::pacing;
use crate::queue::worker::{log_change, wakes_worker};
use crate::queue::{Message, QueueError, Status};

pub const TTL_HEADER: &str = "x-message-ttl-seconds";
static TTL: HeaderName = HeaderName::from_static(TTL_HEADER);
static PREFER: HeaderName = HeaderName::from_static("prefer");

/// Whether the caller prefers an asynchronous answer (RFC 7240 `Prefer: respond-async`,
/// among other preferences, in any case).
pub fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(&PREFER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|preference| {
            let token = preference.split([';', '=']).next().unwrap_or("");
            token.trim().eq_ignore_ascii_case("respond-async")
        })
}

/// `X-Message-Ttl-Seconds`: 1 to `async.max_ttl_seconds`, else the default expiry.
pub fn ttl(headers: &HeaderMap, default: Duration, max: Duration) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(&TTL) else {
        return Ok(default);
    };
    let max_seconds = max.as_secs();
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|seconds| (1..=max_seconds).contains(seconds))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::Validation(vec![FieldError::new(
                format!("headers.{TTL_HEADER}"),
                format!("must be a whole number of seconds from 1 to {max_seconds}"),
            )])
        })
}

/// A message to queue for `request`, expiring after `ttl`.
pub fn message(caller: &Authenticated, request: &FlowRequest, ttl: Duration) -> Message {
    let now = now_ms();
    Message {
        id: new_id(),
        caller: caller.name().to_string(),
        status: Status::Queued,
        bot: request.bot.alias.clone(),
        to: request.recipient.as_str().to_string(),
        attempts: 0,
        created_ms: now,
        updated_ms: now,
        expires_ms: now + ttl.as_millis() as u64,
        request_id: request.request_id.clone(),
        traceparent: request.traceparent.clone(),
        url: request.url.to_string(),
        body: JelouBody::new(&request.body),
        not_before_ms: 0,
        slot_ms: None,
        upstream: None,
        error: None,
        version: 0,
    }
}

/// What a queue failure means for the caller: nothing was queued.
pub fn refusal(error: QueueError) -> ApiError {
    match error {
        QueueError::Full => ApiError::QueueFull,
        QueueError::Store(error) => {
            tracing::warn!(%error, "send refused: the queue's store is unreachable");
            ApiError::StoreUnavailable(
                "the queue's store is unreachable; nothing was queued, retry shortly".into(),
            )
        }
    }
}

/// The answer when the queue's store took messages and did not answer in time: they
/// may be queued, and then will be sent, so their delivery is unknown. The key is used
/// up, not freed: a retry with it replays this answer (kept on this replica, and
/// written to the store for the others once it answers) and never queues them again.
pub async fn unanswered(
    state: &AppState,
    key: Option<&Reservation>,
    error: ApiError,
    request_id: &str,
) -> Response {
    let outcome = log_failure(&error);
    let answer = problem_answer(error.into_problem(request_id));
    complete(state, key, &answer).await;
    let mut response = answer_response(answer, false);
    response.extensions_mut().insert(outcome);
    response
}

/// The 202 for a queued message, as stored for replay.
pub fn accepted(message: &Message) -> StoredAnswer {
    let body = QueuedResponse {
        status: QueuedStatus::Queued,
        id: message.id.clone(),
        request_id: message.request_id.clone(),
        bot: message.bot.clone(),
        to: message.to.clone(),
        expires_at: crate::queue::message::rfc3339(message.expires_ms),
    };
    StoredAnswer {
        status: 202,
        content_type: "application/json".into(),
        retry_after: None,
        location: Some(format!("/v1/flow-messages/{}", message.id)),
        body: json_body(&body),
    }
}

/// Frees the key of a request that queued nothing.
pub async fn release(state: &AppState, key: Option<&Reservation>) {
    if let Some(key) = key
        && let Err(error) = state.idempotency.release(key).await
    {
        tracing::error!(%error, "could not release the Idempotency-Key");
    }
}

/// Stores `answer` for the key's replays.
pub async fn complete(state: &AppState, key: Option<&Reservation>, answer: &StoredAnswer) {
    if let Some(key) = key
        && let Err(error) = state.idempotency.complete(key, answer.clone()).await
    {
        tracing::error!(%error, "could not record the idempotent answer");
    }
}

/// Paces `request` (its cells reserved now, so that a message that must wait goes
/// straight to wait) and queues it; the 202, or why nothing was queued. The key, when
/// held, is completed with the 202 or released. A refusal after the reservation (a full
/// queue, an unreachable store) leaves its cells spent: a later message waits one cell
/// longer, nothing is sent.
pub async fn enqueue(
    state: &AppState,
    caller: &Authenticated,
    request: &FlowRequest,
    ttl: Duration,
    key: Option<Reservation>,
) -> Result<Response, ApiError> {
    let Some(queue) = state.queue.as_ref() else {
        return Err(ApiError::Internal);
    };
    let mut message = message(caller, request, ttl);
    pacing::on_acceptance(&state.delivery.paced, request, &mut message).await;
    let queued = queue
        .enqueue(
            std::slice::from_ref(&message),
            state.asynchronous.max_queued,
        )
        .await;
    let answer = match queued {
        Ok(()) => {
            log_change(&message);
            if wakes_worker(&message) {
                state.wake.notify_one();
            }
            accepted(&message)
        }
        Err(error) if error.may_have_run() => {
            let error = ApiError::QueueUnanswered {
                id: Some(message.id),
                items: None,
            };
            return Ok(unanswered(state, key.as_ref(), error, &request.request_id).await);
        }
        Err(error) => {
            release(state, key.as_ref()).await;
            return Err(refusal(error));
        }
    };
    complete(state, key.as_ref(), &answer).await;
    let mut response = answer_response(answer, false);
    response
        .extensions_mut()
        .insert(RequestOutcome::new("queued"));
    Ok(response)
}
