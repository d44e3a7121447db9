//! The Open Inference Protocol as its users' clients speak it, against the
//! real binary: the official Triton HTTP client with its defaults (binary
//! tensors in and out), with JSON, and a plain KServe-style JSON client, on
//! the digits, tensors and dtypes examples (every OIP datatype); and the
//! Triton gRPC client over h2c. The client side is cli/tests/oip_clients.py
//! and oip_grpc.py (tritonclient from .deps/python-triton).

mod support;

use std::process::Command;

use serde_json::{json, Value};
use support::{repo_root, Platform};

/// Runs a client script of cli/tests against `p`; returns its findings.
fn run_client(p: &Platform, script: &str) -> Value {
    let root = repo_root();
    let out = Command::new("python3")
        .arg(root.join("cli/tests").join(script))
        .env("PYTHONPATH", root.join(".deps/python-triton"))
        .env(
            "TASKMESH_ROUTER",
            p.router_url("").trim_start_matches("http://"),
        )
        .env("TASKMESH_KEY", &p.admin_key)
        .env("TASKMESH_EXAMPLES", root.join("examples"))
        .output()
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "tritonclient is missing from .deps/python-triton: run scripts/setup.sh ({stderr})"
    );
    assert!(out.status.success(), "{stderr}");
    serde_json::from_slice(&out.stdout).expect("the script's findings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_and_kserve_clients_work_with_their_defaults() {
    let p = Platform::start(&[]);
    let found = run_client(&p, "oip_clients.py");
    assert_eq!(found["failures"], json!([]), "{found:#}");
    let inferred = found["inferred"].as_array().unwrap();
    assert_eq!(inferred.len(), 9, "{found:#}");
    assert_eq!(found["live"], true);
    assert_eq!(found["ready"], true);
    assert_eq!(found["model_ready"], true);
    assert_eq!(found["unknown_ready"], false);
    assert_eq!(found["server"]["name"], "taskmesh");
    assert_eq!(found["server"]["extensions"], json!(["binary_tensor_data"]));
    // Metadata says exactly what infer accepts: digits takes [1, 64].
    assert_eq!(
        found["digits_inputs"],
        json!([{"name": "float_input", "datatype": "FP32", "shape": [1, 64]}])
    );
    assert_eq!(found["kserve_id"], "req-1");
    let (status, body) = (&found["kserve_error"][0], &found["kserve_error"][1]);
    assert_eq!(status, 422, "{found:#}");
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    assert_eq!(found["bad_request"][0], "422", "{found:#}");
    let message = found["bad_request"][1].as_str().unwrap();
    assert!(message.contains("shape"), "{message}");
    assert_eq!(found["unauthenticated"][0], "401", "{found:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_triton_grpc_client_works_over_h2c() {
    let p = Platform::start(&[]);
    // A function whose node answers with an error (its deadline passes).
    let client = p.client();
    let digest = support::upload(&client, &p, "examples/digits/model.onnx").await;
    let hurried = support::digits_definition(&digest, "hurried", &json!({"timeout_ms": 1}));
    support::register(&client, &p, &hurried).await;
    let found = run_client(&p, "oip_grpc.py");
    assert_eq!(found["failures"], json!([]), "{found:#}");
    assert_eq!(found["inferred"].as_array().unwrap().len(), 6, "{found:#}");
    assert_eq!(found["live"], true);
    assert_eq!(found["ready"], true);
    assert_eq!(found["model_ready"], true);
    assert_eq!(found["server"]["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(
        found["digits_inputs"],
        json!([{"name": "float_input", "datatype": "FP32", "shape": ["1", "64"]}])
    );
    // Contract errors as gRPC statuses, with the server's message.
    assert_eq!(
        found["bad_shape"][0], "StatusCode.INVALID_ARGUMENT",
        "{found:#}"
    );
    let message = found["bad_shape"][1].as_str().unwrap();
    assert!(message.contains("does not fit"), "{message}");
    assert_eq!(
        found["unknown_model"][0], "StatusCode.NOT_FOUND",
        "{found:#}"
    );
    assert_eq!(
        found["unauthenticated"][0], "StatusCode.UNAUTHENTICATED",
        "{found:#}"
    );
    // A node's error passes through the router as a status too.
    assert_eq!(
        found["deadline"][0], "StatusCode.DEADLINE_EXCEEDED",
        "{found:#}"
    );
}
