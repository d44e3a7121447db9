//! One contract for every registry store backend: versions, pipelines,
//! clients and counters (aliases, rollouts and leases are `store_contract_rollouts.rs`;
//! what only a Redis server has is `store_redis.rs`).
//!
//! Each test body is written once against `dyn Store` and run against the
//! embedded store (redb in a temporary folder) and the Redis store (a real
//! `redis-server` with AOF, `appendfsync always`); the fixture is
//! `support/store.rs`.

#[path = "support/redis.rs"]
mod redis_support;
#[macro_use]
#[path = "support/store.rs"]
mod store_support;

use contract::pipeline::{PipelineDefinition, PipelineVersion};
use store_support::{append, client, record, Fixture};
use taskmesh_registry::auth::Scope;
use taskmesh_registry::clients::ClientRecord;

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
    // Deleting removes it once; a second delete finds nothing.
    assert!(store.delete_client("0123456789abcdef").await.unwrap());
    assert!(store
        .get_client("0123456789abcdef")
        .await
        .unwrap()
        .is_none());
    assert!(!store.delete_client("0123456789abcdef").await.unwrap());
}

async fn clients_are_listed_per_tenant_in_order(fx: &mut Fixture) {
    let store = fx.store();
    for (id, tenant) in [
        ("c000000000000003", "acme"),
        ("c000000000000001", "acme"),
        ("c000000000000002", "globex"),
    ] {
        store.put_client(&client(id, tenant)).await.unwrap();
    }
    let ids = |list: Vec<ClientRecord>| -> Vec<String> {
        list.into_iter().map(|c| c.client_id).collect()
    };
    assert_eq!(
        ids(store.list_clients(Some("acme")).await.unwrap()),
        ["c000000000000001", "c000000000000003"]
    );
    assert_eq!(
        ids(store.list_clients(None).await.unwrap()),
        ["c000000000000001", "c000000000000002", "c000000000000003"]
    );
    assert!(store.list_clients(Some("nobody")).await.unwrap().is_empty());
    store.delete_client("c000000000000003").await.unwrap();
    assert_eq!(
        ids(store.list_clients(Some("acme")).await.unwrap()),
        ["c000000000000001"]
    );
}

fn pipeline(tenant: &str, name: &str, timeout_ms: u64) -> PipelineVersion {
    let definition: PipelineDefinition = serde_json::from_value(serde_json::json!({
        "name": name,
        "description": "ünïcödé ✓",
        "steps": [{"id": "a", "function": "f", "input": {"x": "$.input.x"},
                   "guard": {"refuse_if": {"label": ["no", 0]}}}],
        "output": {"y": "$.steps.a.y"},
        "timeout_ms": timeout_ms
    }))
    .unwrap();
    PipelineVersion {
        tenant: tenant.into(),
        name: name.into(),
        version: 0,
        created_at_ms: 1_700_000_000_000,
        definition,
        schemas: Default::default(),
    }
}

async fn pipelines_are_versioned_per_tenant(fx: &mut Fixture) {
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let store = fx.shared();
            tokio::spawn(async move {
                let p = pipeline("acme", "flow", 1000 + i);
                store.append_pipeline(p).await.unwrap().version
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u32>>());
    let store = fx.store();
    assert_eq!(
        store.latest_pipeline("acme", "flow").await.unwrap(),
        Some(8)
    );
    let first = store
        .append_pipeline(pipeline("globex", "flow", 5))
        .await
        .unwrap();
    assert_eq!(first.version, 1, "another tenant numbers its own");
    // What comes back is what went in, with its number.
    let read = store
        .get_pipeline("globex", "flow", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, first);
    assert_eq!(
        read.definition.steps[0].guard,
        first.definition.steps[0].guard
    );
    assert!(store
        .get_pipeline("acme", "flow", 9)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_pipeline("nobody", "flow", 1)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.latest_pipeline("acme", "none").await.unwrap(), None);
    store
        .append_pipeline(pipeline("acme", "another", 5))
        .await
        .unwrap();
    let listed = store.list_pipelines("acme").await.unwrap();
    let names: Vec<(&str, u32)> = listed
        .iter()
        .map(|s| (s.name.as_str(), s.latest_version))
        .collect();
    assert_eq!(names, [("another", 1), ("flow", 8)]);
    assert_eq!(listed[1].versions, (1..=8).collect::<Vec<u32>>());
    assert_eq!(store.list_pipelines("globex").await.unwrap().len(), 1);
    assert!(store.list_pipelines("nobody").await.unwrap().is_empty());
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

contract!(
    appends_are_numbered_consecutively,
    thirty_two_concurrent_appends_get_exactly_1_to_32,
    missing_things_are_none,
    functions_are_listed_per_tenant_in_isolation,
    names_like_key_separators_do_not_collide,
    clients_round_trip_and_can_be_replaced,
    clients_are_listed_per_tenant_in_order,
    pipelines_are_versioned_per_tenant,
    counters_add_every_delta_and_concurrent_adds_exactly,
    acknowledged_writes_survive_a_crash,
    counters_are_read_in_bulk,
);
