//! The one place that decides what Jelou's answer, or the lack of one, means: accepted,
//! refused (and why), or no answer; and what Jelou said about it. What a meaning is
//! worth to the caller (sent, not sent, unknown) is `delivery::failure`'s to say.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Jelou's own account of an error, as far as it gave one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct UpstreamError {
    /// HTTP status Jelou answered with.
    pub status: u16,
    /// Jelou's machine code, e.g. `bot_not_found`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What one call to Jelou came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Jelou accepted the message.
    Accepted { status: u16, body: Value },
    /// Jelou answered 2xx with a body that is not JSON: it may well have sent.
    Unreadable { status: u16 },
    /// Jelou answered with an error.
    Refused {
        refusal: Refusal,
        upstream: UpstreamError,
        /// When Jelou said when to come back (`Retry-After`, `X-RateLimit-Reset`).
        retry_after: Option<Duration>,
    },
    /// No complete answer came back.
    NoAnswer(NoAnswer),
    /// The relay holds no credentials for this bot: nothing was sent.
    NoCredentials,
}

/// Why Jelou refused, by its status and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401 or 403: the relay's credentials.
    Credentials,
    /// 404 `bot_not_found`: the bot is not the credentials' company's.
    UnknownBot,
    /// 429: slow down.
    SlowDown,
    /// 503: Jelou did not act on the message.
    Unavailable,
    /// Any other 4xx: the message itself.
    Rejected,
    /// Any other status (500, 502, 504, ...): Jelou may have acted.
    Failed,
}

/// How a call failed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// The connection (or TLS handshake) failed: the request was never written.
    Connect,
    /// No answer in time after the request was written.
    Timeout,
    /// The connection broke after the request was written.
    Lost,
}

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
pub fn classify_response(status: StatusCode, headers: &HeaderMap, body: Option<&[u8]>) -> Verdict {
    if status.is_success() {
        return match body.map(serde_json::from_slice::<Value>) {
            Some(Ok(value)) => Verdict::Accepted {
                status: status.as_u16(),
                body: value,
            },
            _ => Verdict::Unreadable {
                status: status.as_u16(),
            },
        };
    }
    let upstream = upstream_error(status, body.unwrap_or_default());
    let refusal = match status.as_u16() {
        401 | 403 => Refusal::Credentials,
        404 if upstream.code.as_deref() == Some("bot_not_found") => Refusal::UnknownBot,
        429 => Refusal::SlowDown,
        503 => Refusal::Unavailable,
        400..=499 => Refusal::Rejected,
        _ => Refusal::Failed,
    };
    Verdict::Refused {
        refusal,
        upstream,
        retry_after: retry_after(headers, SystemTime::now()),
    }
}

/// Classifies a transport error. Only a failure to connect proves nothing was sent.
pub fn classify_transport(error: &reqwest::Error) -> Verdict {
    Verdict::NoAnswer(if error.is_connect() {
        NoAnswer::Connect
    } else if error.is_timeout() {
        NoAnswer::Timeout
    } else {
        NoAnswer::Lost
    })
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

/// `Retry-After` (delta-seconds or HTTP-date), else `X-RateLimit-Reset`: seconds to wait,
/// or a Unix time when it is over [`UNIX_TIME_FROM`].
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
    let reset = text(HINT_HEADERS[1].clone())?.parse::<u64>().ok()?;
    if reset > UNIX_TIME_FROM {
        // A point in time (as many APIs send it), not a number of seconds to wait.
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(reset);
        return Some(at.duration_since(now).unwrap_or_default());
    }
    Some(Duration::from_secs(reset))
}

/// `X-RateLimit-Reset` values above this (2001-09-09) are Unix times, below it seconds.
pub const UNIX_TIME_FROM: u64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &[u8]) -> Verdict {
        classify_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            Some(body),
        )
    }

    fn refusal(verdict: Verdict) -> (Refusal, UpstreamError) {
        match verdict {
            Verdict::Refused {
                refusal, upstream, ..
            } => (refusal, upstream),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn success_with_json_is_accepted() {
        assert_eq!(
            classify(200, b"{}"),
            Verdict::Accepted {
                status: 200,
                body: serde_json::json!({})
            }
        );
    }

    #[test]
    fn success_without_json_is_unreadable() {
        for body in [&b""[..], b"<html>"] {
            assert_eq!(classify(200, body), Verdict::Unreadable { status: 200 });
        }
    }

    #[test]
    fn status_table() {
        let cases = [
            (400, Refusal::Rejected),
            (401, Refusal::Credentials),
            (403, Refusal::Credentials),
            (404, Refusal::Rejected),
            (422, Refusal::Rejected),
            (429, Refusal::SlowDown),
            (500, Refusal::Failed),
            (502, Refusal::Failed),
            (503, Refusal::Unavailable),
            (504, Refusal::Failed),
        ];
        for (status, expected) in cases {
            assert_eq!(refusal(classify(status, b"")).0, expected, "{status}");
        }
        let (kind, upstream) =
            refusal(classify(404, br#"{"code":"bot_not_found","message":"no"}"#));
        assert_eq!(kind, Refusal::UnknownBot);
        assert_eq!(upstream.description.as_deref(), Some("no"));
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
        // Large enough to be a Unix time: the wait until then.
        let real_now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_095_816);
        headers.insert("x-ratelimit-reset", "1796095818".parse().unwrap());
        assert_eq!(
            retry_after(&headers, real_now),
            Some(Duration::from_secs(2))
        );
        headers.insert("x-ratelimit-reset", "1796095000".parse().unwrap());
        assert_eq!(retry_after(&headers, real_now), Some(Duration::ZERO));
    }
}
