//! W3C Trace Context: a caller's `traceparent` is continued (its trace id goes into the
//! request span and on to Jelou, under the relay's own span id); without one, a trace
//! starts here.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Span;

/// The trace this request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// Trace flags, 2 hex digits (`01` = sampled).
    pub flags: String,
}

impl TraceContext {
    /// Parses `traceparent` version 00: `00-<32 hex>-<16 hex>-<2 hex>`.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = version == "00"
            && parts.next().is_none()
            && hex(trace_id, 32)
            && hex(parent_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        valid.then(|| TraceContext {
            trace_id: trace_id.to_string(),
            flags: flags.to_string(),
        })
    }

    /// A new trace, not sampled.
    pub fn start() -> TraceContext {
        TraceContext {
            trace_id: format!("{:032x}", fastrand::u128(1..)),
            flags: "00".into(),
        }
    }

    /// The `traceparent` for the relay's own call to Jelou: same trace, a new span id.
    pub fn child_traceparent(&self) -> String {
        format!(
            "00-{}-{:016x}-{}",
            self.trace_id,
            fastrand::u64(1..),
            self.flags
        )
    }
}

/// Reads `traceparent`, records the trace id on the request span, and hands the
/// context to the handler.
pub async fn continue_trace(mut request: Request, next: Next) -> Response {
    let context = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::start);
    Span::current().record("trace_id", context.trace_id.as_str());
    request.extensions_mut().insert(context);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_refuses_invalid() {
        let ok =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ok.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ok.flags, "01");
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn children_keep_the_trace_and_make_a_new_span() {
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let child = parent.child_traceparent();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert!(TraceContext::parse(&child).is_some());
        assert!(!child.contains("00f067aa0ba902b7"));
        assert!(TraceContext::parse(&TraceContext::start().child_traceparent()).is_some());
    }
}
