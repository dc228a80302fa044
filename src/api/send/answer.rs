//! The send's answer: delivery through the stack, the body the caller gets (stored for
//! replay with an Idempotency-Key), and the log line of a failure.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tower::ServiceExt;

use super::schema::{SentResponse, SentStatus};
use crate::api::observe::RequestOutcome;
use crate::api::problem::{ApiError, PROBLEM_CONTENT_TYPE, Problem};
use crate::api::state::AppState;
use crate::delivery::{DeliveryFailure, DeliveryState, FailureKind, Outbound};
use crate::idempotency::{Reservation, StoredAnswer};

/// Sends, renders the answer, and completes or releases the idempotency key.
pub async fn deliver(
    state: AppState,
    outbound: Outbound,
    key: Option<Reservation>,
    request_id: String,
) -> (StoredAnswer, RequestOutcome) {
    let alias = outbound.request.bot.alias.clone();
    let to = outbound.request.recipient.as_str().to_string();
    let result = state.delivery.send.clone().oneshot(outbound).await;
    // A key is used up only by a message that was, or may have been, sent.
    let consumed = match &result {
        Ok(_) => true,
        Err(failure) => failure.delivery == DeliveryState::Unknown,
    };
    let (answer, outcome) = match result {
        Ok(delivered) => {
            let outcome = RequestOutcome {
                upstream_status: Some(delivered.status),
                attempts: Some(delivered.attempts),
                ..RequestOutcome::new("sent")
            };
            let body = SentResponse {
                status: SentStatus::Sent,
                request_id: request_id.clone(),
                bot: alias,
                to,
                attempts: delivered.attempts,
                sandbox: state.sandbox,
                upstream: delivered.body,
            };
            let answer = StoredAnswer {
                status: 200,
                content_type: "application/json".into(),
                retry_after: None,
                location: None,
                body: json_body(&body),
            };
            (answer, outcome)
        }
        Err(failure) => {
            let error = ApiError::Delivery(failure);
            let outcome = log_failure(&error);
            (problem_answer(error.into_problem(&request_id)), outcome)
        }
    };
    if let Some(key) = key {
        let stored = if consumed {
            state.idempotency.complete(&key, answer.clone()).await
        } else {
            state.idempotency.release(&key).await
        };
        if let Err(error) = stored {
            tracing::error!(%error, "could not record the idempotent answer");
        }
    }
    (answer, outcome)
}

pub(super) fn problem_answer(problem: Problem) -> StoredAnswer {
    StoredAnswer {
        status: problem.status,
        content_type: PROBLEM_CONTENT_TYPE.into(),
        retry_after: problem.retry_after,
        location: None,
        body: json_body(&problem),
    }
}

/// An answer's JSON body. Room for a usual answer at once (`to_vec` starts at 128 bytes
/// and a 200's body is longer); a body that cannot be serialized (none of the answers'
/// types can fail) is empty.
pub fn json_body(value: &impl serde::Serialize) -> bytes::Bytes {
    let mut bytes = Vec::with_capacity(256);
    if serde_json::to_writer(&mut bytes, value).is_err() {
        bytes.clear();
    }
    bytes.into()
}

pub fn answer_response(answer: StoredAnswer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(seconds) = answer.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(location) = answer
        .location
        .as_deref()
        .and_then(|l| HeaderValue::from_str(l).ok())
    {
        headers.insert(header::LOCATION, location);
        headers.insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Logs why a request failed, at the level it deserves; returns how it ended.
pub fn log_failure(error: &ApiError) -> RequestOutcome {
    match error {
        ApiError::Delivery(DeliveryFailure {
            kind,
            delivery,
            attempts,
            upstream,
            detail,
            ..
        }) => {
            let outcome = RequestOutcome {
                outcome: delivery.as_str(),
                upstream_status: upstream.as_ref().map(|u| u.status),
                attempts: Some(*attempts),
                code: Some(error.code()),
                fields: None,
            };
            let code = upstream
                .as_ref()
                .and_then(|u| u.code.as_deref())
                .unwrap_or("");
            let description = upstream
                .as_ref()
                .and_then(|u| u.description.as_deref())
                .unwrap_or("");
            match kind {
                FailureKind::AuthFailed => tracing::error!(
                    upstream_code = code,
                    upstream_description = description,
                    "Jelou refused the relay's credentials or bot: fix the configuration"
                ),
                FailureKind::Rejected => {
                    tracing::info!(
                        upstream_code = code,
                        upstream_description = description,
                        "Jelou rejected the message"
                    )
                }
                _ => tracing::warn!(
                    ?kind,
                    delivery = delivery.as_str(),
                    attempts,
                    upstream_status = outcome.upstream_status,
                    detail,
                    "delivery failed"
                ),
            }
            outcome
        }
        ApiError::QueueUnanswered { .. } => {
            tracing::warn!(
                "the queue's store took the message and did not answer in time: it may be queued"
            );
            RequestOutcome {
                code: Some(error.code()),
                ..RequestOutcome::new(DeliveryState::Unknown.as_str())
            }
        }
        other => {
            let fields = other.field_paths();
            let fields = (!fields.is_empty()).then(|| fields.join(", "));
            tracing::info!(code = other.code(), fields, "request refused");
            RequestOutcome {
                code: Some(other.code()),
                fields,
                ..RequestOutcome::new("refused")
            }
        }
    }
}
