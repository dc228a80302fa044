//! Queued messages as a caller sees them: their status, polled until it settles.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::TestApp;

/// `GET /v1/flow-messages/{id}`: the status code and the body.
pub async fn status(app: &TestApp, id: &str) -> (u16, Value) {
    let response = app
        .client
        .get(app.url(&format!("/v1/flow-messages/{id}")))
        .send()
        .await
        .unwrap();
    let code = response.status().as_u16();
    (code, response.json().await.unwrap())
}

/// Polls the status until it is final (or `wanted`); generous for loaded machines.
pub async fn settled(app: &TestApp, id: &str, wanted: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = status(app, id).await;
        assert_eq!(code, 200, "{body}");
        let now = body["status"].as_str().unwrap_or_default().to_string();
        if now == wanted
            || ["sent", "failed", "unknown", "expired", "canceled"].contains(&now.as_str())
        {
            assert_eq!(now, wanted, "{body}");
            return body;
        }
        assert!(Instant::now() < until, "still {now}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
