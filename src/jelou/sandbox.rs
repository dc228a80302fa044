//! Sandbox mode: Jelou's checks applied locally, Jelou's answer returned, nothing sent.

use std::future::{Ready, ready};
use std::task::{Context, Poll};

use serde_json::{Value, json};

use super::simulator::jelou_checks;
use crate::delivery::{
    Delivered, DeliveryFailure, DeliveryState, FailureKind, Outbound, UpstreamError,
};

/// Stands in for Jelou; logs what would have been sent, with the recipient masked.
#[derive(Clone, Debug, Default)]
pub struct Sandbox;

impl Sandbox {
    fn answer(outbound: &Outbound) -> Result<Delivered, DeliveryFailure> {
        // Jelou's own checks; the relay's validation makes a failure here a relay bug,
        // reported as Jelou would report it.
        if let Err(description) = jelou_checks(&outbound.body) {
            return Err(DeliveryFailure {
                kind: FailureKind::Rejected,
                delivery: DeliveryState::NotSent,
                attempts: 1,
                detail: "Jelou rejected the message (422)".into(),
                upstream: Some(UpstreamError {
                    status: 422,
                    code: Some("unprocessable_entity".into()),
                    description: Some(description),
                }),
                retry_after: None,
            });
        }
        let body: Value = serde_json::from_slice(&outbound.body).unwrap_or(Value::Null);
        tracing::info!(
            bot = %outbound.bot.alias,
            path = %format!("/v1/bots/{}/users/{}/flow_message", outbound.bot.id, outbound.recipient.masked()),
            query = outbound.url.query().unwrap_or(""),
            body = %body,
            "sandbox: message accepted, not sent"
        );
        Ok(Delivered {
            status: 200,
            body: json!({}),
            attempts: 1,
        })
    }
}

impl tower::Service<Outbound> for Sandbox {
    type Response = Delivered;
    type Error = DeliveryFailure;
    type Future = Ready<Result<Delivered, DeliveryFailure>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, outbound: Outbound) -> Self::Future {
        ready(Self::answer(&outbound))
    }
}
