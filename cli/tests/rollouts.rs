//! Aliases and rollouts end to end: the real `taskmesh up` process over HTTP/2.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};
use support::*;

/// Registers the digits example under `name` `count` times (versions 1..=count),
/// with the fields of `last` set on the last one.
async fn digits_versions(client: &TestClient, p: &Platform, name: &str, count: u32, last: Value) {
    let digest = upload(client, p, "examples/digits/model.onnx").await;
    for i in 1..=count {
        let description = json!({"description": format!("version {i}")});
        let mut doc = digits_definition(&digest, name, &description);
        if i == count {
            set_fields(&mut doc, &last);
        }
        assert_eq!(register(client, p, &doc).await, u64::from(i));
    }
}

async fn set_alias(
    client: &TestClient,
    p: &Platform,
    name: &str,
    alias: &str,
    routes: Value,
) -> Reply {
    client
        .put_json(
            &p.admin_url(&format!("/v1/functions/{name}/aliases/{alias}")),
            &json!({ "routes": routes }),
        )
        .await
}

fn served(reply: &Reply) -> u32 {
    reply
        .header("x-taskmesh-version")
        .unwrap_or_else(|| panic!("no x-taskmesh-version on {} {:?}", reply.status, reply.body))
        .parse()
        .unwrap()
}

/// Invokes `n` times with routing keys `prefix-0..n`, 32 at a time; returns
/// (key index, status, served version).
async fn invoke_many(
    client: &TestClient,
    url: &str,
    prefix: &str,
    n: usize,
) -> Vec<(usize, u16, u32)> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (client, url, prefix) = (client.clone(), url.to_string(), prefix.to_string());
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let reply = invoke_keyed(&client, &url, &format!("{prefix}-{i}")).await;
            drop(permit);
            (i, reply.status.as_u16(), served(&reply))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_ninety_ten_alias_splits_by_routing_key_and_sticks() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_versions(&client, &p, "split", 4, json!({})).await;
    let invoke = p.router_url("/v1/functions/split/invoke");

    // Without a `live` alias the latest version serves.
    assert_eq!(served(&invoke_keyed(&client, &invoke, "a").await), 4);

    let reply = set_alias(
        &client,
        &p,
        "split",
        "live",
        json!([{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(
        reply.json()["routes"][1],
        json!({"version": 4, "weight": 10})
    );

    let results = invoke_many(&client, &invoke, "caller", 10_000).await;
    assert!(results.iter().all(|(_, status, _)| *status == 200));
    let fours = results.iter().filter(|(_, _, v)| *v == 4).count();
    let threes = results.iter().filter(|(_, _, v)| *v == 3).count();
    assert_eq!(fours + threes, 10_000, "only versions 3 and 4 serve");
    assert!(
        (900..=1100).contains(&fours),
        "version 4 served {fours} of 10000"
    );

    // Each routing key always gets the same version.
    let first: HashMap<usize, u32> = results.iter().map(|(i, _, v)| (*i, *v)).collect();
    let again = invoke_many(&client, &invoke, "caller", 2_000).await;
    for (i, _, v) in again {
        assert_eq!(first[&i], v, "caller-{i} moved");
    }

    // `?alias=` picks an alias explicitly, `?version=` a version.
    let canary = set_alias(
        &client,
        &p,
        "split",
        "canary",
        json!([{"version": 2, "weight": 1}]),
    )
    .await;
    assert_eq!(canary.status, 200);
    let reply = invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?alias=canary"),
        "a",
    )
    .await;
    assert_eq!((reply.status.as_u16(), served(&reply)), (200, 2));
    let reply = invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?version=1"),
        "a",
    )
    .await;
    assert_eq!((reply.status.as_u16(), served(&reply)), (200, 1));
    invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?alias=nope"),
        "a",
    )
    .await
    .expect_error(404, "not_found");
    invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?alias=live&version=1"),
        "a",
    )
    .await
    .expect_error(400, "bad_request");

    // Without a routing key, the client id decides: the operator sticks.
    let no_key: Vec<u32> = futures_versions(&client, &invoke, 20).await;
    assert!(no_key.windows(2).all(|w| w[0] == w[1]), "{no_key:?}");

    // A refusal after resolving still names the version.
    let reply = client
        .send(
            Method::POST,
            &invoke,
            &[
                ("content-type", "application/json"),
                ("x-taskmesh-routing-key", "a"),
            ],
            &b"{\"pixels\": 1}"[..],
        )
        .await;
    reply.expect_error(422, "invalid_input");
    assert!(reply.header("x-taskmesh-version").is_some());

    // Listing, reading and deleting.
    let list = client
        .get(&p.admin_url("/v1/functions/split/aliases"))
        .await;
    assert_eq!(list.status, 200);
    let names: Vec<String> = list.json()["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alias"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["canary", "live"]);
    let live = client
        .get(&p.admin_url("/v1/functions/split/aliases/live"))
        .await;
    assert_eq!(
        live.json()["routes"][0],
        json!({"version": 3, "weight": 90})
    );
    let deleted = client
        .send(
            Method::DELETE,
            &p.admin_url("/v1/functions/split/aliases/live"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(deleted.status, 204);
    client
        .get(&p.admin_url("/v1/functions/split/aliases/live"))
        .await
        .expect_error(404, "not_found");
    // Back to the latest version.
    assert_eq!(served(&invoke_keyed(&client, &invoke, "caller-1").await), 4);
}

async fn futures_versions(client: &TestClient, url: &str, n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(served(&client.post_json(url, &sample()).await));
    }
    out
}

#[tokio::test]
async fn bad_alias_requests_get_422_404_and_the_error_body() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_versions(&client, &p, "bad", 2, json!({})).await;
    for (routes, pointer) in [
        (json!([{"version": 1, "weight": -5}]), "/routes/0/weight"),
        (
            json!([{"version": 1, "weight": 0}, {"version": 2, "weight": 0}]),
            "/routes",
        ),
        (json!([{"version": 7, "weight": 10}]), "/routes/0/version"),
        (json!([{"version": 1, "weight": 1.5}]), "/routes/0/weight"),
        (json!([]), "/routes"),
        (
            json!([{"version": 1, "weight": 1}, {"version": 1, "weight": 1}]),
            "/routes/1/version",
        ),
    ] {
        let body = set_alias(&client, &p, "bad", "live", routes.clone())
            .await
            .expect_error(422, "invalid_input");
        assert_eq!(body["details"][0]["pointer"], pointer, "{routes}");
    }
    let body = client
        .put_json(
            &p.admin_url("/v1/functions/bad/aliases/live"),
            &json!({"routes": [], "extra": 1}),
        )
        .await
        .expect_error(422, "invalid_input");
    assert!(
        body["message"].as_str().unwrap().contains("extra"),
        "{body}"
    );
    set_alias(
        &client,
        &p,
        "bad",
        "Not-Valid",
        json!([{"version": 1, "weight": 1}]),
    )
    .await
    .expect_error(422, "invalid_input");
    set_alias(
        &client,
        &p,
        "nosuch",
        "live",
        json!([{"version": 1, "weight": 1}]),
    )
    .await
    .expect_error(404, "not_found");
    client
        .get(&p.admin_url("/v1/functions/bad/aliases/live"))
        .await
        .expect_error(404, "not_found");
    client
        .get(&p.admin_url("/v1/functions/nosuch/aliases"))
        .await
        .expect_error(404, "not_found");
    client
        .send(
            Method::DELETE,
            &p.admin_url("/v1/functions/bad/aliases/live"),
            &[],
            Vec::new(),
        )
        .await
        .expect_error(404, "not_found");
    // An invoke-only client cannot set aliases.
    let (_, key) = create_client(&client, &p, json!({"name": "app", "scopes": ["invoke"]})).await;
    let app = TestClient::h2c().with_key(&key);
    set_alias(
        &app,
        &p,
        "bad",
        "live",
        json!([{"version": 1, "weight": 1}]),
    )
    .await
    .expect_error(403, "forbidden");
}

async fn start_rollout(client: &TestClient, p: &Platform, name: &str, body: Value) -> Reply {
    client
        .post_json(
            &p.admin_url(&format!("/v1/functions/{name}/rollouts")),
            &body,
        )
        .await
}

async fn rollout_state(client: &TestClient, p: &Platform, name: &str, id: &str) -> Value {
    let reply = client
        .get(&p.admin_url(&format!("/v1/functions/{name}/rollouts/{id}")))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    reply.json()
}

/// Polls a rollout until `done` holds, or panics after `limit`.
async fn wait_rollout(
    client: &TestClient,
    p: &Platform,
    name: &str,
    id: &str,
    limit: std::time::Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let url = p.admin_url(&format!("/v1/functions/{name}/rollouts/{id}"));
    poll_json(client, &url, limit, done).await
}

#[tokio::test]
async fn a_healthy_rollout_walks_every_step_and_ends_on_the_new_version() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_versions(&client, &p, "healthy", 2, json!({})).await;
    let reply = set_alias(
        &client,
        &p,
        "healthy",
        "live",
        json!([{"version": 1, "weight": 100}]),
    )
    .await;
    assert_eq!(reply.status, 200);
    let traffic = Traffic::start(
        &client,
        &p.router_url("/v1/functions/healthy/invoke"),
        8,
        "h",
    );

    let reply = start_rollout(
        &client,
        &p,
        "healthy",
        json!({"alias": "live", "to_version": 2, "steps": [10, 50, 100], "step_interval_s": 1,
               "min_calls_per_step": 5, "max_error_rate": 0.01, "max_p99_ms": 10000, "p99_ratio": 20}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let id = reply.json()["id"].as_str().unwrap().to_string();

    // One rollout per alias; the alias is the rollout's while it runs.
    start_rollout(&client, &p, "healthy", json!({"to_version": 2}))
        .await
        .expect_error(409, "conflict");
    set_alias(
        &client,
        &p,
        "healthy",
        "live",
        json!([{"version": 2, "weight": 1}]),
    )
    .await
    .expect_error(409, "conflict");

    let r = wait_rollout(
        &client,
        &p,
        "healthy",
        &id,
        std::time::Duration::from_secs(120),
        |r| r["outcome"].is_string(),
    )
    .await;
    let calls = traffic.stop().await;
    assert_eq!(r["outcome"], "promoted", "{r:#}");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{r:#}");
    for (step, percent) in steps.iter().zip([10, 50, 100]) {
        assert_eq!(step["percent"], percent);
        assert_eq!(step["verdict"], "passed", "{r:#}");
        assert!(step["new"]["calls"].as_u64().unwrap() >= 5, "{r:#}");
    }
    let live = client
        .get(&p.admin_url("/v1/functions/healthy/aliases/live"))
        .await
        .json();
    assert_eq!(live["routes"], json!([{"version": 2, "weight": 100}]));
    assert!(
        calls.iter().all(|(_, status, _)| *status == 200),
        "a call failed"
    );
    assert!(calls.iter().any(|(_, _, v)| *v == 2) && calls.iter().any(|(_, _, v)| *v == 1));
    // Now every caller gets the new version.
    assert_eq!(
        served(&invoke_keyed(&client, &p.router_url("/v1/functions/healthy/invoke"), "x").await),
        2
    );

    // Metrics: per version, and the rollout's step and outcome.
    let text = p.metrics().await;
    for needle in [
        "taskmesh_router_version_calls_total{tenant=\"default\",function=\"healthy\",version=\"2\"}",
        "taskmesh_router_version_latency_seconds_count{tenant=\"default\",function=\"healthy\",version=\"2\"}",
        "taskmesh_rollout_outcomes_total{tenant=\"default\",function=\"healthy\",alias=\"live\",outcome=\"promoted\"} 1",
        "taskmesh_rollout_step{tenant=\"default\",function=\"healthy\",alias=\"live\"} -1",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }

    // The CLI shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
        .args([
            "rollout",
            "status",
            "healthy",
            "--admin-url",
            &p.admin_url(""),
        ])
        .env("TASKMESH_API_KEY", &p.admin_key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("promoted") && text.contains("step 2 100 %"),
        "{text}"
    );
}

#[tokio::test]
async fn a_failing_version_is_rolled_back_at_its_first_step_and_the_old_one_keeps_serving() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    // Version 2's outputs break its output schema: every call is 502 invalid_output.
    digits_versions(
        &client,
        &p,
        "failing",
        2,
        json!({"output_schema": {"type": "object", "required": ["no_such_field"]}}),
    )
    .await;
    set_alias(
        &client,
        &p,
        "failing",
        "live",
        json!([{"version": 1, "weight": 100}]),
    )
    .await;
    let traffic = Traffic::start(
        &client,
        &p.router_url("/v1/functions/failing/invoke"),
        8,
        "f",
    );
    let reply = start_rollout(
        &client,
        &p,
        "failing",
        json!({"to_version": 2, "steps": [10, 50, 100], "step_interval_s": 30,
               "min_calls_per_step": 10, "max_error_rate": 0.05}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let r = wait_rollout(
        &client,
        &p,
        "failing",
        &id,
        std::time::Duration::from_secs(60),
        |r| r["outcome"].is_string(),
    )
    .await;
    let ended = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let calls = traffic.stop().await;

    assert_eq!(r["outcome"], "rolled_back", "{r:#}");
    assert_eq!(r["step"], 0, "rolled back at its first step: {r:#}");
    assert_eq!(r["steps"].as_array().unwrap().len(), 1);
    assert_eq!(r["steps"][0]["verdict"], "breached");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("error rate"), "{reason}");
    let live = client
        .get(&p.admin_url("/v1/functions/failing/aliases/live"))
        .await
        .json();
    assert_eq!(live["routes"], json!([{"version": 1, "weight": 100}]));

    // The old version served every call it got; only the canary's calls failed.
    let failed: Vec<_> = calls.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(calls
        .iter()
        .filter(|(_, _, v)| *v == 1)
        .all(|(_, s, _)| *s == 200));
    let elsewhere: Vec<_> = failed.iter().filter(|(_, _, v)| *v != 2).collect();
    assert!(
        elsewhere.is_empty(),
        "failures not on the canary: {elsewhere:?}"
    );
    assert!(!failed.is_empty());
    let before: Vec<_> = calls.iter().filter(|(t, _, _)| *t <= ended).collect();
    let share = failed.len() as f64 / before.len() as f64;
    assert!(
        share < 0.2,
        "failures were {share} of calls during the canary"
    );
    // After the rollback every call is on the old version.
    let after: Vec<_> = calls
        .iter()
        .filter(|(t, _, _)| *t > ended + std::time::Duration::from_millis(600))
        .collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|(_, s, v)| *s == 200 && *v == 1));
    let text = p.metrics().await;
    assert!(
        text.contains("taskmesh_router_version_errors_total{tenant=\"default\",function=\"failing\",version=\"2\",kind=\"invalid_output\"}"),
        "{text}"
    );
    assert!(text.contains("outcome=\"rolled_back\"} 1"), "{text}");
}

#[tokio::test]
async fn a_rollout_resumes_from_its_step_after_a_restart() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_versions(&client, &p, "durable", 2, json!({})).await;
    set_alias(
        &client,
        &p,
        "durable",
        "live",
        json!([{"version": 1, "weight": 100}]),
    )
    .await;
    let traffic = Traffic::start(
        &client,
        &p.router_url("/v1/functions/durable/invoke"),
        6,
        "d",
    );
    let reply = start_rollout(
        &client,
        &p,
        "durable",
        json!({"to_version": 2, "steps": [10, 20, 30, 100], "step_interval_s": 2,
               "min_calls_per_step": 3, "max_p99_ms": 10000, "p99_ratio": 20}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let before = wait_rollout(
        &client,
        &p,
        "durable",
        &id,
        std::time::Duration::from_secs(60),
        |r| r["step"].as_u64().unwrap() >= 1 && r["state"] == "running",
    )
    .await;
    traffic.stop().await;
    let dir = p.stop();

    let p = Platform::start_in(dir, &["--no-examples"], "warn", false);
    let client = p.client();
    let r = rollout_state(&client, &p, "durable", &id).await;
    assert!(r["step"].as_u64() >= before["step"].as_u64(), "{r:#}");
    assert_eq!(
        r["steps"][0]["started_at_ms"],
        before["steps"][0]["started_at_ms"]
    );
    let traffic = Traffic::start(
        &client,
        &p.router_url("/v1/functions/durable/invoke"),
        6,
        "e",
    );
    let r = wait_rollout(
        &client,
        &p,
        "durable",
        &id,
        std::time::Duration::from_secs(120),
        |r| r["outcome"].is_string(),
    )
    .await;
    traffic.stop().await;
    assert_eq!(r["outcome"], "promoted", "{r:#}");
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4, "{r:#}");
    assert!(steps.iter().all(|s| s["verdict"] == "passed"), "{r:#}");
    assert_eq!(
        steps[0]["started_at_ms"],
        before["steps"][0]["started_at_ms"]
    );
}

#[tokio::test]
async fn bad_rollout_requests_get_422_404_and_409() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_versions(&client, &p, "rb", 2, json!({})).await;
    start_rollout(&client, &p, "nosuch", json!({"to_version": 1}))
        .await
        .expect_error(404, "not_found");
    // The alias must exist first.
    start_rollout(&client, &p, "rb", json!({"to_version": 2}))
        .await
        .expect_error(404, "not_found");
    set_alias(
        &client,
        &p,
        "rb",
        "live",
        json!([{"version": 1, "weight": 100}]),
    )
    .await;
    for (body, pointer) in [
        (json!({"to_version": 9}), "/to_version"),
        (json!({"to_version": 2, "steps": [5, 50]}), "/steps"),
        (json!({"to_version": 2, "steps": [50, 25, 100]}), "/steps"),
        (
            json!({"to_version": 2, "max_error_rate": 3}),
            "/max_error_rate",
        ),
        (json!({"to_version": 1}), "/to_version"),
        (json!({"to_version": 2, "stepz": [100]}), ""),
    ] {
        let err = start_rollout(&client, &p, "rb", body.clone())
            .await
            .expect_error(422, "invalid_input");
        assert_eq!(err["details"][0]["pointer"], pointer, "{body}");
    }
    let reply = start_rollout(
        &client,
        &p,
        "rb",
        json!({"to_version": 2, "step_interval_s": 3600}),
    )
    .await;
    assert_eq!(reply.status, 201);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    start_rollout(&client, &p, "rb", json!({"to_version": 2}))
        .await
        .expect_error(409, "conflict");
    let url = |action: &str| p.admin_url(&format!("/v1/functions/rb/rollouts/{id}/{action}"));
    client
        .post_json(&url("resume"), &json!({}))
        .await
        .expect_error(409, "conflict");
    client
        .post_json(&url("explode"), &json!({}))
        .await
        .expect_error(404, "not_found");
    client
        .get(&p.admin_url("/v1/functions/rb/rollouts/nope"))
        .await
        .expect_error(404, "not_found");
    let paused = client.post_json(&url("pause"), &json!({})).await;
    assert_eq!(paused.json()["state"], "paused");
    client
        .post_json(&url("pause"), &json!({}))
        .await
        .expect_error(409, "conflict");
    let resumed = client.post_json(&url("resume"), &json!({})).await.json();
    assert!(
        resumed["state"] == "running" || resumed["state"] == "warming",
        "{resumed}"
    );
    let aborted = client.post_json(&url("abort"), &json!({})).await.json();
    assert_eq!(aborted["outcome"], "aborted");
    client
        .post_json(&url("abort"), &json!({}))
        .await
        .expect_error(409, "conflict");
    // Aborting put the alias back, and freed it.
    let live = client
        .get(&p.admin_url("/v1/functions/rb/aliases/live"))
        .await
        .json();
    assert_eq!(live["routes"], json!([{"version": 1, "weight": 100}]));
    assert_eq!(
        set_alias(
            &client,
            &p,
            "rb",
            "live",
            json!([{"version": 2, "weight": 1}])
        )
        .await
        .status,
        200
    );
}
