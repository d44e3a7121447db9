//! Aliases and rollouts end to end: the real `taskmesh up` process over HTTP/2.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use serde_json::{json, Value};
use support::*;

fn sample() -> Value {
    generated_json("examples/digits/sample.json")
}

/// Registers the digits example under `name` `count` times (versions 1..=count),
/// with `extra` merged into the last one.
async fn digits_versions(client: &TestClient, p: &Platform, name: &str, count: u32, last: Value) {
    let digest = upload(client, p, "examples/digits/model.onnx").await;
    for i in 1..=count {
        let mut doc = generated_json("examples/digits/function.json");
        doc["name"] = json!(name);
        doc["model"] = json!(digest);
        doc["description"] = json!(format!("version {i}"));
        if i == count {
            for (k, v) in last.as_object().unwrap() {
                doc[k] = v.clone();
            }
        }
        assert_eq!(register(client, p, &doc).await, u64::from(i));
    }
}

async fn put_json(client: &TestClient, url: &str, body: &Value) -> Reply {
    client
        .send(
            Method::PUT,
            url,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).unwrap(),
        )
        .await
}

async fn set_alias(
    client: &TestClient,
    p: &Platform,
    name: &str,
    alias: &str,
    routes: Value,
) -> Reply {
    put_json(
        client,
        &p.admin_url(&format!("/v1/functions/{name}/aliases/{alias}")),
        &json!({ "routes": routes }),
    )
    .await
}

async fn invoke_keyed(client: &TestClient, url: &str, key: &str) -> Reply {
    client
        .send(
            Method::POST,
            url,
            &[
                ("content-type", "application/json"),
                ("x-taskmesh-routing-key", key),
            ],
            serde_json::to_vec(&sample()).unwrap(),
        )
        .await
}

fn served(reply: &Reply) -> u32 {
    reply
        .header("x-taskmesh-version")
        .unwrap_or_else(|| panic!("no x-taskmesh-version on {} {:?}", reply.status, reply.body))
        .parse()
        .unwrap()
}

/// Invokes `n` times with routing keys `prefix-0..n`, 32 at a time; returns
/// (key index, status, served version).
async fn invoke_many(
    client: &TestClient,
    url: &str,
    prefix: &str,
    n: usize,
) -> Vec<(usize, u16, u32)> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (client, url, prefix) = (client.clone(), url.to_string(), prefix.to_string());
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let reply = invoke_keyed(&client, &url, &format!("{prefix}-{i}")).await;
            drop(permit);
            (i, reply.status.as_u16(), served(&reply))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_ninety_ten_alias_splits_by_routing_key_and_sticks() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_versions(&client, &p, "split", 4, json!({})).await;
    let invoke = p.router_url("/v1/functions/split/invoke");

    // Without a `live` alias the latest version serves.
    assert_eq!(served(&invoke_keyed(&client, &invoke, "a").await), 4);

    let reply = set_alias(
        &client,
        &p,
        "split",
        "live",
        json!([{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert_eq!(
        reply.json()["routes"][1],
        json!({"version": 4, "weight": 10})
    );

    let results = invoke_many(&client, &invoke, "caller", 10_000).await;
    assert!(results.iter().all(|(_, status, _)| *status == 200));
    let fours = results.iter().filter(|(_, _, v)| *v == 4).count();
    let threes = results.iter().filter(|(_, _, v)| *v == 3).count();
    assert_eq!(fours + threes, 10_000, "only versions 3 and 4 serve");
    assert!(
        (900..=1100).contains(&fours),
        "version 4 served {fours} of 10000"
    );

    // Each routing key always gets the same version.
    let first: HashMap<usize, u32> = results.iter().map(|(i, _, v)| (*i, *v)).collect();
    let again = invoke_many(&client, &invoke, "caller", 2_000).await;
    for (i, _, v) in again {
        assert_eq!(first[&i], v, "caller-{i} moved");
    }

    // `?alias=` picks an alias explicitly, `?version=` a version.
    let canary = set_alias(
        &client,
        &p,
        "split",
        "canary",
        json!([{"version": 2, "weight": 1}]),
    )
    .await;
    assert_eq!(canary.status, 200);
    let reply = invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?alias=canary"),
        "a",
    )
    .await;
    assert_eq!((reply.status.as_u16(), served(&reply)), (200, 2));
    let reply = invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?version=1"),
        "a",
    )
    .await;
    assert_eq!((reply.status.as_u16(), served(&reply)), (200, 1));
    invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?alias=nope"),
        "a",
    )
    .await
    .expect_error(404, "not_found");
    invoke_keyed(
        &client,
        &p.router_url("/v1/functions/split/invoke?alias=live&version=1"),
        "a",
    )
    .await
    .expect_error(400, "bad_request");

    // Without a routing key, the client id decides: the operator sticks.
    let no_key: Vec<u32> = futures_versions(&client, &invoke, 20).await;
    assert!(no_key.windows(2).all(|w| w[0] == w[1]), "{no_key:?}");

    // A refusal after resolving still names the version.
    let reply = client
        .send(
            Method::POST,
            &invoke,
            &[
                ("content-type", "application/json"),
                ("x-taskmesh-routing-key", "a"),
            ],
            &b"{\"pixels\": 1}"[..],
        )
        .await;
    reply.expect_error(422, "invalid_input");
    assert!(reply.header("x-taskmesh-version").is_some());

    // Listing, reading and deleting.
    let list = client
        .get(&p.admin_url("/v1/functions/split/aliases"))
        .await;
    assert_eq!(list.status, 200);
    let names: Vec<String> = list.json()["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alias"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["canary", "live"]);
    let live = client
        .get(&p.admin_url("/v1/functions/split/aliases/live"))
        .await;
    assert_eq!(
        live.json()["routes"][0],
        json!({"version": 3, "weight": 90})
    );
    let deleted = client
        .send(
            Method::DELETE,
            &p.admin_url("/v1/functions/split/aliases/live"),
            &[],
            Vec::new(),
        )
        .await;
    assert_eq!(deleted.status, 204);
    client
        .get(&p.admin_url("/v1/functions/split/aliases/live"))
        .await
        .expect_error(404, "not_found");
    // Back to the latest version.
    assert_eq!(served(&invoke_keyed(&client, &invoke, "caller-1").await), 4);
}

async fn futures_versions(client: &TestClient, url: &str, n: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(served(&client.post_json(url, &sample()).await));
    }
    out
}

#[tokio::test]
async fn bad_alias_requests_get_422_404_and_the_error_body() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    digits_versions(&client, &p, "bad", 2, json!({})).await;
    for (routes, pointer) in [
        (json!([{"version": 1, "weight": -5}]), "/routes/0/weight"),
        (
            json!([{"version": 1, "weight": 0}, {"version": 2, "weight": 0}]),
            "/routes",
        ),
        (json!([{"version": 7, "weight": 10}]), "/routes/0/version"),
        (json!([{"version": 1, "weight": 1.5}]), "/routes/0/weight"),
        (json!([]), "/routes"),
        (
            json!([{"version": 1, "weight": 1}, {"version": 1, "weight": 1}]),
            "/routes/1/version",
        ),
    ] {
        let body = set_alias(&client, &p, "bad", "live", routes.clone())
            .await
            .expect_error(422, "invalid_input");
        assert_eq!(body["details"][0]["pointer"], pointer, "{routes}");
    }
    let body = put_json(
        &client,
        &p.admin_url("/v1/functions/bad/aliases/live"),
        &json!({"routes": [], "extra": 1}),
    )
    .await
    .expect_error(422, "invalid_input");
    assert!(
        body["message"].as_str().unwrap().contains("extra"),
        "{body}"
    );
    set_alias(
        &client,
        &p,
        "bad",
        "Not-Valid",
        json!([{"version": 1, "weight": 1}]),
    )
    .await
    .expect_error(422, "invalid_input");
    set_alias(
        &client,
        &p,
        "nosuch",
        "live",
        json!([{"version": 1, "weight": 1}]),
    )
    .await
    .expect_error(404, "not_found");
    client
        .get(&p.admin_url("/v1/functions/bad/aliases/live"))
        .await
        .expect_error(404, "not_found");
    client
        .get(&p.admin_url("/v1/functions/nosuch/aliases"))
        .await
        .expect_error(404, "not_found");
    client
        .send(
            Method::DELETE,
            &p.admin_url("/v1/functions/bad/aliases/live"),
            &[],
            Vec::new(),
        )
        .await
        .expect_error(404, "not_found");
    // An invoke-only client cannot set aliases.
    let created = client
        .post_json(
            &p.admin_url("/v1/clients"),
            &json!({"name": "app", "scopes": ["invoke"]}),
        )
        .await
        .json();
    let app = TestClient::h2c().with_key(created["api_key"].as_str().unwrap());
    set_alias(
        &app,
        &p,
        "bad",
        "live",
        json!([{"version": 1, "weight": 1}]),
    )
    .await
    .expect_error(403, "forbidden");
}
