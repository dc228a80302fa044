//! The exact request Jelou receives for a validated message: path, query, headers and
//! body. The client sends it and the dry run shows it, so the two cannot drift.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Serialize;
use serde_json::{Map, Value};
use url::Url;
use utoipa::ToSchema;

use crate::domain::{Bot, FlowAction, FlowMessage, FlowMode, Recipient};

/// The `User-Agent` Jelou sees.
pub const USER_AGENT: &str = concat!("jelou-relay/", env!("CARGO_PKG_VERSION"));

/// One `flow_message` call, built once: every attempt and the dry run use these bytes.
#[derive(Debug)]
pub struct FlowRequest {
    pub bot: Arc<Bot>,
    pub recipient: Recipient,
    pub url: Url,
    pub body: Bytes,
    pub request_id: String,
    /// W3C `traceparent` for the call to Jelou: the caller's trace, the relay's span.
    pub traceparent: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    title: &'a str,
    text: &'a str,
    caption: &'a str,
    parameters: Parameters<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a Map<String, Value>>,
}

#[derive(Serialize)]
struct Parameters<'a> {
    flow_name: &'a str,
    flow_cta: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_action_payload: Option<ActionPayload<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<FlowMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_action: Option<FlowAction>,
}

#[derive(Serialize)]
struct ActionPayload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    screen: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Map<String, Value>>,
}

/// Where Jelou's calls go: `{base}/v1/bots/{bot id}/users/{digits}/flow_message[?type=...]`.
/// Each segment is appended as one percent-encoded path segment, so no value can add or
/// climb a segment. Each configured bot's part, up to `users`, is built once at start-up,
/// so that a request appends only its own two segments.
#[derive(Debug)]
pub struct JelouUrls {
    base: Url,
    /// `{base}/v1/bots/{bot id}/users`, by bot id.
    bots: BTreeMap<String, Url>,
}

impl JelouUrls {
    pub fn new<'a>(base: Url, bot_ids: impl IntoIterator<Item = &'a str>) -> JelouUrls {
        let bots = bot_ids
            .into_iter()
            .map(|id| (id.to_owned(), Self::bot(&base, id)))
            .collect();
        JelouUrls { base, bots }
    }

    fn bot(base: &Url, bot_id: &str) -> Url {
        let mut url = base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["v1", "bots", bot_id, "users"]);
        }
        url
    }

    /// The URL of one `flow_message` call.
    pub fn flow_message(&self, bot_id: &str, digits: &str, flow_type: Option<&str>) -> Url {
        let mut url = match self.bots.get(bot_id) {
            Some(bot) => bot.clone(),
            None => Self::bot(&self.base, bot_id),
        };
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend([digits, "flow_message"]);
        }
        if let Some(flow_type) = flow_type {
            url.query_pairs_mut().append_pair("type", flow_type);
        }
        url
    }
}

impl FlowRequest {
    /// The request Jelou receives for `message`, members the caller did not give left out.
    pub fn build(
        urls: &JelouUrls,
        bot: Arc<Bot>,
        message: &FlowMessage,
        request_id: String,
        traceparent: Option<String>,
    ) -> FlowRequest {
        let flow = &message.flow;
        let flow_action_payload =
            (flow.screen.is_some() || flow.data.is_some()).then_some(ActionPayload {
                screen: flow.screen.as_deref(),
                data: flow.data.as_ref(),
            });
        let body = Body {
            title: message.title.as_str(),
            text: message.text.as_str(),
            caption: message.caption.as_str(),
            parameters: Parameters {
                flow_name: &flow.name,
                flow_cta: flow.cta.as_str(),
                flow_action_payload,
                flow_token: flow.token.as_deref(),
                mode: flow.mode,
                flow_action: flow.action,
            },
            payload: message.context.as_ref(),
        };
        // Serializing borrowed strings and maps of JSON values cannot fail. Room for a
        // usual body at once: `to_vec` starts at 128 bytes and grows once or twice.
        let mut bytes = Vec::with_capacity(512);
        if serde_json::to_writer(&mut bytes, &body).is_err() {
            bytes.clear();
        }
        let body = bytes;
        FlowRequest {
            url: urls.flow_message(&bot.id, message.to.as_str(), message.flow_type.as_deref()),
            bot,
            recipient: message.to.clone(),
            body: Bytes::from(body),
            request_id,
            traceparent,
        }
    }

    /// The headers Jelou receives, `Authorization` included when given.
    pub fn headers(&self, authorization: Option<&HeaderValue>) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(6);
        if let Some(authorization) = authorization {
            headers.insert(header::AUTHORIZATION, authorization.clone());
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        if let Ok(id) = HeaderValue::from_str(&self.request_id) {
            headers.insert(HeaderName::from_static("x-request-id"), id);
        }
        if let Some(Ok(traceparent)) = self.traceparent.as_deref().map(HeaderValue::from_str) {
            headers.insert(HeaderName::from_static("traceparent"), traceparent);
        }
        headers
    }

    /// What the dry run shows: this very request, the `Authorization` value redacted.
    pub fn view(&self, has_credentials: bool) -> UpstreamRequestView {
        let authorization = if has_credentials {
            "Basic [REDACTED]"
        } else {
            "[none: no credentials configured for this bot]"
        };
        let mut headers: BTreeMap<String, String> = self
            .headers(None)
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    value.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        headers.insert(
            header::AUTHORIZATION.as_str().into(),
            authorization.to_string(),
        );
        UpstreamRequestView {
            method: "POST".into(),
            url: self.url.to_string(),
            headers,
            body: serde_json::from_slice(&self.body).unwrap_or(Value::Null),
        }
    }
}

/// The upstream request, with the Authorization header redacted.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamRequestView {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_are_encoded_and_base_path_kept() {
        let urls = JelouUrls::new(Url::parse("https://api.jelou.ai").unwrap(), ["BOT"]);
        assert_eq!(
            urls.flow_message("BOT", "593987654321", None).as_str(),
            "https://api.jelou.ai/v1/bots/BOT/users/593987654321/flow_message"
        );
        // A bot the URLs were not built for, and a base with a path of its own.
        let urls = JelouUrls::new(Url::parse("http://127.0.0.1:9/prefix/").unwrap(), ["BOT"]);
        let expected =
            "http://127.0.0.1:9/prefix/v1/bots/a%2F..%2Fb/users/1/flow_message?type=x%26y%3Dz+%23";
        assert_eq!(
            urls.flow_message("a/../b", "1", Some("x&y=z #")).as_str(),
            expected
        );
        let urls = JelouUrls::new(
            Url::parse("http://127.0.0.1:9/prefix/").unwrap(),
            ["a/../b"],
        );
        assert_eq!(
            urls.flow_message("a/../b", "1", Some("x&y=z #")).as_str(),
            expected
        );
    }
}
