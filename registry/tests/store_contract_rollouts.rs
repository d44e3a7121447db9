//! The store contract for aliases, rollouts and leases, run against both
//! backends like `store_contract.rs` (the fixture is `support/store.rs`).

#[path = "support/redis.rs"]
mod redis_support;
#[macro_use]
#[path = "support/store.rs"]
mod store_support;

use std::time::Duration;

use policies::rollout::RolloutSpec;
use policies::split::Route;
use store_support::Fixture;
use taskmesh_registry::aliases::AliasRecord;
use taskmesh_registry::rollouts::{RolloutRecord, RolloutState};

// --- The contract ----------------------------------------------------------

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

contract!(
    aliases_round_trip_per_function_and_tenant,
    one_active_rollout_per_alias_with_compare_and_set_updates,
    leases_have_one_holder_until_they_expire,
);
