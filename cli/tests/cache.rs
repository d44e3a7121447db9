//! The router's result cache (`"cache"` in a definition): hits, misses, TTL,
//! version changes, `cache-control`, tenants, and limits on hits.

mod support;

use http::Method;
use serde_json::{json, Value};
use support::*;

/// Calls `name` with `body` (and extra headers); returns the reply.
async fn call(
    client: &TestClient,
    p: &Platform,
    name: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    headers.extend_from_slice(extra);
    client
        .send(
            Method::POST,
            &p.router_url(&format!("/v1/functions/{name}/invoke")),
            &headers,
            body.to_string(),
        )
        .await
}

/// Asserts a hit (no node answered) or a miss (one did).
fn assert_cache(reply: &Reply, expected: &str) {
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(reply.header("x-taskmesh-cache"), Some(expected));
    let node = reply.header("x-taskmesh-node");
    match expected {
        "hit" => assert_eq!(node, None, "a hit reached a node"),
        _ => assert!(node.is_some(), "a miss did not reach a node"),
    }
}

/// The sample input, written with its keys in another order and spacing.
fn respaced(sample: &Value) -> String {
    let pixels = serde_json::to_string(&sample["pixels"]).unwrap();
    format!("{{ \"pixels\" :  {pixels} }}")
}

#[tokio::test]
async fn hits_misses_expiry_versions_bypass_and_tenants() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let cached = json!({"cache": {"ttl_s": 2, "max_entries": 16}});
    register(&client, &p, &digits_definition(&digest, "cached", &cached)).await;
    let sample = sample();
    let body = serde_json::to_string(&sample).unwrap();

    let miss = call(&client, &p, "cached", &body, &[]).await;
    assert_cache(&miss, "miss");
    // The same input, however it is written: answered by the router.
    let hit = call(&client, &p, "cached", &respaced(&sample), &[]).await;
    assert_cache(&hit, "hit");
    assert_eq!(hit.json(), miss.json());
    assert_eq!(hit.header("x-taskmesh-version"), Some("1"));
    assert!(hit.header("x-taskmesh-invocation-id").is_some());
    // Another input is a miss.
    let mut other = sample.clone();
    other["pixels"][0] = json!(0.5);
    assert_cache(
        &call(&client, &p, "cached", &other.to_string(), &[]).await,
        "miss",
    );
    // no-cache asks a node (and stores its answer); no-store neither looks nor stores.
    let fresh = call(
        &client,
        &p,
        "cached",
        &body,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_cache(&fresh, "miss");
    let unstored = call(
        &client,
        &p,
        "cached",
        &body,
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(unstored.status, 200);
    assert_eq!(unstored.header("x-taskmesh-cache"), None);
    assert_cache(&call(&client, &p, "cached", &body, &[]).await, "hit");

    // After ttl_s, a miss again.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_cache(&call(&client, &p, "cached", &body, &[]).await, "miss");
    assert_cache(&call(&client, &p, "cached", &body, &[]).await, "hit");

    // A new version starts empty.
    let v2 = json!({"cache": {"ttl_s": 60}, "description": "v2"});
    register(&client, &p, &digits_definition(&digest, "cached", &v2)).await;
    let reply = call(&client, &p, "cached", &body, &[]).await;
    assert_cache(&reply, "miss");
    assert_eq!(reply.header("x-taskmesh-version"), Some("2"));
    assert_cache(&call(&client, &p, "cached", &body, &[]).await, "hit");

    // Another tenant's function of the same name and input: its own entries.
    let (_, acme_key) = create_client(
        &client,
        &p,
        json!({"name": "acme-admin", "tenant": "acme", "scopes": ["admin", "invoke"]}),
    )
    .await;
    let acme = TestClient::h2c().with_key(&acme_key);
    let acme_digest = upload(&acme, &p, "examples/digits/model.onnx").await;
    register(&acme, &p, &digits_definition(&acme_digest, "cached", &v2)).await;
    assert_cache(&call(&acme, &p, "cached", &body, &[]).await, "miss");
    assert_cache(&call(&acme, &p, "cached", &body, &[]).await, "hit");

    // A function without `cache` says nothing about it.
    register(
        &client,
        &p,
        &digits_definition(&digest, "plain", &json!({})),
    )
    .await;
    let plain = call(&client, &p, "plain", &body, &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("x-taskmesh-cache"), None);
}

#[tokio::test]
async fn hits_count_against_rate_limits_and_quotas() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let limited = json!({
        "cache": {"ttl_s": 60},
        "rate_limit": {"per_second": 0.1, "burst": 3},
    });
    register(
        &client,
        &p,
        &digits_definition(&digest, "limited", &limited),
    )
    .await;
    let metered = json!({"cache": {"ttl_s": 60}, "quota": {"per_day": 2}});
    register(
        &client,
        &p,
        &digits_definition(&digest, "metered", &metered),
    )
    .await;
    let body = serde_json::to_string(&sample()).unwrap();

    assert_cache(&call(&client, &p, "limited", &body, &[]).await, "miss");
    assert_cache(&call(&client, &p, "limited", &body, &[]).await, "hit");
    assert_cache(&call(&client, &p, "limited", &body, &[]).await, "hit");
    call(&client, &p, "limited", &body, &[])
        .await
        .expect_error(429, "rate_limited");

    assert_cache(&call(&client, &p, "metered", &body, &[]).await, "miss");
    assert_cache(&call(&client, &p, "metered", &body, &[]).await, "hit");
    call(&client, &p, "metered", &body, &[])
        .await
        .expect_error(429, "quota_exceeded");
}

#[tokio::test]
async fn a_cache_policy_out_of_bounds_is_refused() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let doc = digits_definition(
        &digest,
        "bad",
        &json!({"cache": {"ttl_s": 0, "max_entries": 1_000_000}}),
    );
    let reply = client.post_json(&p.admin_url("/v1/functions"), &doc).await;
    let error = reply.expect_error(422, "invalid_input");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("/cache/ttl_s") && message.contains("/cache/max_entries"),
        "{message}"
    );
}
