//! Task completion webhooks on `taskmesh up`: a real process, a real HTTP
//! receiver on loopback, signatures checked with the secret the router hands
//! its client, and the private-address policy tested as an attacker would.

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;

/// What the receiver saw of one request: its headers and body.
type Seen = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

/// An HTTP/1.1 receiver on loopback that answers 503 to the first
/// `failures` requests, then 200.
async fn receiver(failures: usize) -> (std::net::SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push((parts.headers, body));
                            log.len()
                        };
                        let status = if n <= failures { 503 } else { 200 };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn wait_for(seen: &Seen, n: usize, limit: Duration) {
    let start = Instant::now();
    while seen.lock().unwrap().len() < n {
        assert!(
            start.elapsed() < limit,
            "{} of {n} deliveries seen",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn register_digits(p: &Platform) {
    let client = p.client();
    let digest = upload(&client, p, "examples/digits/model.onnx").await;
    register(
        &client,
        p,
        &digits_definition(&digest, "digits", &json!({})),
    )
    .await;
}

async fn submit(p: &Platform, query: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    p.client()
        .send(
            Method::POST,
            &p.router_url(&format!("/v1/functions/digits/tasks{query}")),
            &all,
            serde_json::to_vec(&sample()).unwrap(),
        )
        .await
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `outcome`'s count in `taskmesh_router_tasks_outcomes_total` for digits.
fn outcome(metrics: &str, outcome: &str) -> u64 {
    let needle = format!("function=\"digits\",outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .filter(|l| l.starts_with("taskmesh_router_tasks_outcomes_total"))
        .find_map(|l| {
            l.split_once(&needle)
                .map(|(_, v)| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_finished_task_is_posted_to_its_callback_signed_and_retried() {
    let p = Platform::start(&["--no-examples", "--callbacks-allow-private"]);
    register_digits(&p).await;
    let client = p.client();
    let (addr, seen) = receiver(2).await;
    let hook = format!("http://{addr}/hook?source=taskmesh&n=1");
    let reply = submit(&p, &format!("?callback_url={}", encode(&hook)), &[]).await;
    assert_eq!(reply.status, 202, "{}", reply.json());
    let id = reply.json()["task_id"].as_str().unwrap().to_string();

    // Two 503s, then delivered: three attempts, 1 s then 2 s apart.
    wait_for(&seen, 3, Duration::from_secs(30)).await;
    let secret = client.get(&p.router_url("/v1/callbacks/secret")).await;
    assert_eq!(secret.status, 200);
    let secret = secret.json();
    assert_eq!(secret["algorithm"], "hmac-sha256");
    let secret = secret["secret"].as_str().unwrap().to_string();
    let seen = seen.lock().unwrap().clone();
    let sync = client
        .post_json(&p.router_url("/v1/functions/digits/invoke"), &sample())
        .await
        .json();
    for (i, (headers, body)) in seen.iter().enumerate() {
        let task: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(task["task_id"], id.as_str());
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["result"]["label"], sync["label"], "{task}");
        assert_eq!(task["callback_url"], hook.as_str());
        assert_eq!(headers["x-taskmesh-task-id"], id.as_str());
        assert_eq!(
            headers["x-taskmesh-delivery-attempt"],
            (i + 1).to_string().as_str()
        );
        assert_eq!(headers["content-type"], "application/json");
        // t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
        let signature = headers["x-taskmesh-signature"].to_str().unwrap();
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .unwrap_or_else(|| panic!("{signature}"));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(v1, expected, "the signature does not verify");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(now.abs_diff(t.parse().unwrap()) < 60);
    }
    // Another client has another secret: it could not forge this one.
    let (_, other) =
        create_client(&client, &p, json!({"name": "other", "scopes": ["invoke"]})).await;
    let theirs = TestClient::h2c()
        .with_key(&other)
        .get(&p.router_url("/v1/callbacks/secret"))
        .await
        .json();
    assert_ne!(theirs["secret"].as_str().unwrap(), secret);
    let metrics = p.metrics().await;
    assert_eq!(outcome(&metrics, "callback_delivered"), 1, "{metrics}");
}

#[tokio::test]
async fn callbacks_may_not_reach_private_addresses_unless_the_operator_allows() {
    let p = Platform::start(&["--no-examples"]);
    register_digits(&p).await;
    let (addr, seen) = receiver(0).await;
    let port = addr.port();
    // Addresses are refused at submit: nothing is queued.
    for target in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://0x7f.1/".to_string(),
    ] {
        let reply = submit(&p, &format!("?callback_url={}", encode(&target)), &[]).await;
        let error = reply.expect_error(400, "bad_request");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("not a public address"),
            "{target}: {error}"
        );
    }
    for (query, headers) in [
        ("?callback_url=file%3A%2F%2F%2Fetc%2Fpasswd", vec![]),
        ("?callback_url=http%3A%2F%2Fu%3Ap%40example.com%2F", vec![]),
        (
            "?callback_url=https%3A%2F%2Fexample.com%2F",
            vec![("x-taskmesh-callback-url", "https://example.com/")],
        ),
    ] {
        submit(&p, query, &headers)
            .await
            .expect_error(400, "bad_request");
    }
    let listed = p.client().get(&p.router_url("/v1/tasks")).await.json();
    assert_eq!(listed["tasks"].as_array().unwrap().len(), 0, "{listed}");

    // A name is resolved at delivery: localhost is refused there, never called.
    let hook = format!("http://localhost:{port}/hook");
    let reply = submit(&p, "", &[("x-taskmesh-callback-url", &hook)]).await;
    assert_eq!(reply.status, 202, "{}", reply.json());
    let id = reply.json()["task_id"].as_str().unwrap().to_string();
    let task = wait_task(
        &p.client(),
        &p.router_url(&format!("/v1/tasks/{id}")),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(task["status"], "succeeded", "{task}");
    let start = Instant::now();
    while outcome(&p.metrics().await, "callback_refused") < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refusal counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a private address was called"
    );
}

#[tokio::test]
async fn a_cancelled_task_is_posted_too() {
    let p = Platform::start(&["--no-examples", "--callbacks-allow-private"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    // One call in 100 s: the first task runs, the second waits its turn.
    let paced = json!({"rate_limit": {"per_second": 0.01, "burst": 1}});
    register(&client, &p, &digits_definition(&digest, "digits", &paced)).await;
    let (addr, seen) = receiver(0).await;
    let hook = format!("http://{addr}/hook");
    let headers = [("x-taskmesh-callback-url", hook.as_str())];
    let first = submit(&p, "", &headers).await.json()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(&seen, 1, Duration::from_secs(30)).await;
    let second = submit(&p, "", &headers).await.json()["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A worker may hold it for a moment (claimed, then put off by the rate
    // limit): a cancel then is 409, and is tried again.
    let url = p.router_url(&format!("/v1/tasks/{second}"));
    let mut cancelled = client.send(Method::DELETE, &url, &[], Vec::new()).await;
    for _ in 0..50 {
        if cancelled.status != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancelled = client.send(Method::DELETE, &url, &[], Vec::new()).await;
    }
    assert_eq!(cancelled.status, 200, "{}", cancelled.json());
    wait_for(&seen, 2, Duration::from_secs(10)).await;
    let seen = seen.lock().unwrap().clone();
    let views: Vec<Value> = seen
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(views[0]["task_id"], first.as_str());
    assert_eq!(views[0]["status"], "succeeded");
    assert_eq!(views[1]["task_id"], second.as_str());
    assert_eq!(views[1]["status"], "cancelled");
}
