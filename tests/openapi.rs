//! `GET /v1/openapi.json` is a valid OpenAPI 3 document covering the session API, with every
//! schema reference resolving.

mod common;

use serde_json::Value;

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_the_session_api_and_its_references_resolve() {
    let server = common::start().await;
    let resp = reqwest::get(format!("{}/v1/openapi.json", server.http_url())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/sessions", &["get", "post"][..]),
        ("/v1/sessions/{session}", &["get", "delete"][..]),
        ("/v1/sessions/{session}/participants/{pid}/kick", &["post"][..]),
        ("/v1/sessions/{session}/participants/{pid}/mute", &["post"][..]),
        ("/v1/sessions/{session}/participants/{pid}/grants", &["put"][..]),
        ("/v1/sessions/{session}/recordings", &["get", "post"][..]),
        ("/v1/sessions/{session}/recordings/{rid}/exports", &["post"][..]),
    ] {
        let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing from {:?}", paths.keys()));
        for m in methods {
            assert!(item.get(*m).is_some(), "{m} {path} missing");
        }
    }
    let mut operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let count = operation_ids.len();
    operation_ids.sort_unstable();
    operation_ids.dedup();
    assert_eq!(operation_ids.len(), count, "operation ids must be unique");
    assert!(count >= 14, "every operation has an id: {operation_ids:?}");
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for r in found {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected ref {r}"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "dangling reference {r}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // For external validators (e.g. `openapi-spec-validator target/openapi.json`).
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/openapi.json");
    let _ = std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap());
    server.shutdown().await.unwrap();
}
