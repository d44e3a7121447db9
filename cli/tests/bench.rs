//! `taskmesh bench` against a real `taskmesh up`: it sends exactly
//! rps × duration calls (the router counts them too), reports ordered
//! percentiles and errors by code, writes its JSON report, and exits 9 when
//! an SLA bound is breached (here: a function's rate limit refuses most calls).

mod support;

use serde_json::{json, Value};
use support::*;

fn bench(p: &Platform, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
        .arg("bench")
        .args(args)
        .current_dir(repo_root())
        .env("TASKMESH_API_KEY", &p.admin_key)
        .env("TASKMESH_ROUTER_URL", p.router_url(""))
        .output()
        .expect("run taskmesh bench")
}

/// Calls of `function` the router answered with `status`, from its metrics.
async fn answered(p: &Platform, function: &str, status: u16) -> u64 {
    let needle = format!("function=\"{function}\",version=\"1\",status=\"{status}\"}}");
    p.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("taskmesh_router_requests_total") && l.contains(&needle))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn bench_reports_what_it_sent_and_fails_a_breached_sla() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    register(
        &client,
        &p,
        &digits_definition(&digest, "digits", &json!({})),
    )
    .await;
    let limited = json!({"rate_limit": {"per_second": 2, "burst": 2}});
    register(
        &client,
        &p,
        &digits_definition(&digest, "limited", &limited),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");

    let before = answered(&p, "digits", 200).await;
    let run = bench(
        &p,
        &[
            "digits",
            "--data",
            "@examples/digits/sample.json",
            "--rps",
            "40",
            "--duration",
            "1500ms",
            "--connections",
            "3",
            "--sla",
            "p99=30s,errors=0%",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("p95"), "{stdout}");
    let report: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["sent"], 60, "{report}");
    assert_eq!(report["statuses"], json!({"200": 60}), "{report}");
    assert_eq!(report["error_rate"], 0.0);
    assert_eq!(report["sla_met"], true);
    let l = &report["latency_s"];
    let q = |k: &str| l[k].as_f64().unwrap();
    assert!(
        q("p50") > 0.0 && q("p50") <= q("p95") && q("p95") <= q("p99") && q("p99") <= q("max"),
        "{l}"
    );
    // The warm-up call and the 60 measured ones, as the router counted them.
    assert_eq!(answered(&p, "digits", 200).await - before, 61);

    // Most calls of a function limited to 2/s are refused: the SLA on
    // errors is breached, exit code 9, errors by code in the report.
    let run = bench(
        &p,
        &[
            "limited",
            "--data",
            "@examples/digits/sample.json",
            "--rps",
            "20",
            "--duration",
            "1s",
            "--sla",
            "errors=5%",
            "--output",
            "json",
        ],
    );
    assert_eq!(
        run.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["sent"], 20, "{report}");
    let limited = report["errors"]["rate_limited"].as_u64().unwrap();
    assert!(limited >= 10, "{report}");
    assert_eq!(report["statuses"]["429"].as_u64().unwrap(), limited);
    assert_eq!(report["sla_met"], false);
    assert_eq!(report["sla"][0]["met"], false);
    assert!(String::from_utf8_lossy(&run.stderr).contains("SLA breached"));

    // A function that does not exist is an error before any load (exit 5).
    let run = bench(
        &p,
        &["nope", "--data", "{}", "--rps", "10", "--duration", "1s"],
    );
    assert_eq!(run.status.code(), Some(5));
    // A bad bound is refused (exit 1), a bad flag is a usage error (exit 2).
    let run = bench(
        &p,
        &[
            "digits",
            "--data",
            "{}",
            "--rps",
            "10",
            "--duration",
            "1s",
            "--sla",
            "p42=1s",
        ],
    );
    assert_eq!(run.status.code(), Some(1));
    let run = bench(
        &p,
        &[
            "digits",
            "--data",
            "{}",
            "--rps",
            "10",
            "--duration",
            "soon",
        ],
    );
    assert_eq!(run.status.code(), Some(2));
}
