//! The one place that builds delivery failures and says what each is worth to the
//! caller: not sent (safe to retry), or unknown (a retry may send it twice).

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::Delivered;
use super::journal::Journal;
use crate::jelou::UpstreamError;
use crate::jelou::classify::{NoAnswer, Refusal, Verdict};

/// Could a retry of this request send the message a second time?
/// Ordered: `Unknown` is the stronger claim, and wins when attempts are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, ToSchema)]
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
    /// The relay's own bounds (in-flight limit, wait queues, shared store) are full or gone.
    Overloaded,
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

/// How long the relay asks a caller to wait after it shed a request itself.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

impl DeliveryFailure {
    fn new(kind: FailureKind, delivery: DeliveryState, detail: impl Into<String>) -> Self {
        DeliveryFailure {
            kind,
            delivery,
            attempts: 1,
            detail: detail.into(),
            upstream: None,
            retry_after: None,
        }
    }

    /// A refusal before anything was sent.
    pub fn refused(
        kind: FailureKind,
        detail: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        DeliveryFailure {
            attempts: 0,
            retry_after,
            ..Self::new(kind, DeliveryState::NotSent, detail)
        }
    }

    /// The relay shed the request itself; nothing was sent.
    pub fn overloaded(detail: impl Into<String>) -> Self {
        Self::refused(FailureKind::Overloaded, detail, Some(SHED_RETRY_AFTER))
    }

    /// An attempt got no answer within its timeout, after its request was written.
    pub fn attempt_timed_out() -> Self {
        Self::from_no_answer(NoAnswer::Timeout)
    }

    /// The request's deadline passed; what the attempts so far make of it.
    pub fn deadline_passed(journal: &Journal) -> Self {
        DeliveryFailure {
            attempts: journal.attempts(),
            ..Self::new(
                FailureKind::DeadlineExceeded,
                journal.delivery(),
                "the request's deadline passed before Jelou answered",
            )
        }
    }

    /// The HTTP status, stable code and title a caller sees for this failure, and
    /// whether sending the same request again is safe and may succeed.
    pub fn describe(&self) -> (StatusCode, &'static str, &'static str, bool) {
        use StatusCode as S;
        let not_sent = self.delivery == DeliveryState::NotSent;
        match self.kind {
            FailureKind::Rejected => (
                S::UNPROCESSABLE_ENTITY,
                "upstream_rejected",
                "Jelou rejected the message",
                false,
            ),
            FailureKind::AuthFailed => (
                S::BAD_GATEWAY,
                "upstream_auth_failed",
                "The relay is not authorized by Jelou",
                false,
            ),
            // Jelou said "not now" and when to come back: pass that on as 503.
            FailureKind::Unavailable if not_sent && self.retry_after.is_some() => (
                S::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "Jelou is unavailable",
                true,
            ),
            FailureKind::Unavailable => (
                S::BAD_GATEWAY,
                "upstream_unavailable",
                "Jelou is unavailable",
                not_sent,
            ),
            FailureKind::Overloaded => (
                S::SERVICE_UNAVAILABLE,
                "overloaded",
                "The relay is overloaded",
                true,
            ),
            FailureKind::RateLimited => (
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                "Rate limited",
                not_sent,
            ),
            FailureKind::DeadlineExceeded => (
                S::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                "Deadline exceeded",
                not_sent,
            ),
        }
    }

    /// Jelou's answer as a caller may see it: its words about credentials stay in the logs.
    pub fn public_upstream(&self) -> Option<UpstreamError> {
        let upstream = self.upstream.clone()?;
        Some(match self.kind {
            FailureKind::AuthFailed => UpstreamError {
                description: None,
                ..upstream
            },
            _ => upstream,
        })
    }

    fn from_no_answer(no_answer: NoAnswer) -> Self {
        let (kind, delivery, detail) = match no_answer {
            NoAnswer::Connect => (
                FailureKind::Unavailable,
                DeliveryState::NotSent,
                "could not connect to Jelou",
            ),
            NoAnswer::Timeout => (
                FailureKind::DeadlineExceeded,
                DeliveryState::Unknown,
                "Jelou did not answer in time after the request was sent",
            ),
            NoAnswer::Lost => (
                FailureKind::Unavailable,
                DeliveryState::Unknown,
                "the connection to Jelou failed after the request was sent",
            ),
        };
        Self::new(kind, delivery, detail)
    }
}

/// What one attempt's verdict means for the message.
pub fn from_verdict(verdict: Verdict) -> Result<Delivered, DeliveryFailure> {
    use DeliveryState::{NotSent, Unknown};
    match verdict {
        Verdict::Accepted { status, body } => Ok(Delivered {
            status,
            body,
            attempts: 1,
        }),
        Verdict::Unreadable { status } => Err(DeliveryFailure {
            upstream: Some(UpstreamError {
                status,
                code: None,
                description: None,
            }),
            ..DeliveryFailure::new(
                FailureKind::Unavailable,
                Unknown,
                format!(
                    "Jelou answered {} with a body that is not JSON",
                    status_text(status)
                ),
            )
        }),
        Verdict::NoAnswer(no_answer) => Err(DeliveryFailure::from_no_answer(no_answer)),
        Verdict::NoCredentials => Err(DeliveryFailure::new(
            FailureKind::AuthFailed,
            NotSent,
            "the relay has no Jelou credentials for this bot",
        )),
        Verdict::Refused {
            refusal,
            upstream,
            retry_after,
        } => {
            let status = status_text(upstream.status);
            let (kind, delivery, detail) = match refusal {
                Refusal::Credentials => (
                    FailureKind::AuthFailed,
                    NotSent,
                    "Jelou refused the relay's credentials for this bot; the relay's configuration must be fixed".into(),
                ),
                Refusal::UnknownBot => (
                    FailureKind::AuthFailed,
                    NotSent,
                    "Jelou does not know this bot for the relay's credentials; the relay's configuration must be fixed".into(),
                ),
                Refusal::SlowDown => (
                    FailureKind::RateLimited,
                    NotSent,
                    "Jelou asked the relay to slow down".into(),
                ),
                Refusal::Unavailable => (
                    FailureKind::Unavailable,
                    NotSent,
                    "Jelou is unavailable (503) and did not act on the message".into(),
                ),
                Refusal::Rejected => (
                    FailureKind::Rejected,
                    NotSent,
                    format!("Jelou rejected the message ({status})"),
                ),
                Refusal::Failed => (
                    FailureKind::Unavailable,
                    Unknown,
                    format!("Jelou answered {status}; the message may or may not have been sent"),
                ),
            };
            Err(DeliveryFailure {
                upstream: Some(upstream),
                retry_after,
                ..DeliveryFailure::new(kind, delivery, detail)
            })
        }
    }
}

/// `422 Unprocessable Entity`, as `StatusCode` shows it.
fn status_text(status: u16) -> String {
    StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jelou::classify::classify_response;
    use http::HeaderMap;

    fn classify(status: u16, body: &[u8]) -> Result<Delivered, DeliveryFailure> {
        from_verdict(classify_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            Some(body),
        ))
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
    fn transport_failures() {
        let connect = DeliveryFailure::from_no_answer(NoAnswer::Connect);
        assert_eq!(connect.delivery, DeliveryState::NotSent);
        assert_eq!(
            DeliveryFailure::attempt_timed_out().delivery,
            DeliveryState::Unknown
        );
        assert_eq!(
            DeliveryFailure::from_no_answer(NoAnswer::Lost).delivery,
            DeliveryState::Unknown
        );
    }
}
