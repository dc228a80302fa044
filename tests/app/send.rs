//! The happy path: exactly what Jelou receives and exactly what the caller gets.

use crate::common::*;
use serde_json::{Value, json};
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, ResponseTemplate};

#[tokio::test]
async fn seed_example_reaches_jelou_exactly_as_documented() {
    let (app, jelou) = spawn_app().await;
    Mock::given(method("POST"))
        .and(path("/v1/bots/BOT_ID/users/593987654321/flow_message"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(1)
        .mount(&jelou)
        .await;

    let response = app
        .client
        .post(app.url("/v1/flow-messages"))
        .header("x-request-id", "caller-req-1")
        .json(&seed_message())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "caller-req-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "status": "sent",
            "request_id": "caller-req-1",
            "bot": "ventas",
            "to": "593987654321",
            "attempts": 1,
            "upstream": {}
        })
    );

    let received = jelou.received_requests().await.unwrap();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(
        request.url.path(),
        "/v1/bots/BOT_ID/users/593987654321/flow_message"
    );
    assert_eq!(request.url.query(), None);
    assert_eq!(
        request.headers["authorization"],
        expected_authorization().as_str()
    );
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["x-request-id"], "caller-req-1");
    let sent: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(sent, seed_upstream_body());
}

#[tokio::test]
async fn every_optional_member_is_mapped_and_type_goes_to_the_query() {
    let (app, jelou) = spawn_app().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&jelou)
        .await;
    let response = app
        .send(&json!({
            "bot": "ventas",
            "to": "+593 98 765 4321",
            "title": "Hola",
            "text": "Completa este flujo para comenzar",
            "caption": "Jelou",
            "flow": {
                "name": "flujo_de_bienvenida",
                "cta": "Iniciar Flujo",
                "screen": "RECOMMEND",
                "data": {"plan": "gold"},
                "token": "opaque-token",
                "mode": "published",
                "action": "navigate"
            },
            "type": "passed on as ?type=",
            "context": {"order_id": 42}
        }))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], json!({"ok": true}));

    let request = &jelou.received_requests().await.unwrap()[0];
    let pairs: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        vec![("type".to_string(), "passed on as ?type=".to_string())]
    );
    let sent: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        sent,
        json!({
            "title": "Hola",
            "text": "Completa este flujo para comenzar",
            "caption": "Jelou",
            "parameters": {
                "flow_name": "flujo_de_bienvenida",
                "flow_cta": "Iniciar Flujo",
                "flow_action_payload": {"screen": "RECOMMEND", "data": {"plan": "gold"}},
                "flow_token": "opaque-token",
                "mode": "published",
                "flow_action": "navigate"
            },
            "payload": {"order_id": 42}
        })
    );
}

#[tokio::test]
async fn members_not_given_are_left_out() {
    let (app, jelou) = spawn_app().await;
    accept_all(&jelou).await;
    let mut message = seed_message();
    message["flow"] = json!({"name": "f", "cta": "Go", "action": "data_exchange"});
    assert_eq!(app.send(&message).await.status(), 200);
    let sent: Value =
        serde_json::from_slice(&jelou.received_requests().await.unwrap()[0].body).unwrap();
    assert_eq!(
        sent["parameters"],
        json!({"flow_name": "f", "flow_cta": "Go", "flow_action": "data_exchange"})
    );
    assert!(sent.get("payload").is_none());
}

#[tokio::test]
async fn bot_may_be_omitted_with_a_single_bot_and_chosen_by_default_otherwise() {
    let jelou = wiremock::MockServer::start().await;
    accept_all(&jelou).await;
    let mut message = seed_message();
    message.as_object_mut().unwrap().remove("bot");

    let single = spawn_with(settings_for(&jelou.uri())).await;
    let body: Value = single.send(&message).await.json().await.unwrap();
    assert_eq!(body["bot"], "ventas");

    let mut settings = settings_for(&jelou.uri());
    let mut soporte = settings.bots["ventas"].clone();
    soporte.id = Some("BOT_2".into());
    soporte.default = true;
    settings.bots.insert("soporte".into(), soporte);
    let several = spawn_with(settings).await;
    let body: Value = several.send(&message).await.json().await.unwrap();
    assert_eq!(body["bot"], "soporte");
    let last = jelou.received_requests().await.unwrap().pop().unwrap();
    assert_eq!(
        last.url.path(),
        "/v1/bots/BOT_2/users/593987654321/flow_message"
    );
}

#[tokio::test]
async fn bot_credentials_override_shared_ones() {
    let jelou = wiremock::MockServer::start().await;
    accept_all(&jelou).await;
    let mut settings = settings_for(&jelou.uri());
    settings.upstream.client_id = Some("shared-id".into());
    settings.upstream.client_secret = Some("shared-secret".to_string().into());
    let mut soporte = settings.bots["ventas"].clone();
    soporte.client_id = None;
    soporte.client_secret = None;
    settings.bots.insert("soporte".into(), soporte);
    let app = spawn_with(settings).await;

    for bot in ["ventas", "soporte"] {
        let mut message = seed_message();
        message["bot"] = json!(bot);
        assert_eq!(app.send(&message).await.status(), 200);
    }
    use base64::Engine;
    let shared = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("shared-id:shared-secret")
    );
    let received = jelou.received_requests().await.unwrap();
    assert_eq!(
        received[0].headers["authorization"],
        expected_authorization().as_str()
    );
    assert_eq!(received[1].headers["authorization"], shared.as_str());
}

#[tokio::test]
async fn dry_run_validates_and_shows_the_request_without_calling_jelou() {
    let (app, jelou) = spawn_app().await;
    let mut message = seed_message();
    message["type"] = json!("standard");
    let response = app
        .client
        .post(app.url("/v1/flow-messages?dry_run=true"))
        .header("x-request-id", "dry-1")
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body: Value = response.json().await.unwrap();
    // The view is the request the client sends: its trace context is this request's own.
    let traceparent = body["upstream_request"]["headers"]
        .as_object_mut()
        .unwrap()
        .remove("traceparent")
        .unwrap();
    assert_eq!(traceparent.as_str().unwrap().len(), 55, "{traceparent}");
    assert_eq!(
        body,
        json!({
            "status": "validated",
            "request_id": "dry-1",
            "bot": "ventas",
            "to": "593987654321",
            "upstream_request": {
                "method": "POST",
                "url": format!("{}/v1/bots/BOT_ID/users/593987654321/flow_message?type=standard", jelou.uri()),
                "headers": {
                    "accept": "application/json",
                    "authorization": "Basic [REDACTED]",
                    "content-type": "application/json",
                    "user-agent": concat!("jelou-relay/", env!("CARGO_PKG_VERSION")),
                    "x-request-id": "dry-1"
                },
                "body": seed_upstream_body()
            }
        })
    );
    assert!(!body.to_string().contains(CLIENT_SECRET));
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn dry_run_still_reports_validation_errors() {
    let (app, jelou) = spawn_app().await;
    let mut message = seed_message();
    message["title"] = json!("");
    let response = app
        .post_json("/v1/flow-messages?dry_run=true", &message)
        .await;
    let problem = assert_problem(response, 422, "validation_failed").await;
    assert_eq!(error_fields(&problem), vec!["title"]);
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_misspelt_query_parameter_is_refused_not_ignored() {
    let (app, jelou) = spawn_app().await;
    for query in ["?dryrun=true", "?dry_run=maybe"] {
        let response = app
            .post_json(&format!("/v1/flow-messages{query}"), &seed_message())
            .await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert!(error_fields(&problem)[0].starts_with("query."), "{problem}");
    }
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_repeated_query_parameter_is_refused_never_guessed() {
    let (app, jelou) = spawn_app().await;
    for query in [
        "?dry_run=true&dry_run=false",
        "?dry_run=false&dry_run=true",
        "?dry_run=true&dry_run=true",
    ] {
        let response = app
            .post_json(&format!("/v1/flow-messages{query}"), &seed_message())
            .await;
        let problem = assert_problem(response, 422, "validation_failed").await;
        assert_eq!(error_fields(&problem), ["query.dry_run"], "{problem}");
    }
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_secret_jelou_echoes_in_a_success_is_scrubbed() {
    let jelou = wiremock::MockServer::start().await;
    let echoed = json!({
        "note": format!("received {CLIENT_SECRET}"),
        "auth": expected_authorization(),
        "nested": [{"again": CLIENT_SECRET}],
    });
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(&echoed))
        .mount(&jelou)
        .await;
    let app = spawn_with(settings_for(&jelou.uri())).await;
    let response = app.send(&seed_message()).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let pair = expected_authorization()
        .trim_start_matches("Basic ")
        .to_string();
    assert!(!body.contains(CLIENT_SECRET), "{body}");
    assert!(!body.contains(&pair), "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(body["upstream"]["note"], "received [REDACTED]");
    assert_eq!(body["upstream"]["auth"], "Basic [REDACTED]");
    assert_eq!(body["upstream"]["nested"][0]["again"], "[REDACTED]");
}

#[tokio::test]
async fn sandbox_mode_answers_like_jelou_and_sends_nothing() {
    let jelou = wiremock::MockServer::start().await;
    let mut settings = settings_for(&jelou.uri());
    settings.upstream.mode = jelou_relay::config::UpstreamMode::Sandbox;
    for bot in settings.bots.values_mut() {
        bot.client_id = None;
        bot.client_secret = None;
    }
    let app = spawn_with(settings).await;
    let response = app.send(&seed_message()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "sent");
    assert_eq!(body["sandbox"], true);
    assert_eq!(body["upstream"], json!({}));
    assert_eq!(body["to"], "593987654321");
    assert!(jelou.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn request_ids_are_generated_or_sanitized_and_sent_upstream() {
    let (app, jelou) = spawn_app().await;
    accept_all(&jelou).await;

    let generated = app.send(&seed_message()).await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36, "a UUID is generated: {id}");
    let body: Value = generated.json().await.unwrap();
    assert_eq!(body["request_id"], id.as_str());

    for hostile in ["<script>alert(1)</script>", "a b", &"x".repeat(200)] {
        let response = app
            .client
            .post(app.url("/v1/flow-messages"))
            .header("x-request-id", hostile)
            .json(&seed_message())
            .send()
            .await
            .unwrap();
        let replaced = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        assert_ne!(replaced, hostile);
        assert_eq!(replaced.len(), 36);
    }
    let received = jelou.received_requests().await.unwrap();
    assert_eq!(received[0].headers["x-request-id"], id.as_str());
    assert!(
        received
            .iter()
            .all(|r| r.headers["x-request-id"].len() == 36)
    );
}

#[tokio::test]
async fn probes_answer() {
    let (app, _jelou) = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready", "store": {"backend": "memory", "state": "up"}})
    );
}

#[tokio::test]
async fn openapi_document_and_docs_page_are_served() {
    let (app, _jelou) = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/v1/flow-messages"]["post"].is_object());
    let docs = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let page = docs.text().await.unwrap();
    assert!(page.contains("swagger"));
    // What the page loads is served whole (the unused source maps and ES bundles are
    // left out of the binary, never these).
    for asset in [
        "swagger-ui.css",
        "index.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-initializer.js",
    ] {
        assert!(page.contains(asset), "the page loads {asset}");
        let answer = app
            .client
            .get(app.url(&format!("/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{asset}");
        assert!(
            answer.bytes().await.unwrap().len() > 100,
            "{asset} is not empty"
        );
    }
}

#[tokio::test]
async fn a_callers_trace_is_continued_to_jelou() {
    let (app, jelou) = spawn_app().await;
    accept_all(&jelou).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .send_with(&seed_message(), &[("traceparent", parent)])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.send(&seed_message()).await.status(), 200);
    let received = jelou.received_requests().await.unwrap();
    let continued = received[0].headers["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = continued.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
    assert_ne!(parts[2], "00f067aa0ba902b7", "the relay's own span");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(parts[3], "01", "flags kept");
    let started = received[1].headers["traceparent"].to_str().unwrap();
    assert_eq!(
        started.len(),
        55,
        "a trace is started when the caller sends none: {started}"
    );
    assert_ne!(&started[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
}
