//! The Grafana dashboard (`deploy/grafana/taskmesh.json`) and the Prometheus
//! rules (`deploy/prometheus/taskmesh-rules.yaml`) against a real Prometheus
//! (Debian's, unpacked by `scripts/setup.sh` into `.deps/prometheus`) that
//! scrapes a running `taskmesh up` under a little load of every kind: every
//! dashboard query and every rule evaluates without error and returns series,
//! and `promtool check rules` accepts the rules.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{json, Value};
use support::*;

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(name: &str) -> std::path::PathBuf {
    let path = repo_root().join(".deps/prometheus").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh (it unpacks Debian's prometheus package there)",
        path.display()
    );
    path
}

fn rules_file() -> std::path::PathBuf {
    repo_root().join("deploy/prometheus/taskmesh-rules.yaml")
}

/// Starts Prometheus scraping, every second, the router's `/metrics` with the
/// operator key and the node's with the cluster key (as in cluster mode).
fn start_prometheus(p: &mut Platform) -> Prometheus {
    let node = p.node_url("");
    let node = node.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: taskmesh-router
    static_configs: [{{targets: ["{router}"]}}]
    authorization: {{type: Bearer, credentials: "{key}"}}
  - job_name: taskmesh-node
    static_configs: [{{targets: ["{node}"]}}]
    authorization: {{type: Bearer, credentials: "{cluster_key}"}}
"#,
        rules = rules_file().display(),
        router = p.router,
        key = p.admin_key,
        cluster_key = p.cluster_key(),
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let check = Command::new(tool("promtool"))
        .arg("check")
        .arg("config")
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let addr = free_addr();
    let child = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://{addr}"),
        _dir: dir,
    }
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an instant query: its result, or the error Prometheus gave.
async fn query(prom: &Prometheus, expr: &str) -> Result<Vec<Value>, String> {
    let client = TestClient::http1();
    let body = format!("query={}", form_encode(expr));
    let reply = client
        .send(
            Method::POST,
            &format!("{}/api/v1/query", prom.url),
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await;
    let answer = reply.json();
    if answer["status"] != "success" {
        return Err(format!("{}: {}", answer["errorType"], answer["error"]));
    }
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Every PromQL query of the dashboard, with its panel's title, the
/// dashboard's variables replaced as Grafana would for "All".
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/taskmesh.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let fill = |expr: &str| {
        expr.replace("$__rate_interval", "15s")
            .replace("$tenant", ".*")
            .replace("$function", ".*")
    };
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap().to_string();
            out.push((title, fill(target["expr"].as_str().unwrap())));
        }
    }
    // `label_values(METRIC, LABEL)` variables: the same question in PromQL.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let q = var["definition"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {q} is not label_values(...)"));
        let (metric, label) = inner.rsplit_once(',').unwrap();
        let expr = format!("count by ({}) ({})", label.trim(), fill(metric.trim()));
        out.push((format!("variable {}", var["name"]), expr));
    }
    assert!(out.len() > 20, "the dashboard has {} queries", out.len());
    out
}

/// The rules file's alerts as (name, indicator): the expression without its
/// final `<comparison> <threshold>` (the file's convention).
fn alert_indicators() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let rules: Value = serde_yaml::from_str(&text).expect("the rules are YAML");
    let mut out = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let expr = rule["expr"].as_str().unwrap().trim();
            let cut = [" > ", " < ", " == ", " >= ", " <= ", " != "]
                .iter()
                .filter_map(|op| expr.rfind(op))
                .max()
                .unwrap_or_else(|| panic!("{name}: no `<indicator> <op> <threshold>` in {expr}"));
            let threshold = expr[cut..].split_whitespace().nth(1).unwrap();
            assert!(
                threshold.parse::<f64>().is_ok(),
                "{name}: {threshold:?} is not a number"
            );
            out.push((name.to_string(), expr[..cut].to_string()));
        }
    }
    assert!(out.len() >= 8, "only {} alerts", out.len());
    out
}

/// A little of everything the dashboard shows: calls and their errors, a
/// rate limit, batches, queue waits, cold starts, a task and a pipeline.
async fn load(p: &Platform) {
    let client = p.client();
    let invoke = |name: &str| p.router_url(&format!("/v1/functions/{name}/invoke"));
    for _ in 0..3 {
        let reply = client.post_json(&invoke("digits"), &sample()).await;
        assert_eq!(reply.status, 200);
    }
    client
        .post_json(&invoke("digits"), &json!({"pixels": [1]}))
        .await
        .expect_error(422, "invalid_input");
    let digest = upload(&client, p, "examples/digits/model.onnx").await;
    for i in 0..8 {
        let name = format!("spread{i}");
        register(&client, p, &digits_definition(&digest, &name, &json!({}))).await;
        assert_eq!(
            client.post_json(&invoke(&name), &sample()).await.status,
            200
        );
    }
    let limited = json!({"rate_limit": {"per_second": 0.01, "burst": 1}});
    register(&client, p, &digits_definition(&digest, "limited", &limited)).await;
    assert_eq!(
        client.post_json(&invoke("limited"), &sample()).await.status,
        200
    );
    client
        .post_json(&invoke("limited"), &sample())
        .await
        .expect_error(429, "rate_limited");
    let batched = json!({
        "inputs": {"pixels": {"tensor": "float_input", "dtype": "float32", "shape": [-1, 64]}},
        "batching": {"max_batch_size": 16, "max_delay_us": 20000}
    });
    register(&client, p, &digits_definition(&digest, "batched", &batched)).await;
    register_slow(p, "slow", json!({"scaling": {"max_instances": 1}})).await;
    let mut calls = Vec::new();
    for name in ["batched", "slow"] {
        for _ in 0..6 {
            let (client, url) = (client.clone(), invoke(name));
            let body = if name == "slow" { rows(40) } else { sample() };
            calls.push(tokio::spawn(async move {
                client.post_json(&url, &body).await.status
            }));
        }
    }
    for call in calls {
        assert_eq!(call.await.unwrap(), 200);
    }
    let task = client
        .post_json(&p.router_url("/v1/functions/digits/tasks"), &sample())
        .await;
    assert_eq!(task.status, 202);
    let location = task.header("location").unwrap().to_string();
    wait_task(&client, &p.router_url(&location), Duration::from_secs(30)).await;
    let image = generated_json("examples/fashion-mnist/sample.json");
    let run = client
        .post_json(
            &p.router_url("/v1/pipelines/look-and-describe/invoke"),
            &image,
        )
        .await;
    assert_eq!(run.status, 200, "{}", run.json());
}

#[tokio::test]
async fn every_dashboard_query_and_rule_returns_series_from_a_real_prometheus() {
    let check = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(rules_file())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // A second node that refuses connections: calls placed on it are
    // retried on the live one (the retry panel), and it is ejected.
    let (_held, dead) = dead_addr();
    let mut p = Platform::start(&["--extra-node", &dead.to_string()]);
    let prom = start_prometheus(&mut p);
    load(&p).await;

    // Wait until every query answers with series (rates need two scrapes
    // after the load), or report the ones that never do.
    let mut queries = dashboard_queries();
    queries.extend(alert_indicators());
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for (what, expr) in &queries {
            match query(&prom, expr).await {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => missing.push(format!("{what}: no series from {expr}")),
                Err(e) => panic!("{what}: Prometheus refused {expr}: {e}"),
            }
        }
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));

    // The node's /metrics takes the cluster key as a bearer token, and only it.
    let node_metrics = p.node_url("/metrics");
    let wrong = TestClient::http1().with_key(&p.admin_key);
    assert_eq!(wrong.get(&node_metrics).await.status, 401);
    let right = TestClient::http1().with_key(&p.cluster_key());
    let scraped = right.get(&node_metrics).await;
    assert_eq!(scraped.status, 200);
    let kind = scraped.header("content-type").unwrap_or_default();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let other = right.get(&p.node_url("/v2/models/digits")).await;
    assert_eq!(other.status, 401, "the bearer form opens /metrics only");

    // Both targets were scraped: the router's and the node's text parse.
    for job in ["taskmesh-router", "taskmesh-node"] {
        let up = query(&prom, &format!("up{{job=\"{job}\"}}")).await.unwrap();
        assert_eq!(up.len(), 1, "{job}: {up:?}");
        assert_eq!(up[0]["value"][1], "1", "{job} is down: {up:?}");
    }
    let from_node = query(&prom, "taskmesh_runtime_in_flight{job=\"taskmesh-node\"}").await;
    assert_eq!(from_node.unwrap().len(), 1);

    // Every rule, recording and alerting, was evaluated without error.
    let client = TestClient::http1();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = client
            .get(&format!("{}/api/v1/rules", prom.url))
            .await
            .json();
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(all.len(), 13, "{rules}");
        let bad: Vec<String> = all
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if bad.is_empty() {
            // A healthy system fires nothing that pages.
            let firing: Vec<&Value> = all
                .iter()
                .filter(|r| r["state"] == "firing" && r["labels"]["severity"] == "page")
                .copied()
                .collect();
            assert!(firing.is_empty(), "{firing:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{}", bad.join("\n"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
