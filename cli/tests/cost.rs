//! Cost weights end to end (`"cost"` in a definition): the real `taskmesh
//! up` process; a heavy call consumes more of a rate limit and a quota than
//! a light one, streamed bodies included, and tasks carry their cost.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// The slow test model weighs one unit per row (512 elements).
fn per_row() -> serde_json::Value {
    json!({"per": "elements", "unit": 512})
}

#[tokio::test]
async fn heavy_calls_take_their_cost_from_rate_limits_and_quotas() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    // Refills one token in 100 s: within the test, a burst is all there is.
    let rate = json!({"per_second": 0.01, "burst": 10});
    register_slow(
        &p,
        "weighed",
        json!({"cost": per_row(), "rate_limit": rate}),
    )
    .await;
    register_slow(&p, "unweighed", json!({"rate_limit": rate})).await;
    register_slow(
        &p,
        "metered",
        json!({"cost": per_row(), "quota": {"per_day": 10}}),
    )
    .await;

    // Without a cost every call costs 1: ten calls of 6 rows pass.
    let url = p.router_url("/v1/functions/unweighed/invoke");
    for _ in 0..10 {
        let reply = client.post_json(&url, &rows(6)).await;
        assert_eq!(reply.status, 200, "{}", reply.json());
    }

    // With one: 6 of the 10 tokens, then a call of 6 is refused whole (its
    // refusal names its cost) and leaves the 4 for a call of 4.
    let url = p.router_url("/v1/functions/weighed/invoke");
    assert_eq!(client.post_json(&url, &rows(6)).await.status, 200);
    let refused = client.post_json(&url, &rows(6)).await;
    let error = refused.expect_error(429, "rate_limited");
    assert_eq!(error["details"]["cost"], 6, "{error}");
    assert!(error["message"].as_str().unwrap().contains("costs 6"));
    assert_eq!(client.post_json(&url, &rows(4)).await.status, 200);
    client
        .post_json(&url, &rows(1))
        .await
        .expect_error(429, "rate_limited");

    // A quota of 10 counts rows the same way, tasks included (at submit).
    let url = p.router_url("/v1/functions/metered/invoke");
    assert_eq!(client.post_json(&url, &rows(6)).await.status, 200);
    client
        .post_json(&url, &rows(6))
        .await
        .expect_error(429, "quota_exceeded");
    let tasks = p.router_url("/v1/functions/metered/tasks");
    let submitted = client.post_json(&tasks, &rows(3)).await;
    assert_eq!(submitted.status, 202, "{}", submitted.json());
    let id = submitted.json()["task_id"].as_str().unwrap().to_string();
    client
        .post_json(&tasks, &rows(2))
        .await
        .expect_error(429, "quota_exceeded");
    assert_eq!(client.post_json(&url, &rows(1)).await.status, 200);
    client
        .post_json(&url, &rows(1))
        .await
        .expect_error(429, "quota_exceeded");
    let task = wait_task(
        &client,
        &p.router_url(&format!("/v1/tasks/{id}")),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["cost"], 3, "{task}");
}

#[tokio::test]
async fn a_streamed_body_is_charged_its_whole_cost_before_a_node_sees_it() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let rate = json!({"per_second": 0.01, "burst": 100});
    register_slow(
        &p,
        "weighed",
        json!({"cost": per_row(), "rate_limit": rate}),
    )
    .await;
    let url = p.router_url("/v1/functions/weighed/invoke");
    // 80 rows are about 82 KB: over the replay buffer, so the body streams
    // and its cost is known only at its end.
    let big = rows(80);
    assert!(serde_json::to_vec(&big).unwrap().len() > 64 * 1024);
    let first = client.post_json(&url, &big).await;
    assert_eq!(first.status, 200, "{}", first.json());
    // 20 tokens left: the second is admitted on its estimate (1), then
    // refused at its end for the 79 it still owes.
    let second = client.post_json(&url, &big).await;
    let error = second.expect_error(429, "rate_limited");
    assert_eq!(error["details"]["cost"], 79, "{error}");
    // Its estimate was spent: 19 rows still pass, a 20th does not.
    assert_eq!(client.post_json(&url, &rows(19)).await.status, 200);
    client
        .post_json(&url, &rows(1))
        .await
        .expect_error(429, "rate_limited");
}

#[tokio::test]
async fn a_cost_must_measure_something_the_function_has() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "tests/models/slow/model.onnx").await;
    let base = json!({
        "name": "slow", "model": digest,
        "inputs": {"x": {"tensor": "x", "shape": [-1, 512]}},
        "outputs": {"y": {"tensor": "y"}}
    });
    let url = p.admin_url("/v1/functions");
    for (cost, pointer) in [
        (json!({"per": "tokens", "unit": 128}), "/cost/per"),
        (json!({"per": "pixels", "unit": 1024}), "/cost/per"),
        (json!({"per": "elements", "unit": 0}), "/cost/unit"),
        (json!({"per": "bytes", "unit": 1}), "/cost/per"),
        (json!({"per": "elements", "unit": 1, "weight": 2}), "/cost"),
    ] {
        let mut doc = base.clone();
        doc["cost"] = cost.clone();
        let reply = client.post_json(&url, &doc).await;
        let error = reply.expect_error(422, "invalid_input");
        let found = pointers(&error);
        assert!(
            found.iter().any(|p| p.starts_with(pointer)),
            "{cost}: {error}"
        );
    }
}
