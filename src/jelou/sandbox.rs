//! Sandbox mode: Jelou's checks applied locally, Jelou's answer returned, nothing sent.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use serde_json::json;

use super::classify::{Refusal, UpstreamError, Verdict};
use super::request::FlowRequest;
use super::simulator::jelou_checks;

/// Stands in for Jelou; logs what would have been sent, with the recipient masked and
/// no part of the body (it may carry a flow token or private context).
#[derive(Clone, Debug, Default)]
pub struct Sandbox;

impl Sandbox {
    fn answer(request: &FlowRequest) -> Verdict {
        // Jelou's own checks; the relay's validation makes a failure here a relay bug,
        // reported as Jelou would report it.
        if let Err(description) = jelou_checks(&request.body) {
            return Verdict::Refused {
                refusal: Refusal::Rejected,
                upstream: UpstreamError {
                    status: 422,
                    code: Some("unprocessable_entity".into()),
                    description: Some(description),
                },
                retry_after: None,
            };
        }
        tracing::info!(
            bot = %request.bot.alias,
            path = %format!("/v1/bots/{}/users/{}/flow_message", request.bot.id, request.recipient.masked()),
            query = request.url.query().unwrap_or(""),
            body_bytes = request.body.len(),
            "sandbox: message accepted, not sent"
        );
        Verdict::Accepted {
            status: 200,
            body: json!({}),
        }
    }
}

impl tower::Service<Arc<FlowRequest>> for Sandbox {
    type Response = Verdict;
    type Error = Infallible;
    type Future = Ready<Result<Verdict, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Arc<FlowRequest>) -> Self::Future {
        ready(Ok(Self::answer(&request)))
    }
}
