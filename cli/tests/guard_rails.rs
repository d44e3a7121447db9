//! Guard rails end to end: the real `taskmesh up` process over HTTP/2, each
//! refusal with its status, code and headers.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// The digits example under another name, with `extra` fields set.
async fn digits(client: &TestClient, p: &Platform, name: &str, extra: Value) {
    let digest = upload(client, p, "examples/digits/model.onnx").await;
    register(client, p, &digits_definition(&digest, name, &extra)).await;
}

#[tokio::test]
async fn keys_tenants_and_scopes() {
    let p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    digits(&operator, &p, "digits", json!({})).await;
    let invoke = |name: &str| p.router_url(&format!("/v1/functions/{name}/invoke"));

    // No key, a malformed key, an unknown key: 401 on both listeners.
    let anonymous = TestClient::h2c();
    anonymous
        .post_json(&invoke("digits"), &sample())
        .await
        .expect_error(401, "unauthenticated");
    anonymous
        .get(&p.admin_url("/v1/functions"))
        .await
        .expect_error(401, "unauthenticated");
    TestClient::h2c()
        .with_key("garbage")
        .post_json(&invoke("digits"), &sample())
        .await
        .expect_error(401, "unauthenticated");
    let forged = format!("tm_{}_{}", "0".repeat(16), "f".repeat(64));
    TestClient::h2c()
        .with_key(&forged)
        .get(&p.admin_url("/v1/functions"))
        .await
        .expect_error(401, "unauthenticated");

    // A tenant admin registers in its own namespace.
    let (_, acme_admin_key) = create_client(
        &operator,
        &p,
        json!({"name": "acme-admin", "tenant": "acme", "scopes": ["admin", "invoke"]}),
    )
    .await;
    let acme = TestClient::h2c().with_key(&acme_admin_key);
    digits(&acme, &p, "acme-digits", json!({})).await;
    assert_eq!(
        acme.post_json(&invoke("acme-digits"), &sample())
            .await
            .status,
        200
    );

    // Another tenant's function is not found, never forbidden.
    operator
        .post_json(&invoke("acme-digits"), &sample())
        .await
        .expect_error(404, "not_found");
    acme.post_json(&invoke("digits"), &sample())
        .await
        .expect_error(404, "not_found");
    acme.get(&p.router_url("/v2/models/digits"))
        .await
        .expect_oip_error(404, "not_found");
    acme.get(&p.admin_url("/v1/functions/digits"))
        .await
        .expect_error(404, "not_found");
    let listed = acme.get(&p.admin_url("/v1/functions")).await.json();
    assert_eq!(listed["functions"].as_array().unwrap().len(), 1, "{listed}");

    // A tenant admin creates invoke clients in its tenant only.
    let (_, app_key) = create_client(&acme, &p, json!({"name": "app", "scopes": ["invoke"]})).await;
    let err = acme
        .post_json(
            &p.admin_url("/v1/clients"),
            &json!({"name": "x", "tenant": "other", "scopes": ["invoke"]}),
        )
        .await;
    err.expect_error(403, "forbidden");
    let app = TestClient::h2c().with_key(&app_key);
    assert_eq!(
        app.post_json(&invoke("acme-digits"), &sample())
            .await
            .status,
        200
    );
    // The invoke scope cannot use the admin API.
    app.get(&p.admin_url("/v1/functions"))
        .await
        .expect_error(403, "forbidden");
    app.post_json(
        &p.admin_url("/v1/clients"),
        &json!({"name": "y", "scopes": ["invoke"]}),
    )
    .await
    .expect_error(403, "forbidden");
    // Bad client requests are 422.
    operator
        .post_json(
            &p.admin_url("/v1/clients"),
            &json!({"name": "z", "scopes": ["operator"]}),
        )
        .await
        .expect_error(422, "invalid_input");
    // No error body ever repeats a key.
    let reply = TestClient::h2c()
        .with_key(&forged)
        .post_json(&invoke("digits"), &sample())
        .await;
    assert!(!String::from_utf8_lossy(&reply.body).contains(&forged[20..]));
}

#[tokio::test]
async fn metrics_keep_two_tenants_functions_of_one_name_apart() {
    let p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    let url = p.router_url("/v1/functions/digits/invoke");
    // Tenants a and b each register their own `digits`; a calls once, b twice.
    for (tenant, calls) in [("a", 1), ("b", 2)] {
        let (_, key) = create_client(
            &operator,
            &p,
            json!({"name": format!("{tenant}-admin"), "tenant": tenant, "scopes": ["admin", "invoke"]}),
        )
        .await;
        let admin = TestClient::h2c().with_key(&key);
        digits(&admin, &p, "digits", json!({})).await;
        for _ in 0..calls {
            assert_eq!(admin.post_json(&url, &sample()).await.status, 200);
        }
    }
    // A call without a key names no tenant and no function.
    TestClient::h2c()
        .post_json(&url, &sample())
        .await
        .expect_error(401, "unauthenticated");

    let metrics = p.metrics().await;
    for needle in [
        r#"taskmesh_router_requests_total{tenant="a",function="digits",version="1",status="200"} 1"#,
        r#"taskmesh_router_requests_total{tenant="b",function="digits",version="1",status="200"} 2"#,
        r#"taskmesh_router_request_duration_seconds_count{tenant="a",function="digits"} 1"#,
        r#"taskmesh_router_request_duration_seconds_count{tenant="b",function="digits"} 2"#,
        r#"taskmesh_router_version_calls_total{tenant="a",function="digits",version="1"} 1"#,
        r#"taskmesh_router_version_calls_total{tenant="b",function="digits",version="1"} 2"#,
        r#"taskmesh_router_breaker_state{tenant="a",function="digits",version="1"} 0"#,
        r#"taskmesh_router_breaker_state{tenant="b",function="digits",version="1"} 0"#,
        r#"taskmesh_runtime_cold_start_seconds_count{tenant="a",function="digits"} 1"#,
        r#"taskmesh_runtime_cold_start_seconds_count{tenant="b",function="digits"} 1"#,
        r#"taskmesh_router_requests_total{tenant="-",function="-",version="-",status="401"} 1"#,
        r#"taskmesh_router_refusals_total{tenant="-",function="-",version="-",code="unauthenticated"} 1"#,
    ] {
        assert!(metrics.contains(needle), "{needle} missing from {metrics}");
    }
    // Every router and node series that names a function names its tenant
    // first (after a histogram bucket's `le`, which the encoder puts first).
    let families = ["taskmesh_router_", "taskmesh_runtime_"];
    for line in metrics
        .lines()
        .filter(|l| families.iter().any(|f| l.starts_with(f)) && l.contains("function="))
    {
        let labels = line.split_once('{').map_or("", |(_, rest)| rest);
        let labels = match labels.strip_prefix("le=\"") {
            Some(rest) => rest.split_once("\",").map_or("", |(_, rest)| rest),
            None => labels,
        };
        assert!(
            labels.starts_with("tenant="),
            "a series without a leading tenant: {line}"
        );
    }
}

#[tokio::test]
async fn schemas_in_and_out() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits(&client, &p, "digits", json!({})).await;
    let mut pixels = sample()["pixels"].clone();
    pixels[3] = json!(17);
    let err = client
        .post_json(
            &p.router_url("/v1/functions/digits/invoke"),
            &json!({"pixels": pixels}),
        )
        .await
        .expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/pixels/3", "{err}");

    // An output that breaks the output schema is the function's fault: 502.
    digits(
        &client,
        &p,
        "strict",
        json!({"output_schema": {"type": "object", "required": ["confidence"]}}),
    )
    .await;
    let err = client
        .post_json(&p.router_url("/v1/functions/strict/invoke"), &sample())
        .await
        .expect_error(502, "invalid_output");
    assert_eq!(err["details"][0]["pointer"], "/confidence", "{err}");

    // Schemas that cannot be compiled safely are refused at registration.
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let mut doc = definition_with("examples/digits/function.json", &digest);
    doc["input_schema"] =
        json!({"type": "object", "properties": {"name": {"type": "string", "pattern": "(?<=a)b"}}});
    let err = client
        .post_json(&p.admin_url("/v1/functions"), &doc)
        .await
        .expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/input_schema", "{err}");
}

#[tokio::test]
async fn rate_limits_hold_per_client() {
    let p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    let (rate, burst) = (20.0, 5u64);
    digits(
        &operator,
        &p,
        "digits",
        json!({"rate_limit": {"per_second": rate, "burst": burst}}),
    )
    .await;
    let (_, key_a) = create_client(
        &operator,
        &p,
        json!({"name": "hammer", "scopes": ["invoke"]}),
    )
    .await;
    let (_, key_b) = create_client(
        &operator,
        &p,
        json!({"name": "polite", "scopes": ["invoke"]}),
    )
    .await;
    let url = p.router_url("/v1/functions/digits/invoke");

    // One 429 shows the headers.
    let hammer = TestClient::h2c().with_key(&key_a);
    let mut limited = None;
    for _ in 0..50 {
        let reply = hammer.post_json(&url, &sample()).await;
        if reply.status == 429 {
            limited = Some(reply);
            break;
        }
        assert!(
            reply.header("ratelimit").is_some(),
            "admitted answers carry RateLimit"
        );
    }
    let limited = limited.expect("the burst is exhausted");
    limited.expect_error(429, "rate_limited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert!(limited
        .header("ratelimit-policy")
        .unwrap()
        .contains(&format!("q={burst}")));
    assert!(limited.header("ratelimit").unwrap().contains("r=0"));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A hammers at 5x its rate for 10 s while B calls at its own rate.
    let seconds = 10.0;
    let run = |key: String, per_second: f64| {
        let url = url.clone();
        tokio::spawn(async move {
            let client = TestClient::h2c().with_key(&key);
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
            // A late tick must not be made up with a burst (that would exceed
            // the polite client's rate on a busy machine).
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + Duration::from_secs_f64(seconds);
            let mut calls = Vec::new();
            while Instant::now() < end {
                ticker.tick().await;
                let (client, url) = (client.clone(), url.clone());
                calls.push(tokio::spawn(async move {
                    client.post_json(&url, &sample()).await.status.as_u16()
                }));
            }
            let mut statuses = Vec::new();
            for call in calls {
                statuses.push(call.await.unwrap());
            }
            statuses
        })
    };
    let a = run(key_a, rate * 5.0);
    let b = run(key_b, rate);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let a_ok = a.iter().filter(|s| **s == 200).count() as f64;
    assert!(a.iter().all(|s| *s == 200 || *s == 429), "{a:?}");
    assert!(
        b.iter().all(|s| *s == 200),
        "the polite client was refused: {b:?}"
    );
    // Admitted = burst + rate x time; the rate part must be within 5 %.
    let achieved = (a_ok - burst as f64) / seconds;
    assert!(
        (achieved - rate).abs() <= rate * 0.05,
        "hammer got {achieved:.2}/s for a limit of {rate}/s ({a_ok} of {})",
        a.len()
    );
}

#[tokio::test]
async fn quota_admits_exactly_n_and_survives_a_restart() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits(&client, &p, "digits", json!({"quota": {"per_day": 5}})).await;
    let url = p.router_url("/v1/functions/digits/invoke");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let reply = client.post_json(&url, &sample()).await;
        if reply.status == 429 {
            reply.expect_error(429, "quota_exceeded");
            let retry_after: u64 = reply.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=86_400).contains(&retry_after));
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429, 429]);
    // Counters reach the store within a second; a restart keeps them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let data = p.stop();
    let p = Platform::start_in(data, &["--no-examples"], "warn", false);
    p.client()
        .post_json(&p.router_url("/v1/functions/digits/invoke"), &sample())
        .await
        .expect_error(429, "quota_exceeded");
}

#[tokio::test]
async fn breaker_opens_on_a_failing_function_and_recovers() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "tests/models/addpair/model.onnx").await;
    let doc = json!({
        "name": "addpair", "model": digest,
        "inputs": {"a": {"tensor": "a", "shape": [-1, 3]}, "b": {"tensor": "b", "shape": [-1, 3]}},
        "outputs": {"s": {"tensor": "s"}},
        "retry": {"max_attempts": 1},
        "circuit_breaker": {"failure_rate": 0.5, "minimum_calls": 4, "window_s": 30, "open_s": 2, "half_open_calls": 1}
    });
    register(&client, &p, &doc).await;
    let url = p.router_url("/v1/functions/addpair/invoke");
    let failing = json!({"a": [1, 2, 3, 4, 5, 6], "b": [1, 2, 3, 4, 5, 6, 7, 8, 9]});
    let fine = json!({"a": [1, 2, 3], "b": [1, 1, 1]});
    // Client errors do not count.
    for _ in 0..5 {
        client
            .post_json(&url, &json!({"a": [1]}))
            .await
            .expect_error(422, "invalid_input");
    }
    for _ in 0..4 {
        let err = client
            .post_json(&url, &failing)
            .await
            .expect_error(502, "function_failed");
        assert!(
            err["message"].as_str().unwrap().contains("broadcast"),
            "{err}"
        );
    }
    // Open: refused at once, even for good input, with retry-after.
    let refused = client.post_json(&url, &fine).await;
    refused.expect_error(503, "circuit_open");
    assert!(refused.header("retry-after").is_some());
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(
            r#"taskmesh_router_breaker_state{tenant="default",function="addpair",version="1"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"taskmesh_router_refusals_total{tenant="default",function="addpair",version="1",code="circuit_open"} 1"#), "{metrics}");
    // After open_s one trial passes and closes it.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let trial = client.post_json(&url, &fine).await;
    assert_eq!(trial.status, 200, "{}", trial.json());
    assert_eq!(trial.json()["s"], json!([[2.0, 3.0, 4.0]]));
    assert_eq!(client.post_json(&url, &fine).await.status, 200);
}

#[tokio::test]
async fn a_slow_function_times_out_with_504_and_frees_the_node() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let timeout = Duration::from_millis(300);
    let timeout_ms = timeout.as_millis() as u64;
    register_slow(&p, "slow", json!({ "timeout_ms": timeout_ms })).await;
    let url = p.router_url("/v1/functions/slow/invoke");
    // Load the model first so the timed call is all compute.
    assert_eq!(
        client
            .post_json(&url, &json!({"x": vec![0.5; 512]}))
            .await
            .status,
        200
    );
    let started = Instant::now();
    let reply = client.post_json(&url, &rows(1024)).await;
    reply.expect_error(504, "timeout");
    assert!(reply.header("x-taskmesh-invocation-id").is_some());
    // The answer is bounded by the deadline: not before it, and at most a few
    // seconds after it (slack for a loaded machine).
    let waited = started.elapsed();
    assert!(
        waited >= timeout,
        "504 after {waited:?}, before the {timeout:?} deadline"
    );
    let slack = Duration::from_secs(3);
    assert!(
        waited <= timeout + slack,
        "504 after {waited:?}, not bounded by the {timeout:?} deadline (+ {slack:?})"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = client.post_json(&url, &json!({"x": vec![0.5; 512]})).await;
    assert_eq!(
        reply.status,
        200,
        "the node serves again after the slow run: {}",
        reply.json()
    );
}

#[tokio::test]
async fn keys_never_reach_the_logs_even_at_trace_level() {
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start_in(data, &["--no-examples"], "trace", true);
    let operator = p.client();
    digits(&operator, &p, "digits", json!({})).await;
    let (_, key) = create_client(&operator, &p, json!({"name": "app", "scopes": ["invoke"]})).await;
    let forged = format!("tm_{}_{}", "1".repeat(16), "e".repeat(64));
    let url = p.router_url("/v1/functions/digits/invoke");
    assert_eq!(
        TestClient::h2c()
            .with_key(&key)
            .post_json(&url, &sample())
            .await
            .status,
        200
    );
    assert_eq!(
        TestClient::http1()
            .with_key(&key)
            .post_json(&url, &sample())
            .await
            .status,
        200
    );
    TestClient::h2c()
        .with_key(&forged)
        .post_json(&url, &sample())
        .await
        .expect_error(401, "unauthenticated");
    TestClient::h2c()
        .with_key(&key)
        .get(&p.admin_url("/v1/functions"))
        .await
        .expect_error(403, "forbidden");
    let log_file = p.log_file.clone().unwrap();
    let admin_key = p.admin_key.clone();
    let _data = p.stop();
    let logs = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        logs.lines().count() > 50,
        "trace logging produced too little to mean anything"
    );
    for secret in [&admin_key, &key, &forged] {
        let tail = &secret[secret.len() - 24..];
        assert!(!logs.contains(tail), "a key reached the logs");
    }
}

fn retries_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("taskmesh_router_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_refused_connection_is_retried_and_the_dead_node_ejected() {
    // The first candidate of some functions is a node that is not there.
    let (_held, dead) = dead_addr();
    let dead = dead.to_string();
    let p = Platform::start(&["--no-examples", "--extra-node", &dead]);
    let client = p.client();
    let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
    for name in &names {
        let retry =
            json!({"retry": {"max_attempts": 3, "initial_backoff_ms": 5, "max_backoff_ms": 50}});
        digits(&client, &p, name, retry).await;
    }
    for name in &names {
        let url = p.router_url(&format!("/v1/functions/{name}/invoke"));
        let reply = client.post_json(&url, &sample()).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.json());
    }
    let metrics = p.metrics().await;
    let before = retries_total(&metrics);
    assert!(before >= 1, "no call was retried: {metrics}");

    // Three refused connections eject the node: later calls skip it, unretried.
    for _ in 0..5 {
        for name in &names {
            let url = p.router_url(&format!("/v1/functions/{name}/invoke"));
            assert_eq!(client.post_json(&url, &sample()).await.status, 200);
        }
    }
    let after = retries_total(&p.metrics().await);
    assert!(
        after - before <= 3,
        "the dead node was not ejected: {before} then {after} retries"
    );
}

#[tokio::test]
async fn a_refused_connection_without_retries_is_503() {
    let (_held, dead) = dead_addr();
    let dead = dead.to_string();
    let p = Platform::start(&["--no-examples", "--extra-node", &dead]);
    let client = p.client();
    let mut unavailable = 0;
    for i in 0..8 {
        let name = format!("g{i}");
        digits(&client, &p, &name, json!({"retry": {"max_attempts": 1}})).await;
        let url = p.router_url(&format!("/v1/functions/{name}/invoke"));
        let reply = client.post_json(&url, &sample()).await;
        if reply.status == 503 {
            reply.expect_error(503, "unavailable");
            assert!(reply.header("retry-after").is_some());
            unavailable += 1;
        } else {
            assert_eq!(reply.status, 200);
        }
    }
    assert!(
        unavailable > 0,
        "no function was placed on the missing node first"
    );
}

#[tokio::test]
async fn a_clients_plan_and_in_flight_limit_apply() {
    let p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    digits(&operator, &p, "digits", json!({})).await;
    let plan = json!({"rate_limit": {"per_second": 0.5, "burst": 1}, "quota": {"per_day": 3}});
    let (_, key) = create_client(
        &operator,
        &p,
        json!({"name": "small", "scopes": ["invoke"], "plan": plan}),
    )
    .await;
    let small = TestClient::h2c().with_key(&key);
    let url = p.router_url("/v1/functions/digits/invoke");
    assert_eq!(small.post_json(&url, &sample()).await.status, 200);
    small
        .post_json(&url, &sample())
        .await
        .expect_error(429, "rate_limited");
    // The function itself has no limit: the operator is not affected.
    for _ in 0..5 {
        assert_eq!(operator.post_json(&url, &sample()).await.status, 200);
    }

    // max_in_flight: a second concurrent call of the same client is refused.
    let in_flight = json!({"timeout_ms": 20000, "quota": {"max_in_flight": 1}});
    register_slow(&p, "slow", in_flight).await;
    let slow_url = p.router_url("/v1/functions/slow/invoke");
    assert_eq!(operator.post_json(&slow_url, &rows(1)).await.status, 200);
    let long = {
        let (client, url) = (operator.clone(), slow_url.clone());
        tokio::spawn(async move { client.post_json(&url, &rows(256)).await.status })
    };
    // Wait until the long call holds the instance (so it is the one in flight).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = operator.get(&p.admin_url("/v1/nodes")).await.json();
        let busy = nodes["nodes"][0]["warm"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f["function"] == "slow" && f["busy"] == 1);
        if busy {
            break;
        }
        assert!(Instant::now() < deadline, "the long call never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut refused = false;
    for _ in 0..20 {
        let reply = operator
            .post_json(&slow_url, &json!({"x": vec![0; 512]}))
            .await;
        if reply.status == 429 {
            reply.expect_error(429, "quota_exceeded");
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(long.await.unwrap(), 200);
    assert!(refused, "a second call in flight was admitted");
    assert_eq!(
        operator
            .post_json(&slow_url, &json!({"x": vec![0; 512]}))
            .await
            .status,
        200
    );
}
