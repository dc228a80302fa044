//! W3C Trace Context: a caller's `traceparent` is continued (it becomes the parent of the
//! request span, exported over OTLP when configured, and Jelou receives the same trace
//! under the relay's span id); without one, a trace starts here.
//!
//! The parse is the relay's own, not opentelemetry's `TraceContextPropagator`: the
//! propagator takes trace and span ids shorter than 32 and 16 hex digits (it reads them
//! as numbers) and versions above `00`, which the tests below refuse; a hostile header
//! must not become a trace id. The contexts it builds are opentelemetry's.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace this request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// The span id to send as parent: the caller's when parsed, the relay's once continued.
    pub span_id: String,
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
            span_id: parent_id.to_string(),
            flags: flags.to_string(),
        })
    }

    /// A new trace, not sampled, with a fresh span id for the relay.
    pub fn start() -> TraceContext {
        TraceContext {
            trace_id: lower_hex(&fastrand::u128(1..).to_be_bytes()),
            span_id: lower_hex(&fastrand::u64(1..).to_be_bytes()),
            flags: "00".into(),
        }
    }

    /// The same trace, under a new span id of the relay's own.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: lower_hex(&fastrand::u64(1..).to_be_bytes()),
            ..self.clone()
        }
    }

    /// The `traceparent` to send on: this trace, this span id.
    pub fn traceparent(&self) -> String {
        let parts = [
            self.trace_id.as_str(),
            self.span_id.as_str(),
            self.flags.as_str(),
        ];
        let mut traceparent = String::with_capacity(55);
        traceparent.push_str("00");
        for part in parts {
            traceparent.push('-');
            traceparent.push_str(part);
        }
        traceparent
    }

    /// Makes this (the caller's) span the parent of `span`, which must not have started
    /// yet. Without the OpenTelemetry layer (no OTLP endpoint) this does nothing.
    pub fn adopt(&self, span: &Span) {
        if let Some(parent) = self.otel_parent() {
            let _ = span.set_parent(parent);
        }
    }

    /// As a remote OpenTelemetry parent.
    fn otel_parent(&self) -> Option<opentelemetry::Context> {
        let span_context = SpanContext::new(
            TraceId::from_hex(&self.trace_id).ok()?,
            SpanId::from_hex(&self.span_id).ok()?,
            TraceFlags::new(u8::from_str_radix(&self.flags, 16).ok()?),
            true,
            TraceState::default(),
        );
        Some(opentelemetry::Context::new().with_remote_span_context(span_context))
    }

    /// The request span's own context, when OpenTelemetry records it.
    pub fn of_span(span: &Span) -> Option<TraceContext> {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| TraceContext {
            trace_id: format!("{:032x}", span_context.trace_id()),
            span_id: format!("{:016x}", span_context.span_id()),
            flags: format!("{:02x}", span_context.trace_flags().to_u8()),
        })
    }
}

/// `bytes` in lower-case hex. `hex::encode` builds its string a `char` at a time (700
/// instructions for a trace id); `encode_to_slice` writes the bytes at once.
fn lower_hex(bytes: &[u8]) -> String {
    let mut text = vec![0; bytes.len() * 2];
    // Cannot fail: `text` is exactly twice as long as `bytes`.
    let _ = hex::encode_to_slice(bytes, &mut text);
    String::from_utf8(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_lower_hex_of_full_width_and_never_zero() {
        for _ in 0..1000 {
            let context = TraceContext::start();
            let child = context.child();
            for (id, len) in [
                (&context.trace_id, 32),
                (&context.span_id, 16),
                (&child.span_id, 16),
            ] {
                assert_eq!(id.len(), len, "{id}");
                assert!(
                    id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                    "{id}"
                );
                assert!(id.bytes().any(|b| b != b'0'), "{id}");
            }
            assert_eq!(child.trace_id, context.trace_id);
        }
    }

    #[test]
    fn traceparent_joins_version_trace_span_and_flags() {
        let context =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .unwrap()
                .child();
        let traceparent = context.traceparent();
        assert_eq!(traceparent.len(), 55);
        assert_eq!(
            traceparent,
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", context.span_id)
        );
        let fresh = TraceContext::start();
        assert_eq!(TraceContext::parse(&fresh.traceparent()), Some(fresh));
    }

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
        let child = parent.child().traceparent();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert!(TraceContext::parse(&child).is_some());
        assert!(!child.contains("00f067aa0ba902b7"));
        assert!(TraceContext::parse(&TraceContext::start().traceparent()).is_some());
    }
}
