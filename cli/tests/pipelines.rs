//! Pipelines (contract: pipelines) against a real `taskmesh up` and real
//! ONNX Runtime: a sequence equals the calls by hand, independent steps
//! overlap, `foreach` keeps order, failures and guard refusals stop what comes
//! after, registration refuses bad graphs with pointers, and the pipeline's
//! deadline holds.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

async fn register_pipeline(client: &TestClient, p: &Platform, doc: &Value) -> Reply {
    client.post_json(&p.admin_url("/v1/pipelines"), doc).await
}

async fn run(client: &TestClient, p: &Platform, name: &str, input: &Value) -> Reply {
    let url = p.router_url(&format!("/v1/pipelines/{name}/invoke?trace=steps"));
    client.post_json(&url, input).await
}

/// Registers the digits model again as `name`.
async fn digits_as(client: &TestClient, p: &Platform, name: &str) {
    let digest = upload(client, p, "examples/digits/model.onnx").await;
    register(client, p, &digits_definition(&digest, name, &json!({}))).await;
}

/// Whether the router has seen a call of `function`.
async fn called(p: &Platform, function: &str) -> bool {
    p.metrics().await.lines().any(|l| {
        l.starts_with("taskmesh_router_version_calls")
            && l.contains(&format!("function=\"{function}\""))
    })
}

#[tokio::test]
async fn a_sequence_equals_calling_the_two_functions_by_hand() {
    let p = Platform::start(&[]);
    let client = p.client();
    let image = generated_json("examples/fashion-mnist/sample.json");
    let classified = client
        .post_json(&p.router_url("/v1/functions/fashion-mnist/invoke"), &image)
        .await;
    assert_eq!(classified.status, 200);
    let label = classified.json()["label"].clone();
    let embedded = client
        .post_json(
            &p.router_url("/v1/functions/minilm-embed/invoke"),
            &json!({"text": label}),
        )
        .await;
    assert_eq!(embedded.status, 200);

    // The example registered by `taskmesh up`.
    let reply = run(&client, &p, "look-and-describe", &image).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(reply.header("x-taskmesh-pipeline-version"), Some("1"));
    let answer = reply.json();
    assert_eq!(answer["output"]["label"], label);
    assert_close(
        &answer["output"]["embedding"],
        &embedded.json()["embedding"],
        1e-5,
        "embedding",
    );
    let steps: Vec<&str> = answer["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["classify", "describe"]);
    for step in answer["steps"].as_array().unwrap() {
        assert_eq!(step["version"], 1, "{step}");
        assert!(step["node"].is_string(), "{step}");
        assert!(step["cold_start"].is_boolean(), "{step}");
    }
    // The pipeline's input schema is checked first: 422 with a pointer.
    let refused = run(&client, &p, "look-and-describe", &json!({"img": "x"})).await;
    let error = refused.expect_error(422, "invalid_input");
    assert_eq!(pointers(&error), ["/image"]);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("input does not fit the pipeline"),
        "{message}"
    );

    // The CLI registers a version and runs it.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
            .args(args)
            .current_dir(repo_root())
            .env("TASKMESH_API_KEY", &p.admin_key)
            .env("TASKMESH_ADMIN_URL", p.admin_url(""))
            .env("TASKMESH_ROUTER_URL", p.router_url(""))
            .output()
            .expect("run taskmesh")
    };
    let out = cli(&[
        "pipeline",
        "register",
        "examples/pipelines/embed-captions.json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "pipeline",
        "invoke",
        "embed-captions",
        "--data",
        r#"{"captions": ["a red dress", "ankle boot"]}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output["embeddings"].as_array().unwrap().len(), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("pipeline version 2"));
}

#[tokio::test]
async fn independent_steps_run_at_the_same_time() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    register_slow(&p, "slow-a", json!({})).await;
    register_slow(&p, "slow-b", json!({})).await;
    let steps = |guard: bool| {
        let mut a = json!({"id": "a", "function": "slow-a", "input": {"x": "$.input.x"}});
        if guard {
            // A guard that never refuses: the step after it waits for it.
            a["guard"] = json!({"refuse_if": {"never": true}});
        }
        json!([a, {"id": "b", "function": "slow-b", "input": {"x": "$.input.x"}}])
    };
    for (name, guard) in [("both", false), ("chain", true)] {
        let doc = json!({"name": name, "steps": steps(guard),
            "output": {"a": "$.steps.a.y", "b": "$.steps.b.y"}, "timeout_ms": 30000});
        assert_eq!(register_pipeline(&client, &p, &doc).await.status, 201);
    }
    let input = rows(250);
    // Warm both functions first, so that the runs below are compute.
    assert_eq!(run(&client, &p, "chain", &input).await.status, 200);
    // Read from the steps' own traces (when each started and ended on the
    // router), not from the wall clock: on a loaded machine both steps slow
    // down together, but they still overlap.
    let span = |s: &Value| {
        let start = s["started_ms"].as_f64().unwrap();
        (start, start + s["ms"].as_f64().unwrap())
    };
    for name in ["both", "chain"] {
        let reply = run(&client, &p, name, &input).await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        let steps = reply.json()["steps"].clone();
        let ((a0, a1), (b0, b1)) = (span(&steps[0]), span(&steps[1]));
        let overlap = a1.min(b1) - a0.max(b0);
        let shorter = (a1 - a0).min(b1 - b0);
        if name == "both" {
            // Total time well under the sum: most of the shorter step ran
            // while the other one did.
            assert!(overlap > 0.5 * shorter, "a and b did not overlap: {steps}");
            assert!(a1.max(b1) - a0.min(b0) < (a1 - a0) + (b1 - b0) - 0.5 * shorter);
        } else {
            assert!(b0 >= a1, "b started before its guard ended: {steps}");
        }
    }
}

#[tokio::test]
async fn foreach_over_twenty_items_equals_twenty_direct_calls_in_order() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_as(&client, &p, "digits").await;
    let pixels: Vec<f64> = serde_json::from_value(sample()["pixels"].clone()).unwrap();
    let images: Vec<Value> = (0..20)
        .map(|k| {
            let mut shifted = pixels.clone();
            shifted.rotate_left(k * 3);
            json!(shifted)
        })
        .collect();
    let doc = json!({"name": "each-digit",
        "steps": [{"id": "each", "function": "digits", "foreach": "$.input.images",
                   "input": {"pixels": "$.item"}, "max_parallel": 4}],
        "output": {"results": "$.steps.each"}});
    assert_eq!(register_pipeline(&client, &p, &doc).await.status, 201);
    let reply = run(&client, &p, "each-digit", &json!({"images": images})).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let answer = reply.json();
    assert_eq!(answer["steps"][0]["calls"], 20);
    let results = answer["output"]["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 20);
    for (k, image) in images.iter().enumerate() {
        let direct = client
            .post_json(
                &p.router_url("/v1/functions/digits/invoke"),
                &json!({"pixels": image}),
            )
            .await;
        assert_eq!(direct.status, 200);
        let direct = direct.json();
        assert_eq!(results[k]["label"], direct["label"], "item {k}");
        assert_close(
            &results[k]["probabilities"],
            &direct["probabilities"],
            1e-5,
            &format!("item {k}"),
        );
    }
    // Not an array: the caller's input is at fault.
    let bad = run(&client, &p, "each-digit", &json!({"images": 3})).await;
    bad.expect_error(422, "invalid_input");
}

#[tokio::test]
async fn a_failing_step_is_502_and_later_steps_do_not_run() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_as(&client, &p, "digits").await;
    digits_as(&client, &p, "after").await;
    let doc = json!({"name": "breaks",
        "steps": [
            {"id": "first", "function": "digits", "input": {"pixels": "$.input.pixels"}},
            {"id": "then", "function": "after", "input": {"pixels": "$.steps.first.probabilities"}}
        ],
        "output": {"label": "$.steps.then.label"}});
    assert_eq!(register_pipeline(&client, &p, &doc).await.status, 201);
    // Eight numbers where the function takes 64: the first step fails.
    let reply = run(&client, &p, "breaks", &json!({"pixels": vec![1.0; 8]})).await;
    let error = reply.expect_error(502, "step_failed");
    assert_eq!(error["details"]["step"], "first", "{error}");
    assert_eq!(
        error["details"]["error"]["code"], "invalid_input",
        "{error}"
    );
    assert!(!called(&p, "after").await, "the step after the failure ran");
}

#[tokio::test]
async fn a_guard_step_refuses_before_the_main_step_runs() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_as(&client, &p, "digits").await;
    digits_as(&client, &p, "main").await;
    let label = client
        .post_json(&p.router_url("/v1/functions/digits/invoke"), &sample())
        .await
        .json()["label"]
        .clone();
    let guarded = |name: &str, refused: Value| {
        json!({"name": name,
            "steps": [
                {"id": "check", "function": "digits", "input": {"pixels": "$.input.pixels"},
                 "guard": {"refuse_if": {"label": refused}}},
                {"id": "work", "function": "main", "input": {"pixels": "$.input.pixels"}}
            ],
            "output": {"label": "$.steps.work.label"}})
    };
    let other = json!((label.as_u64().unwrap() + 1) % 10);
    for (name, refused) in [
        ("strict", json!([other.clone(), label.clone()])),
        ("lenient", json!([other])),
    ] {
        assert_eq!(
            register_pipeline(&client, &p, &guarded(name, refused))
                .await
                .status,
            201
        );
    }
    let reply = run(&client, &p, "strict", &sample()).await;
    let error = reply.expect_error(422, "refused");
    assert_eq!(
        error["details"],
        json!({"step": "check", "field": "label", "value": label})
    );
    assert!(
        !called(&p, "main").await,
        "the main step ran after the refusal"
    );
    let passed = run(&client, &p, "lenient", &sample()).await;
    assert_eq!(passed.status, 200, "{}", passed.json());
    assert_eq!(passed.json()["output"]["label"], label);
}

#[tokio::test]
async fn registration_refuses_bad_graphs_with_pointers() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_as(&client, &p, "digits").await;
    let step = |id: &str, input: Value| json!({"id": id, "function": "digits", "input": input});
    let cases = [
        (
            json!([{"id": "a", "function": "nosuch", "input": {}}]),
            "/steps/0/function",
        ),
        (
            json!([
                step("a", json!({})),
                step("b", json!({"pixels": "$.steps.zz.x"}))
            ]),
            "/steps/1/input/pixels",
        ),
        (
            json!([
                step("a", json!({"p": "$.steps.b"})),
                step("b", json!({"p": "$.steps.a"}))
            ]),
            "/steps/0",
        ),
        (
            json!([{"id": "a", "function": "digits", "input": {}, "foreach": "items"}]),
            "/steps/0/foreach",
        ),
        (
            json!([{"id": "a", "function": "digits", "version": 7, "input": {}}]),
            "/steps/0/version",
        ),
    ];
    for (steps, pointer) in cases {
        let doc = json!({"name": "bad", "steps": steps, "output": {}});
        let reply = register_pipeline(&client, &p, &doc).await;
        let error = reply.expect_error(422, "invalid_input");
        assert_eq!(pointers(&error), [pointer], "{error}");
    }
    assert_eq!(
        client.get(&p.admin_url("/v1/pipelines/bad")).await.status,
        404,
        "a refused pipeline was stored"
    );
    // Another tenant cannot reference this tenant's functions, nor run its pipelines.
    let (_, acme) = create_client(
        &client,
        &p,
        json!({"name": "acme-admin", "tenant": "acme", "scopes": ["admin", "invoke"]}),
    )
    .await;
    let acme = TestClient::h2c().with_key(&acme);
    let doc = json!({"name": "borrow", "steps": [step("a", json!({"pixels": "$.input.pixels"}))],
        "output": {"l": "$.steps.a.label"}});
    let refused = register_pipeline(&acme, &p, &doc).await;
    let error = refused.expect_error(422, "invalid_input");
    assert_eq!(pointers(&error), ["/steps/0/function"]);
    assert_eq!(register_pipeline(&client, &p, &doc).await.status, 201);
    run(&acme, &p, "borrow", &sample())
        .await
        .expect_error(404, "not_found");
    let listed = acme.get(&p.admin_url("/v1/pipelines")).await.json();
    assert_eq!(listed["pipelines"], json!([]));
    let mine = client
        .get(&p.admin_url("/v1/pipelines/borrow"))
        .await
        .json();
    assert_eq!(
        mine["latest"]["definition"]["steps"][0]["function"],
        "digits"
    );
}

#[tokio::test]
async fn the_pipeline_deadline_holds_with_a_slow_step() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    register_slow(&p, "slow", json!({"timeout_ms": 30000})).await;
    digits_as(&client, &p, "after").await;
    let doc = json!({"name": "late", "timeout_ms": 300,
        "steps": [
            {"id": "long", "function": "slow", "input": {"x": "$.input.x"}},
            {"id": "next", "function": "after", "input": {"pixels": "$.steps.long.y"}}
        ],
        "output": {"l": "$.steps.next.label"}});
    assert_eq!(register_pipeline(&client, &p, &doc).await.status, 201);
    // Load the slow model first, so that what runs out is compute.
    let warm = client
        .post_json(&p.router_url("/v1/functions/slow/invoke"), &rows(1))
        .await;
    assert_eq!(warm.status, 200);
    let started = Instant::now();
    // About 2.4 s of compute, against a deadline of 0.3 s.
    let reply = run(&client, &p, "late", &rows(3000)).await;
    let waited = started.elapsed();
    reply.expect_error(504, "timeout");
    assert!(
        waited < Duration::from_millis(2000),
        "the answer waited for the slow step: {waited:?}"
    );
    assert!(!called(&p, "after").await, "a step after the deadline ran");
}

#[tokio::test]
async fn a_pipeline_task_runs_like_the_invoke_and_a_failing_one_ends_dead() {
    let p = Platform::start(&[]);
    let client = p.client();
    let image = generated_json("examples/fashion-mnist/sample.json");
    let direct = run(&client, &p, "look-and-describe", &image).await;
    assert_eq!(direct.status, 200, "{}", direct.json());
    let direct = direct.json()["output"].clone();

    let submit = p.router_url("/v1/pipelines/look-and-describe/tasks");
    let reply = client.post_json(&submit, &image).await;
    assert_eq!(reply.status, 202, "{}", reply.json());
    assert_eq!(reply.header("x-taskmesh-pipeline-version"), Some("1"));
    let id = reply.json()["task_id"].as_str().unwrap().to_string();
    let location = reply.header("location").unwrap().to_string();
    assert_eq!(location, format!("/v1/tasks/{id}"));
    let task = wait_task(&client, &p.router_url(&location), Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["pipeline"], "look-and-describe", "{task}");
    assert!(task["function"].is_null(), "{task}");
    assert_eq!(task["version"], 1, "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(task["result"]["label"], direct["label"]);
    assert_close(
        &task["result"]["embedding"],
        &direct["embedding"],
        1e-5,
        "embedding",
    );

    // Invalid input is refused at submit, and nothing is queued.
    let refused = client.post_json(&submit, &json!({"img": "x"})).await;
    assert_eq!(
        pointers(&refused.expect_error(422, "invalid_input")),
        ["/image"]
    );
    let listed = client
        .get(&p.router_url("/v1/tasks?pipeline=look-and-describe"))
        .await
        .json();
    let ids: Vec<&str> = listed["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()], "{listed}");
    // `trace` belongs to invoke; tasks take `callback_url` instead.
    let bad = client
        .post_json(&format!("{submit}?trace=steps"), &image)
        .await;
    bad.expect_error(400, "bad_request");
    // An unknown pipeline is 404, queued or not.
    let unknown = p.router_url("/v1/pipelines/nope/tasks");
    client
        .post_json(&unknown, &image)
        .await
        .expect_error(404, "not_found");

    // A step that fails for good (its input does not fit) ends the task
    // dead at once, with the step's error; the step after it never runs.
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    register(
        &client,
        &p,
        &digits_definition(&digest, "after", &json!({})),
    )
    .await;
    let doc = json!({"name": "breaks",
        "steps": [
            {"id": "first", "function": "digits", "input": {"pixels": "$.input.pixels"}},
            {"id": "then", "function": "after", "input": {"pixels": "$.steps.first.probabilities"}}
        ],
        "output": {"label": "$.steps.then.label"}});
    assert_eq!(register_pipeline(&client, &p, &doc).await.status, 201);
    let reply = client
        .post_json(
            &p.router_url("/v1/pipelines/breaks/tasks"),
            &json!({"pixels": vec![1.0; 8]}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.json());
    let location = reply.header("location").unwrap().to_string();
    let task = wait_task(&client, &p.router_url(&location), Duration::from_secs(60)).await;
    assert_eq!(task["status"], "dead", "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(task["error"]["code"], "step_failed", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"first\""),
        "{task}"
    );
    assert!(!called(&p, "after").await, "the step after the failure ran");
    let dead = client
        .get(&p.router_url("/v1/tasks?status=dead&pipeline=breaks"))
        .await
        .json();
    assert_eq!(dead["tasks"].as_array().unwrap().len(), 1, "{dead}");

    // The CLI queues a pipeline's task and waits for it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
        .args([
            "task",
            "submit",
            "embed-captions",
            "--pipeline",
            "--wait",
            "--data",
            r#"{"captions": ["a red dress", "ankle boot", "a bag"]}"#,
        ])
        .env("TASKMESH_API_KEY", &p.admin_key)
        .env("TASKMESH_ROUTER_URL", p.router_url(""))
        .output()
        .expect("run taskmesh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(
        task["result"]["embeddings"].as_array().unwrap().len(),
        3,
        "{task}"
    );
}
