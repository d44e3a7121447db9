//! Runtime instances end to end: cold starts, warm pools, scale to zero, the
//! memory budget, deadline-aware priority queues. The real `taskmesh up`
//! process over HTTP/2.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Registers `model` as `name` with the definition of `example`, plus `extra` fields.
async fn register_as(p: &Platform, name: &str, example: &str, model: &str, extra: Value) {
    let client = p.client();
    let digest = upload(&client, p, model).await;
    let mut doc = definition_with(example, &digest);
    doc["name"] = json!(name);
    set_fields(&mut doc, &extra);
    register(&client, p, &doc).await;
}

async fn cold(client: &TestClient, url: &str, body: &Value) -> bool {
    let reply = client.post_json(url, body).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    reply
        .header("x-taskmesh-cold-start")
        .expect("cold-start header")
        == "true"
}

/// The in-process node's view of one function, from `GET /v1/nodes`.
async fn pool(p: &Platform, function: &str) -> Option<Value> {
    let nodes = p.client().get(&p.admin_url("/v1/nodes")).await.json();
    nodes["nodes"][0]["warm"]
        .as_array()?
        .iter()
        .find(|f| f["function"] == function)
        .cloned()
}

async fn wait_for(p: &Platform, function: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if pool(p, function).await.as_ref().is_some_and(&check) {
            return;
        }
        assert!(Instant::now() < deadline, "{function} never became {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cold_then_warm_then_cold_again_after_the_idle_timeout() {
    let p = Platform::start(&["--no-examples"]);
    let scaling = json!({"scaling": {"min_instances": 0, "idle_timeout_s": 1}});
    register_as(
        &p,
        "digits",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        scaling,
    )
    .await;
    let client = p.client();
    let url = p.router_url("/v1/functions/digits/invoke");
    assert!(cold(&client, &url, &sample()).await);
    assert!(!cold(&client, &url, &sample()).await);
    assert!(!cold(&client, &url, &sample()).await);
    // Scale to zero: the instance goes once idle for a second.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(
        pool(&p, "digits").await.is_none(),
        "the idle instance was not dropped"
    );
    assert!(cold(&client, &url, &sample()).await);

    let metrics = p.metrics().await;
    assert!(
        metrics.contains(
            r#"taskmesh_runtime_cold_start_seconds_count{tenant="default",function="digits"} 2"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn min_instances_stay_warm_across_the_idle_timeout() {
    let p = Platform::start(&["--no-examples"]);
    let scaling = json!({"scaling": {"min_instances": 1, "idle_timeout_s": 1}});
    register_as(
        &p,
        "digits",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        scaling,
    )
    .await;
    // Warmed at registration, before any call.
    wait_for(&p, "digits", "warm", |f| f["instances"] == 1).await;
    let client = p.client();
    let url = p.router_url("/v1/functions/digits/invoke");
    assert!(!cold(&client, &url, &sample()).await);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(!cold(&client, &url, &sample()).await);
    assert_eq!(pool(&p, "digits").await.unwrap()["instances"], 1);
}

#[tokio::test]
async fn the_memory_budget_evicts_the_least_recently_used_and_refuses_when_it_cannot() {
    // 10 MiB: two small instances fit (about 4 MiB each), a third evicts one.
    let p = Platform::start(&["--no-examples", "--memory-budget-mb", "10"]);
    let client = p.client();
    register_as(
        &p,
        "digits",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        json!({}),
    )
    .await;
    register_iris_yaml(&client, &p).await;
    register_as(
        &p,
        "tensors",
        "examples/tensors/function.json",
        "examples/tensors/model.onnx",
        json!({}),
    )
    .await;
    let digits_url = p.router_url("/v1/functions/digits/invoke");
    let iris_url = p.router_url("/v1/functions/iris/invoke");
    let tensors_url = p.router_url("/v1/functions/tensors/invoke");
    let iris_body = generated_json("examples/iris/sample.json");
    let tensors_body =
        json!({"a": [1, 2, 3], "b": [1, 2], "c": [1, 2], "d": [true, false, true], "e": [1.5]});

    assert!(cold(&client, &digits_url, &sample()).await);
    assert!(cold(&client, &iris_url, &iris_body).await);
    assert!(
        !cold(&client, &digits_url, &sample()).await,
        "digits is now the most recently used"
    );
    // Tensors needs room: iris (least recently used) goes, digits stays.
    assert!(cold(&client, &tensors_url, &tensors_body).await);
    assert!(!cold(&client, &digits_url, &sample()).await);
    assert!(
        cold(&client, &iris_url, &iris_body).await,
        "iris was evicted"
    );
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(r#"taskmesh_runtime_evictions_total{tenant="default",function="iris"} 1"#),
        "{metrics}"
    );

    // A busy 6 MiB instance leaves no room that can be freed: 503 overloaded.
    register_slow(&p, "slow", json!({"timeout_ms": 20000})).await;
    let slow_url = p.router_url("/v1/functions/slow/invoke");
    let long = {
        let (client, url) = (client.clone(), slow_url.clone());
        tokio::spawn(async move { client.post_json(&url, &rows(1024)).await.status })
    };
    wait_for(&p, "slow", "busy", |f| f["busy"] == 1).await;
    let refused = client.post_json(&digits_url, &sample()).await;
    if refused.status == 200 {
        // digits stayed loaded; ask for something that must load.
        let reply = client.post_json(&iris_url, &iris_body).await;
        reply.expect_error(503, "overloaded");
        assert!(reply.header("retry-after").is_some());
    } else {
        refused.expect_error(503, "overloaded");
        assert!(refused.header("retry-after").is_some());
    }
    assert_eq!(long.await.unwrap(), 200);
}

#[tokio::test]
async fn a_saturated_slow_function_neither_starves_a_light_one_nor_hangs() {
    let p = Platform::start(&["--no-examples"]);
    register_as(
        &p,
        "digits",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        json!({}),
    )
    .await;
    register_slow(
        &p,
        "slow",
        json!({"timeout_ms": 3000, "retry": {"max_attempts": 1}, "scaling": {"max_instances": 1, "concurrency": 2}}),
    )
    .await;
    let client = p.client();
    let digits_url = p.router_url("/v1/functions/digits/invoke");
    let slow_url = p.router_url("/v1/functions/slow/invoke");
    assert_eq!(client.post_json(&slow_url, &rows(1)).await.status, 200);

    async fn median_latency(client: &TestClient, url: &str) -> Duration {
        let mut took = Vec::new();
        for _ in 0..21 {
            let started = Instant::now();
            let reply = client.post_json(url, &sample()).await;
            assert_eq!(reply.status, 200, "{}", reply.json());
            took.push(started.elapsed());
        }
        took.sort();
        took[took.len() / 2]
    }
    let baseline = median_latency(&client, &digits_url).await;

    // 12 concurrent heavy calls against one instance and a queue of two.
    let heavy: Vec<_> = (0..12)
        .map(|_| {
            let (client, url) = (client.clone(), slow_url.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let reply = client.post_json(&url, &rows(64)).await;
                (
                    reply.status.as_u16(),
                    reply.json()["error"]["code"].clone(),
                    started.elapsed(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let during = median_latency(&client, &digits_url).await;
    let mut served = 0;
    let mut refused = 0;
    for call in heavy {
        let (status, code, took) = call.await.unwrap();
        match status {
            200 => served += 1,
            503 => {
                assert_eq!(code, "overloaded");
                assert!(
                    took < Duration::from_millis(3000),
                    "refused only after {took:?}, not at once"
                );
                refused += 1;
            }
            other => panic!("a heavy call ended with {other} {code}"),
        }
    }
    assert!(
        served >= 1 && refused >= 6,
        "served {served}, refused {refused}"
    );
    let factor = during.as_secs_f64() / baseline.as_secs_f64();
    eprintln!(
        "light median {baseline:?} alone, {during:?} beside the saturated function ({factor:.1}x)"
    );
    assert!(factor < 8.0, "the light function slowed down {factor:.1}x");
}

#[tokio::test]
async fn priority_orders_the_queue_and_decides_who_is_shed() {
    let p = Platform::start(&["--no-examples"]);
    register_slow(
        &p,
        "slow",
        json!({"timeout_ms": 30000, "scaling": {"max_instances": 1, "concurrency": 3}}),
    )
    .await;
    let client = p.client();
    let url = p.router_url("/v1/functions/slow/invoke");
    assert_eq!(client.post_json(&url, &rows(1)).await.status, 200);

    let blocker = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.post_json(&url, &rows(1024)).await.status })
    };
    wait_for(&p, "slow", "busy", |f| f["busy"] == 1).await;
    let send = |priority: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let reply = client
                .send(
                    http::Method::POST,
                    &url,
                    &[
                        ("content-type", "application/json"),
                        ("x-taskmesh-priority", priority),
                    ],
                    serde_json::to_vec(&rows(8)).unwrap(),
                )
                .await;
            (
                priority,
                reply.status.as_u16(),
                reply.json()["error"]["code"].clone(),
                Instant::now(),
            )
        })
    };
    // Three lows fill the queue (capacity 3), then a high arrives.
    let mut calls = Vec::new();
    for queued in 1..=3 {
        calls.push(send("low"));
        wait_for(&p, "slow", "queued", move |f| f["queued"] == queued).await;
    }
    calls.push(send("high"));
    assert_eq!(blocker.await.unwrap(), 200);
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let shed: Vec<_> = results.iter().filter(|r| r.1 == 503).collect();
    assert_eq!(shed.len(), 1, "{results:?}");
    assert_eq!(shed[0].0, "low");
    assert_eq!(shed[0].2, "overloaded");
    let high = results.iter().find(|r| r.0 == "high").unwrap();
    assert_eq!(high.1, 200);
    for low in results.iter().filter(|r| r.0 == "low" && r.1 == 200) {
        assert!(
            high.3 < low.3,
            "a low call finished before the high one: {results:?}"
        );
    }
    // An unknown priority is refused.
    let reply = client
        .send(
            http::Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("x-taskmesh-priority", "urgent"),
            ],
            serde_json::to_vec(&rows(1)).unwrap(),
        )
        .await;
    reply.expect_error(400, "bad_request");
}

#[tokio::test]
async fn batched_answers_equal_unbatched_ones_under_48_concurrent_calls() {
    let p = Platform::start(&["--no-examples"]);
    let dynamic = json!({"inputs": {"pixels": {"tensor": "float_input", "dtype": "float32", "shape": [-1, 64]}}});
    register_as(
        &p,
        "plain",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        dynamic.clone(),
    )
    .await;
    let mut batched = dynamic.clone();
    batched["batching"] = json!({"max_batch_size": 16, "max_delay_us": 5000});
    batched["scaling"] = json!({"max_instances": 1, "concurrency": 64});
    register_as(
        &p,
        "batched",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        batched,
    )
    .await;
    let client = p.client();
    let reference = generated_json("examples/digits/reference.json");
    let cases = reference["cases"].as_array().unwrap();
    // 48 different inputs: the reference images, shifted and rescaled.
    let inputs: Vec<Value> = (0..48)
        .map(|i| {
            let base = cases[i % cases.len()]["input"]["float_input"]["data"]
                .as_array()
                .unwrap();
            let pixels: Vec<f64> = base
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    ((v.as_f64().unwrap() * (1.0 + i as f64 / 97.0)) + ((i + j) % 3) as f64)
                        .min(16.0)
                })
                .collect();
            json!({"pixels": pixels})
        })
        .collect();
    let mut expected = Vec::new();
    for input in &inputs {
        let reply = client
            .post_json(&p.router_url("/v1/functions/plain/invoke"), input)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        expected.push(reply.json());
    }
    let url = p.router_url("/v1/functions/batched/invoke");
    assert_eq!(client.post_json(&url, &inputs[0]).await.status, 200);
    let calls: Vec<_> = inputs
        .iter()
        .map(|input| {
            let (client, url, input) = (client.clone(), url.clone(), input.clone());
            tokio::spawn(async move { client.post_json(&url, &input).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.json());
        let got = reply.json();
        assert_eq!(got["label"], expected[i]["label"], "call {i}");
        assert_close(
            &got["probabilities"],
            &expected[i]["probabilities"],
            1e-6,
            &format!("call {i}"),
        );
    }
    // Batching really happened: fewer runs than calls.
    let (runs, calls) = batch_runs(&p, "batched").await;
    assert_eq!(calls, 49.0);
    assert!(runs < 40.0, "48 concurrent calls ran in {runs} runs");
}

/// Runs and calls of a batched function so far, from the node's
/// `taskmesh_runtime_batch_size` histogram.
async fn batch_runs(p: &Platform, function: &str) -> (f64, f64) {
    let metrics = p.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "{name}{{tenant=\"default\",function=\"{function}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    (
        value("taskmesh_runtime_batch_size_count"),
        value("taskmesh_runtime_batch_size_sum"),
    )
}

#[tokio::test]
async fn a_lone_batched_call_on_an_idle_instance_does_not_wait_for_company() {
    let p = Platform::start(&["--no-examples"]);
    // Waiting for max_delay_us (1 s) would take it past its 700 ms deadline.
    register_as(
        &p,
        "lone",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        json!({
            "inputs": {"pixels": {"tensor": "float_input", "dtype": "float32", "shape": [-1, 64]}},
            "batching": {"max_batch_size": 16, "max_delay_us": 1_000_000},
            "timeout_ms": 700,
            "retry": {"max_attempts": 1},
            "scaling": {"min_instances": 1, "max_instances": 1, "concurrency": 4}
        }),
    )
    .await;
    wait_for(&p, "lone", "warm", |f| f["instances"] == 1).await;
    let client = p.client();
    let url = p.router_url("/v1/functions/lone/invoke");
    for i in 0..5 {
        let reply = client.post_json(&url, &sample()).await;
        assert_eq!(reply.status, 200, "call {i}: {}", reply.json());
        assert_eq!(reply.json()["label"], 2);
    }
    assert_eq!(batch_runs(&p, "lone").await, (5.0, 5.0));
}

#[tokio::test]
async fn calls_that_arrive_while_the_instance_runs_are_batched_together() {
    let p = Platform::start(&["--no-examples"]);
    // max_delay_us 0: batches form only from calls that wait for the instance.
    register_slow(
        &p,
        "gathered",
        json!({
            "batching": {"max_batch_size": 1024, "max_delay_us": 0},
            "timeout_ms": 20_000,
            "retry": {"max_attempts": 1},
            "scaling": {"max_instances": 1, "concurrency": 4}
        }),
    )
    .await;
    let client = p.client();
    let url = p.router_url("/v1/functions/gathered/invoke");
    assert_eq!(client.post_json(&url, &rows(1)).await.status, 200);
    // One long run (512 rows: hundreds of ms)...
    let long = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.post_json(&url, &rows(512)).await.status })
    };
    wait_for(&p, "gathered", "busy", |f| f["busy"] == 1).await;
    // ... and 8 calls that arrive one by one while it runs, 10 ms apart (so
    // each finds the batcher with nothing else waiting).
    let mut calls = Vec::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), url.clone());
        calls.push(tokio::spawn(async move {
            client.post_json(&url, &rows(1)).await.status
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    assert_eq!(long.await.unwrap(), 200);
    let (runs, calls) = batch_runs(&p, "gathered").await;
    assert_eq!(calls, 10.0);
    // The warm-up, the long run, then the 8 in one run (two if one of them
    // reached the node only after the long run ended).
    assert!(
        runs <= 4.0,
        "8 calls that waited for the instance ran in {} runs",
        runs - 2.0
    );
}

#[tokio::test]
async fn a_node_that_is_overloaded_is_retried_then_reported() {
    let p = Platform::start(&["--no-examples"]);
    let retry = json!({"max_attempts": 3, "initial_backoff_ms": 20, "max_backoff_ms": 40});
    register_slow(&p, "slow", json!({"timeout_ms": 30000, "retry": retry, "scaling": {"max_instances": 1, "concurrency": 1}})).await;
    let client = p.client();
    let url = p.router_url("/v1/functions/slow/invoke");
    assert_eq!(client.post_json(&url, &rows(1)).await.status, 200);
    let blocker = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.post_json(&url, &rows(2048)).await.status })
    };
    wait_for(&p, "slow", "busy", |f| f["busy"] == 1).await;
    let queued = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { client.post_json(&url, &rows(1)).await.status })
    };
    wait_for(&p, "slow", "queued", |f| f["queued"] == 1).await;
    // The queue (capacity 1) is full: the node answers 503 overloaded, the
    // router retries, and reports overloaded when its attempts are used up.
    let reply = client.post_json(&url, &rows(1)).await;
    reply.expect_error(503, "overloaded");
    assert!(reply.header("retry-after").is_some());
    let metrics = p.metrics().await;
    assert!(
        metrics.contains(
            r#"taskmesh_router_retries_total{tenant="default",function="slow",version="1"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"taskmesh_router_breaker_state{tenant="default",function="slow",version="1"} 0"#
        ),
        "overload is not the function's failure: {metrics}"
    );
    assert_eq!(blocker.await.unwrap(), 200);
    assert_eq!(queued.await.unwrap(), 200);
}

#[tokio::test]
async fn a_node_without_a_gpu_says_it_cannot_serve_gpu_functions() {
    let p = Platform::start(&["--no-examples"]);
    register_as(
        &p,
        "digits-gpu",
        "examples/digits/function.json",
        "examples/digits/model.onnx",
        json!({"resources": {"gpu": true}}),
    )
    .await;
    let client = p.client();
    let nodes = client.get(&p.admin_url("/v1/nodes")).await.json();
    assert_eq!(
        nodes["nodes"][0]["gpus"], 0,
        "CI machines have no GPU: {nodes}"
    );
    let err = client
        .post_json(&p.router_url("/v1/functions/digits-gpu/invoke"), &sample())
        .await
        .expect_error(503, "unavailable");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("cannot serve GPU functions"),
        "{err}"
    );
}

#[tokio::test]
async fn abandoned_calls_never_leak_an_instance() {
    let p = Platform::start(&["--no-examples"]);
    register_slow(&p, "slow", json!({"timeout_ms": 150, "retry": {"max_attempts": 1}, "circuit_breaker": {"minimum_calls": 100000}, "scaling": {"max_instances": 1, "concurrency": 64}})).await;
    let client = p.client();
    let url = p.router_url("/v1/functions/slow/invoke");
    // Warm it up: on a busy machine the cold start alone may pass 150 ms.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.post_json(&url, &rows(1)).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the slow function never answered"
        );
    }
    // Many calls whose deadlines pass while they wait or run: each gives up
    // somewhere between the queue, the grant and the run.
    for _ in 0..3 {
        let calls: Vec<_> = (0..40)
            .map(|i| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(
                    async move { client.post_json(&url, &rows(40 + i)).await.status.as_u16() },
                )
            })
            .collect();
        for call in calls {
            let status = call.await.unwrap();
            assert!([200, 503, 504].contains(&status), "{status}");
        }
    }
    // The instance is free again: nothing is busy, and a small call is served.
    wait_for(&p, "slow", "idle", |f| f["busy"] == 0 && f["queued"] == 0).await;
    // Under this burst the router may have ejected the node for a moment
    // (connections that timed out within the calls' short deadlines); it
    // comes back after its 2 s open period.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = client.post_json(&url, &rows(1)).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
}
