//! The committed OpenAPI document matches the one the code generates.
//! Regenerate with `UPDATE_OPENAPI=1 cargo test --test app openapi`.

use jelou_relay::api::openapi::document_json;
use serde_json::Value;

const COMMITTED: &str = "deploy/openapi.json";

#[test]
fn committed_document_is_in_sync() {
    let generated = format!("{}\n", document_json());
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "{COMMITTED} is stale: run `UPDATE_OPENAPI=1 cargo test --test app openapi` and commit it"
    );
}

#[test]
fn document_describes_the_contract() {
    let doc: Value = serde_json::from_str(&document_json()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let post = &doc["paths"]["/v1/flow-messages"]["post"];
    for status in ["200", "400", "413", "415", "422", "429", "502", "504"] {
        assert!(
            post["responses"][status].is_object(),
            "status {status} documented"
        );
    }
    assert!(post["responses"]["422"]["content"]["application/problem+json"].is_object());
    let request = &doc["components"]["schemas"]["FlowMessageRequest"];
    assert_eq!(request["additionalProperties"], false);
    let mut required: Vec<&str> = request["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, vec!["caption", "flow", "text", "title", "to"]);
    assert_eq!(request["properties"]["title"]["maxLength"], 60);
    assert_eq!(
        doc["components"]["schemas"]["FlowRequest"]["properties"]["cta"]["maxLength"],
        30
    );
}
