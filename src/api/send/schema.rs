//! The send endpoint's documented shapes: the request body as OpenAPI shows it (the
//! handler parses it itself, so that every field error is reported at once), the query
//! and the 200 answers. utoipa takes only literals for lengths: a test holds them to the
//! domain's limits.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use crate::domain::{FlowAction, FlowMode};
pub use crate::jelou::request::UpstreamRequestView;

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

/// `POST /v1/flow-messages/batch`: 1 to `async.max_batch` messages.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchRequest {
    /// Each one the same object as a single send's body.
    pub messages: Vec<FlowMessageRequest>,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueuedStatus {
    Queued,
}

/// `Prefer: respond-async`: the message is queued; `Location` names its status.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedResponse {
    pub status: QueuedStatus,
    /// The message's id: opaque, URL-safe, at most 64 characters.
    pub id: String,
    pub request_id: String,
    pub bot: String,
    pub to: String,
    /// RFC 3339: not sent by then, the message is `expired`.
    pub expires_at: String,
}

/// A 200 answer: sent, or validated on a dry run.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum SendOutcome {
    Sent(SentResponse),
    Validated(ValidatedResponse),
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use crate::api::openapi::ApiDoc;
    use crate::domain::flow_message::{NAME_MAX, SCREEN_MAX, TOKEN_MAX, TYPE_MAX};
    use crate::domain::text::{CAPTION_MAX, CTA_MAX, TEXT_MAX, TITLE_MAX};

    #[test]
    fn documented_lengths_are_the_domains_limits() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let message = &schemas["FlowMessageRequest"]["properties"];
        let flow = &schemas["FlowRequest"]["properties"];
        for (property, max) in [
            (&message["title"], TITLE_MAX),
            (&message["text"], TEXT_MAX),
            (&message["caption"], CAPTION_MAX),
            (&message["type"], TYPE_MAX),
            (&flow["name"], NAME_MAX),
            (&flow["cta"], CTA_MAX),
            (&flow["screen"], SCREEN_MAX),
            (&flow["token"], TOKEN_MAX),
        ] {
            assert_eq!(property["maxLength"], max, "{property}");
        }
    }
}
