//! The one place that decides what an upstream answer or transport error means:
//! sent, refused, or unknown, and whether a retry could duplicate the message.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use super::{Delivered, DeliveryFailure, DeliveryState, FailureKind, UpstreamError};

/// Jelou's documented error body; the description has also been seen as `message`.
#[derive(Debug, Default, Deserialize)]
struct JelouErrorBody {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    description: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
}

fn as_text(value: Option<Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(truncate(&s, 500)),
        Value::Null => None,
        other => Some(truncate(&other.to_string(), 500)),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Jelou's error code and description from a body, tolerating anything.
pub fn upstream_error(status: StatusCode, body: &[u8]) -> UpstreamError {
    let parsed: JelouErrorBody = serde_json::from_slice(body).unwrap_or_default();
    UpstreamError {
        status: status.as_u16(),
        code: as_text(parsed.code),
        description: as_text(parsed.description).or_else(|| as_text(parsed.message)),
    }
}

/// Classifies a complete HTTP answer from Jelou. `body` is `None` when it could not be read.
pub fn classify_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
) -> Result<Delivered, DeliveryFailure> {
    if status.is_success() {
        return match body.map(serde_json::from_slice::<Value>) {
            Some(Ok(value)) => Ok(Delivered {
                status: status.as_u16(),
                body: value,
                attempts: 1,
            }),
            // Jelou said yes but its answer cannot be read: it may well have sent.
            _ => Err(DeliveryFailure {
                kind: FailureKind::Unavailable,
                delivery: DeliveryState::Unknown,
                attempts: 1,
                detail: format!("Jelou answered {status} with a body that is not JSON"),
                upstream: Some(UpstreamError {
                    status: status.as_u16(),
                    code: None,
                    description: None,
                }),
                retry_after: None,
            }),
        };
    }
    let upstream = upstream_error(status, body.unwrap_or_default());
    let failure = |kind, delivery, detail: String| DeliveryFailure {
        kind,
        delivery,
        attempts: 1,
        detail,
        upstream: Some(upstream.clone()),
        retry_after: retry_after(headers, SystemTime::now()),
    };
    let code = upstream.code.as_deref().unwrap_or_default();
    match status.as_u16() {
        401 | 403 => Err(failure(
            FailureKind::AuthFailed,
            DeliveryState::NotSent,
            "Jelou refused the relay's credentials for this bot; the relay's configuration must be fixed".into(),
        )),
        404 if code == "bot_not_found" => Err(failure(
            FailureKind::AuthFailed,
            DeliveryState::NotSent,
            "Jelou does not know this bot for the relay's credentials; the relay's configuration must be fixed".into(),
        )),
        429 => Err(failure(
            FailureKind::RateLimited,
            DeliveryState::NotSent,
            "Jelou asked the relay to slow down".into(),
        )),
        503 => Err(failure(
            FailureKind::Unavailable,
            DeliveryState::NotSent,
            "Jelou is unavailable (503) and did not act on the message".into(),
        )),
        400..=499 => Err(failure(
            FailureKind::Rejected,
            DeliveryState::NotSent,
            format!("Jelou rejected the message ({status})"),
        )),
        _ => Err(failure(
            FailureKind::Unavailable,
            DeliveryState::Unknown,
            format!("Jelou answered {status}; the message may or may not have been sent"),
        )),
    }
}

/// Classifies a transport error. Only a failure to connect proves nothing was sent.
pub fn classify_transport(error: &reqwest::Error) -> DeliveryFailure {
    let (kind, delivery, detail) = if error.is_connect() {
        (
            FailureKind::Unavailable,
            DeliveryState::NotSent,
            "could not connect to Jelou",
        )
    } else if error.is_timeout() {
        (
            FailureKind::DeadlineExceeded,
            DeliveryState::Unknown,
            "Jelou did not answer in time after the request was sent",
        )
    } else {
        (
            FailureKind::Unavailable,
            DeliveryState::Unknown,
            "the connection to Jelou failed after the request was sent",
        )
    };
    DeliveryFailure {
        kind,
        delivery,
        attempts: 1,
        detail: detail.into(),
        upstream: None,
        retry_after: None,
    }
}

/// The headers of an answer that its classification reads (through [`retry_after`]).
const HINT_HEADERS: [header::HeaderName; 2] = [
    header::RETRY_AFTER,
    header::HeaderName::from_static("x-ratelimit-reset"),
];

/// The headers of `all` that [`classify_response`] reads, without copying the rest.
pub fn hint_headers(all: &HeaderMap) -> HeaderMap {
    let mut hints = HeaderMap::new();
    for name in HINT_HEADERS {
        if let Some(value) = all.get(&name) {
            hints.insert(name, value.clone());
        }
    }
    hints
}

/// `Retry-After` (delta-seconds or HTTP-date), else `X-RateLimit-Reset` (seconds).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = text(header::RETRY_AFTER) {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        if let Ok(date) = httpdate::parse_http_date(value) {
            return Some(date.duration_since(now).unwrap_or_default());
        }
    }
    text(HINT_HEADERS[1].clone())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &[u8]) -> Result<Delivered, DeliveryFailure> {
        classify_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            Some(body),
        )
    }

    #[test]
    fn success_with_json_is_sent() {
        let delivered = classify(200, b"{}").unwrap();
        assert_eq!(delivered.body, serde_json::json!({}));
    }

    #[test]
    fn success_without_json_is_unknown() {
        for body in [&b""[..], b"<html>"] {
            let failure = classify(200, body).unwrap_err();
            assert_eq!(failure.delivery, DeliveryState::Unknown);
        }
    }

    #[test]
    fn status_table() {
        let cases = [
            (400, FailureKind::Rejected, DeliveryState::NotSent),
            (401, FailureKind::AuthFailed, DeliveryState::NotSent),
            (403, FailureKind::AuthFailed, DeliveryState::NotSent),
            (404, FailureKind::Rejected, DeliveryState::NotSent),
            (422, FailureKind::Rejected, DeliveryState::NotSent),
            (429, FailureKind::RateLimited, DeliveryState::NotSent),
            (500, FailureKind::Unavailable, DeliveryState::Unknown),
            (502, FailureKind::Unavailable, DeliveryState::Unknown),
            (503, FailureKind::Unavailable, DeliveryState::NotSent),
            (504, FailureKind::Unavailable, DeliveryState::Unknown),
        ];
        for (status, kind, delivery) in cases {
            let failure = classify(status, b"").unwrap_err();
            assert_eq!(
                (failure.kind, failure.delivery),
                (kind, delivery),
                "{status}"
            );
        }
        let failure = classify(404, br#"{"code":"bot_not_found","message":"no"}"#).unwrap_err();
        assert_eq!(failure.kind, FailureKind::AuthFailed);
        assert_eq!(failure.upstream.unwrap().description.as_deref(), Some("no"));
    }

    #[test]
    fn hint_headers_keep_what_retry_after_reads() {
        let now = SystemTime::UNIX_EPOCH;
        for (name, value) in [("retry-after", "7"), ("x-ratelimit-reset", "9")] {
            let mut all = HeaderMap::new();
            all.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            all.insert(
                header::HeaderName::from_static(name),
                value.parse().unwrap(),
            );
            let hints = hint_headers(&all);
            assert_eq!(hints.len(), 1);
            assert_eq!(retry_after(&hints, now), retry_after(&all, now));
            assert!(retry_after(&hints, now).is_some());
        }
        assert!(hint_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.clear();
        headers.insert("x-ratelimit-reset", "3".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3)));
    }
}
