//! Trust boundaries, tried as an attacker would against the real `taskmesh up`:
//! a tenant cannot read the host's files through a model, nothing reaches a
//! node without the cluster key, metrics are not public, and keys can be
//! revoked and rotated.

mod support;

use http::Method;
use serde_json::json;
use support::*;

async fn digits(client: &TestClient, p: &Platform) {
    let digest = upload(client, p, "examples/digits/model.onnx").await;
    register(client, p, &digits_definition(&digest, "digits", &json!({}))).await;
}

/// Invokes digits with `key` as the caller's API key.
async fn call(url: &str, key: &str) -> Reply {
    TestClient::h2c()
        .with_key(key)
        .post_json(url, &sample())
        .await
}

#[tokio::test]
async fn a_model_that_names_a_host_file_as_external_data_is_refused_at_upload() {
    let p = Platform::start(&["--no-examples"]);
    // Its initializer's bytes live at `.taskmesh/admin.key`, relative to where
    // ONNX Runtime loads it: the operator key of the README's layout.
    let reply = p
        .client()
        .send(
            Method::POST,
            &p.admin_url("/v1/models"),
            &[("content-type", "application/octet-stream")],
            generated("tests/models/exfil/model.onnx"),
        )
        .await;
    let err = reply.expect_error(422, "invalid_input");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("external data"), "{message}");
    assert!(message.contains(".taskmesh/admin.key"), "{message}");
    assert!(!String::from_utf8_lossy(&reply.body).contains(&p.admin_key));
}

#[tokio::test]
async fn a_node_serves_only_callers_that_carry_the_cluster_key() {
    let mut p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    digits(&operator, &p).await;
    let key = p.cluster_key();
    assert!(key.len() >= 32, "taskmesh up makes a strong cluster key");

    // Through the router: it proves itself to the node.
    let via_router = operator
        .post_json(&p.router_url("/v1/functions/digits/invoke"), &sample())
        .await;
    assert_eq!(via_router.status, 200, "{}", via_router.json());

    // Straight to the node: no key, a wrong key, or a forged tenant get 401 on
    // every route that touches functions or their traffic.
    let invoke = p.node_url("/v1/functions/digits/invoke?version=1");
    let forged = [
        vec![],
        vec![("x-taskmesh-cluster-key", "0".repeat(64))],
        vec![("x-taskmesh-cluster-key", format!("{key}x"))],
        vec![("x-taskmesh-tenant", "default".to_string())],
    ];
    for headers in &forged {
        let mut client = TestClient::h2c().with_key(&p.admin_key);
        for (name, value) in headers {
            client = client.with_header(name, value);
        }
        client
            .post_json(&invoke, &sample())
            .await
            .expect_error(401, "unauthenticated");
        for (method, path) in [
            (Method::POST, "/v1/functions/digits/versions/1/warm"),
            (Method::GET, "/metrics"),
            (Method::GET, "/v2/models/digits"),
            (Method::POST, "/v2/models/digits/infer"),
        ] {
            let reply = client
                .send(method, &p.node_url(path), &[], Vec::new())
                .await;
            assert_eq!(reply.status, 401, "{path} without the cluster key");
        }
    }
    // Probes carry no tenant data and stay open.
    let anonymous = TestClient::h2c();
    assert_eq!(anonymous.get(&p.node_url("/healthz")).await.status, 200);
    assert_eq!(
        anonymous.get(&p.node_url("/v2/health/live")).await.status,
        200
    );

    // With the key, the node answers (the router's own traffic).
    let trusted = TestClient::h2c().with_header("x-taskmesh-cluster-key", &key);
    let direct = trusted.post_json(&invoke, &sample()).await;
    assert_eq!(direct.status, 200, "{}", direct.json());
    // The key never comes back in an answer.
    for reply in [&via_router, &direct] {
        assert!(!format!("{:?}", reply.headers).contains(&key));
        assert!(!String::from_utf8_lossy(&reply.body).contains(&key));
    }
}

#[tokio::test]
async fn metrics_need_the_operator_or_a_key_with_the_metrics_scope() {
    let p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    digits(&operator, &p).await;
    let metrics = p.router_url("/metrics");

    TestClient::h2c()
        .get(&metrics)
        .await
        .expect_error(401, "unauthenticated");
    let (_, invoker) =
        create_client(&operator, &p, json!({"name": "app", "scopes": ["invoke"]})).await;
    TestClient::h2c()
        .with_key(&invoker)
        .get(&metrics)
        .await
        .expect_error(403, "forbidden");
    assert_eq!(operator.get(&metrics).await.status, 200);
    // Only GET and HEAD read them; another method gets the contract's 405.
    operator
        .send(Method::TRACE, &metrics, &[], Vec::new())
        .await
        .expect_error(405, "method_not_allowed");
    // The admin API's rollout metrics name every tenant's functions too.
    TestClient::h2c()
        .get(&p.admin_url("/metrics"))
        .await
        .expect_error(401, "unauthenticated");
    assert_eq!(operator.get(&p.admin_url("/metrics")).await.status, 200);
    let (_, scraper) = create_client(
        &operator,
        &p,
        json!({"name": "prometheus", "scopes": ["metrics"]}),
    )
    .await;
    let reply = TestClient::h2c().with_key(&scraper).get(&metrics).await;
    assert_eq!(reply.status, 200);
    assert!(String::from_utf8_lossy(&reply.body).contains("taskmesh_router_"));
    // Metrics cover every tenant: a tenant admin cannot grant the scope.
    let (_, tenant_admin) = create_client(
        &operator,
        &p,
        json!({"name": "acme-admin", "tenant": "acme", "scopes": ["admin", "invoke"]}),
    )
    .await;
    let reply = TestClient::h2c()
        .with_key(&tenant_admin)
        .post_json(
            &p.admin_url("/v1/clients"),
            &json!({"name": "peek", "scopes": ["metrics"]}),
        )
        .await;
    reply.expect_error(403, "forbidden");
}

#[tokio::test]
async fn revoked_and_rotated_keys_stop_working_and_only_their_tenant_manages_them() {
    let p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    digits(&operator, &p).await;
    let invoke = p.router_url("/v1/functions/digits/invoke");
    let (id, key) =
        create_client(&operator, &p, json!({"name": "app", "scopes": ["invoke"]})).await;
    assert_eq!(call(&invoke, &key).await.status, 200);

    // Another tenant's admin cannot see it (404, not 403).
    let (_, other_admin) = create_client(
        &operator,
        &p,
        json!({"name": "b-admin", "tenant": "b", "scopes": ["admin", "invoke"]}),
    )
    .await;
    let other = TestClient::h2c().with_key(&other_admin);
    for (method, path) in [
        (Method::DELETE, format!("/v1/clients/{id}")),
        (Method::POST, format!("/v1/clients/{id}/rotate")),
    ] {
        other
            .send(method, &p.admin_url(&path), &[], Vec::new())
            .await
            .expect_error(404, "not_found");
    }

    // Rotate: a new key, shown once; the old one stops at once on this router.
    let reply = operator
        .send(
            Method::POST,
            &p.admin_url(&format!("/v1/clients/{id}/rotate")),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let new_key = reply.json()["api_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, key);
    call(&invoke, &key)
        .await
        .expect_error(401, "unauthenticated");
    assert_eq!(call(&invoke, &new_key).await.status, 200);

    // Revoke: gone for good.
    let reply = operator
        .send(
            Method::DELETE,
            &p.admin_url(&format!("/v1/clients/{id}")),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(reply.status, 204);
    call(&invoke, &new_key)
        .await
        .expect_error(401, "unauthenticated");
    operator
        .send(
            Method::DELETE,
            &p.admin_url(&format!("/v1/clients/{id}")),
            &[],
            Vec::new(),
        )
        .await
        .expect_error(404, "not_found");
    // The operator's own key is not managed through the API.
    operator
        .send(
            Method::DELETE,
            &p.admin_url("/v1/clients/0000000000000000"),
            &[],
            Vec::new(),
        )
        .await
        .expect_error(403, "forbidden");
}

#[tokio::test]
async fn calls_cancelled_by_their_clients_never_open_the_breaker() {
    let p = Platform::start(&["--no-examples"]);
    register_slow(
        &p,
        "slow",
        json!({"circuit_breaker": {"failure_rate": 0.5, "minimum_calls": 5, "window_s": 30, "open_s": 30}}),
    )
    .await;
    let url = p.router_url("/v1/functions/slow/invoke");
    let client = p.client();
    // Warm it: the first call loads the model.
    assert_eq!(client.post_json(&url, &rows(1)).await.status, 200);
    // 30 calls (each a few hundred ms of work) cancelled 5-50 ms after sending.
    let body = rows(256);
    for i in 0..30u64 {
        let cancel_after = std::time::Duration::from_millis(5 + (i * 7) % 46);
        let call = client.post_json(&url, &body);
        assert!(
            tokio::time::timeout(cancel_after, call).await.is_err(),
            "call {i} answered within {cancel_after:?}; it should still be running"
        );
    }
    // The next caller is served: nobody else's cancels count against the function.
    let reply = client.post_json(&url, &rows(1)).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let metrics = p.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("taskmesh_router_breaker_state{")
                && l.contains("slow")
                && !l.ends_with(" 0")),
        "the breaker left closed: {metrics}"
    );
}

#[tokio::test]
async fn a_body_sent_a_byte_at_a_time_gets_one_deadline_not_one_per_chunk() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Platform::start(&["--no-examples"]);
    let operator = p.client();
    let digest = upload(&operator, &p, "examples/digits/model.onnx").await;
    register(
        &operator,
        &p,
        &digits_definition(&digest, "digits", &json!({"timeout_ms": 1500})),
    )
    .await;
    let body = serde_json::to_vec(&sample()).unwrap();
    let mut socket = tokio::net::TcpStream::connect(p.router).await.unwrap();
    let head = format!(
        "POST /v1/functions/digits/invoke HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        p.admin_key,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // One byte every 300 ms would take minutes for the whole body; each byte
    // restarting a 10 s timer would keep the slot that long. The answer must
    // come once the function's deadline (1.5 s) has passed.
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    for byte in &body {
        if socket.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(std::time::Duration::from_millis(300), socket.read(&mut buf))
            .await
        {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Ok(_) => break,
            Err(_) => {}
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "still reading a trickling body after 20 s"
        );
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1400));
}

/// `curl --http2-prior-knowledge` (Debian 12's 7.88, the README's client)
/// `times` times; the statuses it printed (`000`: it got no answer).
fn curl_statuses(url: &str, args: &[&str], times: usize) -> Vec<String> {
    (0..times)
        .map(|_| {
            let out = std::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--http2-prior-knowledge",
                ])
                .args(args)
                .arg(url)
                .output()
                .expect("curl runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

#[tokio::test]
async fn early_refusals_reach_curl_as_answers() {
    let p = Platform::start(&["--no-examples"]);
    digits(&p.client(), &p).await;
    let url = p.router_url("/v1/functions/digits/invoke");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    std::fs::write(
        &big,
        serde_json::to_vec(&json!({"pixels": vec![0; 20_000]})).unwrap(),
    )
    .unwrap();
    let wrong_key = format!(
        "authorization: Bearer tm_0123456789abcdef_{}",
        "a".repeat(64)
    );
    let small = serde_json::to_string(&sample()).unwrap();
    let big_body = format!("@{}", big.display());
    for (what, args) in [
        (
            "a wrong key",
            vec![
                "-H",
                wrong_key.as_str(),
                "-H",
                "content-type: application/json",
                "-d",
                small.as_str(),
            ],
        ),
        (
            "no key, a 60 KB body",
            vec![
                "-H",
                "content-type: application/json",
                "-d",
                big_body.as_str(),
            ],
        ),
    ] {
        let statuses = curl_statuses(&url, &args, 200);
        let answered = statuses.iter().filter(|s| *s == "401").count();
        assert_eq!(answered, 200, "{what}: {statuses:?}");
    }
}

/// Reads until EOF or `within` passes: whether the server closed the socket.
async fn closed_within(socket: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn the_node_and_admin_listeners_cap_connections_and_close_silent_or_stalled_ones() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let mut p = Platform::start(&["--no-examples"]);
    let node: std::net::SocketAddr = p
        .node_url("")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    for addr in [node, p.admin] {
        // One peer may hold 256 connections; the next ones are closed at once.
        let mut held = Vec::new();
        for _ in 0..256 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut over = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_within(&mut over, std::time::Duration::from_secs(2)).await,
            "{addr}: a 257th connection from one peer stayed open"
        );
        // A request line and one header, never finished; and a silent socket.
        let mut stalled = held.pop().unwrap();
        stalled
            .write_all(b"POST /v1/functions/x/invoke HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let mut silent = held.pop().unwrap();
        // Both are closed by the first-byte and header-read timeouts (10 s each).
        assert!(
            closed_within(&mut silent, std::time::Duration::from_secs(13)).await,
            "{addr}: a silent connection stayed open"
        );
        assert!(
            closed_within(&mut stalled, std::time::Duration::from_secs(13)).await,
            "{addr}: a stalled request stayed open"
        );
        drop(held);
        // Closed connections give their places back.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let reply = TestClient::h2c()
            .get(&format!("http://{addr}/healthz"))
            .await;
        assert_eq!(reply.status, 200);
    }
}

#[tokio::test]
async fn huge_headers_get_431_on_both_protocols_and_never_reach_a_node() {
    let p = Platform::start(&["--no-examples"]);
    register_slow(&p, "slow", json!({})).await;
    let url = p.router_url("/v1/functions/slow/invoke");
    let client = p.client();
    assert_eq!(client.post_json(&url, &rows(1)).await.status, 200);
    // Other callers' calls in flight on the router's shared connection to the node.
    let in_flight: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { client.post_json(&url, &rows(128)).await.status })
        })
        .collect();
    let auth = format!("authorization: Bearer {}", p.admin_key);
    let body = serde_json::to_string(&rows(1)).unwrap();
    let huge = format!("x-big: {}", "x".repeat(100_000));
    let large = format!("x-big: {}", "x".repeat(20_000));
    let fits = format!("x-big: {}", "x".repeat(12_000));
    let curl = |proto: &str, header: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                proto,
                "-w",
                "\n%{http_code}",
                "-H",
                auth.as_str(),
                "-H",
                header,
            ])
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                body.as_str(),
                url.as_str(),
            ])
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let h1 = curl("--http1.1", &huge);
    assert!(h1.ends_with("\n431"), "{h1}");
    assert!(h1.contains("headers_too_large"), "{h1}");
    assert!(curl("--http1.1", &large).ends_with("\n431"));
    assert!(curl("--http2-prior-knowledge", &large).ends_with("\n431"));
    // A header under the limit is fine, and is not forwarded to the node.
    assert!(curl("--http1.1", &fits).ends_with("\n200"));
    assert!(curl("--http2-prior-knowledge", &fits).ends_with("\n200"));
    for call in in_flight {
        assert_eq!(call.await.unwrap(), 200, "another caller's call failed");
    }
}

/// Reads what the server sends until it closes or `within` passes.
async fn read_answer(socket: &mut tokio::net::TcpStream, within: std::time::Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn the_router_listener_answers_short_requests_caps_connections_and_closes_stalled_ones() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let p = Platform::start(&["--no-examples"]);
    let router: std::net::SocketAddr = p
        .router_url("")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // An HTTP/1.0 request shorter than the h2 preface is answered at once.
    let mut short = TcpStream::connect(router).await.unwrap();
    short.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let answer = read_answer(&mut short, std::time::Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1."), "no answer: {answer:?}");
    assert!(answer.contains("not_found"), "{answer}");
    // Request heads past the cap are refused before parsing.
    let mut huge = TcpStream::connect(router).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nx-big: {}\r\n", "x".repeat(40_000));
    let _ = huge.write_all(head.as_bytes()).await;
    let answer = read_answer(&mut huge, std::time::Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(answer.contains("headers_too_large"), "{answer}");

    // One peer may hold 256 connections; the next is told so and closed.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(TcpStream::connect(router).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut over = TcpStream::connect(router).await.unwrap();
    let answer = read_answer(&mut over, std::time::Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("overloaded"), "{answer}");
    // A request line and one header, never finished; a bare h2 preface; a
    // silent socket: each is closed by its deadline (10 s).
    let mut stalled = held.pop().unwrap();
    stalled
        .write_all(b"POST /v1/functions/x/invoke HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut preface = held.pop().unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut silent = held.pop().unwrap();
    for (what, socket) in [
        ("a silent connection", &mut silent),
        ("a stalled request", &mut stalled),
        ("a bare preface", &mut preface),
    ] {
        assert!(
            closed_within(socket, std::time::Duration::from_secs(13)).await,
            "{what} stayed open"
        );
    }
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The places come back; h2c and HTTP/1.1 clients are served as before.
    assert_eq!(
        TestClient::h2c()
            .get(&p.router_url("/healthz"))
            .await
            .status,
        200
    );
    let metrics = p.client().get(&p.router_url("/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    for reason in [
        "per_peer",
        "first_byte_timeout",
        "header_timeout",
        "headers_too_large",
    ] {
        assert!(
            metrics.contains(&format!(
                "taskmesh_router_connections_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} missing from\n{metrics}"
        );
    }
}

#[tokio::test]
async fn scaling_is_bounded_for_every_tenant() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let digest = upload(&client, &p, "examples/digits/model.onnx").await;
    let url = p.admin_url("/v1/functions");
    for (field, over) in [
        (
            "min_instances",
            json!({"min_instances": 9, "max_instances": 9}),
        ),
        ("max_instances", json!({"max_instances": 100_000})),
        ("concurrency", json!({"concurrency": 4_000_000})),
    ] {
        let doc = digits_definition(&digest, "greedy", &json!({ "scaling": over }));
        let reply = client.post_json(&url, &doc).await;
        assert_eq!(reply.status, 422, "{field}: {}", reply.json());
        let message = reply.json()["error"]["message"].to_string();
        assert!(message.contains(&format!("/scaling/{field}")), "{message}");
    }
    // At the bounds is fine.
    let doc = digits_definition(
        &digest,
        "greedy",
        &json!({"scaling": {"max_instances": 64, "concurrency": 1024}}),
    );
    register(&client, &p, &doc).await;
}
