//! Tasks in cluster mode: Redis Streams shared by two routers' workers,
//! three runtime nodes, and the faults the contract names (a node killed
//! while it runs tasks, Redis restarted from its AOF with tasks queued).

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../registry/tests/support/redis.rs"]
mod redis_support;
mod support;

use std::time::Duration;

use cluster_support::*;
use serde_json::{json, Value};
use support::{
    generated, poll_json, register_at, rows, submit_tasks, upload_bytes, wait_task, TestClient,
};

/// Registers the slow test model as `name` (only the first output row kept).
async fn register_slow(cluster: &Cluster, name: &str, extra: Value) {
    let client = cluster.client();
    let model = generated("tests/models/slow/model.onnx");
    let digest = upload_bytes(&client, &cluster.registry.url("/v1/models"), model).await;
    let mut doc = json!({
        "name": name, "model": digest, "max_body_bytes": 4_000_000, "timeout_ms": 60000,
        "inputs": {"x": {"tensor": "x", "shape": [-1, 512]}},
        "outputs": {"y": {"tensor": "y", "take": "first"}}
    });
    for (k, v) in extra.as_object().unwrap() {
        doc[k] = v.clone();
    }
    register_at(&client, &cluster.registry.url("/v1/functions"), &doc).await;
}

/// Submits `n` tasks of `name` at once through `router`; returns their ids.
async fn submit_many(
    client: &TestClient,
    router: &Proc,
    name: &str,
    body: &Value,
    n: usize,
) -> Vec<String> {
    let url = router.url(&format!("/v1/functions/{name}/tasks"));
    // New functions reach routers through Redis: the first may be a 404.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let reply = client.post_json(&url, body).await;
        if reply.status == 202 {
            break reply.json()["task_id"].as_str().unwrap().to_string();
        }
        assert_eq!(
            reply.status,
            404,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never reached the router"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut ids = vec![first];
    ids.extend(submit_tasks(client, &url, body, &[], n - 1).await);
    ids
}

async fn wait_final(client: &TestClient, router: &Proc, id: &str, limit: Duration) -> Value {
    wait_task(client, &router.url(&format!("/v1/tasks/{id}")), limit).await
}

/// A router's count of recorded task outcomes of `function` (`outcome`).
async fn outcomes(client: &TestClient, router: &Proc, function: &str, outcome: &str) -> u64 {
    let text = String::from_utf8(client.get(&router.url("/metrics")).await.body.to_vec()).unwrap();
    let prefix = format!(
        "taskmesh_router_tasks_outcomes_total{{tenant=\"default\",function=\"{function}\",outcome=\"{outcome}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_running_tasks_loses_none_and_records_none_twice() {
    let mut cluster = Cluster::start(3, 2);
    cluster.wait_for_nodes(3, Duration::from_secs(20)).await;
    let retry = json!({"max_attempts": 5, "initial_backoff_ms": 50, "max_backoff_ms": 500, "multiplier": 2.0});
    register_slow(&cluster, "slow", json!({"retry": retry})).await;
    let client = cluster.client();
    let ids = submit_many(&client, &cluster.routers[0], "slow", &rows(20), 200).await;
    // Let the workers get going, then kill the node that owns the function.
    let first = &ids[0];
    poll_json(
        &client,
        &cluster.routers[0].url(&format!("/v1/tasks/{first}")),
        Duration::from_secs(30),
        |t| t["status"] == "succeeded",
    )
    .await;
    let nodes: Vec<&Proc> = cluster.nodes.iter().collect();
    let owner = owner_of(&nodes, "slow");
    let victim = cluster
        .nodes
        .iter()
        .position(|n| node_id(n) == owner)
        .unwrap();
    cluster.nodes[victim].kill9();
    for id in &ids {
        let task = wait_final(&client, &cluster.routers[1], id, Duration::from_secs(180)).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert_eq!(task["result"]["y"].as_array().map(Vec::len), Some(512));
    }
    // Every outcome was recorded once, by one of the two routers.
    let mut succeeded = 0;
    for router in &cluster.routers {
        succeeded += outcomes(&client, router, "slow", "succeeded").await;
    }
    assert_eq!(succeeded, 200, "recorded outcomes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_complete_after_redis_restarts_from_its_aof() {
    let mut cluster = Cluster::start(1, 1);
    cluster.wait_for_nodes(1, Duration::from_secs(20)).await;
    register_slow(
        &cluster,
        "slow",
        json!({"scaling": {"concurrency": 1, "max_instances": 1}}),
    )
    .await;
    let client = cluster.client();
    let ids = submit_many(&client, &cluster.routers[0], "slow", &rows(40), 40).await;
    cluster.redis.kill9();
    // Redis down at submit: 503, and nothing half-written (the count below).
    let refused = client
        .post_json(
            &cluster.routers[0].url("/v1/functions/slow/tasks"),
            &rows(1),
        )
        .await;
    let error = refused.expect_error(503, "unavailable");
    assert!(
        error["message"].as_str().unwrap().contains("task store"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.redis.restart();
    for id in &ids {
        let task = wait_final(&client, &cluster.routers[0], id, Duration::from_secs(180)).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
    }
    let reply = client
        .get(&cluster.routers[0].url("/v1/tasks?function=slow&limit=1000"))
        .await;
    assert_eq!(
        reply.json()["tasks"].as_array().unwrap().len(),
        40,
        "none lost, none added"
    );
}
