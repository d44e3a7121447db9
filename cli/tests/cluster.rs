//! Cluster mode with real processes over loopback: one registry, runtime
//! nodes and routers as separate `taskmesh` processes, a real `redis-server`
//! and a shared model folder.

mod support;

#[path = "../../registry/tests/support/redis.rs"]
mod redis_support;

#[path = "support/cluster.rs"]
mod cluster_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cluster_support::*;
use serde_json::{json, Value};
use support::digits_definition;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_fails_no_invocation_and_leaves_within_two_seconds() {
    let mut cluster = Cluster::start(3, 1);
    let listed = cluster.wait_for_nodes(3, Duration::from_secs(10)).await;
    let nodes: Vec<&Proc> = cluster.nodes.iter().collect();
    let mut expected: Vec<String> = nodes.iter().map(|p| node_id(p)).collect();
    expected.sort();
    assert_eq!(cluster.listed_nodes().await, expected, "after {listed:?}");

    let digest = cluster.upload_digits().await;
    cluster.digits(&digest, "digits", json!({})).await;
    let client = cluster.client();
    let router = &cluster.routers[0];
    let owner = owner_of(&nodes, "digits");
    for _ in 0..5 {
        assert_eq!(served_by(&client, router, "digits").await, owner);
    }

    // Steady HTTP/2 load: 4 connections × 8 streams for 5 s.
    let load = cluster.under_load("digits", 5).await;
    let victim = cluster.node_index(&owner);
    cluster.nodes[victim].kill9();
    let killed = Instant::now();
    let left = loop {
        if cluster.listed_nodes().await.len() == 2 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "the killed node stayed listed"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    expect_no_failed_call(load).await;
    assert!(
        left <= Duration::from_secs(2),
        "the killed node left GET /v1/nodes after {left:?}"
    );
    // The function now lives on its next candidate.
    let survivors: Vec<&Proc> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, p)| p)
        .collect();
    let next = owner_of(&survivors, "digits");
    // h2load leaves its last requests behind when it stops; until they end,
    // bounded load may still send a call to the other survivor.
    let settle = Instant::now() + Duration::from_secs(5);
    loop {
        let served = served_by(&client, &cluster.routers[0], "digits").await;
        if served == next {
            break;
        }
        assert!(
            Instant::now() < settle,
            "served by {served}, not the next candidate {next}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_and_leaving_move_only_the_functions_of_that_node() {
    let mut cluster = Cluster::start(3, 1);
    cluster.wait_for_nodes(3, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    let names: Vec<String> = (0..30).map(|i| format!("fn-{i}")).collect();
    for name in &names {
        cluster.digits(&digest, name, json!({})).await;
    }
    let client = cluster.client();
    let mut before = HashMap::new();
    for name in &names {
        before.insert(
            name.clone(),
            served_by(&client, &cluster.routers[0], name).await,
        );
    }
    // Each function is served by its owner on the ring of the three nodes.
    let old_nodes: Vec<&Proc> = cluster.nodes.iter().collect();
    for name in &names {
        assert_eq!(
            before[name],
            owner_of(&old_nodes, name),
            "{name} before the join"
        );
    }

    let joined = cluster.add_node();
    wait_healthy(&cluster.nodes[joined]);
    cluster.wait_for_nodes(4, Duration::from_secs(10)).await;
    // The router reads membership every 250 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let newcomer = node_id(&cluster.nodes[joined]);
    let all_nodes: Vec<&Proc> = cluster.nodes.iter().collect();
    // The functions that moved are exactly those the ring of four gives the
    // newcomer: every other function stays on the node that served it.
    let (mut moved, mut should_move) = (Vec::new(), Vec::new());
    for name in &names {
        let now = served_by(&client, &cluster.routers[0], name).await;
        if now != before[name] {
            assert_eq!(now, newcomer, "{name} moved between old nodes");
            moved.push(name.as_str());
        }
        if owner_of(&all_nodes, name) == newcomer {
            should_move.push(name.as_str());
        }
    }
    assert_eq!(
        moved, should_move,
        "the functions that moved to the newcomer, and those the ring gives it"
    );
    assert!(!moved.is_empty(), "the new node took no function");
    // About 1/4 of them (1/N), not the 3/4 that rehashing modulo N would
    // move; at most twice the fair share.
    assert!(
        moved.len() * 2 <= names.len(),
        "{} of {} functions moved to the fourth node: {moved:?}",
        moved.len(),
        names.len()
    );

    // It leaves cleanly (SIGTERM): its functions go back where they were.
    let status = cluster.nodes[joined].terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "{status:?}: {}",
        cluster.nodes[joined].logs()
    );
    cluster.wait_for_nodes(3, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Only the functions it owned move, each back to its owner before the join.
    for name in &names {
        assert_eq!(
            served_by(&client, &cluster.routers[0], name).await,
            before[name],
            "{name} after the fourth node left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_across_two_routers() {
    let cluster = Cluster::start(1, 2);
    cluster.wait_for_nodes(1, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    cluster
        .digits(
            &digest,
            "limited",
            json!({"rate_limit": {"per_second": 40, "burst": 10}}),
        )
        .await;
    cluster
        .digits(&digest, "metered", json!({"quota": {"per_day": 25}}))
        .await;
    let client = cluster.client();
    for router in &cluster.routers {
        served_by(&client, router, "metered").await;
    }
    // Quota: 25 a day in all, whichever router is asked (2 used above).
    let mut admitted = 2;
    for i in 0..60 {
        let router = &cluster.routers[i % 2];
        let reply = client
            .post_json(&router.url("/v1/functions/metered/invoke"), &sample())
            .await;
        match reply.status.as_u16() {
            200 => admitted += 1,
            429 => {
                reply.expect_error(429, "quota_exceeded");
            }
            other => panic!("{other}: {}", reply.json()),
        }
    }
    assert_eq!(admitted, 25);

    // Cost weights through the shared limits: a digits call (64 values) at
    // 16 a unit costs 4, so a quota of 20 admits 5 calls and a burst of 12
    // (refilling once in 100 s) admits 3, whichever router is asked.
    let weighed = |extra: Value| {
        let mut extra = extra;
        extra["cost"] = json!({"per": "elements", "unit": 16});
        extra
    };
    cluster
        .digits(
            &digest,
            "weighed-quota",
            weighed(json!({"quota": {"per_day": 20}})),
        )
        .await;
    cluster
        .digits(
            &digest,
            "weighed-rate",
            weighed(json!({"rate_limit": {"per_second": 0.01, "burst": 12}})),
        )
        .await;
    for (name, code, expected) in [
        ("weighed-quota", "quota_exceeded", 5),
        ("weighed-rate", "rate_limited", 3),
    ] {
        let mut admitted = 0;
        for i in 0..12 {
            let url = cluster.routers[i % 2].url(&format!("/v1/functions/{name}/invoke"));
            let reply = client.post_json(&url, &sample()).await;
            match reply.status.as_u16() {
                200 => admitted += 1,
                _ => {
                    reply.expect_error(429, code);
                }
            }
        }
        assert_eq!(admitted, expected, "{name}");
    }

    // Rate: 40 per second across both routers, 16 concurrent callers for 3 s.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let window = Duration::from_secs(3);
    let callers: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            let url = cluster.routers[i % 2].url("/v1/functions/limited/invoke");
            tokio::spawn(async move {
                let (mut ok, mut limited) = (0u64, 0u64);
                while start.elapsed() < window {
                    let reply = client.post_json(&url, &sample()).await;
                    match reply.status.as_u16() {
                        200 => ok += 1,
                        429 => {
                            limited += 1;
                            // A client backs off a little when refused (a
                            // refusal costs the router microseconds, so a
                            // tight loop only starves the machine).
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        other => panic!("{other}"),
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for caller in callers {
        let (o, l) = caller.await.unwrap();
        ok += o;
        limited += l;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // GCRA admits the burst, then one call per 1/40 s.
    let expected = 40.0 * elapsed + 10.0;
    let error = (ok as f64 - expected).abs() / expected;
    eprintln!("admitted {ok} (expected {expected:.0}), refused {limited}, over {elapsed:.2} s");
    assert!(
        limited > ok,
        "the load did not exceed the limit: {ok} ok, {limited} limited"
    );
    assert!(error <= 0.05, "admitted {ok}, expected {expected:.0} ± 5 %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_loss_keeps_cached_functions_serving_and_loses_no_definition() {
    let mut cluster = Cluster::start(1, 1);
    cluster.wait_for_nodes(1, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    for name in ["a", "b", "c"] {
        cluster.digits(&digest, name, json!({})).await;
    }
    cluster
        .digits(&digest, "a", json!({"description": "second"}))
        .await;
    // Guard rails fall back to per-router state while Redis is away.
    cluster
        .digits(
            &digest,
            "limited",
            json!({"quota": {"per_day": 1000}, "rate_limit": {"per_second": 1000, "burst": 100}}),
        )
        .await;
    let client = cluster.client();
    for name in ["a", "b", "c", "limited"] {
        served_by(&client, &cluster.routers[0], name).await;
    }

    cluster.redis.kill9();
    // Cached functions keep serving while Redis is down.
    for _ in 0..3 {
        for name in ["a", "b", "c", "limited"] {
            let reply = client
                .post_json(
                    &cluster.routers[0].url(&format!("/v1/functions/{name}/invoke")),
                    &sample(),
                )
                .await;
            assert_eq!(reply.status, 200, "{name}: {}", reply.json());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Admin writes fail fast with 503.
    let started = Instant::now();
    let doc = digits_definition(&digest, "d", &json!({}));
    let reply = client
        .post_json(&cluster.registry.url("/v1/functions"), &doc)
        .await;
    reply.expect_error(503, "unavailable");
    assert!(started.elapsed() < Duration::from_secs(5));

    cluster.redis.restart();
    // Everything reconnects by itself, and every acknowledged write is there.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = client.get(&cluster.registry.url("/v1/functions/a")).await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "registry never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = client
        .get(&cluster.registry.url("/v1/functions"))
        .await
        .json();
    let mut versions: Vec<(String, Value)> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["versions"].clone(),
            )
        })
        .collect();
    versions.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        versions,
        vec![
            ("a".to_string(), json!([1, 2])),
            ("b".to_string(), json!([1])),
            ("c".to_string(), json!([1])),
            ("limited".to_string(), json!([1]))
        ]
    );
    cluster.register(&doc).await;
    cluster.wait_for_nodes(1, Duration::from_secs(5)).await;
    served_by(&client, &cluster.routers[0], "d").await;
    let reply = client
        .post_json(&cluster.routers[0].url("/v1/functions/a/invoke"), &sample())
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-taskmesh-version"), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_instances_are_warmed_on_the_owner_at_registration() {
    let cluster = Cluster::start(2, 1);
    cluster.wait_for_nodes(2, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    cluster
        .digits(
            &digest,
            "kept-warm",
            json!({"scaling": {"min_instances": 1}}),
        )
        .await;
    let nodes: Vec<&Proc> = cluster.nodes.iter().collect();
    let owner = owner_of(&nodes, "kept-warm");
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = client.get(&cluster.registry.url("/v1/nodes")).await.json();
        let warm_on: Vec<String> = listed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n["warm"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["function"] == "kept-warm" && f["instances"].as_u64() >= Some(1))
            })
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        if !warm_on.is_empty() {
            assert_eq!(warm_on, vec![owner.clone()]);
            break;
        }
        assert!(Instant::now() < deadline, "never warmed: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = client
        .post_json(
            &cluster.routers[0].url("/v1/functions/kept-warm/invoke"),
            &sample(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-taskmesh-node"), Some(owner.as_str()));
    assert_eq!(reply.header("x-taskmesh-cold-start"), Some("false"));
}

/// Polls a rollout on `registry` until `done` holds, or panics after `limit`.
async fn rollout_on(
    client: &support::TestClient,
    registry: &Proc,
    id: &str,
    done: impl Fn(&Value) -> bool,
    limit: Duration,
) -> Value {
    let url = registry.url(&format!("/v1/functions/handover/rollouts/{id}"));
    support::poll_json(client, &url, limit, done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_outlives_the_registry_that_drove_it() {
    let mut cluster = Cluster::start(1, 1);
    cluster.wait_for_nodes(1, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    cluster.digits(&digest, "handover", json!({})).await;
    cluster.digits(&digest, "handover", json!({})).await;
    let client = cluster.client();
    let reply = client
        .put_json(
            &cluster.registry.url("/v1/functions/handover/aliases/live"),
            &json!({"routes": [{"version": 1, "weight": 100}]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());

    // Traffic through the router, one routing key per call so both versions
    // get their share.
    let url = cluster.routers[0].url("/v1/functions/handover/invoke");
    let traffic = support::Traffic::start(&client, &url, 4, "k");

    // Registry A starts the rollout and drives its first step; it is the only
    // registry, so it takes the rollout's lease and renews it every tick.
    let reply = client
        .post_json(
            &cluster.registry.url("/v1/functions/handover/rollouts"),
            &json!({"alias": "live", "to_version": 2, "steps": [10, 50, 100],
                    "step_interval_s": 2, "min_calls_per_step": 5, "max_error_rate": 0.05,
                    "max_p99_ms": 10000, "p99_ratio": 20}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.json());
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let driving = |r: &Value| r["steps"].as_array().is_some_and(|s| !s.is_empty());
    rollout_on(
        &client,
        &cluster.registry,
        &id,
        driving,
        Duration::from_secs(60),
    )
    .await;

    // Registry B joins (A keeps the lease while it lives), then A dies
    // mid-rollout. B takes the rollout over once A's lease lapses.
    let b = spawn(&cluster.redis, cluster.dir.path(), "registry", 90, &[]);
    wait_healthy(&b);
    let before = rollout_on(
        &client,
        &cluster.registry,
        &id,
        |_| true,
        Duration::from_secs(5),
    )
    .await;
    cluster.registry.kill9();
    assert!(
        before["outcome"].is_null(),
        "finished too early: {before:#}"
    );
    let steps_by_a = before["steps"].as_array().unwrap().len();
    assert!(steps_by_a < 3, "{before:#}");
    let after = rollout_on(
        &client,
        &b,
        &id,
        |r| r["outcome"].is_string(),
        Duration::from_secs(90),
    )
    .await;
    let statuses: Vec<u16> = traffic.stop().await.iter().map(|c| c.1).collect();
    assert_eq!(after["outcome"], "promoted", "{after:#}");
    let steps = after["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{after:#}");
    for (step, percent) in steps.iter().zip([10, 50, 100]) {
        assert_eq!(step["percent"], percent, "{after:#}");
        assert_eq!(step["verdict"], "passed", "{after:#}");
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "calls failed while the registry changed hands: {:?}",
        statuses.iter().filter(|s| **s != 200).fold(
            HashMap::new(),
            |mut m: HashMap<u16, usize>, s| {
                *m.entry(*s).or_default() += 1;
                m
            }
        )
    );
    let live = client
        .get(&b.url("/v1/functions/handover/aliases/live"))
        .await
        .json();
    assert_eq!(live["routes"], json!([{"version": 2, "weight": 100}]));
    // B drove the rest: the steps A never began, and the promotion.
    let logs = b.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(logs.contains("rollout promoted"), "{logs}");
    assert_eq!(
        logs.matches("rollout step began").count(),
        3 - steps_by_a,
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_loses_redis_enforces_its_share_of_a_limit() {
    let mut cluster = Cluster::start(1, 2);
    cluster.wait_for_nodes(1, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    cluster
        .digits(
            &digest,
            "shared",
            json!({"rate_limit": {"per_second": 20, "burst": 10}}),
        )
        .await;
    let client = cluster.client();
    // Both routers take tokens, so each knows there are two (a router
    // learns of the others when it takes tokens).
    for i in [0, 1, 0] {
        served_by(&client, &cluster.routers[i], "shared").await;
    }
    cluster.redis.kill9();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Alone, router 0 enforces half: 10 per second and a burst of 5.
    let url = cluster.routers[0].url("/v1/functions/shared/invoke");
    let start = Instant::now();
    let window = Duration::from_secs(2);
    let (mut ok, mut limited) = (0u64, 0u64);
    while start.elapsed() < window {
        let reply = client.post_json(&url, &sample()).await;
        match reply.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("{other}: {}", reply.json()),
        }
    }
    let expected = 10.0 * start.elapsed().as_secs_f64() + 5.0;
    eprintln!("admitted {ok} (expected {expected:.0}), refused {limited}");
    assert!(limited > ok, "{ok} ok, {limited} limited");
    // The whole limit (20/s, burst 10) would admit about 50.
    assert!(
        (ok as f64 - expected).abs() <= 0.2 * expected,
        "admitted {ok}, expected {expected:.0} ± 20 %"
    );
}

/// Keys handed over the way deploy/README.md does it (`openssl rand -hex 32 >
/// admin.key`, `kubectl create secret --from-file`) end in a newline: the
/// registry must take the key without it, from the environment and from a
/// file, and refuse to start on a key that is not one (naming the variable,
/// never the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_keys_read_with_a_trailing_newline_work_and_bad_ones_stop_the_start() {
    let redis = redis_support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("shared")).unwrap();
    let key = "0123456789abcdef".repeat(4);
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let with_newline = format!("{key}\n");
    let file = key_file.to_str().unwrap();
    for (n, env) in [
        vec![("TASKMESH_ADMIN_KEY", Some(with_newline.as_str()))],
        vec![
            ("TASKMESH_ADMIN_KEY", None),
            ("TASKMESH_ADMIN_KEY_FILE", Some(file)),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let registry = spawn_env(
            &redis,
            dir.path(),
            "registry",
            n,
            support::free_addr(),
            &[],
            &env,
        );
        wait_healthy(&registry);
        let client = support::TestClient::http1();
        let listed = client
            .clone()
            .with_key(&key)
            .get(&registry.url("/v1/functions"))
            .await;
        assert_eq!(listed.status.as_u16(), 200, "{:?}", listed.body);
        let padded = client
            .clone()
            .with_key(&format!("{key}x"))
            .get(&registry.url("/v1/functions"))
            .await;
        padded.expect_error(401, "unauthenticated");
    }

    let short = "too-short-secret\n";
    let mut refused = spawn_env(
        &redis,
        dir.path(),
        "registry",
        9,
        support::free_addr(),
        &[],
        &[("TASKMESH_ADMIN_KEY", Some(short))],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a registry with a bad key kept running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "a 16-character operator key was taken");
    let logs = refused.logs();
    assert!(logs.contains("TASKMESH_ADMIN_KEY"), "{logs}");
    assert!(!logs.contains("too-short-secret"), "the key leaked: {logs}");
}

/// `taskmesh node --gpu` where ONNX Runtime has no CUDA provider (every CI
/// machine) must not come up CPU-only and Ready in the GPU pool's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_node_without_cuda_fails_at_start_up() {
    let redis = redis_support::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("shared")).unwrap();
    let mut node = spawn(&redis, dir.path(), "node", 1, &["--gpu"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a --gpu node without CUDA kept running: {}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success());
    assert!(node.logs().contains("CUDA"), "{}", node.logs());
}
