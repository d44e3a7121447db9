//! One contract for every registry store backend.
//!
//! Each test body is written once against `dyn Store` and run against the
//! embedded store (redb in a temporary folder) and the Redis store (a real
//! `redis-server` with AOF, `appendfsync always`). The Redis-only tests at the
//! end cover what only a server has: outages, reconnection, other clients.

#[path = "support/redis.rs"]
mod redis_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::definition::{parse, Syntax};
use contract::processing::TextSpec;
use contract::{FunctionVersion, ModelSignature, ModelType, TensorInfo};
use policies::rollout::RolloutSpec;
use policies::split::Route;
use redis_support::RedisServer;
use serde_json::json;
use taskmesh_registry::aliases::AliasRecord;
use taskmesh_registry::auth::{ClientRecord, Plan, Scope};
use taskmesh_registry::rollouts::{RolloutRecord, RolloutState};
use taskmesh_registry::{EmbeddedStore, RedisOptions, RedisStore, Store, StoreError};

/// A store under test, and what it needs to be crashed and reopened.
struct Fixture {
    store: Option<Arc<dyn Store>>,
    backend: Backend,
}

enum Backend {
    Embedded {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Redis {
        server: RedisServer,
    },
}

impl Fixture {
    async fn embedded() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        Fixture {
            store: Some(Arc::new(store)),
            backend: Backend::Embedded { _dir: dir, path },
        }
    }

    async fn redis() -> Fixture {
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.unwrap();
        Fixture {
            store: Some(Arc::new(store)),
            backend: Backend::Redis { server },
        }
    }

    fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("store is open")
    }

    fn shared(&self) -> Arc<dyn Store> {
        self.store.clone().expect("store is open")
    }

    /// Ends the storage abruptly and opens it again: the embedded file is
    /// closed and reopened; the Redis server is killed with SIGKILL and
    /// restarted on the same folder (it replays its AOF).
    async fn crash_and_reopen(&mut self) {
        let store = self.store.take().expect("store is open");
        assert_eq!(Arc::strong_count(&store), 1, "a task still holds the store");
        match &mut self.backend {
            Backend::Embedded { path, .. } => {
                drop(store);
                self.store = Some(Arc::new(EmbeddedStore::open(path).unwrap()));
            }
            Backend::Redis { server } => {
                server.kill9();
                drop(store);
                server.restart();
                let store = RedisStore::connect(&server.url()).await.unwrap();
                self.store = Some(Arc::new(store));
            }
        }
    }
}

/// A version of function `name` in `tenant`, with floats and non-ASCII text
/// in its definition, so that a round trip through the store is exact.
fn record(tenant: &str, name: &str) -> FunctionVersion {
    let body = json!({
        "name": "f",
        "model": format!("sha256:{}", "0".repeat(64)),
        "description": "ünïcödé ✓ \"quoted\" \\ slash",
        "inputs": {"x": {"tensor": "x"}},
        "outputs": {"y": {"tensor": "y"}},
        "retry": {"multiplier": 1.1},
        "circuit_breaker": {"failure_rate": 0.3},
        "rate_limit": {"per_second": 0.1},
    });
    FunctionVersion {
        tenant: tenant.into(),
        name: name.into(),
        version: 0,
        created_at_ms: 1_700_000_000_123,
        definition: parse(&serde_json::to_vec(&body).unwrap(), Syntax::Json).unwrap(),
        signature: ModelSignature {
            inputs: vec![TensorInfo {
                name: "x".into(),
                dtype: ModelType::Other("float16".into()),
                shape: Some(vec![-1, 4]),
            }],
            outputs: vec![],
        },
        inputs: vec![],
        outputs: vec![],
        model_size_bytes: 123_456,
        schemas: Default::default(),
    }
}

fn client(id: &str, tenant: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        name: format!("client {id}"),
        tenant: tenant.into(),
        scopes: vec![Scope::Admin, Scope::Invoke],
        key_sha256: "ab".repeat(32),
        plan: Plan::default(),
        created_at_ms: 42,
    }
}

async fn append(store: &dyn Store, tenant: &str, name: &str) -> u32 {
    store
        .append_version(record(tenant, name))
        .await
        .unwrap()
        .version
}

// --- The contract ----------------------------------------------------------

async fn appends_are_numbered_consecutively(fx: &mut Fixture) {
    let store = fx.store();
    assert_eq!(append(store, "default", "a").await, 1);
    assert_eq!(append(store, "default", "a").await, 2);
    assert_eq!(append(store, "default", "b").await, 1);
    assert_eq!(append(store, "other", "a").await, 1);
    let third = store.append_version(record("default", "a")).await.unwrap();
    assert_eq!(third.version, 3);
    assert_eq!(store.latest_version("default", "a").await.unwrap(), Some(3));
    assert_eq!(store.latest_version("default", "b").await.unwrap(), Some(1));
    // What comes back is exactly what went in, with its number.
    let stored = store.get_version("default", "a", 3).await.unwrap().unwrap();
    assert_eq!(stored, third);
    assert_eq!(stored.definition.rate_limit.unwrap().per_second, 0.1);
    assert_eq!(stored.definition.retry.multiplier, 1.1);
    assert_eq!(
        stored.definition.description.as_deref(),
        Some("ünïcödé ✓ \"quoted\" \\ slash")
    );
    for n in 1..=3 {
        let v = store.get_version("default", "a", n).await.unwrap().unwrap();
        assert_eq!(
            (v.tenant.as_str(), v.name.as_str(), v.version),
            ("default", "a", n)
        );
    }
}

async fn thirty_two_concurrent_appends_get_exactly_1_to_32(fx: &mut Fixture) {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = fx.shared();
            tokio::spawn(async move { append(store.as_ref(), "default", "busy").await })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=32).collect::<Vec<u32>>());
    let store = fx.store();
    assert_eq!(
        store.latest_version("default", "busy").await.unwrap(),
        Some(32)
    );
    for n in 1..=32 {
        let v = store.get_version("default", "busy", n).await.unwrap();
        assert_eq!(v.map(|v| v.version), Some(n));
    }
}

async fn missing_things_are_none(fx: &mut Fixture) {
    let store = fx.store();
    assert_eq!(
        store.latest_version("default", "nothing").await.unwrap(),
        None
    );
    assert!(store
        .get_version("default", "nothing", 1)
        .await
        .unwrap()
        .is_none());
    append(store, "default", "a").await;
    assert!(store
        .get_version("default", "a", 2)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_version("default", "a", 0)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_version("default", "a", u32::MAX)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_version("elsewhere", "a", 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.latest_version("elsewhere", "a").await.unwrap(), None);
    assert!(store.list_functions("nobody").await.unwrap().is_empty());
    assert!(store
        .get_client("0123456789abcdef")
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.get_counter("never/counted").await.unwrap(), 0);
}

async fn functions_are_listed_per_tenant_in_isolation(fx: &mut Fixture) {
    let store = fx.store();
    for (tenant, name, times) in [
        ("acme", "zeta", 1),
        ("acme", "alpha", 3),
        ("acme", "mid", 2),
        ("globex", "alpha", 1),
        ("acmecorp", "other", 1),
    ] {
        for _ in 0..times {
            append(store, tenant, name).await;
        }
    }
    let acme = store.list_functions("acme").await.unwrap();
    let summary: Vec<_> = acme
        .iter()
        .map(|f| (f.name.as_str(), f.latest_version, f.versions.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("alpha", 3, vec![1, 2, 3]),
            ("mid", 2, vec![1, 2]),
            ("zeta", 1, vec![1]),
        ]
    );
    let globex = store.list_functions("globex").await.unwrap();
    assert_eq!(globex.len(), 1);
    assert_eq!(
        (globex[0].name.as_str(), globex[0].latest_version),
        ("alpha", 1)
    );
    let acmecorp = store.list_functions("acmecorp").await.unwrap();
    assert_eq!(acmecorp.len(), 1);
    assert_eq!(acmecorp[0].name, "other");
    // Another tenant's function is not reachable by name either.
    assert!(store
        .get_version("globex", "mid", 1)
        .await
        .unwrap()
        .is_none());
}

async fn names_like_key_separators_do_not_collide(fx: &mut Fixture) {
    let store = fx.store();
    assert_eq!(append(store, "a:b", "c").await, 1);
    assert_eq!(append(store, "a", "b:c").await, 1);
    assert_eq!(append(store, "a", "b:c").await, 2);
    assert_eq!(append(store, "{x}", "%41").await, 1);
    assert_eq!(store.latest_version("a:b", "c").await.unwrap(), Some(1));
    assert_eq!(store.latest_version("a", "b:c").await.unwrap(), Some(2));
    assert_eq!(store.latest_version("a", "b%3Ac").await.unwrap(), None);
    assert_eq!(store.latest_version("{x}", "A").await.unwrap(), None);
    let v = store.get_version("{x}", "%41", 1).await.unwrap().unwrap();
    assert_eq!((v.tenant.as_str(), v.name.as_str()), ("{x}", "%41"));
    let names: Vec<_> = store
        .list_functions("a")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, vec!["b:c"]);
}

async fn clients_round_trip_and_can_be_replaced(fx: &mut Fixture) {
    let store = fx.store();
    let mut record = client("0123456789abcdef", "acme");
    store.put_client(&record).await.unwrap();
    assert_eq!(
        store.get_client("0123456789abcdef").await.unwrap(),
        Some(record.clone())
    );
    record.name = "renamed".into();
    record.scopes = vec![Scope::Invoke];
    store.put_client(&record).await.unwrap();
    assert_eq!(
        store.get_client("0123456789abcdef").await.unwrap(),
        Some(record)
    );
    assert!(store
        .get_client("fedcba9876543210")
        .await
        .unwrap()
        .is_none());
}

async fn counters_add_every_delta_and_concurrent_adds_exactly(fx: &mut Fixture) {
    let store = fx.store();
    store.add_counters(Vec::new()).await.unwrap();
    store
        .add_counters(vec![("t/f/c/day".into(), 3), ("t/f/c/month".into(), 5)])
        .await
        .unwrap();
    assert_eq!(store.get_counter("t/f/c/day").await.unwrap(), 3);
    assert_eq!(store.get_counter("t/f/c/month").await.unwrap(), 5);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = fx.shared();
            tokio::spawn(async move {
                for _ in 0..10 {
                    store
                        .add_counters(vec![("hot/a".into(), 1), ("hot/b".into(), 2)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let store = fx.store();
    assert_eq!(store.get_counter("hot/a").await.unwrap(), 160);
    assert_eq!(store.get_counter("hot/b").await.unwrap(), 320);
    // The same key twice in one batch counts twice.
    store
        .add_counters(vec![("twice".into(), 1), ("twice".into(), 1)])
        .await
        .unwrap();
    assert_eq!(store.get_counter("twice").await.unwrap(), 2);
}

async fn acknowledged_writes_survive_a_crash(fx: &mut Fixture) {
    let mut acknowledged = Vec::new();
    for (tenant, name, times) in [("acme", "a", 5), ("acme", "b", 3), ("globex", "a", 2)] {
        for _ in 0..times {
            let stored = fx
                .store()
                .append_version(record(tenant, name))
                .await
                .unwrap();
            acknowledged.push(stored);
        }
    }
    fx.store()
        .put_client(&client("0123456789abcdef", "acme"))
        .await
        .unwrap();
    fx.store()
        .add_counters(vec![("acme/a/c/day".into(), 7)])
        .await
        .unwrap();

    fx.crash_and_reopen().await;

    let store = fx.store();
    for v in &acknowledged {
        let got = store
            .get_version(&v.tenant, &v.name, v.version)
            .await
            .unwrap();
        assert_eq!(
            got.as_ref(),
            Some(v),
            "{}/{} v{} lost",
            v.tenant,
            v.name,
            v.version
        );
    }
    assert_eq!(store.latest_version("acme", "a").await.unwrap(), Some(5));
    assert_eq!(store.latest_version("acme", "b").await.unwrap(), Some(3));
    assert_eq!(
        store.list_functions("globex").await.unwrap()[0].versions,
        vec![1, 2]
    );
    assert_eq!(
        store.get_client("0123456789abcdef").await.unwrap(),
        Some(client("0123456789abcdef", "acme"))
    );
    assert_eq!(store.get_counter("acme/a/c/day").await.unwrap(), 7);
    // Numbering goes on where it stopped.
    assert_eq!(append(store, "acme", "a").await, 6);
}

fn alias(tenant: &str, function: &str, name: &str, routes: &[(u32, u32)]) -> AliasRecord {
    AliasRecord {
        tenant: tenant.into(),
        function: function.into(),
        name: name.into(),
        routes: routes
            .iter()
            .map(|&(version, weight)| Route { version, weight })
            .collect(),
        updated_at_ms: 1,
    }
}

fn rollout(tenant: &str, function: &str, alias: &str, id: &str) -> RolloutRecord {
    RolloutRecord {
        id: id.into(),
        tenant: tenant.into(),
        function: function.into(),
        alias: alias.into(),
        to_version: 2,
        spec: RolloutSpec {
            steps: vec![10, 100],
            step_interval_s: 1,
            min_calls_per_step: 5,
            max_error_rate: 0.01,
            max_p99_ms: Some(250.0),
            error_rate_margin: 0.005,
            p99_ratio: 1.5,
        },
        previous_routes: vec![Route {
            version: 1,
            weight: 100,
        }],
        state: RolloutState::Warming,
        step: 0,
        steps: Vec::new(),
        status: None,
        reason: None,
        created_at_ms: 1,
        updated_at_ms: 1,
        finished_at_ms: None,
        revision: 0,
    }
}

async fn aliases_round_trip_per_function_and_tenant(fx: &mut Fixture) {
    let store = fx.store();
    assert!(store.get_alias("t", "f", "live").await.unwrap().is_none());
    assert!(store.list_aliases("t", "f").await.unwrap().is_empty());
    store
        .put_alias(&alias("t", "f", "live", &[(3, 90), (4, 10)]))
        .await
        .unwrap();
    store
        .put_alias(&alias("t", "f", "beta", &[(4, 1)]))
        .await
        .unwrap();
    store
        .put_alias(&alias("u", "f", "live", &[(1, 1)]))
        .await
        .unwrap();
    store
        .put_alias(&alias("t", "f:x", "live", &[(2, 1)]))
        .await
        .unwrap();
    assert_eq!(
        store.get_alias("t", "f", "live").await.unwrap(),
        Some(alias("t", "f", "live", &[(3, 90), (4, 10)]))
    );
    let names: Vec<String> = store
        .list_aliases("t", "f")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, vec!["beta", "live"]);
    // Replacing keeps one alias.
    store
        .put_alias(&alias("t", "f", "live", &[(4, 1)]))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_alias("t", "f", "live")
            .await
            .unwrap()
            .unwrap()
            .routes
            .len(),
        1
    );
    assert!(store.delete_alias("t", "f", "live").await.unwrap());
    assert!(!store.delete_alias("t", "f", "live").await.unwrap());
    assert!(store.get_alias("t", "f", "live").await.unwrap().is_none());
    assert_eq!(
        store
            .get_alias("u", "f", "live")
            .await
            .unwrap()
            .unwrap()
            .routes[0]
            .version,
        1
    );
    assert_eq!(
        store
            .get_alias("t", "f:x", "live")
            .await
            .unwrap()
            .unwrap()
            .routes[0]
            .version,
        2
    );
}

async fn one_active_rollout_per_alias_with_compare_and_set_updates(fx: &mut Fixture) {
    let store = fx.store();
    let first = rollout("t", "f", "live", "r1");
    assert_eq!(store.create_rollout(&first).await.unwrap(), None);
    assert_eq!(
        store
            .create_rollout(&rollout("t", "f", "live", "r2"))
            .await
            .unwrap(),
        Some("r1".to_string())
    );
    // Another alias, function or tenant is free.
    assert_eq!(
        store
            .create_rollout(&rollout("t", "f", "beta", "r3"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .create_rollout(&rollout("u", "f", "live", "r4"))
            .await
            .unwrap(),
        None
    );
    let mut active: Vec<String> = store
        .active_rollouts()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    active.sort();
    assert_eq!(active, vec!["r1", "r3", "r4"]);

    // Updates compare the revision.
    let mut running = first.clone();
    running.state = RolloutState::Running;
    let stored = store
        .update_rollout(&running)
        .await
        .unwrap()
        .expect("first update applies");
    assert_eq!(stored.revision, 1);
    assert_eq!(
        store.update_rollout(&running).await.unwrap(),
        None,
        "a stale revision is refused"
    );
    assert_eq!(
        store
            .get_rollout("t", "f", "r1")
            .await
            .unwrap()
            .unwrap()
            .state,
        RolloutState::Running
    );

    // Ending it frees the alias.
    let mut done = stored.clone();
    done.state = RolloutState::Promoted;
    store.update_rollout(&done).await.unwrap().unwrap();
    assert!(!store
        .active_rollouts()
        .await
        .unwrap()
        .iter()
        .any(|r| r.id == "r1"));
    assert_eq!(
        store
            .create_rollout(&rollout("t", "f", "live", "r5"))
            .await
            .unwrap(),
        None
    );
    let listed: Vec<String> = store
        .list_rollouts("t", "f")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(store.get_rollout("t", "f", "nope").await.unwrap().is_none());
    assert_eq!(
        store
            .update_rollout(&rollout("t", "f", "live", "nope"))
            .await
            .unwrap(),
        None
    );

    fx.crash_and_reopen().await;
    let store = fx.store();
    assert_eq!(
        store
            .get_rollout("t", "f", "r1")
            .await
            .unwrap()
            .unwrap()
            .state,
        RolloutState::Promoted
    );
    let mut active: Vec<String> = store
        .active_rollouts()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    active.sort();
    assert_eq!(active, vec!["r3", "r4", "r5"]);
}

async fn leases_have_one_holder_until_they_expire(fx: &mut Fixture) {
    let store = fx.store();
    assert!(store.try_lease("rollout/x", "a", 300).await.unwrap());
    assert!(
        store.try_lease("rollout/x", "a", 300).await.unwrap(),
        "the holder renews"
    );
    assert!(!store.try_lease("rollout/x", "b", 300).await.unwrap());
    assert!(store.try_lease("rollout/y", "b", 300).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.try_lease("rollout/x", "b", 300).await.unwrap(),
        "an expired lease is free"
    );
    assert!(!store.try_lease("rollout/x", "a", 300).await.unwrap());
}

async fn counters_are_read_in_bulk(fx: &mut Fixture) {
    let store = fx.store();
    assert!(store.get_counters(&[]).await.unwrap().is_empty());
    store
        .add_counters(vec![("stats/a".into(), 2), ("stats/c".into(), 9)])
        .await
        .unwrap();
    let keys = vec![
        "stats/a".to_string(),
        "stats/b".to_string(),
        "stats/c".to_string(),
    ];
    assert_eq!(store.get_counters(&keys).await.unwrap(), vec![2, 0, 9]);
}

/// Runs each contract test against both backends.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let mut fx = super::Fixture::embedded().await;
                    super::$test(&mut fx).await;
                }
            )*
        }
        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let mut fx = super::Fixture::redis().await;
                    super::$test(&mut fx).await;
                }
            )*
        }
    };
}

contract!(
    appends_are_numbered_consecutively,
    thirty_two_concurrent_appends_get_exactly_1_to_32,
    missing_things_are_none,
    functions_are_listed_per_tenant_in_isolation,
    names_like_key_separators_do_not_collide,
    clients_round_trip_and_can_be_replaced,
    counters_add_every_delta_and_concurrent_adds_exactly,
    acknowledged_writes_survive_a_crash,
    aliases_round_trip_per_function_and_tenant,
    one_active_rollout_per_alias_with_compare_and_set_updates,
    leases_have_one_holder_until_they_expire,
    counters_are_read_in_bulk,
);

// --- Redis only --------------------------------------------------------------

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
