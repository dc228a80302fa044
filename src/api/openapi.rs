//! The OpenAPI 3.1 document, generated from the handlers' own types.

use utoipa::OpenApi;

use super::flow_messages;
use super::health;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "jelou-relay",
        description = "Send WhatsApp Flow messages through Jelou without holding Jelou credentials. \
            Errors are RFC 9457 problem+json; every error says whether the message was sent \
            (`delivery`: `not_sent` or `unknown`).",
        license(name = "MIT"),
    ),
    paths(flow_messages::send_flow_message, health::healthz, health::readyz),
    tags(
        (name = "flow-messages", description = "Sending WhatsApp Flow messages"),
        (name = "operations", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, as served at `/openapi.json` and committed in `deploy/`.
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
