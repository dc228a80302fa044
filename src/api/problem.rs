//! RFC 9457 problem+json: every error the relay answers, and the one place that maps
//! each to an HTTP status and a stable code.
//!
//! Past 400 lines on purpose: each error's status, code, title, detail and delivery state
//! are matches over the one enum, read side by side; split across files, the policy for
//! one error would be in several places.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use utoipa::ToSchema;

use crate::delivery::{DeliveryFailure, DeliveryState};
use crate::domain::FieldError;
use crate::jelou::UpstreamError;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An error answer. `delivery` says whether a retry could send the message twice.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:jelou-relay:problem:{code}`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: String,
    pub request_id: String,
    /// Every field error at once, for `validation_failed` and `unknown_bot`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// `not_sent`: safe to retry; `unknown`: the message may have been sent.
    pub delivery: DeliveryState,
    /// Whether sending the same request again is safe and may succeed.
    pub retryable: bool,
    /// Upstream attempts made, when the relay tried to deliver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Jelou's answer, when Jelou gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamError>,
    /// Seconds to wait before retrying, also sent as `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// The message's id, when it may be queued though the answer is a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A batch none of whose messages was queued (or whose messages may be queued):
    /// each message's outcome, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub items: Option<serde_json::Value>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let retry_after = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Everything that can go wrong, before it is given a request id and rendered.
#[derive(Debug, Clone)]
pub enum ApiError {
    MalformedJson(String),
    UnsupportedMediaType(String),
    PayloadTooLarge {
        limit: usize,
    },
    BodyReadFailed(String),
    Validation(Vec<FieldError>),
    UnknownBot(Vec<FieldError>),
    IdempotencyKeyInvalid,
    IdempotencyKeyRequired,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    /// The idempotency store could not be asked; nothing was sent.
    StoreUnavailable(String),
    /// Another replica claimed this key and stopped before recording an answer.
    SendInterrupted,
    Delivery(DeliveryFailure),
    NotFound,
    MethodNotAllowed,
    Internal,
    /// No or a wrong bearer key.
    Unauthorized(String),
    /// The caller may not use this bot.
    ForbiddenBot,
    /// The caller's own inbound rate is used up.
    CallerRateLimited {
        retry_after: u64,
    },
    /// Too many requests are being handled at once.
    Overloaded,
    HeadersTooLarge {
        limit: usize,
    },
    /// The body did not arrive in time.
    RequestTimeout,
    /// `async.max_queued` messages are waiting already.
    QueueFull,
    /// No queued message with this id for this caller (or past its retention).
    MessageNotFound,
    /// The message is past `queued` (its status given).
    NotCancelable(&'static str),
    /// A batch while `async.enabled` is false.
    AsyncDisabled,
    /// A batch none of whose messages could be queued; each item's outcome.
    BatchRejected(serde_json::Value),
    /// The queue's store took the messages and did not answer in time: they may be
    /// queued, and then will be sent. The single message's id, or a batch's items.
    QueueUnanswered {
        id: Option<String>,
        items: Option<serde_json::Value>,
    },
}

impl ApiError {
    /// Status, code, title and whether a plain retry is safe and useful.
    fn describe(&self) -> (StatusCode, &'static str, &'static str, bool) {
        use StatusCode as S;
        match self {
            ApiError::MalformedJson(_) => {
                (S::BAD_REQUEST, "malformed_json", "Malformed JSON", false)
            }
            ApiError::UnsupportedMediaType(_) => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
                false,
            ),
            ApiError::PayloadTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
                false,
            ),
            ApiError::BodyReadFailed(_) => (
                S::BAD_REQUEST,
                "body_read_failed",
                "Request body could not be read",
                true,
            ),
            ApiError::Validation(_) => (
                S::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "The message is not valid",
                false,
            ),
            ApiError::UnknownBot(_) => {
                (S::UNPROCESSABLE_ENTITY, "unknown_bot", "Unknown bot", false)
            }
            ApiError::IdempotencyKeyInvalid => (
                S::BAD_REQUEST,
                "invalid_idempotency_key",
                "Invalid Idempotency-Key",
                false,
            ),
            ApiError::IdempotencyKeyRequired => (
                S::BAD_REQUEST,
                "idempotency_key_required",
                "Idempotency-Key required",
                false,
            ),
            ApiError::IdempotencyKeyInFlight => (
                S::CONFLICT,
                "idempotency_key_in_flight",
                "A request with this Idempotency-Key is in progress",
                true,
            ),
            ApiError::IdempotencyKeyReused => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency-Key reused for another message",
                false,
            ),
            ApiError::StoreUnavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "The relay cannot serve this now",
                true,
            ),
            ApiError::SendInterrupted => (
                S::BAD_GATEWAY,
                "send_interrupted",
                "An earlier send with this Idempotency-Key was interrupted",
                false,
            ),
            ApiError::NotFound => (S::NOT_FOUND, "not_found", "Not found", false),
            ApiError::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized", "Unauthorized", false),
            ApiError::ForbiddenBot => (
                S::FORBIDDEN,
                "forbidden_bot",
                "This caller may not use this bot",
                false,
            ),
            ApiError::CallerRateLimited { .. } => {
                (S::TOO_MANY_REQUESTS, "rate_limited", "Rate limited", true)
            }
            ApiError::Overloaded => (
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "The relay is overloaded",
                true,
            ),
            ApiError::HeadersTooLarge { .. } => (
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "Request headers too large",
                false,
            ),
            ApiError::RequestTimeout => (
                S::REQUEST_TIMEOUT,
                "request_timeout",
                "The request body did not arrive in time",
                true,
            ),
            ApiError::QueueUnanswered { .. } => (
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "The relay cannot serve this now",
                false,
            ),
            ApiError::QueueFull => (
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "The queue is full",
                true,
            ),
            ApiError::MessageNotFound => (S::NOT_FOUND, "not_found", "Not found", false),
            ApiError::AsyncDisabled => (
                S::NOT_IMPLEMENTED,
                "async_disabled",
                "Asynchronous sending is disabled",
                false,
            ),
            ApiError::BatchRejected(_) => (
                S::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "No message of the batch is valid",
                false,
            ),
            ApiError::NotCancelable(_) => (
                S::CONFLICT,
                "not_cancelable",
                "The message can no longer be canceled",
                false,
            ),
            ApiError::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
                false,
            ),
            ApiError::Internal => (
                S::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Internal error",
                false,
            ),
            ApiError::Delivery(failure) => failure.describe(),
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::MalformedJson(detail)
            | ApiError::UnsupportedMediaType(detail)
            | ApiError::BodyReadFailed(detail) => detail.clone(),
            ApiError::PayloadTooLarge { limit } => {
                format!("the request body is larger than the limit of {limit} bytes")
            }
            ApiError::Validation(errors) => {
                format!("{} field error(s); see `errors`", errors.len())
            }
            ApiError::UnknownBot(_) => {
                "the bot alias is not configured on this relay; see `errors`".into()
            }
            ApiError::IdempotencyKeyInvalid => {
                "Idempotency-Key must be 1 to 255 printable ASCII characters".into()
            }
            ApiError::IdempotencyKeyRequired => {
                "this relay requires an Idempotency-Key header on every send".into()
            }
            ApiError::IdempotencyKeyInFlight => {
                "another request with this Idempotency-Key is being sent; retry shortly to get its answer".into()
            }
            ApiError::IdempotencyKeyReused => {
                "this Idempotency-Key was used for a different message; use a new key for a new message".into()
            }
            ApiError::StoreUnavailable(detail) => detail.clone(),
            ApiError::SendInterrupted => {
                "the replica sending this message with this Idempotency-Key stopped before recording Jelou's answer, so the message may or may not have been sent; check with the recipient before sending it again with a new key".into()
            }
            ApiError::Delivery(failure) => failure.detail.clone(),
            ApiError::NotFound => {
                "no such route; the API is POST /v1/flow-messages (see /docs)".into()
            }
            ApiError::MethodNotAllowed => "this route does not accept that method".into(),
            ApiError::Unauthorized(detail) => detail.clone(),
            ApiError::ForbiddenBot => {
                "this caller is not allowed to send through this bot (callers.<name>.bots)".into()
            }
            ApiError::CallerRateLimited { .. } => {
                "this caller's request rate is used up; retry after the given time".into()
            }
            ApiError::Overloaded => {
                "the relay is handling as many requests as it may; retry shortly".into()
            }
            ApiError::HeadersTooLarge { limit } => {
                format!("the request headers are larger than the limit of {limit} bytes")
            }
            ApiError::RequestTimeout => "the request body did not arrive in time".into(),
            ApiError::QueueFull => {
                "the relay holds as many queued messages as it may (async.max_queued); nothing was queued, retry later".into()
            }
            ApiError::MessageNotFound => {
                "no message with this id was queued by this caller, or its status is past its retention".into()
            }
            ApiError::AsyncDisabled => {
                "this relay does not queue messages (async.enabled = false): nothing was queued; send them one by one, synchronously".into()
            }
            ApiError::QueueUnanswered { id: Some(id), .. } => format!(
                "the queue's store took the message and did not answer in time: it may be queued, and then it will be sent; look it up at /v1/flow-messages/{id} before sending it again"
            ),
            ApiError::QueueUnanswered { id: None, .. } => {
                "the queue's store took the batch's messages and did not answer in time: each item with an id may be queued, and then it will be sent; look it up at /v1/flow-messages/{id} before sending it again".into()
            }
            ApiError::BatchRejected(items) => format!(
                "none of the {} messages could be queued; see `items`",
                items.as_array().map_or(0, Vec::len)
            ),
            ApiError::NotCancelable(status) => format!(
                "the message is {status}; only a queued message can be canceled"
            ),
            ApiError::Internal => "the relay failed unexpectedly; the message was not sent".into(),
        }
    }

    /// The JSON paths of the field errors (never their values), for logs.
    pub fn field_paths(&self) -> Vec<&str> {
        match self {
            ApiError::Validation(errors) | ApiError::UnknownBot(errors) => {
                errors.iter().map(|e| e.field.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The stable machine-readable code, e.g. `validation_failed`.
    pub fn code(&self) -> &'static str {
        self.describe().1
    }

    /// Renders the problem for one request.
    pub fn into_problem(self, request_id: &str) -> Problem {
        let (status, code, title, retryable) = self.describe();
        let detail = self.detail();
        let (id, items) = match &self {
            ApiError::BatchRejected(items) => (None, Some(items.clone())),
            ApiError::QueueUnanswered { id, items } => (id.clone(), items.clone()),
            _ => (None, None),
        };
        let (errors, delivery, attempts, upstream, retry_after) = match self {
            ApiError::Validation(errors) | ApiError::UnknownBot(errors) => {
                (errors, DeliveryState::NotSent, None, None, None)
            }
            ApiError::Delivery(failure) => {
                let upstream = failure.public_upstream();
                (
                    Vec::new(),
                    failure.delivery,
                    Some(failure.attempts),
                    upstream,
                    failure
                        .retry_after
                        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
                )
            }
            ApiError::SendInterrupted | ApiError::QueueUnanswered { .. } => {
                (Vec::new(), DeliveryState::Unknown, None, None, None)
            }
            ApiError::IdempotencyKeyInFlight
            | ApiError::StoreUnavailable(_)
            | ApiError::QueueFull
            | ApiError::Overloaded => (Vec::new(), DeliveryState::NotSent, None, None, Some(1)),
            ApiError::CallerRateLimited { retry_after } => (
                Vec::new(),
                DeliveryState::NotSent,
                None,
                None,
                Some(retry_after),
            ),
            _ => (Vec::new(), DeliveryState::NotSent, None, None, None),
        };
        Problem {
            problem_type: format!("urn:jelou-relay:problem:{code}"),
            title: title.into(),
            status: status.as_u16(),
            detail,
            code: code.into(),
            request_id: request_id.into(),
            errors,
            delivery,
            retryable,
            attempts,
            upstream,
            retry_after,
            id,
            items,
        }
    }
}
