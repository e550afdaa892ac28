//! The REST API's contract at its edges: every rejection (path, query,
//! body, content type, size, method, route) comes back in the one JSON
//! error shape, with a status the OpenAPI document lists for the
//! operation. (`.ci/api-contract` runs schemathesis against the whole
//! document, as each role; this pins the cases by hand.)

use reqwest::Method;
use serde_json::Value;
use storegate_e2e::{Backend, http, spawn_hub};

async fn call(
    api: &str,
    token: &str,
    method: Method,
    path: &str,
    ctype: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = http().request(method, format!("{api}{path}")).bearer_auth(token);
    if let Some(c) = ctype {
        req = req.header("content-type", c);
    }
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
    (status, v)
}

/// Method, path, content type, body; expected status and error code.
type Case = (
    Method,
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_json_in_the_error_shape_with_a_documented_status() {
    let Some(hub) = spawn_hub(Backend::Sqlite).await else {
        return;
    };
    let (api, t) = (hub.api.as_str(), hub.admin_token.as_str());
    let json = Some("application/json");
    let cases: Vec<Case> = vec![
        (
            Method::GET,
            "/api/v1/quarantine/not-a-number",
            None,
            vec![],
            400,
            "invalid_path",
        ),
        (
            Method::GET,
            "/api/v1/stock/movements?limit=many",
            None,
            vec![],
            400,
            "invalid_query",
        ),
        (
            Method::POST,
            "/api/v1/stock/receipts",
            Some("text/plain"),
            b"{}".to_vec(),
            415,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/stock/receipts",
            json,
            b"{not json".to_vec(),
            400,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/stock/receipts",
            json,
            b"{\"lines\":[]}".to_vec(),
            422,
            "invalid_body",
        ),
        (
            Method::POST,
            "/api/v1/stock/receipts",
            json,
            vec![b' '; 5 * 1024 * 1024],
            413,
            "invalid_body",
        ),
        (
            Method::DELETE,
            "/api/v1/stock/receipts",
            None,
            vec![],
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/api/v1/no/such/route",
            None,
            vec![],
            404,
            "not_found",
        ),
    ];
    let doc: Value = http()
        .get(format!("{api}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (method, path, ctype, body, status, code) in cases {
        let (got, v) = call(api, t, method.clone(), path, ctype, body).await;
        assert_eq!(got, status, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        assert!(
            v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        // Documented for the operation (a route or method that does not
        // exist has no operation to document it).
        let template = match path.split('?').next().unwrap() {
            "/api/v1/quarantine/not-a-number" => "/api/v1/quarantine/{id}",
            p => p,
        };
        if let Some(op) = doc["paths"][template][method.as_str().to_lowercase()].as_object() {
            assert!(
                op["responses"].get(status.to_string()).is_some(),
                "{method} {template} does not document {status}"
            );
        }
    }
    hub.stop().await;
}
