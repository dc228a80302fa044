//! Property tests: the parser never panics on any input, and every accepted message
//! reaches Jelou with exactly the fields it was given.

use std::sync::Arc;

use jelou_relay::config::{Bot, RateSettings};
use jelou_relay::domain::FlowMessage;
use jelou_relay::domain::flow_message::MessageObject;
use jelou_relay::domain::strict_json::parse_object;
use jelou_relay::jelou::{FlowRequest, JelouUrls};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use url::Url;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "\\PC{0,80}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("to".to_string()),
                    Just("title".to_string()),
                    Just("text".to_string()),
                    Just("caption".to_string()),
                    Just("flow".to_string()),
                    Just("name".to_string()),
                    Just("cta".to_string()),
                    Just("data".to_string()),
                    Just("bot".to_string()),
                    any::<String>(),
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Non-blank text of 1..=max characters, any Unicode but controls.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\p{{Cc}}\\s][^\\p{{Cc}}]{{0,{}}}", max - 1))
        .expect("a valid regex")
}

fn small_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,8}", any_json(), 1..4)
        .prop_map(|m| m.into_iter().collect())
}

prop_compose! {
    fn valid_message()(
        digits in "[1-9][0-9]{7,14}",
        title in text(60),
        body in text(1024),
        caption in text(60),
        name in "[a-z_]{1,40}",
        cta in "[A-Za-z][A-Za-z0-9 ñáé]{0,29}",
        screen in prop::option::of("[A-Z_]{1,20}"),
        data in prop::option::of(small_object()),
        token in prop::option::of("[A-Za-z0-9-]{1,40}"),
        mode in prop::option::of(prop_oneof![Just("draft"), Just("published")]),
        action in prop::option::of(prop_oneof![Just("navigate"), Just("data_exchange")]),
        flow_type in prop::option::of("[a-z ]{1,20}[a-z]"),
        context in prop::option::of(small_object()),
    ) -> Value {
        let mut flow = json!({"name": name, "cta": cta});
        for (key, value) in [
            ("screen", screen.map(Value::from)),
            ("data", data.map(Value::Object)),
            ("token", token.map(Value::from)),
            ("mode", mode.map(Value::from)),
            ("action", action.map(Value::from)),
        ] {
            if let Some(value) = value {
                flow[key] = value;
            }
        }
        let mut message = json!({
            "to": format!("+{digits}"),
            "title": title,
            "text": body,
            "caption": caption,
            "flow": flow,
        });
        if let Some(flow_type) = flow_type {
            message["type"] = json!(flow_type);
        }
        if let Some(context) = context {
            message["context"] = Value::Object(context);
        }
        message
    }
}

fn bot() -> Arc<Bot> {
    Arc::new(Bot {
        alias: "ventas".into(),
        id: "BOT_ID".into(),
        rate: RateSettings {
            rate_per_second: 80.0,
            burst: 80,
        },
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn parsing_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_object(&bytes, 32);
    }

    #[test]
    fn parsing_any_json_never_panics(value in any_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(object) = parse_object(&bytes, 32) {
            let _ = FlowMessage::parse(object);
        }
    }

    #[test]
    fn reading_a_body_into_members_agrees_with_the_parsed_map(message in valid_message(), key in "[a-z.]{1,12}", value in any_json()) {
        let mut message = message;
        message[&key] = value;
        let bytes = serde_json::to_vec(&message).unwrap();
        let direct = MessageObject::read(&bytes, 32).map(FlowMessage::parse);
        let via_map = parse_object(&bytes, 32).map(FlowMessage::parse);
        prop_assert_eq!(direct, via_map);
    }

    #[test]
    fn mutated_valid_messages_never_panic(message in valid_message(), key in "[a-z.]{1,12}", value in any_json()) {
        let mut message = message;
        message[&key] = value;
        if let Value::Object(object) = message {
            let _ = FlowMessage::parse(object);
        }
    }

    #[test]
    fn every_accepted_message_reaches_jelou_unchanged(message in valid_message()) {
        let Value::Object(object) = message.clone() else { unreachable!() };
        let parsed = FlowMessage::parse(object).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let urls = JelouUrls::new(Url::parse("https://api.jelou.ai").unwrap(), ["BOT_ID"]);
        let outbound = FlowRequest::build(&urls, bot(), &parsed, "id".into(), None);
        let sent: Value = serde_json::from_slice(&outbound.body).unwrap();
        let digits: String = message["to"].as_str().unwrap().trim_start_matches('+').into();

        prop_assert_eq!(outbound.url.path(), format!("/v1/bots/BOT_ID/users/{digits}/flow_message"));
        let query: Vec<(String, String)> = outbound.url.query_pairs().into_owned().collect();
        match message.get("type") {
            Some(flow_type) => prop_assert_eq!(query, vec![("type".to_string(), flow_type.as_str().unwrap().to_string())]),
            None => prop_assert!(query.is_empty()),
        }
        prop_assert_eq!(&sent["title"], &message["title"]);
        prop_assert_eq!(&sent["text"], &message["text"]);
        prop_assert_eq!(&sent["caption"], &message["caption"]);
        let flow = &message["flow"];
        let parameters = &sent["parameters"];
        prop_assert_eq!(&parameters["flow_name"], &flow["name"]);
        prop_assert_eq!(&parameters["flow_cta"], &flow["cta"]);
        for (ours, theirs) in [("token", "flow_token"), ("mode", "mode"), ("action", "flow_action")] {
            prop_assert_eq!(flow.get(ours), parameters.get(theirs));
        }
        let payload = parameters.get("flow_action_payload");
        prop_assert_eq!(flow.get("screen"), payload.and_then(|p| p.get("screen")));
        prop_assert_eq!(flow.get("data"), payload.and_then(|p| p.get("data")));
        prop_assert_eq!(message.get("context"), sent.get("payload"));
        let members = sent.as_object().unwrap().len();
        prop_assert_eq!(members, 4 + usize::from(message.get("context").is_some()));
    }
}
