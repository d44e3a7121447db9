//! The OpenAPI documents against the real servers: `taskmesh up` serves
//! `GET /openapi.json` on the router and the admin listener, and Schemathesis
//! (installed by scripts/setup.sh into .deps/python-schemathesis) fuzzes every
//! operation of each with a bounded number of examples, checking that nothing
//! answers 5xx, that every status, content type, header and body is the one
//! the document declares, and that the operations it says need a key refuse
//! calls without one.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

/// Examples per operation and phase: the two runs take about a minute on two
/// cores.
const MAX_EXAMPLES: &str = "20";

/// A fixed seed, so a failure reproduces (`--seed` in the output).
const SEED: &str = "17";

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,ignored_auth";

/// Runs Schemathesis against the document at `base`/openapi.json; panics with
/// its report unless every check passed.
fn schemathesis(p: &Platform, base: &str) {
    let root = repo_root();
    let python_path = root.join(".deps/python-schemathesis");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(root.join("cli/tests/openapi_schemathesis.py"))
        .arg("--config-file")
        .arg(root.join("cli/tests/schemathesis.toml"))
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--workers", "2", "--request-timeout", "30"])
        // Hypothesis's health checks judge the generator, not the API: on a
        // busy 2-core machine `too_slow` trips, and `filter_too_much` depends
        // on the seed.
        .args(["--suppress-health-check", "too_slow,filter_too_much"])
        .args(["--no-color", "--output-truncate", "false"])
        .args(["--generation-database", "none"])
        .env("PYTHONPATH", &python_path)
        .env("TASKMESH_TEST_KEY", &p.admin_key)
        .env("NO_COLOR", "1")
        // Its .schemathesis and .hypothesis folders go to a temporary one.
        .current_dir(work.path())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "schemathesis is missing from .deps/python-schemathesis: run scripts/setup.sh ({stderr})"
    );
    assert!(
        out.status.success(),
        "schemathesis found problems with {base}/openapi.json:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
}

/// The document a listener serves, fetched without a key.
async fn document(url: &str) -> Value {
    let reply = TestClient::http1().get(url).await;
    assert_eq!(reply.status, 200, "{url}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

#[tokio::test]
async fn both_listeners_serve_documents_their_servers_conform_to() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let doc = definition_with("examples/digits/function.json", &digest);
    assert_eq!(register(&client, &p, &doc).await, 1);

    let router = document(&p.router_url("/openapi.json")).await;
    let admin = document(&p.admin_url("/openapi.json")).await;
    for (doc, path) in [
        (&router, "/v1/functions/{name}/invoke"),
        (&router, "/v2/models/{name}/infer"),
        (&admin, "/v1/functions/{name}/aliases/{alias}"),
        (&admin, "/v1/clients"),
    ] {
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert_eq!(
        admin["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // The router first: the admin run's stateful phase changes aliases and
    // clients, and may start rollouts.
    schemathesis(&p, &p.router_url(""));
    schemathesis(&p, &p.admin_url(""));
}
