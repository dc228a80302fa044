//! `POST /v1/flow-messages`: parse once, resolve the bot, then dry-run or deliver.

mod answer;
pub mod batch;
mod input;
mod keys;
mod queued;
pub mod schema;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use tracing::{Instrument, Span};

use super::auth::Authenticated;
use super::observe::RequestOutcome;
use super::problem::{ApiError, Problem};
use super::request_id;
use super::state::AppState;
use super::trace_context::TraceContext;
use crate::delivery::Outbound;
use crate::domain::flow_message::MessageObject;
use crate::domain::{Bot, FieldError, FlowMessage};
use crate::jelou::FlowRequest;
use answer::{answer_response, deliver, log_failure};
pub use batch::send_batch;
pub use input::TIMEOUT_HEADER;
use keys::Claim;
use schema::{
    FlowMessageRequest, QueuedResponse, SendOutcome, SendParams, ValidatedResponse, ValidatedStatus,
};

/// Send a WhatsApp Flow message through Jelou.
#[utoipa::path(
    post,
    path = "/v1/flow-messages",
    tag = "flow-messages",
    security(("bearer" = []), ()),
    params(
        SendParams,
        ("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$",
            description = "1 to 255 printable ASCII characters. The same key and message within the retention period replay the stored answer (with `Idempotent-Replayed: true`) without calling Jelou."),
        ("X-Request-Timeout-Ms" = Option<u64>, Header, nullable = false, minimum = 1,
            description = "A shorter deadline for this request, in milliseconds; the relay's own deadline is the most."),
        ("Prefer" = Option<String>, Header, nullable = false,
            description = "`respond-async` (RFC 7240): queue the message and answer 202 at once with its id; the relay sends it, paced by the bot and recipient limits, and `GET /v1/flow-messages/{id}` tells its fate. Ignored (a synchronous send) when asynchronous sending is disabled."),
        ("X-Message-Ttl-Seconds" = Option<u64>, Header, nullable = false, minimum = 1,
            description = "With `Prefer: respond-async`: how long the relay may keep trying, 1 to `async.max_ttl_seconds` (default `async.ttl_seconds`); out of range: 422 `validation_failed`."),
        ("X-Request-Id" = Option<String>, Header, nullable = false,
            description = "Kept when 1 to 128 characters of letters, digits and `-_.:`; generated otherwise. Returned, logged and sent to Jelou."),
    ),
    request_body(content = FlowMessageRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Sent (or validated, on a dry run)", body = SendOutcome),
        (status = 202, description = "Queued (`Prefer: respond-async`): `Location` names the status, `Preference-Applied: respond-async`", body = QueuedResponse,
            headers(("Location" = String, description = "/v1/flow-messages/{id}"), ("Preference-Applied" = String, description = "respond-async"))),
        (status = 401, description = "`unauthorized`: no or a wrong `Authorization: Bearer` key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden_bot`: this caller may not use this bot", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "`request_timeout`: the body did not arrive in time", body = Problem, content_type = "application/problem+json"),
        (status = 431, description = "`headers_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "`malformed_json`: the body is not a JSON object; `invalid_idempotency_key`; `idempotency_key_required`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 405, description = "`method_not_allowed`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`idempotency_key_in_flight`: the same key is being sent; retry shortly", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "`payload_too_large`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "`unsupported_media_type`: Content-Type is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`, `unknown_bot`, `upstream_rejected` or `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "`rate_limited`: a bot or recipient rate limit, or Jelou, asks to slow down; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "`upstream_unavailable` or `upstream_auth_failed`; or `send_interrupted`: the replica that was sending with this Idempotency-Key stopped before recording an answer (delivery `unknown`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded` (the relay sheds load, the queue is full, or the shared store is unreachable with `fail_closed`; an asynchronous send is refused whenever its store is unreachable, delivery `not_sent`; when the store took the message and did not answer in time, delivery `unknown` and the message's `id`: look it up before sending again), or `upstream_unavailable` with Retry-After (Jelou said when to come back)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "`deadline_exceeded`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_flow_message(State(state): State<AppState>, request: Request) -> Response {
    // The request is taken whole and read in place: extractors would copy its headers.
    let (parts, body) = request.into_parts();
    let request_id = request_id::in_headers(&parts.headers);
    let Some(caller) = parts.extensions.get::<Authenticated>() else {
        tracing::error!("the authentication layer did not run before the handler");
        return ApiError::Internal.into_problem(request_id).into_response();
    };
    let inbound = Inbound {
        caller,
        trace: parts.extensions.get::<TraceContext>(),
        request_id,
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    match handle(state, inbound, body).await {
        Ok(response) => response,
        Err(error) => {
            let outcome = log_failure(&error);
            let mut response = error.into_problem(request_id).into_response();
            response.extensions_mut().insert(outcome);
            response
        }
    }
}

/// What the handler knows of the request besides its body.
struct Inbound<'a> {
    caller: &'a Authenticated,
    trace: Option<&'a TraceContext>,
    request_id: &'a str,
    query: Option<&'a str>,
    headers: &'a http::HeaderMap,
}

async fn handle(state: AppState, inbound: Inbound<'_>, body: Body) -> Result<Response, ApiError> {
    let headers = inbound.headers;
    let dry_run = input::parse_query(inbound.query)?;
    input::check_content_type(headers)?;
    let idempotency_key = input::idempotency_key(headers, state.idempotency_required)?;
    let deadline = Instant::now() + input::requested_timeout(headers, state.deadline)?;
    let bytes = tokio::time::timeout(
        state.body_read_timeout,
        input::read_body(body, headers, state.body_limit),
    )
    .await
    .map_err(|_elapsed| ApiError::RequestTimeout)??;
    // With the queue on, `Prefer: respond-async` queues the message (validated first).
    let asynchronous = state.queue.is_some() && queued::prefers_async(headers);
    let ttl = if asynchronous {
        let config = &state.asynchronous;
        Some(queued::ttl(headers, config.ttl, config.max_ttl))
    } else {
        None
    };
    let (message, bot) = match (parse_message(&state, &bytes), ttl.clone()) {
        (Err(ApiError::Validation(mut errors)), Some(Err(ApiError::Validation(more)))) => {
            errors.extend(more);
            return Err(ApiError::Validation(errors));
        }
        (Err(error), _) | (Ok(_), Some(Err(error))) => return Err(error),
        (Ok(parsed), _) => parsed,
    };

    let span = Span::current();
    tracing::record_all!(
        span,
        bot = bot.alias.as_str(),
        to = message.to.masked().as_str(),
    );
    if !inbound.caller.may_use(&bot.alias) {
        return Err(ApiError::ForbiddenBot);
    }

    let traceparent = inbound.trace.map(TraceContext::traceparent);
    let request = FlowRequest::build(
        &state.urls,
        bot,
        &message,
        inbound.request_id.to_string(),
        traceparent,
    );
    if dry_run {
        return Ok(dry_run_answer(&state, &request));
    }

    let reserved = match idempotency_key {
        None => None,
        Some(key) => match keys::claim(
            &state,
            inbound.caller,
            &key,
            keys::of_request(&request),
            deadline,
        )
        .await?
        {
            Claim::Proceed(reservation) => Some(reservation),
            Claim::Answered(response) => return Ok(response),
        },
    };

    if let Some(Ok(ttl)) = ttl {
        return queued::enqueue(&state, inbound.caller, &request, ttl, reserved).await;
    }

    // Once sending starts it runs to its end even if the caller hangs up, so that its
    // outcome is logged and, with a key, stored for the caller's retry.
    let outbound = Outbound::new(request, deadline);
    let request_id = inbound.request_id.to_string();
    let task = tokio::spawn(deliver(state, outbound, reserved, request_id).instrument(span));
    match task.await {
        Ok((answer, outcome)) => {
            let mut response = answer_response(answer, false);
            response.extensions_mut().insert(outcome);
            Ok(response)
        }
        Err(error) => {
            tracing::error!(%error, "delivery task failed");
            Err(ApiError::Internal)
        }
    }
}

/// The message and its bot, or every field error at once (the alias is looked up even
/// when other fields fail).
fn parse_message(
    state: &AppState,
    bytes: &[u8],
) -> Result<(FlowMessage, std::sync::Arc<Bot>), ApiError> {
    let object = MessageObject::read(bytes, state.max_json_depth)
        .map_err(|e| ApiError::MalformedJson(e.0))?;
    message_from(state, object)
}

/// The message and its bot from a JSON object (a single send's body, or an item of a
/// batch), every field error at once.
fn message_from(
    state: &AppState,
    object: impl Into<MessageObject>,
) -> Result<(FlowMessage, std::sync::Arc<Bot>), ApiError> {
    let object = object.into();
    let raw_alias = object.bot().map(str::to_owned);
    let parsed = FlowMessage::parse(object);
    let bot = state.bots.resolve(raw_alias.as_deref());
    match (parsed, bot) {
        (Ok(message), Ok(bot)) => Ok((message, bot)),
        (Ok(_), Err(lookup)) => Err(ApiError::UnknownBot(vec![FieldError::new(
            "bot",
            lookup.to_string(),
        )])),
        (Err(mut errors), bot) => {
            if let (Err(lookup), false) = (bot, errors.iter().any(|e| e.field == "bot")) {
                errors.push(FieldError::new("bot", lookup.to_string()));
            }
            Err(ApiError::Validation(errors))
        }
    }
}

/// `dry_run=true`: the request Jelou would receive, built as for a real send.
fn dry_run_answer(state: &AppState, request: &FlowRequest) -> Response {
    let has_credentials = state.credentials.get(&request.bot.alias).is_some();
    let mut response = Json(SendOutcome::Validated(ValidatedResponse {
        status: ValidatedStatus::Validated,
        request_id: request.request_id.clone(),
        bot: request.bot.alias.clone(),
        to: request.recipient.as_str().into(),
        sandbox: state.sandbox,
        upstream_request: request.view(has_credentials),
    }))
    .into_response();
    response
        .extensions_mut()
        .insert(RequestOutcome::new("validated"));
    response
}
