//! Fuzzes the request path from raw bytes to the request Jelou would receive: strict
//! JSON parsing, validation, and building the upstream URL and body.
#![no_main]

use std::sync::Arc;

use jelou_relay::config::{Bot, RateSettings};
use jelou_relay::domain::FlowMessage;
use jelou_relay::domain::strict_json::parse_object;
use jelou_relay::jelou::{FlowRequest, JelouUrls};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(object) = parse_object(data, 32) else {
        return;
    };
    let Ok(message) = FlowMessage::parse(object) else {
        return;
    };
    let bot = Arc::new(Bot {
        alias: "ventas".into(),
        id: "BOT_ID".into(),
        rate: RateSettings {
            rate_per_second: 80.0,
            burst: 80,
        },
    });
    let urls = JelouUrls::new(url::Url::parse("https://api.jelou.ai").unwrap(), ["BOT_ID"]);
    let outbound = FlowRequest::build(&urls, bot, &message, "id".into(), None);
    // Whatever was accepted, the path has exactly the documented shape...
    let segments: Vec<&str> = outbound.url.path_segments().unwrap().collect();
    assert_eq!(segments.len(), 6, "{}", outbound.url);
    assert_eq!(&segments[..4], &["v1", "bots", "BOT_ID", "users"]);
    assert!(segments[4].bytes().all(|b| b.is_ascii_digit()));
    assert!((8..=15).contains(&segments[4].len()));
    assert_eq!(segments[5], "flow_message");
    assert!(outbound.url.fragment().is_none());
    // ...and the body is JSON that Jelou's checks accept.
    let body: serde_json::Value = serde_json::from_slice(&outbound.body).unwrap();
    assert!(body["title"].is_string() && body["parameters"]["flow_name"].is_string());
});
