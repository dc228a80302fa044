//! The OpenAPI 3.1 document, generated from the handlers' own types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::health;
use super::messages;
use super::send;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "jelou-relay",
        description = "Send WhatsApp Flow messages through Jelou without holding Jelou credentials. \
            Errors are RFC 9457 problem+json; every error says whether the message was sent \
            (`delivery`: `not_sent` or `unknown`).\n\n\
            With `Prefer: respond-async` (or `POST /v1/flow-messages/batch`) messages are queued \
            and answered 202; `GET /v1/flow-messages/{id}` gives each one's status. A caller \
            configured with `callers.<name>.callback_url` also receives every final status \
            (`sent`, `failed`, `unknown`, `expired`, `canceled`) as a POST of that status object \
            (`MessageStatus`), signed per Standard Webhooks: headers `webhook-id` (the message \
            id, the same on every try), `webhook-timestamp` and `webhook-signature: \
            v1,<base64 HMAC-SHA256 of \"id.timestamp.body\">` with the caller's `whsec_` \
            secret. A 2xx ends delivery; anything else is retried with backoff.",
        license(name = "MIT"),
    ),
    paths(
        send::send_flow_message,
        send::batch::send_batch,
        messages::get_message,
        messages::cancel_message,
        health::healthz,
        health::readyz
    ),
    modifiers(&BearerKeys),
    tags(
        (name = "flow-messages", description = "Sending WhatsApp Flow messages"),
        (name = "operations", description = "Probes"),
    )
)]
pub struct ApiDoc;

/// Callers' relay keys: `Authorization: Bearer <key>`.
struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The caller's relay key (callers.<name>.key_sha256 holds its SHA-256). \
                         Not needed when the relay runs without callers (local) or with auth.mode = \"none\".",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON, as served at `/openapi.json` and committed in `deploy/`.
pub fn document_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
