//! Every validation rule at its boundary, through the real endpoint; nothing invalid reaches Jelou.

use crate::common::*;
use serde_json::{Value, json};
use wiremock::MockServer;

async fn app_accepting_everything() -> (TestApp, MockServer) {
    let (app, jelou) = spawn_app().await;
    accept_all(&jelou).await;
    (app, jelou)
}

fn with(pointer: &str, value: Value) -> Value {
    let mut message = seed_message();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut message
    } else {
        message.pointer_mut(parent).unwrap()
    };
    target[key] = value;
    message
}

/// Sends `message` and expects either acceptance or a 422 naming exactly `field`.
async fn check(app: &TestApp, message: Value, rejected_field: Option<&str>) {
    let response = app.send(&message).await;
    match rejected_field {
        None => assert_eq!(
            response.status(),
            200,
            "{message}: {}",
            response.text().await.unwrap()
        ),
        Some(field) => {
            let problem = assert_problem(response, 422, "validation_failed").await;
            assert_eq!(
                error_fields(&problem),
                vec![field.to_string()],
                "{message}: {problem}"
            );
            assert_eq!(problem["delivery"], "not_sent");
            assert_eq!(problem["retryable"], false);
        }
    }
}

#[tokio::test]
async fn text_lengths_at_and_past_the_limit_in_multibyte_characters() {
    let (app, jelou) = app_accepting_everything().await;
    let cases = [
        ("/title", 60, "title"),
        ("/caption", 60, "caption"),
        ("/text", 1024, "text"),
        ("/flow/cta", 30, "flow.cta"),
    ];
    let mut accepted = 0;
    for (pointer, max, field) in cases {
        for unit in ["a", "ñ", "中"] {
            check(&app, with(pointer, json!(unit.repeat(max))), None).await;
            check(
                &app,
                with(pointer, json!(unit.repeat(max + 1))),
                Some(field),
            )
            .await;
            accepted += 1;
        }
    }
    // Four-byte characters count one each too (the cta refuses emoji, so not there).
    check(&app, with("/title", json!("😀".repeat(60))), None).await;
    check(&app, with("/title", json!("😀".repeat(61))), Some("title")).await;
    assert_eq!(jelou.received_requests().await.unwrap().len(), accepted + 1);
}

#[tokio::test]
async fn empty_and_whitespace_only_texts_are_errors() {
    let (app, jelou) = app_accepting_everything().await;
    for (pointer, field) in [
        ("/title", "title"),
        ("/text", "text"),
        ("/caption", "caption"),
        ("/flow/cta", "flow.cta"),
        ("/flow/name", "flow.name"),
    ] {
        for blank in ["", "   ", "\n\t"] {
            check(&app, with(pointer, json!(blank)), Some(field)).await;
        }
    }
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn cta_refuses_emoji_and_joiners() {
    let (app, _jelou) = app_accepting_everything().await;
    for cta in ["Iniciar 🚀", "Sí ✅", "Go ❤\u{FE0F}", "a\u{200D}b", "🇪🇨 Ir"] {
        check(&app, with("/flow/cta", json!(cta)), Some("flow.cta")).await;
    }
    for cta in ["Iniciar Flujo", "Paso 1 de 3", "Continuar ñandú"] {
        check(&app, with("/flow/cta", json!(cta)), None).await;
    }
}

#[tokio::test]
async fn phone_formats() {
    let (app, jelou) = app_accepting_everything().await;
    let accepted = [
        ("+593 98 765 4321", "593987654321"),
        ("593987654321", "593987654321"),
        ("+593-98-765-4321", "593987654321"),
        ("(593) 98.765.4321", "593987654321"),
        ("+55 11 9 8765 4321", "5511987654321"),
        ("12345678", "12345678"),
        ("123456789012345", "123456789012345"),
    ];
    for (raw, digits) in accepted {
        let response = app.send(&with("/to", json!(raw))).await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["to"], digits, "{raw}");
        let last = jelou.received_requests().await.unwrap().pop().unwrap();
        assert_eq!(
            last.url.path(),
            format!("/v1/bots/BOT_ID/users/{digits}/flow_message")
        );
    }
    for raw in [
        "1234567",
        "1234567890123456",
        "0593987654321",
        "+593 98 765 432a",
        "٥٩٣٩٨٧٦٥٤٣٢١",
        "５９３９８７６５４３２１",
        "593/987654321",
        "593987654321?x=1",
        "593987654321#x",
        "593%2F98765432",
        "..593987654321",
        "593987654321\r\n",
        "593987654\u{0}321",
        "",
    ] {
        check(&app, with("/to", json!(raw)), Some("to")).await;
    }
    assert_eq!(
        jelou.received_requests().await.unwrap().len(),
        accepted.len()
    );
}

#[tokio::test]
async fn flow_fields() {
    let (app, _jelou) = app_accepting_everything().await;
    check(&app, with("/flow/data", json!({})), Some("flow.data")).await;
    check(&app, with("/flow/data", json!([1])), Some("flow.data")).await;
    check(&app, with("/flow/data", json!({"k": 1})), None).await;
    check(&app, with("/flow/mode", json!("live")), Some("flow.mode")).await;
    check(&app, with("/flow/mode", json!("draft")), None).await;
    check(&app, with("/flow/mode", json!("published")), None).await;
    check(
        &app,
        with("/flow/action", json!("jump")),
        Some("flow.action"),
    )
    .await;
    check(&app, with("/flow/action", json!("navigate")), None).await;
    check(&app, with("/flow/action", json!("data_exchange")), None).await;
    let mut message = seed_message();
    message["flow"].as_object_mut().unwrap().remove("name");
    check(&app, message, Some("flow.name")).await;
    check(&app, with("/flow", json!("flujo")), Some("flow")).await;
    check(&app, with("/context", json!("x")), Some("context")).await;
    check(&app, with("/context", json!({"order_id": 42})), None).await;
}

#[tokio::test]
async fn unknown_fields_are_rejected_everywhere() {
    let (app, jelou) = app_accepting_everything().await;
    check(&app, with("/titel", json!("typo")), Some("titel")).await;
    check(
        &app,
        with("/flow/screne", json!("typo")),
        Some("flow.screne"),
    )
    .await;
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn wrong_types_are_named() {
    let (app, _jelou) = app_accepting_everything().await;
    let response = app.send(&with("/title", json!(42))).await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(problem["errors"][0]["field"], "title");
    assert_eq!(
        problem["errors"][0]["message"],
        "must be a string, not a number"
    );
    check(&app, with("/to", json!(593987654321u64)), Some("to")).await;
    check(&app, with("/bot", json!(true)), Some("bot")).await;
}

#[tokio::test]
async fn every_field_error_is_reported_at_once() {
    let (app, jelou) = app_accepting_everything().await;
    let response = app
        .send(&json!({
            "bot": "nope",
            "to": "0123",
            "title": "x".repeat(61),
            "text": "",
            "caption": 7,
            "flow": {"cta": "🚀", "data": {}},
            "extra": true
        }))
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    let mut fields = error_fields(&problem);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "bot",
            "caption",
            "extra",
            "flow.cta",
            "flow.data",
            "flow.name",
            "text",
            "title",
            "to"
        ]
    );
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_or_missing_bot_alias() {
    let (app, jelou) = app_accepting_everything().await;
    let response = app.send(&with("/bot", json!("marketing"))).await;
    let problem = assert_problem(response, 422, "unknown_bot").await;
    assert_eq!(error_fields(&problem), vec!["bot"]);
    assert_eq!(problem["delivery"], "not_sent");

    for hostile in [
        "../admin",
        "a/b",
        "ventas%2F..",
        "ventas?x",
        "ventas#x",
        "ventas\r\n",
        "ventas\u{0}",
    ] {
        check(&app, with("/bot", json!(hostile)), Some("bot")).await;
    }
    assert!(jelou.received_requests().await.unwrap().is_empty());

    let mut settings = settings_for(&jelou.uri());
    let second = settings.bots["ventas"].clone();
    settings.bots.insert("soporte".into(), second);
    let several = spawn_with(settings).await;
    let mut message = seed_message();
    message.as_object_mut().unwrap().remove("bot");
    let problem = assert_problem(several.send(&message).await, 422, "unknown_bot").await;
    assert_eq!(error_fields(&problem), vec!["bot"]);
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let (app, jelou) = app_accepting_everything().await;
    let bodies: [&[u8]; 8] = [
        b"{not json",
        b"[]",
        b"\"a string\"",
        b"null",
        b"",
        b"{\"to\": \"1\"} trailing",
        b"{\"title\": \"\xff\xfe\"}",
        br#"{"to": "+593987654321", "to": "+593111111111"}"#,
    ];
    for body in bodies {
        let response = app
            .client
            .post(app.url("/v1/flow-messages"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let problem = assert_problem(response, 400, "malformed_json").await;
        assert_eq!(problem["delivery"], "not_sent");
    }
    let deep = format!("{{\"context\":{}{}}}", "[".repeat(1000), "]".repeat(1000));
    let response = app
        .client
        .post(app.url("/v1/flow-messages"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "malformed_json").await;
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn content_type_must_be_json() {
    let (app, jelou) = app_accepting_everything().await;
    let body = seed_message().to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = app
            .client
            .post(app.url("/v1/flow-messages"))
            .body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        assert_problem(request.send().await.unwrap(), 415, "unsupported_media_type").await;
    }
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.api+json",
    ] {
        let response = app
            .client
            .post(app.url("/v1/flow-messages"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{content_type}");
    }
    assert_eq!(jelou.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn oversize_bodies_are_413_with_or_without_content_length() {
    let (app, jelou) = app_accepting_everything().await;
    let mut message = seed_message();
    message["context"] = json!({"blob": "x".repeat(70 * 1024)});
    assert_problem(app.send(&message).await, 413, "payload_too_large").await;

    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1024])).collect();
    let response = app
        .client
        .post(app.url("/v1/flow-messages"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload_too_large").await;

    let ten_megabytes = vec![b'a'; 10 * 1024 * 1024];
    let response = app
        .client
        .post(app.url("/v1/flow-messages"))
        .header("content-type", "application/json")
        .body(ten_megabytes)
        .send()
        .await
        .unwrap();
    assert_problem(response, 413, "payload_too_large").await;
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    tokio_stream::iter(chunks)
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let (app, _jelou) = app_accepting_everything().await;
    let response = app.client.get(app.url("/v1/nope")).send().await.unwrap();
    assert_problem(response, 404, "not_found").await;
    let response = app
        .client
        .get(app.url("/v1/flow-messages"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 405, "method_not_allowed").await;
    let response = app.client.delete(app.url("/healthz")).send().await.unwrap();
    assert_problem(response, 405, "method_not_allowed").await;
}
