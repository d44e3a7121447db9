//! The Redis store beyond the contract: what only a server has (outages,
//! reconnection, other clients on the same keys, corrupt data, key
//! prefixes). The contract itself is `store_contract*.rs`.

#[path = "support/redis.rs"]
mod redis_support;
#[macro_use]
#[path = "support/store.rs"]
mod store_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::processing::TextSpec;
use contract::ModelSignature;
use redis_support::RedisServer;
use store_support::{append, client, record};
use taskmesh_registry::{RedisOptions, RedisStore, Store, StoreError};

/// How long a call may take while Redis is unreachable (the default bounds
/// are 1 s to connect plus 1 s for a reply), with slack for a loaded machine.
const FAIL_FAST: Duration = Duration::from_millis(2_500);

/// Runs `call`, which must fail with `StoreError::Backend` within [`FAIL_FAST`].
async fn fails_fast<T: std::fmt::Debug>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung while redis was unreachable"));
    let took = started.elapsed();
    assert!(
        matches!(result, Err(StoreError::Backend(_))),
        "{what}: expected a backend error, got {result:?}"
    );
    assert!(took < FAIL_FAST, "{what} took {took:?} to fail");
}

/// Every method fails fast against an unreachable store.
async fn every_call_fails_fast(store: &RedisStore) {
    fails_fast("ping", store.ping()).await;
    fails_fast(
        "append_version",
        store.append_version(record("default", "a")),
    )
    .await;
    fails_fast("get_version", store.get_version("default", "a", 1)).await;
    fails_fast("latest_version", store.latest_version("default", "a")).await;
    fails_fast("list_functions", store.list_functions("default")).await;
    fails_fast(
        "put_client",
        store.put_client(&client("0123456789abcdef", "default")),
    )
    .await;
    fails_fast("get_client", store.get_client("0123456789abcdef")).await;
    fails_fast("add_counters", store.add_counters(vec![("k".into(), 1)])).await;
    fails_fast("get_counter", store.get_counter("k")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_redis_fails_calls_fast_and_the_same_store_recovers() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    assert_eq!(append(&store, "default", "a").await, 1);

    server.kill9();
    every_call_fails_fast(&store).await;
    // Many callers at once fail fast too (none waits behind the others).
    let started = Instant::now();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.latest_version("default", "a").await })
        })
        .collect();
    for call in calls {
        assert!(matches!(call.await.unwrap(), Err(StoreError::Backend(_))));
    }
    assert!(started.elapsed() < FAIL_FAST, "{:?}", started.elapsed());

    server.restart();
    // The same store, not a new one, works again.
    assert_eq!(store.latest_version("default", "a").await.unwrap(), Some(1));
    assert_eq!(append(&store, "default", "a").await, 2);
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_write_after_an_unnoticed_restart_succeeds() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    assert_eq!(append(&store, "default", "a").await, 1);
    // No call sees the outage: the store still holds the dead connection.
    server.kill9();
    server.restart();
    assert_eq!(append(&store, "default", "a").await, 2);
    server.kill9();
    server.restart();
    store
        .add_counters(vec![("after/restart".into(), 1)])
        .await
        .unwrap();
    server.kill9();
    server.restart();
    assert_eq!(store.get_counter("after/restart").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_redis_fails_calls_fast_and_the_same_store_recovers() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    assert_eq!(append(&store, "default", "a").await, 1);

    // SIGSTOP: the socket stays open and the kernel still accepts
    // connections, but nothing answers. Only the timeouts can end a call.
    server.pause();
    every_call_fails_fast(&store).await;
    server.resume();

    assert_eq!(store.latest_version("default", "a").await.unwrap(), Some(1));
    assert_eq!(append(&store, "default", "a").await, 2);
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    // A port with nothing listening: refused at once.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let result = RedisStore::connect(&format!("redis://127.0.0.1:{port}/0")).await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert!(started.elapsed() < FAIL_FAST);
    // A listener that never answers: the timeouts end it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "redis://127.0.0.1:{}/0",
        silent.local_addr().unwrap().port()
    );
    let options = RedisOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(300),
        ..RedisOptions::default()
    };
    let started = Instant::now();
    let result = RedisStore::connect_with(&url, options).await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    // A malformed URL is refused without echoing it.
    match RedisStore::connect("redis://:secret@[::1").await {
        Err(StoreError::Backend(message)) => assert!(!message.contains("secret"), "{message}"),
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_from_separate_connections_are_numbered_consecutively() {
    let server = RedisServer::start();
    // Four stores with their own connections stand for four processes.
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(RedisStore::connect(&server.url()).await.unwrap());
    }
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = stores[i % 4].clone();
            tokio::spawn(async move { append(&store, "default", "shared").await })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=32).collect::<Vec<u32>>());
}

/// A plain client on the same server, for looking behind the store.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_follow_the_documented_layout() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    append(&store, "acme", "digits").await;
    append(&store, "acme", "digits").await;
    store
        .put_client(&client("0123456789abcdef", "acme"))
        .await
        .unwrap();
    store
        .add_counters(vec![("acme/digits/c/day".into(), 4)])
        .await
        .unwrap();
    let mut c = raw(&server).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "tm:client:0123456789abcdef",
            "tm:counter:acme/digits/c/day",
            "tm:{acme}:fn:digits:latest",
            "tm:{acme}:fn:digits:versions",
            "tm:{acme}:functions",
        ]
    );
    let latest: String = redis::cmd("GET")
        .arg("tm:{acme}:fn:digits:latest")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(latest, "2");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("tm:{acme}:fn:digits:versions")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields.len(), 2);
    // The stored JSON is serde's bytes, untouched by the script.
    let json: Vec<u8> = redis::cmd("HGET")
        .arg("tm:{acme}:fn:digits:versions")
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();
    let mut expected = record("acme", "digits");
    expected.version = 0;
    assert_eq!(json, serde_json::to_vec(&expected).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_are_plain_integers_that_other_clients_may_increment() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store
        .add_counters(vec![("shared/q".into(), 5)])
        .await
        .unwrap();
    let mut c = raw(&server).await;
    let after: i64 = redis::cmd("INCRBY")
        .arg("tm:counter:shared/q")
        .arg(10)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(after, 15);
    assert_eq!(store.get_counter("shared/q").await.unwrap(), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counter_batch_that_cannot_apply_changes_nothing() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    store.add_counters(vec![("good".into(), 1)]).await.unwrap();
    let mut c = raw(&server).await;
    redis::cmd("SET")
        .arg("tm:counter:bad")
        .arg("not a number")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let result = store
        .add_counters(vec![("good".into(), 1), ("bad".into(), 1)])
        .await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
    assert_eq!(store.get_counter("good").await.unwrap(), 1);
    assert!(matches!(
        store.get_counter("bad").await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_records_are_reported_as_corrupt_and_appends_refuse_them() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    append(&store, "default", "a").await;
    let mut c = raw(&server).await;
    redis::cmd("HSET")
        .arg("tm:{default}:fn:a:versions")
        .arg(1)
        .arg("{not json")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert!(matches!(
        store.get_version("default", "a", 1).await,
        Err(StoreError::Corrupt(_))
    ));
    // A record filed under the wrong function is corrupt too.
    let elsewhere = serde_json::to_vec(&record("default", "b")).unwrap();
    redis::cmd("HSET")
        .arg("tm:{default}:fn:a:versions")
        .arg(1)
        .arg(elsewhere)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert!(matches!(
        store.get_version("default", "a", 1).await,
        Err(StoreError::Corrupt(_))
    ));
    // A broken latest pointer stops appends before anything is written.
    redis::cmd("SET")
        .arg("tm:{default}:fn:a:latest")
        .arg("x")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let result = store.append_version(record("default", "a")).await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
    let fields: i64 = redis::cmd("HLEN")
        .arg("tm:{default}:fn:a:versions")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(fields, 1);
    assert!(matches!(
        store.latest_version("default", "a").await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefixes_keep_stores_on_one_server_apart() {
    let server = RedisServer::start();
    let blue = RedisStore::connect_with(
        &server.url(),
        RedisOptions {
            prefix: "blue:".into(),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    let green = RedisStore::connect_with(
        &server.url(),
        RedisOptions {
            prefix: "green:".into(),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(append(&blue, "default", "a").await, 1);
    assert_eq!(append(&blue, "default", "a").await, 2);
    assert_eq!(append(&green, "default", "a").await, 1);
    assert_eq!(green.latest_version("default", "a").await.unwrap(), Some(1));
    assert_eq!(
        green.list_functions("default").await.unwrap()[0].versions,
        vec![1]
    );
}

/// Never asked: the test registers nothing.
struct NoInspector;

impl contract::ModelInspector for NoInspector {
    fn inspect(&self, _bytes: &[u8]) -> Result<ModelSignature, String> {
        Err("not used".into())
    }

    fn check_tokenizer(&self, _bytes: &[u8], _text: &TextSpec) -> Result<(), String> {
        Err("not used".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_registry_answers_503_unavailable_with_retry_after_while_redis_is_down() {
    let mut server = RedisServer::start();
    let store = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    let models = tempfile::tempdir().unwrap();
    let registry = taskmesh_registry::Registry::new(
        store.clone(),
        taskmesh_registry::ModelStore::open(models.path()).unwrap(),
        Arc::new(NoInspector),
    );
    let auth = taskmesh_registry::Auth::new(store, None);
    server.kill9();

    let key = format!("Bearer tm_0123456789abcdef_{}", "a".repeat(64));
    let errors = [
        registry.list("default").await.unwrap_err(),
        registry
            .resolve("default", "f", &taskmesh_registry::Qualifier::Default)
            .await
            .unwrap_err(),
        auth.authenticate(Some(&key)).await.unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.code.as_str(), "unavailable", "{err}");
        let response = contract::http::error_response(&err);
        assert_eq!(response.status().as_u16(), 503);
        assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    }

    server.restart();
    assert!(registry.list("default").await.unwrap().is_empty());
}
