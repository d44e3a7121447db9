//! Graceful shutdown and upgrade with real processes under steady HTTP/2 load:
//! a node that gets SIGTERM fails no call, a router replaced in place with
//! `--upgrade` refuses no connection, and each process exits within its grace
//! period.

mod support;

#[path = "../../registry/tests/support/redis.rs"]
mod redis_support;

#[path = "support/cluster.rs"]
mod cluster_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::*;
use serde_json::json;

const SIGQUIT: i32 = 3;

/// How many times in all a caller sends a request that GOAWAYs keep refusing.
const SENDS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_one_of_two_nodes_under_load_fails_no_invocation() {
    let drain = 5;
    let mut cluster = Cluster::start_with(2, 1, &["--drain-timeout-s", "5"], &[]);
    cluster.wait_for_nodes(2, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    cluster.digits(&digest, "digits", json!({})).await;
    let client = cluster.client();
    let owner = served_by(&client, &cluster.routers[0], "digits").await;

    let load = cluster.under_load("digits", 5).await;
    let victim = cluster.node_index(&owner);
    let stopping = Instant::now();
    let status = cluster.nodes[victim].terminate(Duration::from_secs(drain + 10));
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "{status:?}: {}",
        cluster.nodes[victim].logs()
    );
    expect_no_failed_call(load).await;
    assert!(
        took <= Duration::from_secs(drain + 1),
        "the node took {took:?} to exit (drain timeout {drain} s)"
    );
    // It left membership on the way out.
    assert_eq!(cluster.listed_nodes().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_upgraded_in_place_three_times_refuses_no_connection() {
    let sockets = tempfile::tempdir().unwrap();
    let sock = sockets.path().join("upgrade.sock").display().to_string();
    let drain = 2;
    let mut cluster = Cluster::start_with(
        1,
        1,
        &[],
        &["--drain-timeout-s", "2", "--upgrade-sock", &sock],
    );
    cluster.wait_for_nodes(1, Duration::from_secs(10)).await;
    let digest = cluster.upload_digits().await;
    cluster.digits(&digest, "digits", json!({})).await;
    let client = cluster.client();
    served_by(&client, &cluster.routers[0], "digits").await;
    let addr = cluster.routers[0].addr;
    let url = cluster.routers[0].url("/v1/functions/digits/invoke");

    // Steady load: 8 callers, each with its own HTTP/2 connection pool.
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (stop, url) = (stop.clone(), url.clone());
            tokio::spawn(async move {
                let client = support::TestClient::h2c().with_key(OPERATOR_KEY);
                let (mut ok, mut failures) = (0u64, Vec::new());
                let (mut crossed, mut resent) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    // A request that crossed a GOAWAY was never processed
                    // (RFC 9113 §6.8): it is sent again, as HTTP/2 clients
                    // do, and only what still fails counts as a failure.
                    let (outcome, again) = client.post_json_resending(&url, &sample(), SENDS).await;
                    crossed += u64::from(again > 0);
                    resent += u64::from(again);
                    match outcome {
                        Ok(reply) if reply.status == 200 => ok += 1,
                        Ok(reply) => failures.push(format!("{} {:?}", reply.status, reply.body)),
                        Err(e) => failures.push(format!("after {again} resends: {e}")),
                    }
                }
                (ok, failures, crossed, resent)
            })
        })
        .collect();

    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let new = cluster.spawn_router(Some(addr), &["--upgrade"]);
        // The new process waits on the upgrade socket for the listener.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut old = std::mem::replace(&mut cluster.routers[0], new);
        old.signal(SIGQUIT);
        let handing = Instant::now();
        let deadline = handing + Duration::from_secs(5 + drain + 10);
        let status = loop {
            if let Some(status) = old.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the old router never exited: {}",
                old.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            status.success(),
            "round {round}: {status:?}: {}",
            old.logs()
        );
        eprintln!(
            "round {round}: old router exited after {:?}",
            handing.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failures, mut crossed, mut resent) = (0, Vec::new(), 0, 0);
    for caller in callers {
        let (o, f, c, r) = caller.await.unwrap();
        ok += o;
        failures.extend(f);
        crossed += c;
        resent += r;
    }
    eprintln!(
        "{ok} calls answered 200 across three upgrades \
         ({crossed} crossed a GOAWAY and were sent again, {resent} resends in all)"
    );
    assert!(
        crossed <= 8 * 3,
        "{crossed} requests crossed a GOAWAY: more than one per caller and upgrade"
    );
    assert!(ok > 100, "too little load to mean anything: {ok}");
    // Every call, resends included, ends in a 200.
    assert_eq!(
        failures.len(),
        0,
        "calls that failed even after resending: {:?}",
        &failures[..failures.len().min(5)]
    );

    // A plain SIGTERM: the router exits within its grace period.
    let stopping = Instant::now();
    let status = cluster.routers[0].terminate(Duration::from_secs(drain + 10));
    assert!(status.success());
    let took = stopping.elapsed();
    assert!(
        took <= Duration::from_secs(drain + 2),
        "the router took {took:?} to exit (drain timeout {drain} s)"
    );
}
