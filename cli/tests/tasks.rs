//! Tasks (contract: tasks) on `taskmesh up`: a real process with the
//! embedded task store, real HTTP/2 over loopback, real ONNX Runtime.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::*;

/// Submits `body` as a task of `name`; returns the reply.
async fn submit(
    client: &TestClient,
    p: &Platform,
    name: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    client
        .send(
            Method::POST,
            &p.router_url(&format!("/v1/functions/{name}/tasks")),
            &all,
            serde_json::to_vec(body).unwrap(),
        )
        .await
}

/// Submits and returns the new task's id (202, with its location).
async fn submit_ok(
    client: &TestClient,
    p: &Platform,
    name: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> String {
    let reply = submit(client, p, name, body, headers).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let id = reply.json()["task_id"].as_str().unwrap().to_string();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/tasks/{id}").as_str())
    );
    id
}

/// Submits `n` tasks of `name` at once; returns their ids.
async fn submit_many(
    client: &TestClient,
    p: &Platform,
    name: &str,
    body: &Value,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<String> {
    let url = p.router_url(&format!("/v1/functions/{name}/tasks"));
    submit_tasks(client, &url, body, headers, n).await
}

/// Polls a task until its status is final; returns its view.
async fn wait_final(client: &TestClient, p: &Platform, id: &str, limit: Duration) -> Value {
    wait_task(client, &p.router_url(&format!("/v1/tasks/{id}")), limit).await
}

/// The slow model's fields for a task test: a long timeout, and only the
/// first row of its output kept (results stay small however many rows run).
fn first_row() -> Value {
    json!({"timeout_ms": 60000, "outputs": {"y": {"tensor": "y", "take": "first"}}})
}

/// The numbers in a (nested) JSON array.
fn leaves(v: &Value) -> usize {
    match v {
        Value::Array(items) => items.iter().map(leaves).sum(),
        Value::Number(_) => 1,
        _ => 0,
    }
}

async fn list(client: &TestClient, p: &Platform, query: &str) -> Vec<Value> {
    let reply = client
        .get(&p.router_url(&format!("/v1/tasks?{query}")))
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["tasks"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_s_result_is_the_synchronous_answer_and_bad_submissions_are_never_queued() {
    let p = Platform::start(&[]);
    let client = p.client();
    let id = submit_ok(&client, &p, "digits", &sample(), &[]).await;
    let task = wait_final(&client, &p, &id, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(
        (task["attempts"].as_u64(), task["version"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(task["created_at"].as_str().unwrap().ends_with('Z'));
    let sync = client
        .post_json(&p.router_url("/v1/functions/digits/invoke"), &sample())
        .await;
    assert_eq!(sync.status, 200);
    assert_eq!(
        task["result"],
        sync.json(),
        "the task's result is the synchronous answer"
    );

    // Refused at submit, never queued: invalid input (422), a bad priority
    // or idempotency key (400), an unknown function (404).
    let before = list(&client, &p, "function=digits&limit=1000").await.len();
    submit(&client, &p, "digits", &json!({"pixels": [1, 2]}), &[])
        .await
        .expect_error(422, "invalid_input");
    submit(
        &client,
        &p,
        "digits",
        &sample(),
        &[("x-taskmesh-priority", "urgent")],
    )
    .await
    .expect_error(400, "bad_request");
    submit(
        &client,
        &p,
        "digits",
        &sample(),
        &[("idempotency-key", "has space")],
    )
    .await
    .expect_error(400, "bad_request");
    submit(&client, &p, "no-such-function", &sample(), &[])
        .await
        .expect_error(404, "not_found");
    assert_eq!(
        list(&client, &p, "function=digits&limit=1000").await.len(),
        before
    );
    // Without a key: 401; an unknown task: 404; a bad filter: 400.
    TestClient::h2c()
        .get(&p.router_url(&format!("/v1/tasks/{id}")))
        .await
        .expect_error(401, "unauthenticated");
    client
        .get(&p.router_url("/v1/tasks/0000"))
        .await
        .expect_error(404, "not_found");
    client
        .get(&p.router_url("/v1/tasks?status=done"))
        .await
        .expect_error(400, "bad_request");
    // A finished task cannot be cancelled or retried.
    let url = p.router_url(&format!("/v1/tasks/{id}"));
    client
        .send(Method::DELETE, &url, &[], Vec::new())
        .await
        .expect_error(409, "conflict");
    client
        .send(Method::POST, &format!("{url}/retry"), &[], Vec::new())
        .await
        .expect_error(409, "conflict");

    let metrics = p.metrics().await;
    for needle in [
        "taskmesh_router_tasks_outcomes_total{tenant=\"default\",function=\"digits\",outcome=\"submitted\"} 1",
        "taskmesh_router_tasks_outcomes_total{tenant=\"default\",function=\"digits\",outcome=\"succeeded\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_gives_back_the_same_task_which_runs_once() {
    let p = Platform::start(&[]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    register(&client, &p, &digits_definition(&digest, "once", &json!({}))).await;
    let key = [("idempotency-key", "order-2026-12-03-42")];
    let first = submit(&client, &p, "once", &sample(), &key).await;
    assert_eq!(first.status, 202);
    let id = first.json()["task_id"].as_str().unwrap().to_string();
    wait_final(&client, &p, &id, Duration::from_secs(30)).await;
    for _ in 0..3 {
        let again = submit(&client, &p, "once", &sample(), &key).await;
        assert_eq!(again.status, 202);
        assert_eq!(again.json()["task_id"], id.as_str());
        assert_eq!(again.json()["status"], "succeeded");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    }
    let all = list(&client, &p, "function=once").await;
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0]["attempts"], 1);
    // Another client's identical key is its own task.
    let (_, other_key) =
        create_client(&client, &p, json!({"name": "other", "scopes": ["invoke"]})).await;
    let other = TestClient::h2c().with_key(&other_key);
    let theirs = submit_ok(&other, &p, "once", &sample(), &key).await;
    assert_ne!(theirs, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_function_ends_dead_after_exactly_its_attempts_and_retry_brings_it_back() {
    let p = Platform::start(&[]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    // Its output never fits its output schema: every call is a 502.
    let broken = json!({
        "output_schema": {"type": "object", "required": ["never-there"]},
        "retry": {"max_attempts": 3, "initial_backoff_ms": 20, "max_backoff_ms": 100, "multiplier": 2.0},
        "circuit_breaker": {"minimum_calls": 1000}
    });
    register(&client, &p, &digits_definition(&digest, "broken", &broken)).await;
    let id = submit_ok(&client, &p, "broken", &sample(), &[]).await;
    let task = wait_final(&client, &p, &id, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "dead", "{task:#}");
    assert_eq!(
        task["attempts"], 3,
        "exactly the policy's attempts: {task:#}"
    );
    assert_eq!(task["error"]["code"], "invalid_output", "{task:#}");
    let dead = list(&client, &p, "status=dead").await;
    assert_eq!(
        dead.iter()
            .map(|t| t["task_id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    let metrics = p.metrics().await;
    let needle = "taskmesh_router_tasks_outcomes_total{tenant=\"default\",function=\"broken\",outcome=\"retried\"} 2";
    assert!(metrics.contains(needle), "{needle} missing from {metrics}");

    let url = p.router_url(&format!("/v1/tasks/{id}/retry"));
    let retried = client.send(Method::POST, &url, &[], Vec::new()).await;
    assert_eq!(
        retried.status,
        202,
        "{}",
        String::from_utf8_lossy(&retried.body)
    );
    assert_eq!(retried.json()["status"], "queued");
    assert_eq!(retried.json()["attempts"], 0);
    let again = wait_final(&client, &p, &id, Duration::from_secs(30)).await;
    assert_eq!(
        (again["status"].as_str(), again["attempts"].as_u64()),
        (Some("dead"), Some(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_a_full_queue_cancel_stops_a_queued_task_and_another_tenant_sees_nothing()
{
    let p = Platform::start(&[]);
    let client = p.client();
    // One call at a time on the node, so a queue builds up.
    let mut one_at_a_time = first_row();
    one_at_a_time["scaling"] = json!({"concurrency": 1, "max_instances": 1});
    register_slow(&p, "slow", one_at_a_time).await;
    let body = rows(40);
    let low_header = [("x-taskmesh-priority", "low")];
    let low = submit_many(&client, &p, "slow", &body, &low_header, 30).await;
    let high_header = [("x-taskmesh-priority", "high")];
    let high = submit_many(&client, &p, "slow", &body, &high_header, 3).await;
    let last = submit_ok(&client, &p, "slow", &body, &low_header).await;
    let cancel_url = p.router_url(&format!("/v1/tasks/{last}"));
    let cancelled = client
        .send(Method::DELETE, &cancel_url, &[], Vec::new())
        .await;
    assert_eq!(
        cancelled.status,
        200,
        "{}",
        String::from_utf8_lossy(&cancelled.body)
    );
    assert_eq!(cancelled.json()["status"], "cancelled");

    // Another tenant cannot see, cancel or retry it.
    let (_, acme_key) = create_client(
        &client,
        &p,
        json!({"name": "acme", "tenant": "acme", "scopes": ["invoke"]}),
    )
    .await;
    let acme = TestClient::h2c().with_key(&acme_key);
    acme.get(&cancel_url).await.expect_error(404, "not_found");
    acme.send(Method::DELETE, &cancel_url, &[], Vec::new())
        .await
        .expect_error(404, "not_found");
    acme.send(
        Method::POST,
        &format!("{cancel_url}/retry"),
        &[],
        Vec::new(),
    )
    .await
    .expect_error(404, "not_found");
    assert!(list(&acme, &p, "").await.is_empty());

    let mut finished: HashMap<String, String> = HashMap::new();
    for id in low.iter().chain(&high) {
        let task = wait_final(&client, &p, id, Duration::from_secs(120)).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        finished.insert(id.clone(), task["updated_at"].as_str().unwrap().to_string());
    }
    // The high-priority tasks came in last but jumped the queue: each
    // finished before the last twenty low-priority tasks did.
    let mut low_ends: Vec<&String> = low.iter().map(|id| &finished[id]).collect();
    low_ends.sort();
    let tenth_last = low_ends[low_ends.len() - 10];
    for id in &high {
        assert!(
            finished[id] < *tenth_last,
            "high task ended {} after {tenth_last}",
            finished[id]
        );
    }
    let stays = client.get(&cancel_url).await.json();
    assert_eq!(
        (stays["status"].as_str(), stays["attempts"].as_u64()),
        (Some("cancelled"), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_paces_tasks_instead_of_failing_them() {
    let p = Platform::start(&[]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let limited = json!({"rate_limit": {"per_second": 5, "burst": 1}});
    register(&client, &p, &digits_definition(&digest, "paced", &limited)).await;
    let ids = submit_many(&client, &p, "paced", &sample(), &[], 8).await;
    for id in &ids {
        let task = wait_final(&client, &p, id, Duration::from_secs(60)).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert_eq!(task["attempts"], 1, "waiting for a turn is not an attempt");
    }
    let metrics = p.metrics().await;
    let deferred = metrics
        .lines()
        .find(|l| l.starts_with("taskmesh_router_tasks_outcomes_total{tenant=\"default\",function=\"paced\",outcome=\"deferred\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(deferred.is_some_and(|n| n > 0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_function_s_backlog_does_not_hold_up_a_light_function() {
    let p = Platform::start(&[]);
    let client = p.client();
    register_slow(&p, "heavy", first_row()).await;
    let heavy_body = rows(150);
    let heavy = submit_many(&client, &p, "heavy", &heavy_body, &[], 60).await;
    let mut light = Vec::new();
    for _ in 0..5 {
        light.push(submit_ok(&client, &p, "digits", &sample(), &[]).await);
    }
    for id in &light {
        let task = wait_final(&client, &p, id, Duration::from_secs(60)).await;
        assert_eq!(task["status"], "succeeded");
    }
    // The light tasks are done while the heavy queue is still long: they
    // never waited behind it.
    let waiting = list(&client, &p, "function=heavy&status=queued&limit=1000")
        .await
        .len();
    assert!(
        waiting >= 10,
        "only {waiting} heavy tasks were still queued"
    );
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("taskmesh_router_tasks_queued{tenant=\"default\",function=\"heavy\"}"),
        "{metrics}"
    ); // And the heavy backlog itself completes: nothing lost, nothing dead.
    for id in &heavy {
        let task = wait_final(&client, &p, id, Duration::from_secs(120)).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_complete_after_kill_9_and_a_restart() {
    let p = Platform::start(&[]);
    let client = p.client();
    register_slow(&p, "slow", first_row()).await;
    let body = rows(100);
    let ids = submit_many(&client, &p, "slow", &body, &[], 20).await;
    // Some are running, most still queued: kill -9.
    poll_json(
        &client,
        &p.router_url(&format!("/v1/tasks/{}", ids[0])),
        Duration::from_secs(30),
        |t| t["status"] != "queued",
    )
    .await;
    let data_dir = p.stop();
    let p = Platform::start_in(data_dir, &[], "warn", false);
    let client = p.client();
    for id in &ids {
        let task = wait_final(&client, &p, id, Duration::from_secs(120)).await;
        assert_eq!(task["status"], "succeeded", "{task:#}");
        assert_eq!(leaves(&task["result"]["y"]), 512, "the result was stored");
    }
    let all = list(&client, &p, "function=slow&limit=1000").await;
    assert_eq!(all.len(), 20, "no task lost, none added");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_waits_lists_and_retries_tasks() {
    let p = Platform::start(&[]);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
            .args(args)
            .current_dir(repo_root())
            .env("TASKMESH_API_KEY", &p.admin_key)
            .env("TASKMESH_ROUTER_URL", p.router_url(""))
            .output()
            .expect("run taskmesh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let sample = serde_json::to_string(&sample()).unwrap();
    let args = [
        "task",
        "submit",
        "digits",
        "--data",
        &sample,
        "--wait",
        "--idempotency-key",
        "cli-1",
    ];
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stdout} {stderr}");
    let task: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(task["status"], "succeeded", "{stdout}");
    assert!(
        stderr.contains("succeeded") && stderr.contains("attempts 1"),
        "the progress line: {stderr}"
    );
    let id = task["task_id"].as_str().unwrap();
    // Without --wait: the id; the same idempotency key gives the same one.
    let (ok, again, _) = run(&[
        "task",
        "submit",
        "digits",
        "--data",
        &sample,
        "--idempotency-key",
        "cli-1",
    ]);
    assert!(ok);
    assert_eq!(again.trim(), id);
    let (ok, listed, _) = run(&[
        "task",
        "list",
        "--function",
        "digits",
        "--status",
        "succeeded",
    ]);
    assert!(
        ok && listed.starts_with(id) && listed.lines().count() == 1,
        "{listed}"
    );
    let (ok, got, _) = run(&["task", "get", id]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&got).unwrap()["result"],
        task["result"]
    );
    // A succeeded task cannot be retried: the CLI fails and says why.
    let (ok, _, stderr) = run(&["task", "retry", id]);
    assert!(!ok && stderr.contains("conflict"), "{stderr}");
    let (ok, _, stderr) = run(&["task", "submit", "digits", "--data", "{\"pixels\": []}"]);
    assert!(!ok && stderr.contains("invalid_input"), "{stderr}");
}
