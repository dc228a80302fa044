//! A stand-in for Jelou's `flow_message` API, for people trying the relay and for
//! benchmarks: checks credentials and bodies as Jelou does, and injects latency and faults.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One scripted answer: a status, or a connection dropped mid-answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scripted {
    Status(u16),
    Reset,
}

impl FromStr for Scripted {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "reset" => Ok(Scripted::Reset),
            code => match code.parse::<u16>() {
                Ok(status) if (200..=599).contains(&status) => Ok(Scripted::Status(status)),
                _ => Err(format!(
                    "'{code}' is neither an HTTP status (200-599) nor 'reset'"
                )),
            },
        }
    }
}

/// How the simulator behaves.
#[derive(Debug, Clone, Default)]
pub struct SimulatorOptions {
    /// Basic credentials to require; none means any (or no) Authorization is accepted.
    pub credentials: Option<(String, String)>,
    /// Added before every answer.
    pub delay: Duration,
    /// Answers for the first requests, in order; then normal behaviour.
    pub script: Vec<Scripted>,
    /// Share of requests (after the script) answered with `failure_status`.
    pub failure_ratio: f64,
    pub failure_status: u16,
    /// `Retry-After` value sent with 429 and 503 answers.
    pub retry_after: Option<String>,
}

#[derive(Debug)]
struct Simulator {
    options: SimulatorOptions,
    received: AtomicU64,
}

/// The simulator's routes: Jelou's call, and `GET /_simulator/stats`.
pub fn router(options: SimulatorOptions) -> Router {
    let state = Arc::new(Simulator {
        options,
        received: AtomicU64::new(0),
    });
    Router::new()
        .route(
            "/v1/bots/{bot}/users/{user}/flow_message",
            post(flow_message),
        )
        .route("/_simulator/stats", get(stats))
        .with_state(state)
}

/// Binds `address` (port 0 picks one) and returns the listener and its address.
pub async fn bind(address: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

async fn stats(State(sim): State<Arc<Simulator>>) -> Response {
    axum::Json(json!({"received": sim.received.load(Ordering::SeqCst)})).into_response()
}

fn jelou_error(status: u16, retry_after: Option<&str>) -> Response {
    let code = match status {
        400 => "message_could_not_be_send",
        401 => "unauthorized",
        403 => "forbidden_bot",
        404 => "bot_not_found",
        422 => "unprocessable_entity",
        429 => "rate_limited",
        503 => "service_unavailable",
        _ => "internal_server_error",
    };
    error_response(status, code, &format!("simulated {status}"), retry_after)
}

fn error_response(
    status: u16,
    code: &str,
    description: &str,
    retry_after: Option<&str>,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        axum::Json(json!({"code": code, "description": description})),
    )
        .into_response();
    if let Some(value) = retry_after.filter(|_| matches!(status.as_u16(), 429 | 503))
        && let Ok(value) = HeaderValue::from_str(value)
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Headers sent, then the connection dropped before the body.
fn reset() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("simulated reset"))
    });
    (StatusCode::OK, Body::from_stream(failing)).into_response()
}

async fn flow_message(
    State(sim): State<Arc<Simulator>>,
    Path((bot, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let number = sim.received.fetch_add(1, Ordering::SeqCst) as usize;
    let options = &sim.options;
    if !options.delay.is_zero() {
        tokio::time::sleep(options.delay).await;
    }
    let retry_after = options.retry_after.as_deref();
    match options.script.get(number) {
        Some(Scripted::Reset) => return reset(),
        Some(Scripted::Status(status)) if *status >= 300 => {
            return jelou_error(*status, retry_after);
        }
        Some(Scripted::Status(_)) => return axum::Json(json!({})).into_response(),
        None => {}
    }
    if let Some((id, secret)) = &options.credentials {
        let expected = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
        let given = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if given != Some(expected.as_bytes()) {
            return error_response(
                401,
                "unauthorized",
                "invalid clientId or clientSecret",
                None,
            );
        }
    }
    if bot.is_empty() || user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
        return error_response(400, "message_could_not_be_send", "invalid recipient", None);
    }
    if let Err(description) = jelou_checks(&body) {
        return error_response(422, "unprocessable_entity", &description, None);
    }
    if options.failure_ratio > 0.0 && fastrand::f64() < options.failure_ratio {
        return jelou_error(options.failure_status, retry_after);
    }
    axum::Json(json!({})).into_response()
}

/// The body checks Jelou applies to a flow message: required members present and strings.
pub fn jelou_checks(body: &[u8]) -> Result<(), String> {
    let body: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let missing: Vec<&str> = [
        "/title",
        "/text",
        "/caption",
        "/parameters/flow_name",
        "/parameters/flow_cta",
    ]
    .into_iter()
    .filter(|pointer| {
        body.pointer(pointer)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    })
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing fields: {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_items_parse() {
        assert_eq!("503".parse(), Ok(Scripted::Status(503)));
        assert_eq!(" reset ".parse(), Ok(Scripted::Reset));
        assert!("99".parse::<Scripted>().is_err());
        assert!("boom".parse::<Scripted>().is_err());
    }

    #[test]
    fn checks_required_members() {
        let ok = br#"{"title":"a","text":"b","caption":"c","parameters":{"flow_name":"f","flow_cta":"g"}}"#;
        assert!(jelou_checks(ok).is_ok());
        let missing = jelou_checks(br#"{"title":"a","parameters":{}}"#).unwrap_err();
        assert!(missing.contains("/text") && missing.contains("/parameters/flow_name"));
        assert!(jelou_checks(b"nope").is_err());
    }
}
