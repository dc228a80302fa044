//! What the send handler reads besides the message: the query, the content type, the
//! Idempotency-Key and timeout headers, and the body within its limits.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, HeaderName, header};
use http_body_util::BodyExt;

use crate::api::problem::ApiError;
use crate::domain::FieldError;
use crate::idempotency::is_valid_key;

/// The header a caller uses to ask for a shorter deadline than the relay's.
pub const TIMEOUT_HEADER: &str = "x-request-timeout-ms";

// Header names looked up as `HeaderName`s, not strings: a string is parsed and checked
// for case on every lookup.
static REQUEST_TIMEOUT: HeaderName = HeaderName::from_static(TIMEOUT_HEADER);
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

pub fn idempotency_key(headers: &HeaderMap, required: bool) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
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
pub fn requested_timeout(headers: &HeaderMap, default: Duration) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(&REQUEST_TIMEOUT) else {
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
pub fn parse_query(query: Option<&str>) -> Result<bool, ApiError> {
    let mut dry_run = None;
    let mut errors = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (key.as_ref(), value.as_ref()) {
            // Which of two values would win is a guess; a real send is never decided by one.
            ("dry_run", _) if dry_run.is_some() => errors.push(FieldError::new(
                "query.dry_run",
                "is given more than once; give it once",
            )),
            ("dry_run", "true") => dry_run = Some(true),
            ("dry_run", "false") => dry_run = Some(false),
            ("dry_run", _) => {
                dry_run = Some(false);
                errors.push(FieldError::new("query.dry_run", "must be true or false"))
            }
            (other, _) => errors.push(FieldError::new(
                format!("query.{}", other.chars().take(64).collect::<String>()),
                "is not a known query parameter (only dry_run is)",
            )),
        }
    }
    if errors.is_empty() {
        Ok(dry_run.unwrap_or(false))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// `application/json` or any `application/*+json`, parameters allowed.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
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
pub async fn read_body(
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
