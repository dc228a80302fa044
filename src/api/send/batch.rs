//! `POST /v1/flow-messages/batch`: up to `async.max_batch` messages in one request, each
//! validated on its own and every valid one queued as an asynchronous send.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::answer::{answer_response, json_body, log_failure, problem_answer};
use super::keys::{self, Claim};
use super::schema::BatchRequest;
use super::{input, message_from, queued};
use crate::api::auth::Authenticated;
use crate::api::observe::RequestOutcome;
use crate::api::problem::{ApiError, Problem};
use crate::api::request_id;
use crate::api::state::AppState;
use crate::api::trace_context::TraceContext;
use crate::domain::FieldError;
use crate::domain::strict_json::parse_object;
use crate::idempotency::{StoredAnswer, fingerprint};
use crate::jelou::FlowRequest;
use crate::queue::worker::log_change;
use crate::queue::{Message, QueueError, QueueStore};

/// A batch is two levels deeper than the message it holds.
const BATCH_DEPTH: usize = 2;

/// One message of a batch: queued with its id, or rejected with why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchItem {
    /// Its position in `messages`.
    pub index: usize,
    /// `queued` or `rejected`; `unknown` in a 503 whose store did not answer in time
    /// (the item may be queued: look its id up).
    #[schema(example = "queued")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The recipient's digits (queued items).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `validation_failed`, `unknown_bot` or `forbidden_bot` (rejected items).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// Field errors, with paths from the batch: `messages[1].flow.cta`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// At least one message was queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub accepted: usize,
    pub rejected: usize,
    /// One per message, in request order.
    pub items: Vec<BatchItem>,
}

/// Queue many messages at once.
#[utoipa::path(
    post,
    path = "/v1/flow-messages/batch",
    tag = "flow-messages",
    security(("bearer" = []), ()),
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$",
            description = "Covers the whole batch: a replay returns the same answer and ids; the same key with another batch is 422 `idempotency_key_reused`."),
        ("X-Message-Ttl-Seconds" = Option<u64>, Header, nullable = false, minimum = 1,
            description = "How long the relay may keep trying each message, 1 to `async.max_ttl_seconds` (default `async.ttl_seconds`)."),
        ("X-Request-Id" = Option<String>, Header, nullable = false,
            description = "Kept when 1 to 128 characters of letters, digits and `-_.:`; generated otherwise. Every message of the batch carries it."),
    ),
    request_body(content = BatchRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "At least one message queued: each item's outcome, in request order", body = BatchResponse),
        (status = 400, description = "`malformed_json`, `invalid_idempotency_key`, `idempotency_key_required`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "`unauthorized`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`: more than `server.batch_body_limit_bytes`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: `messages` empty or longer than `async.max_batch`, or no message valid (then with `items`); `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: the caller's own rate (a batch is one request)", body = Problem, content_type = "application/problem+json"),
        (status = 501, description = "`async_disabled`: asynchronous sending is off; nothing was queued", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`: the batch would pass `async.max_queued` (refused whole, with Retry-After), or the queue's store is unreachable; when the store took the batch and did not answer in time, delivery `unknown` and `items` with each message's id and status `unknown`: look them up before sending again", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_batch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = request_id::in_headers(&parts.headers);
    let Some(caller) = parts.extensions.get::<Authenticated>() else {
        tracing::error!("the authentication layer did not run before the handler");
        return ApiError::Internal.into_problem(request_id).into_response();
    };
    let trace = parts.extensions.get::<TraceContext>();
    let result = handle(&state, caller, trace, request_id, &parts, body).await;
    match result {
        Ok(response) => response,
        Err(error) => {
            let outcome = log_failure(&error);
            let mut response = error.into_problem(request_id).into_response();
            response.extensions_mut().insert(outcome);
            response
        }
    }
}

async fn handle(
    state: &AppState,
    caller: &Authenticated,
    trace: Option<&TraceContext>,
    request_id: &str,
    parts: &http::request::Parts,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let headers = &parts.headers;
    if input::parse_query(parts.uri.query())? {
        return Err(ApiError::Validation(vec![FieldError::new(
            "query.dry_run",
            "a batch has no dry run; send messages one by one with dry_run=true to check them",
        )]));
    }
    input::check_content_type(headers)?;
    if state.queue.is_none() {
        return Err(ApiError::AsyncDisabled);
    }
    let idempotency_key = input::idempotency_key(headers, state.idempotency_required)?;
    let config = &state.asynchronous;
    let ttl = queued::ttl(headers, config.ttl, config.max_ttl)?;
    let deadline = Instant::now() + state.deadline;
    let bytes = tokio::time::timeout(
        state.body_read_timeout,
        input::read_body(body, headers, state.batch_body_limit),
    )
    .await
    .map_err(|_elapsed| ApiError::RequestTimeout)??;
    let mut object = parse_object(&bytes, state.max_json_depth + BATCH_DEPTH)
        .map_err(|e| ApiError::MalformedJson(e.0))?;
    let messages = batch_messages(&mut object, config.max_batch)?;

    let reserved = match idempotency_key {
        None => None,
        Some(key) => {
            let print = fingerprint("", "/v1/flow-messages/batch", &bytes);
            match keys::claim(state, caller, &key, print, deadline).await? {
                Claim::Proceed(reservation) => Some(reservation),
                Claim::Answered(response) => return Ok(response),
            }
        }
    };

    let traceparent = trace.map(TraceContext::traceparent);
    let mut items = Vec::with_capacity(messages.len());
    let mut queue = Vec::new();
    for (index, item) in messages.into_iter().enumerate() {
        match item_message(state, caller, index, item) {
            Ok((message, bot)) => {
                let request = FlowRequest::build(
                    &state.urls,
                    bot,
                    &message,
                    request_id.to_string(),
                    traceparent.clone(),
                );
                let queued = queued::message(caller, &request, ttl);
                items.push(BatchItem {
                    index,
                    status: "queued",
                    id: Some(queued.id.clone()),
                    to: Some(queued.to.clone()),
                    code: None,
                    errors: Vec::new(),
                });
                queue.push(queued);
            }
            Err((code, errors)) => items.push(BatchItem {
                index,
                status: "rejected",
                id: None,
                to: None,
                code: Some(code),
                errors,
            }),
        }
    }

    let answer = if queue.is_empty() {
        let items = serde_json::to_value(&items).unwrap_or_default();
        problem_answer(ApiError::BatchRejected(items).into_problem(request_id))
    } else {
        let Some(store) = state.queue.as_deref() else {
            return Err(ApiError::AsyncDisabled);
        };
        match enqueue(state, store, &queue).await {
            Ok(()) => accepted(&queue, items),
            Err(error) if error.may_have_run() => {
                for item in items.iter_mut().filter(|item| item.id.is_some()) {
                    item.status = "unknown";
                }
                let error = ApiError::QueueUnanswered {
                    id: None,
                    items: Some(serde_json::to_value(&items).unwrap_or_default()),
                };
                return Ok(queued::unanswered(state, reserved.as_ref(), error, request_id).await);
            }
            Err(error) => {
                queued::release(state, reserved.as_ref()).await;
                return Err(queued::refusal(error));
            }
        }
    };
    queued::complete(state, reserved.as_ref(), &answer).await;
    let outcome = if queue.is_empty() {
        RequestOutcome {
            code: Some("validation_failed"),
            ..RequestOutcome::new("refused")
        }
    } else {
        RequestOutcome::new("queued")
    };
    let mut response = answer_response(answer, false);
    response.extensions_mut().insert(outcome);
    Ok(response)
}

/// `messages`: 1 to `max` items, and no other member.
fn batch_messages(object: &mut Map<String, Value>, max: usize) -> Result<Vec<Value>, ApiError> {
    let mut errors: Vec<FieldError> = object
        .keys()
        .filter(|key| key.as_str() != "messages")
        .map(|key| {
            FieldError::new(
                key.chars().take(64).collect::<String>(),
                "is not a known field (only messages is)",
            )
        })
        .collect();
    let messages = match object.remove("messages") {
        Some(Value::Array(messages)) if (1..=max).contains(&messages.len()) => Some(messages),
        Some(Value::Array(messages)) if messages.is_empty() => {
            errors.push(FieldError::new("messages", "must hold at least 1 message"));
            None
        }
        Some(Value::Array(messages)) => {
            errors.push(FieldError::new(
                "messages",
                format!(
                    "holds {} messages; at most {max} per batch (async.max_batch)",
                    messages.len()
                ),
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new("messages", "must be an array of messages"));
            None
        }
        None => {
            errors.push(FieldError::new("messages", "is required"));
            None
        }
    };
    match messages {
        Some(messages) if errors.is_empty() => Ok(messages),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// A valid item: the message and its bot.
type Parsed = (
    crate::domain::FlowMessage,
    std::sync::Arc<crate::domain::Bot>,
);
/// A rejected item: its code and field errors.
type Rejected = (&'static str, Vec<FieldError>);

/// One item checked as a single send would be, its field paths from the batch.
fn item_message(
    state: &AppState,
    caller: &Authenticated,
    index: usize,
    item: Value,
) -> Result<Parsed, Rejected> {
    let prefix = |errors: Vec<FieldError>| -> Vec<FieldError> {
        errors
            .into_iter()
            .map(|e| FieldError {
                field: if e.field.is_empty() {
                    format!("messages[{index}]")
                } else {
                    format!("messages[{index}].{}", e.field)
                },
                message: e.message,
            })
            .collect()
    };
    let Value::Object(object) = item else {
        return Err((
            "validation_failed",
            prefix(vec![FieldError::new("", "must be a message object")]),
        ));
    };
    match message_from(state, object) {
        Ok((message, bot)) if caller.may_use(&bot.alias) => Ok((message, bot)),
        Ok(_) => Err((
            "forbidden_bot",
            prefix(vec![FieldError::new(
                "bot",
                "this caller is not allowed to send through this bot (callers.<name>.bots)",
            )]),
        )),
        Err(ApiError::UnknownBot(errors)) => Err(("unknown_bot", prefix(errors))),
        Err(ApiError::Validation(errors)) => Err(("validation_failed", prefix(errors))),
        Err(_) => Err((
            "validation_failed",
            prefix(vec![FieldError::new("", "is not a valid message")]),
        )),
    }
}

async fn enqueue(
    state: &AppState,
    queue: &dyn QueueStore,
    messages: &[Message],
) -> Result<(), QueueError> {
    queue
        .enqueue(messages, state.asynchronous.max_queued)
        .await?;
    for message in messages {
        log_change(message);
    }
    state.wake.notify_one();
    Ok(())
}

fn accepted(queued: &[Message], items: Vec<BatchItem>) -> StoredAnswer {
    let rejected = items.len() - queued.len();
    let body = BatchResponse {
        accepted: queued.len(),
        rejected,
        items,
    };
    StoredAnswer {
        status: 202,
        content_type: "application/json".into(),
        retry_after: None,
        location: None,
        body: json_body(&body),
    }
}
