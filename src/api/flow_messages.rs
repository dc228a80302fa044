//! `POST /v1/flow-messages`: parse once, resolve the bot, then dry-run or deliver.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;
use tracing::Span;
use utoipa::{IntoParams, ToSchema};

use super::auth::Authenticated;
use super::observe::RequestOutcome;
use super::problem::{ApiError, PROBLEM_CONTENT_TYPE, Problem};
use super::request_id::X_REQUEST_ID;
use super::trace_context::TraceContext;
use crate::app::AppState;
use crate::delivery::idempotency::{
    Begin, Reservation, StoredAnswer, fingerprint, is_valid_key, scoped_key,
};
use crate::delivery::{DeliveryFailure, DeliveryState, FailureKind, Outbound};
use crate::domain::strict_json::parse_object;
use crate::domain::{FieldError, FlowAction, FlowMessage, FlowMode};
use crate::jelou::build_outbound;

/// The request body (documentation type: the handler parses it by hand so that every
/// field error is reported at once).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "bot": "ventas",
    "to": "+593 98 765 4321",
    "title": "Hola",
    "text": "Completa este flujo para comenzar",
    "caption": "Jelou",
    "flow": {"name": "flujo_de_bienvenida", "cta": "Iniciar Flujo", "screen": "RECOMMEND"}
}))]
pub struct FlowMessageRequest {
    /// Bot alias configured on the relay; optional when the relay has one bot or a default.
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub bot: Option<String>,
    /// Recipient with country code. `+`, spaces, dashes, dots and parentheses are
    /// stripped; 8 to 15 ASCII digits must remain, the first not 0.
    #[schema(example = "+593 98 765 4321", min_length = 8)]
    pub to: String,
    /// Header above the Flow button: 1 to 60 characters (Unicode code points), not blank.
    #[schema(min_length = 1, max_length = 60)]
    pub title: String,
    /// Body text: 1 to 1024 characters, not blank.
    #[schema(min_length = 1, max_length = 1024)]
    pub text: String,
    /// Footer text: 1 to 60 characters, not blank.
    #[schema(min_length = 1, max_length = 60)]
    pub caption: String,
    pub flow: FlowRequest,
    /// Passed to Jelou as `?type=`; Jelou's default flow type when omitted.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64)]
    pub flow_type: Option<String>,
    /// Extra context Jelou caches and returns with the Flow reply (sent as `payload`).
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
}

/// The Flow the button opens.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowRequest {
    /// Slug of a Flow that exists in Jelou for this bot (`flow_name`).
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    /// Button text: 1 to 30 characters, no emoji (`flow_cta`).
    #[schema(min_length = 1, max_length = 30)]
    pub cta: String,
    /// First screen of the Flow (`flow_action_payload.screen`).
    #[schema(min_length = 1, max_length = 128)]
    pub screen: Option<String>,
    /// Initial data for the first screen; a non-empty object (`flow_action_payload.data`).
    #[schema(value_type = Option<Object>)]
    pub data: Option<Map<String, Value>>,
    /// Opaque token echoed back with the Flow's answers (`flow_token`).
    #[schema(min_length = 1, max_length = 1024)]
    pub token: Option<String>,
    pub mode: Option<FlowMode>,
    /// `flow_action`.
    pub action: Option<FlowAction>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SendParams {
    /// Validate and show the request Jelou would receive, without sending it.
    #[allow(dead_code)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SentStatus {
    Sent,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValidatedStatus {
    Validated,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Jelou accepted the message.
#[derive(Debug, Serialize, ToSchema)]
pub struct SentResponse {
    pub status: SentStatus,
    pub request_id: String,
    /// The bot alias used.
    pub bot: String,
    /// The recipient's digits as sent to Jelou.
    pub to: String,
    /// Upstream attempts made (1 unless a provably unsent attempt was retried).
    pub attempts: u32,
    /// Present and true when the relay runs in sandbox mode: nothing was sent.
    #[serde(skip_serializing_if = "is_false")]
    pub sandbox: bool,
    /// Jelou's JSON answer, as received.
    pub upstream: Value,
}

/// `dry_run=true`: the message is valid; this is what Jelou would receive.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidatedResponse {
    pub status: ValidatedStatus,
    pub request_id: String,
    pub bot: String,
    pub to: String,
    #[serde(skip_serializing_if = "is_false")]
    pub sandbox: bool,
    pub upstream_request: UpstreamRequestView,
}

/// The upstream request, with the Authorization header redacted.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamRequestView {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

/// A 200 answer: sent, or validated on a dry run.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SendOutcome {
    Sent(SentResponse),
    Validated(ValidatedResponse),
}

/// Send a WhatsApp Flow message through Jelou.
#[utoipa::path(
    post,
    path = "/v1/flow-messages",
    tag = "flow-messages",
    security(("bearer" = []), ()),
    params(
        SendParams,
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]{1,255}$",
            description = "1 to 255 printable ASCII characters. The same key and message within the retention period replay the stored answer (with `Idempotent-Replayed: true`) without calling Jelou."),
        ("X-Request-Timeout-Ms" = Option<u64>, Header, minimum = 1,
            description = "A shorter deadline for this request, in milliseconds; the relay's own deadline is the most."),
        ("X-Request-Id" = Option<String>, Header,
            description = "Kept when 1 to 128 characters of letters, digits and `-_.:`; generated otherwise. Returned, logged and sent to Jelou."),
    ),
    request_body(content = FlowMessageRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Sent (or validated, on a dry run)", body = SendOutcome),
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
        (status = 503, description = "`overloaded` (the relay sheds load, or the shared store is unreachable with `fail_closed`), or `upstream_unavailable` with Retry-After (Jelou said when to come back)", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "`deadline_exceeded`", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn send_flow_message(State(state): State<AppState>, request: Request) -> Response {
    // The request is taken whole and read in place: extractors would copy its headers.
    let (parts, body) = request.into_parts();
    let request_id = parts
        .headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    let Some(caller) = parts.extensions.get::<Authenticated>() else {
        tracing::error!("the authentication layer did not run before the handler");
        return ApiError::Internal.into_problem(request_id).into_response();
    };
    let request = Inbound {
        caller,
        trace: parts.extensions.get::<TraceContext>(),
        request_id,
        query: parts.uri.query(),
        headers: &parts.headers,
    };
    match handle(state, request, body).await {
        Ok(response) => response,
        Err(error) => {
            let outcome = log_failure(&error);
            let mut response = error.into_problem(request_id).into_response();
            response.extensions_mut().insert(outcome);
            response
        }
    }
}

/// How long a claim on an Idempotency-Key outlives the request's deadline in a shared
/// store before it is taken as abandoned (the sending replica died).
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// The header a caller uses to ask for a shorter deadline than the relay's.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// What the handler knows of the request besides its body.
struct Inbound<'a> {
    caller: &'a Authenticated,
    trace: Option<&'a TraceContext>,
    request_id: &'a str,
    query: Option<&'a str>,
    headers: &'a HeaderMap,
}

async fn handle(state: AppState, inbound: Inbound<'_>, body: Body) -> Result<Response, ApiError> {
    let Inbound {
        caller,
        trace,
        request_id,
        query,
        headers,
    } = inbound;
    let dry_run = parse_query(query)?;
    check_content_type(headers)?;
    let idempotency_key = idempotency_key(headers, state.idempotency_required)?;
    let deadline = Instant::now() + requested_timeout(headers, state.deadline)?;
    let bytes = tokio::time::timeout(
        state.body_read_timeout,
        read_body(body, headers, state.body_limit),
    )
    .await
    .map_err(|_elapsed| ApiError::RequestTimeout)??;
    let object =
        parse_object(&bytes, state.max_json_depth).map_err(|e| ApiError::MalformedJson(e.0))?;

    // The alias is looked up even when other fields fail, so every error comes at once.
    let raw_alias = object.get("bot").and_then(Value::as_str).map(str::to_owned);
    let parsed = FlowMessage::parse(object);
    let bot = state.bots.resolve(raw_alias.as_deref());
    let (message, bot) = match (parsed, bot) {
        (Ok(message), Ok(bot)) => (message, bot),
        (Ok(_), Err(lookup)) => {
            return Err(ApiError::UnknownBot(vec![FieldError::new(
                "bot",
                lookup.to_string(),
            )]));
        }
        (Err(mut errors), bot) => {
            if let (Err(lookup), false) = (bot, errors.iter().any(|e| e.field == "bot")) {
                errors.push(FieldError::new("bot", lookup.to_string()));
            }
            return Err(ApiError::Validation(errors));
        }
    };

    // One write to the span for all three (each write re-serializes its fields).
    let span = Span::current();
    tracing::record_all!(
        span,
        caller = caller.name(),
        bot = bot.alias.as_str(),
        to = message.to.masked().as_str(),
    );
    if !caller.may_use(&bot.alias) {
        return Err(ApiError::ForbiddenBot);
    }

    let mut outbound = build_outbound(
        &state.base_url,
        bot,
        &message,
        request_id.to_string(),
        deadline,
    );
    outbound.traceparent = trace.map(TraceContext::traceparent);
    if dry_run {
        let mut response = Json(SendOutcome::Validated(ValidatedResponse {
            status: ValidatedStatus::Validated,
            request_id: request_id.into(),
            bot: outbound.bot.alias.clone(),
            to: outbound.recipient.as_str().into(),
            sandbox: state.sandbox,
            upstream_request: view(&outbound),
        }))
        .into_response();
        response
            .extensions_mut()
            .insert(RequestOutcome::new("validated"));
        return Ok(response);
    }

    let reserved = match idempotency_key {
        None => None,
        Some(key) => {
            let scoped = scoped_key(caller.name(), &key);
            // A shared store keeps the claim this long; past it without an answer, the
            // send counts as interrupted (outcome unknown).
            let lease = deadline.saturating_duration_since(Instant::now()) + LEASE_MARGIN;
            // The store has its own timeout; the request's deadline still holds over it.
            let begin = tokio::time::timeout_at(
                deadline,
                state
                    .idempotency
                    .begin(&scoped, fingerprint(&outbound), lease),
            )
            .await
            .map_err(|_elapsed| {
                ApiError::Delivery(DeliveryFailure::refused(
                    FailureKind::DeadlineExceeded,
                    "the deadline passed while the Idempotency-Key was being checked; nothing was sent".into(),
                    None,
                ))
            })?
            .map_err(|error| {
                // The store's address and error stay in the log.
                tracing::warn!(%error, "send refused: the Idempotency-Key could not be checked");
                ApiError::StoreUnavailable(
                    "the shared idempotency store is unreachable; nothing was sent, retry shortly"
                        .into(),
                )
            })?;
            match begin {
                Begin::Proceed(reservation) => Some(reservation),
                Begin::Replay(answer) => {
                    metrics::counter!(crate::metrics::IDEMPOTENCY, "result" => "replayed")
                        .increment(1);
                    tracing::info!("idempotent replay: Jelou not called");
                    let mut response = answer_response(answer, true);
                    response
                        .extensions_mut()
                        .insert(RequestOutcome::new("replayed"));
                    return Ok(response);
                }
                Begin::InFlight => {
                    metrics::counter!(crate::metrics::IDEMPOTENCY, "result" => "in_flight")
                        .increment(1);
                    return Err(ApiError::IdempotencyKeyInFlight);
                }
                Begin::Abandoned => {
                    metrics::counter!(crate::metrics::IDEMPOTENCY, "result" => "interrupted")
                        .increment(1);
                    return Err(ApiError::SendInterrupted);
                }
                Begin::Mismatch => {
                    metrics::counter!(crate::metrics::IDEMPOTENCY, "result" => "reused")
                        .increment(1);
                    return Err(ApiError::IdempotencyKeyReused);
                }
            }
        }
    };

    // Once sending starts it runs to its end even if the caller hangs up, so that its
    // outcome is logged and, with a key, stored for the caller's retry.
    let task =
        tokio::spawn(deliver(state, outbound, reserved, request_id.to_string()).instrument(span));
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

/// Sends, renders the answer, and completes or releases the idempotency key.
async fn deliver(
    state: AppState,
    outbound: Outbound,
    key: Option<Reservation>,
    request_id: String,
) -> (StoredAnswer, RequestOutcome) {
    let alias = outbound.bot.alias.clone();
    let to = outbound.recipient.as_str().to_string();
    let result = state.delivery.clone().oneshot(outbound).await;
    // A key is used up only by a message that was, or may have been, sent.
    let consumed = match &result {
        Ok(_) => true,
        Err(failure) => failure.delivery == DeliveryState::Unknown,
    };
    let (answer, outcome) = match result {
        Ok(delivered) => {
            let outcome = RequestOutcome {
                outcome: "sent",
                upstream_status: Some(delivered.status),
                attempts: Some(delivered.attempts),
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
                body: serde_json::to_vec(&body).unwrap_or_default().into(),
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

fn problem_answer(problem: Problem) -> StoredAnswer {
    StoredAnswer {
        status: problem.status,
        content_type: PROBLEM_CONTENT_TYPE.into(),
        retry_after: problem.retry_after,
        body: serde_json::to_vec(&problem).unwrap_or_default().into(),
    }
}

fn answer_response(answer: StoredAnswer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&answer.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(seconds) = answer.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn idempotency_key(headers: &HeaderMap, required: bool) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    match (values.next(), values.next()) {
        (None, _) if required => Err(ApiError::IdempotencyKeyRequired),
        (None, _) => Ok(None),
        (Some(value), None) if is_valid_key(value.as_bytes()) => {
            Ok(value.to_str().ok().map(str::to_owned))
        }
        _ => Err(ApiError::IdempotencyKeyInvalid),
    }
}

/// The caller's `X-Request-Timeout-Ms`, never longer than the relay's own deadline.
fn requested_timeout(headers: &HeaderMap, default: Duration) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(default);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms).min(default)),
        _ => Err(ApiError::Validation(vec![FieldError::new(
            format!("headers.{TIMEOUT_HEADER}"),
            "must be a whole number of milliseconds greater than 0",
        )])),
    }
}

/// Only `dry_run` is known; any other parameter is refused, since a misspelt
/// `dry_run` would otherwise send a real message.
fn parse_query(query: Option<&str>) -> Result<bool, ApiError> {
    let mut dry_run = false;
    let mut errors = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            ("dry_run", "true") => dry_run = true,
            ("dry_run", "false") => dry_run = false,
            ("dry_run", _) => {
                errors.push(FieldError::new("query.dry_run", "must be true or false"))
            }
            (other, _) => errors.push(FieldError::new(
                format!("query.{}", other.chars().take(64).collect::<String>()),
                "is not a known query parameter (only dry_run is)",
            )),
        }
    }
    if errors.is_empty() {
        Ok(dry_run)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// `application/json` or any `application/*+json`, parameters allowed.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(if value.is_empty() {
            "Content-Type is missing; send application/json".into()
        } else {
            "Content-Type must be application/json".into()
        }))
    }
}

/// The body, at most `limit` bytes (413 past it, whether declared by Content-Length or
/// found while reading).
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        linger(body);
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let expected = declared.map_or(1024, |length| length as usize);
    let mut collected = bytes::BytesMut::with_capacity(expected);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ApiError::BodyReadFailed(
                "the request body could not be read in full".into(),
            ));
        };
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > limit {
                linger(body);
                return Err(ApiError::PayloadTooLarge { limit });
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(collected.freeze())
}

/// How long, and how much, the relay keeps reading (and discarding) an oversize body.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Reads and discards, in the background, what a caller still sends after its body was
/// refused, so that it reads the 413 instead of a connection reset in the middle of its
/// upload (a lingering close, as nginx does); bounded in time and bytes.
fn linger(mut body: Body) {
    tokio::spawn(async move {
        let discard = async {
            let mut seen = 0;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, bytes::Bytes::len);
                if seen > LINGER_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, discard).await;
    });
}

fn view(outbound: &Outbound) -> UpstreamRequestView {
    let authorization = if outbound.bot.credentials.is_some() {
        "Basic [REDACTED]"
    } else {
        "[none: no credentials configured for this bot]"
    };
    let headers = BTreeMap::from([
        ("authorization".to_string(), authorization.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        ("x-request-id".to_string(), outbound.request_id.clone()),
    ]);
    UpstreamRequestView {
        method: "POST".into(),
        url: outbound.url.to_string(),
        headers,
        body: serde_json::from_slice(&outbound.body).unwrap_or(Value::Null),
    }
}

/// Logs why a request failed, at the level it deserves; returns how it ended.
fn log_failure(error: &ApiError) -> RequestOutcome {
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
        other => {
            tracing::info!(code = other.code(), "request refused");
            RequestOutcome::new("refused")
        }
    }
}
