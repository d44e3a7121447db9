//! End to end: the real `taskmesh up` process, real ONNX Runtime, real HTTP/2
//! clients over loopback. Reference outputs come from onnxruntime in Python
//! (examples/build_examples.py), never typed by hand.

mod support;

use http::Method;
use serde_json::{json, Value};
use support::*;

/// The invoke body for a digits reference case.
fn digits_body(case: &Value) -> Value {
    json!({"pixels": case["input"]["float_input"]["data"]})
}

#[tokio::test]
async fn register_invoke_and_version_over_h2c() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let reference = generated_json("examples/digits/reference.json");

    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    assert_eq!(
        digest,
        format!("sha256:{}", reference["model_sha256"].as_str().unwrap())
    );
    assert_eq!(
        upload(&client, &p, "examples/digits/model.onnx").await,
        digest,
        "content-addressed"
    );

    let doc = definition_with("examples/digits/function.json", &digest);
    assert_eq!(register(&client, &p, &doc).await, 1);

    let cases = reference["cases"].as_array().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let reply = client
            .post_json(
                &p.router_url("/v1/functions/digits/invoke"),
                &digits_body(case),
            )
            .await;
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert_eq!(reply.status, 200, "{}", reply.json());
        assert_eq!(reply.header("x-taskmesh-version"), Some("1"));
        assert_eq!(
            reply.header("x-taskmesh-cold-start"),
            Some(if i == 0 { "true" } else { "false" })
        );
        assert!(reply
            .header("x-taskmesh-invocation-id")
            .is_some_and(|id| id.len() >= 32));
        assert!(reply
            .header("x-taskmesh-node")
            .is_some_and(|n| n.starts_with("node-")));
        let out = reply.json();
        assert_eq!(
            out["label"], case["outputs"]["label"]["data"][0],
            "case {i}"
        );
        assert_close(
            &out["probabilities"],
            &case["outputs"]["probabilities"]["data"],
            1e-5,
            "probabilities",
        );
    }

    // A second registration is version 2 and becomes the default; version 1 still serves.
    assert_eq!(register(&client, &p, &doc).await, 2);
    let body = digits_body(&cases[0]);
    let latest = client
        .post_json(&p.router_url("/v1/functions/digits/invoke"), &body)
        .await;
    assert_eq!(latest.header("x-taskmesh-version"), Some("2"));
    assert_eq!(latest.header("x-taskmesh-cold-start"), Some("true"));
    let pinned = client
        .post_json(
            &p.router_url("/v1/functions/digits/invoke?version=1"),
            &body,
        )
        .await;
    assert_eq!(pinned.status, 200);
    assert_eq!(pinned.header("x-taskmesh-version"), Some("1"));
    assert_eq!(pinned.header("x-taskmesh-cold-start"), Some("false"));
    assert_eq!(pinned.json(), latest.json());

    // The registry shows both versions.
    let listed = client.get(&p.admin_url("/v1/functions")).await.json();
    assert_eq!(listed["functions"][0]["name"], "digits");
    assert_eq!(listed["functions"][0]["versions"], json!([1, 2]));
    let one = client
        .get(&p.admin_url("/v1/functions/digits/versions/1"))
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["definition"]["model"], digest);
    let function = client
        .get(&p.admin_url("/v1/functions/digits"))
        .await
        .json();
    assert_eq!(function["latest_version"], 2);

    // Metrics count what was served.
    let text = p.metrics().await;
    assert!(
        text.contains(
            r#"taskmesh_router_requests_total{tenant="default",function="digits",version="1",status="200"} 6"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn open_inference_protocol_gives_the_same_numbers() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let reference = generated_json("examples/iris/reference.json");
    // YAML definitions are accepted with content-type application/yaml.
    register_iris_yaml(&client, &p).await;

    let meta = client.get(&p.router_url("/v2/models/iris")).await;
    assert_eq!(meta.status, 200);
    let meta = meta.json();
    assert_eq!(meta["name"], "iris");
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(
        meta["inputs"],
        // What infer accepts: the definition's [1, 4] (the model says [-1, 4]).
        json!([{"name": "float_input", "datatype": "FP32", "shape": [1, 4]}])
    );
    assert_eq!(meta["outputs"][0]["datatype"], "INT64");
    let ready = client
        .get(&p.router_url("/v2/models/iris/versions/1/ready"))
        .await;
    assert_eq!(ready.status, 200);
    assert_eq!(
        client.get(&p.router_url("/v2/health/live")).await.status,
        200
    );
    assert_eq!(
        client.get(&p.router_url("/v2/health/ready")).await.status,
        200
    );

    for case in reference["cases"].as_array().unwrap() {
        let input = &case["input"]["float_input"];
        let request = json!({
            "id": "req-1",
            "inputs": [{"name": "float_input", "shape": input["shape"], "datatype": "FP32", "data": input["data"]}]
        });
        let reply = client
            .post_json(&p.router_url("/v2/models/iris/infer"), &request)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        let out = reply.json();
        assert_eq!(out["model_name"], "iris");
        assert_eq!(out["model_version"], "1");
        assert_eq!(out["id"], "req-1");
        let outputs = out["outputs"].as_array().unwrap();
        for expected_name in ["label", "probabilities"] {
            let got = outputs
                .iter()
                .find(|o| o["name"] == expected_name)
                .unwrap_or_else(|| panic!("no {expected_name} in {out}"));
            let want = &case["outputs"][expected_name];
            assert_eq!(got["shape"], want["shape"]);
            assert_close(&got["data"], &want["data"], 1e-5, expected_name);
        }
        // The invoke path gives the same numbers.
        let invoked = client
            .post_json(
                &p.router_url("/v1/functions/iris/invoke"),
                &json!({"features": input["data"]}),
            )
            .await
            .json();
        assert_eq!(invoked["label"], case["outputs"]["label"]["data"][0]);
        assert_close(
            &invoked["probabilities"],
            &case["outputs"]["probabilities"]["data"],
            1e-5,
            "invoke probabilities",
        );
    }

    // Asking for one output returns only it.
    let case = &reference["cases"][0]["input"]["float_input"];
    let request = json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "FP32", "data": case["data"]}], "outputs": [{"name": "label"}]});
    let out = client
        .post_json(&p.router_url("/v2/models/iris/versions/1/infer"), &request)
        .await
        .json();
    assert_eq!(out["outputs"].as_array().unwrap().len(), 1);
    // OIP refusals.
    let wrong_type = json!({"inputs": [{"name": "float_input", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]});
    let message = client
        .post_json(&p.router_url("/v2/models/iris/infer"), &wrong_type)
        .await
        .expect_oip_error(422, "invalid_input");
    assert!(message.contains("/inputs/0/datatype"), "{message}");
    let wrong_shape = json!({"inputs": [{"name": "float_input", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]});
    client
        .post_json(&p.router_url("/v2/models/iris/infer"), &wrong_shape)
        .await
        .expect_oip_error(422, "invalid_input");
    client
        .get(&p.router_url("/v2/models/nope"))
        .await
        .expect_oip_error(404, "not_found");
    client
        .get(&p.router_url("/v2/models/iris/versions/9"))
        .await
        .expect_oip_error(404, "not_found");
    // The /v1 contract keeps its own error body.
    client
        .get(&p.router_url("/v1/functions/nope/invoke"))
        .await
        .expect_error(405, "method_not_allowed");
}

#[tokio::test]
async fn every_element_type_and_dynamic_dimension_round_trips() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let reference = generated_json("examples/tensors/reference.json");
    let digest = upload(&client, &p, "examples/tensors/model.onnx").await;
    register(
        &client,
        &p,
        &definition_with("examples/tensors/function.json", &digest),
    )
    .await;
    for case in reference["cases"].as_array().unwrap() {
        // Invoke path: flat arrays fill the declared shapes (one dynamic dimension inferred).
        let mut body = json!({});
        for name in ["a", "b", "c", "d", "e"] {
            body[name] = case["input"][name]["data"].clone();
        }
        let reply = client
            .post_json(&p.router_url("/v1/functions/tensors/invoke"), &body)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        let out = reply.json();
        for (field, tensor) in [
            ("a2", "a2"),
            ("b1", "b1"),
            ("c3", "c3"),
            ("nd", "nd"),
            ("esum", "esum"),
        ] {
            let want = &case["outputs"][tensor];
            let flat = flatten(&out[field]);
            assert_close(&Value::Array(flat), &want["data"], 1e-12, field);
        }
        // OIP path with explicit shapes.
        let inputs: Vec<Value> = ["a", "b", "c", "d", "e"]
            .iter()
            .zip(["FP64", "INT32", "INT64", "BOOL", "FP32"])
            .map(|(n, dt)| json!({"name": n, "datatype": dt, "shape": case["input"][n]["shape"], "data": case["input"][n]["data"]}))
            .collect();
        let out = client
            .post_json(
                &p.router_url("/v2/models/tensors/infer"),
                &json!({"inputs": inputs}),
            )
            .await
            .json();
        for o in out["outputs"].as_array().unwrap() {
            let want = &case["outputs"][o["name"].as_str().unwrap()];
            assert_eq!(o["shape"], want["shape"], "{o}");
            assert_close(&o["data"], &want["data"], 1e-12, "oip");
        }
    }
    // int32 overflow and a bool given as a number are refused at the router.
    let bad = json!({"a": [1, 2, 3], "b": [1, 3000000000i64], "c": [1, 2], "d": [1, false, true], "e": [1]});
    let err = client
        .post_json(&p.router_url("/v1/functions/tensors/invoke"), &bad)
        .await
        .expect_error(422, "invalid_input");
    let pointers = pointers(&err);
    assert!(
        pointers.contains(&"/b/1") && pointers.contains(&"/d/0"),
        "{err}"
    );
}

fn flatten(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.clone()],
    }
}

#[tokio::test]
async fn bad_input_gets_the_contract_errors() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    register(
        &client,
        &p,
        &definition_with("examples/digits/function.json", &digest),
    )
    .await;
    let invoke = p.router_url("/v1/functions/digits/invoke");
    let json_ct = [("content-type", "application/json")];

    // Malformed JSON → 400.
    client
        .send(Method::POST, &invoke, &json_ct, "{\"pixels\": [1, 2")
        .await
        .expect_error(400, "malformed_json");
    // Deep nesting → 400, without parsing.
    client
        .send(Method::POST, &invoke, &json_ct, "[".repeat(50_000))
        .await
        .expect_error(400, "bad_request");
    // Unknown function, unknown version → 404.
    client
        .post_json(&p.router_url("/v1/functions/nope/invoke"), &json!({}))
        .await
        .expect_error(404, "not_found");
    client
        .post_json(
            &p.router_url("/v1/functions/digits/invoke?version=7"),
            &json!({}),
        )
        .await
        .expect_error(404, "not_found");
    client
        .get(&p.router_url("/v1/nothing/here"))
        .await
        .expect_error(404, "not_found");
    // Wrong length, wrong type, missing field → 422 with pointers.
    let err = client
        .post_json(&invoke, &json!({"pixels": vec![0.0; 63]}))
        .await
        .expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/pixels");
    let mut pixels = vec![json!(0.0); 64];
    pixels[5] = json!("five");
    let err = client
        .post_json(&invoke, &json!({"pixels": pixels}))
        .await
        .expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/pixels/5");
    let err = client
        .post_json(&invoke, &json!({"pixel": vec![0.0; 64]}))
        .await
        .expect_error(422, "invalid_input");
    assert!(
        err["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["pointer"] == "/pixels"),
        "{err}"
    );
    // Oversized body (declared length over the 1 MiB cap) → 413.
    let huge = format!("{{\"pixels\": [{}]}}", vec!["0"; 600_000].join(","));
    client
        .send(Method::POST, &invoke, &json_ct, huge)
        .await
        .expect_error(413, "payload_too_large");

    // A body above the 64 KiB replay buffer is validated while streaming.
    let padding = " ".repeat(100_000);
    let case = &generated_json("examples/digits/reference.json")["cases"][0];
    let big_ok = format!(
        "{{\"pixels\": {}{padding}}}",
        case["input"]["float_input"]["data"]
    );
    let reply = client.send(Method::POST, &invoke, &json_ct, big_ok).await;
    assert_eq!(
        reply.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["label"], case["outputs"]["label"]["data"][0]);
    let big_bad = format!("{{\"pixels\": [1, 2, 3]{padding}}}");
    client
        .send(Method::POST, &invoke, &json_ct, big_bad)
        .await
        .expect_error(422, "invalid_input");

    // Registration refusals → 422 with details.
    let junk = client
        .send(
            Method::POST,
            &p.admin_url("/v1/models"),
            &[],
            &b"this is not an onnx model"[..],
        )
        .await;
    junk.expect_error(422, "invalid_input");
    let mut doc = definition_with("examples/digits/function.json", &digest);
    doc["inputs"]["pixels"]["tensr"] = json!("x");
    let err = client
        .post_json(&p.admin_url("/v1/functions"), &doc)
        .await
        .expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/inputs/pixels/tensr");
    let mut doc = definition_with("examples/digits/function.json", &digest);
    doc["inputs"]["pixels"]["tensor"] = json!("pixels_in");
    doc["outputs"]["label"]["dtype"] = json!("float32");
    let err = client
        .post_json(&p.admin_url("/v1/functions"), &doc)
        .await
        .expect_error(422, "invalid_input");
    let pointers = pointers(&err);
    assert!(
        pointers.contains(&"/inputs/pixels/tensor") && pointers.contains(&"/outputs/label/dtype"),
        "{err}"
    );
    let doc = definition_with(
        "examples/digits/function.json",
        &format!("sha256:{}", "a".repeat(64)),
    );
    let err = client
        .post_json(&p.admin_url("/v1/functions"), &doc)
        .await
        .expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/model");
    client
        .send(Method::POST, &p.admin_url("/v1/functions"), &json_ct, "{")
        .await
        .expect_error(422, "invalid_input");
    client
        .get(&p.admin_url("/v1/functions/nope"))
        .await
        .expect_error(404, "not_found");

    // None of it hurt the platform.
    let reply = client.post_json(&invoke, &digits_body(case)).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn up_registers_the_examples_and_serves_http1_too() {
    let mut p = Platform::start(&[]);
    let _ = &mut p;
    let sample = generated_json("examples/digits/sample.json");
    let label: i64 = String::from_utf8(generated("examples/digits/sample_label.txt"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for client in [p.client(), TestClient::http1().with_key(&p.admin_key)] {
        let reply = client
            .post_json(&p.router_url("/v1/functions/digits/invoke"), &sample)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        assert_eq!(reply.json()["label"], label);
    }
    // The real text and image examples answer their samples.
    let client = p.client();
    let reply = client
        .post_json(
            &p.router_url("/v1/functions/fashion-mnist/invoke"),
            &generated_json("examples/fashion-mnist/sample.json"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let label = String::from_utf8(generated("examples/fashion-mnist/sample_label.txt")).unwrap();
    assert_eq!(reply.json()["label"], label.trim());
    let reply = client
        .post_json(
            &p.router_url("/v1/functions/minilm-embed/invoke"),
            &generated_json("examples/minilm-embed/sample.json"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let embedding = reply.json()["embedding"].clone();
    let norm: f64 = embedding
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert_eq!(embedding.as_array().unwrap().len(), 384);
    assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    let h1 = TestClient::http1().get(&p.router_url("/healthz")).await;
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert_eq!(h1.status, 200);
    // Restarting on the same data keeps the versions (no duplicate registration).
    let listed = p.client().get(&p.admin_url("/v1/functions")).await.json();
    let names: Vec<&str> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "digits",
            "dtypes",
            "fashion-mnist",
            "iris",
            "minilm-embed",
            "tensors"
        ]
    );
    let status = p.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_cli_registers_lists_and_invokes_over_http2() {
    let p = Platform::start(&["--no-examples"]);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
            .args(args)
            .current_dir(repo_root())
            .env("TASKMESH_API_KEY", &p.admin_key)
            .env("TASKMESH_ADMIN_URL", p.admin_url(""))
            .env("TASKMESH_ROUTER_URL", p.router_url(""))
            .output()
            .expect("run taskmesh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stdout, stderr) = run(&["fn", "register", "examples/digits/function.json"]);
    assert!(ok, "{stdout} {stderr}");
    let registered: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(registered["version"], 1, "{stdout}");
    let (ok, stdout, _) = run(&["fn", "list"]);
    assert!(ok && stdout.starts_with("digits\tlatest 1"), "{stdout}");
    let sample = String::from_utf8(generated("examples/digits/sample.json")).unwrap();
    let (ok, stdout, stderr) = run(&["invoke", "digits", "--data", &sample]);
    assert!(ok, "{stderr}");
    let label = String::from_utf8(generated("examples/digits/sample_label.txt")).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()["label"].to_string(),
        label.trim()
    );
    // A wrong key is refused, and the CLI says so with a failing exit code.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
        .args(["invoke", "digits", "--data", &sample, "--api-key", "nope"])
        .env("TASKMESH_ROUTER_URL", p.router_url(""))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unauthenticated"));
}

#[test]
fn up_refuses_an_address_that_is_taken() {
    // Pingora alone would retry in the background while `up` reported itself up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--listen", "--admin-listen"] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
            .args(["up", "--no-examples", "--data-dir"])
            .arg(dir.path())
            .args(if flag == "--listen" {
                ["--listen", addr.as_str(), "--admin-listen", "127.0.0.1:0"]
            } else {
                ["--listen", "127.0.0.1:0", "--admin-listen", addr.as_str()]
            })
            .current_dir(repo_root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It must exit by itself; one still running after 30 s is killed (and fails).
        let pid = child.id();
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(30));
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        let out = child.wait_with_output().unwrap();
        drop(watchdog);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(!out.status.success(), "{flag}: {stdout} {stderr}");
        assert!(!stdout.contains("taskmesh is up"), "{flag}: {stdout}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr}")),
            "{flag}: {stderr}"
        );
    }
    assert!(
        !dir.path().join("admin.key").exists(),
        "nothing is written before the addresses are checked"
    );
}
