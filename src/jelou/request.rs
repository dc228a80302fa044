//! Builds Jelou's `flow_message` call from a validated message: path, query and body.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use url::Url;

use crate::config::Bot;
use crate::delivery::Outbound;
use crate::domain::{FlowAction, FlowMessage, FlowMode};

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

/// `{base}/v1/bots/{bot id}/users/{digits}/flow_message[?type=...]`. Each segment is
/// appended as one percent-encoded path segment, so no value can add or climb a segment.
pub fn upstream_url(base: &Url, bot_id: &str, digits: &str, flow_type: Option<&str>) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["v1", "bots", bot_id, "users", digits, "flow_message"]);
    }
    if let Some(flow_type) = flow_type {
        url.query_pairs_mut().append_pair("type", flow_type);
    }
    url
}

/// The request Jelou receives for `message`, members the caller did not give left out.
pub fn build_outbound(
    base: &Url,
    bot: Arc<Bot>,
    message: &FlowMessage,
    request_id: String,
    deadline: tokio::time::Instant,
) -> Outbound {
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
    // Serializing borrowed strings and maps of JSON values cannot fail.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    Outbound {
        url: upstream_url(
            base,
            &bot.id,
            message.to.as_str(),
            message.flow_type.as_deref(),
        ),
        bot,
        recipient: message.to.clone(),
        body: Bytes::from(body),
        request_id,
        traceparent: None,
        deadline,
        journal: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_segments_are_encoded_and_base_path_kept() {
        let base = Url::parse("https://api.jelou.ai").unwrap();
        assert_eq!(
            upstream_url(&base, "BOT", "593987654321", None).as_str(),
            "https://api.jelou.ai/v1/bots/BOT/users/593987654321/flow_message"
        );
        let base = Url::parse("http://127.0.0.1:9/prefix/").unwrap();
        assert_eq!(
            upstream_url(&base, "a/../b", "1", Some("x&y=z #")).as_str(),
            "http://127.0.0.1:9/prefix/v1/bots/a%2F..%2Fb/users/1/flow_message?type=x%26y%3Dz+%23"
        );
    }
}
