//! One contract for both task stores (`contract::task::TaskStore`): the
//! embedded one (redb in a temporary folder) and Redis Streams (a real
//! `redis-server` with AOF, `appendfsync always`). Each scenario is written
//! once and run against both.

#[path = "support/redis.rs"]
mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use contract::headers::Priority;
use contract::task::{Finish, QueueId, TaskError, TaskFilter, TaskRecord, TaskStatus, TaskStore};
use contract::{ErrorCode, Plan};
use redis_support::RedisServer;
use serde_json::json;
use taskmesh_registry::cluster::RedisTasks;
use taskmesh_registry::{EmbeddedTasks, RedisStore};

enum Backend {
    Embedded {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    },
    Redis {
        server: RedisServer,
    },
}

struct Fixture {
    tasks: Option<Arc<dyn TaskStore>>,
    backend: Backend,
}

impl Fixture {
    async fn embedded() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.redb");
        let tasks = EmbeddedTasks::open(&path, None).unwrap();
        Fixture {
            tasks: Some(Arc::new(tasks)),
            backend: Backend::Embedded { _dir: dir, path },
        }
    }

    async fn redis() -> Fixture {
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url()).await.unwrap();
        Fixture {
            tasks: Some(Arc::new(RedisTasks::new(store, None))),
            backend: Backend::Redis { server },
        }
    }

    fn tasks(&self) -> &dyn TaskStore {
        self.tasks.as_deref().unwrap()
    }

    /// Stops the storage abruptly (the file closed; Redis killed with
    /// SIGKILL) and opens it again.
    async fn crash_and_reopen(&mut self) {
        let tasks = self.tasks.take().unwrap();
        match &mut self.backend {
            Backend::Embedded { path, .. } => {
                drop(tasks);
                self.tasks = Some(Arc::new(EmbeddedTasks::open(path, None).unwrap()));
            }
            Backend::Redis { server } => {
                server.kill9();
                drop(tasks);
                server.restart();
                let store = RedisStore::connect(&server.url()).await.unwrap();
                self.tasks = Some(Arc::new(RedisTasks::new(store, None)));
            }
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn task(id: &str, tenant: &str, priority: Priority) -> TaskRecord {
    let at = now();
    TaskRecord {
        task_id: id.into(),
        tenant: tenant.into(),
        client_id: format!("client-of-{tenant}"),
        function: "digits".into(),
        version: 1,
        priority,
        status: TaskStatus::Queued,
        attempts: 0,
        max_attempts: 2,
        created_at: at,
        updated_at: at,
        due_at: at,
        // Floats that a Lua round trip would change: stored exactly.
        input: json!({"x": [0.1, 1e-7, 0.30000000000000004, "ünï"]}),
        cost: 3,
        plan: Plan::default(),
        result: None,
        error: None,
        idempotency_key: None,
        claim: None,
        lease_until: 0,
        callback_url: None,
    }
}

fn queue(tenant: &str) -> QueueId {
    QueueId {
        tenant: tenant.into(),
        function: "digits".into(),
    }
}

async fn claim(store: &dyn TaskStore, worker: &str, max: usize, lease_ms: u64) -> Vec<String> {
    store
        .claim(&queue("a"), worker, max, lease_ms)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.task.task_id)
        .collect()
}

async fn a_task_runs_once_and_keeps_its_result_exactly(fx: &mut Fixture) {
    let store = fx.tasks();
    let submitted = store
        .submit(task("t1", "a", Priority::Normal))
        .await
        .unwrap();
    assert!(submitted.created);
    let queues = store.active_queues().await.unwrap();
    assert!(queues.contains(&queue("a")), "{queues:?}");
    let stats = store.stats().await.unwrap();
    let a = stats.iter().find(|s| s.tenant == "a").unwrap();
    assert_eq!((a.queued, a.running, a.backlog_cost), (1, 0, 3));
    assert!(a.oldest_created_at.is_some());
    let claims = store.claim(&queue("a"), "w1", 10, 60_000).await.unwrap();
    assert_eq!(claims.len(), 1);
    let claimed = &claims[0];
    assert_eq!(claimed.task.input, task("t1", "a", Priority::Normal).input);
    assert_eq!(
        (claimed.task.status, claimed.task.attempts),
        (TaskStatus::Running, 1)
    );
    assert!(
        claim(store, "w2", 10, 60_000).await.is_empty(),
        "a running task is not taken twice"
    );
    let running = store.get("a", "t1").await.unwrap().unwrap();
    assert_eq!(running.status, TaskStatus::Running);
    let result = json!({"label": 7, "p": [0.1, 0.2]});
    assert!(store
        .finish(claimed, Finish::Succeeded(result.clone()))
        .await
        .unwrap());
    // The same claim cannot record a second outcome.
    assert!(!store
        .finish(claimed, Finish::Succeeded(json!(1)))
        .await
        .unwrap());
    let done = store.get("a", "t1").await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.result, done.attempts),
        (TaskStatus::Succeeded, Some(result), 1)
    );
    assert!(claim(store, "w1", 10, 60_000).await.is_empty());
    let a = store
        .stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.tenant == "a")
        .unwrap();
    assert_eq!((a.queued, a.running, a.backlog_cost), (0, 0, 0));
}

async fn idempotency_keys_give_back_the_same_task_per_client(fx: &mut Fixture) {
    let store = fx.tasks();
    let mut first = task("k1", "a", Priority::Normal);
    first.idempotency_key = Some("order-1".into());
    assert!(store.submit(first.clone()).await.unwrap().created);
    let mut again = task("k2", "a", Priority::Normal);
    again.idempotency_key = Some("order-1".into());
    let answer = store.submit(again).await.unwrap();
    assert!(!answer.created);
    assert_eq!(answer.task.task_id, "k1");
    let mut other_client = task("k3", "a", Priority::Normal);
    other_client.client_id = "someone-else".into();
    other_client.idempotency_key = Some("order-1".into());
    assert!(store.submit(other_client).await.unwrap().created);
    assert_eq!(
        claim(store, "w", 10, 60_000).await.len(),
        2,
        "k2 was never queued"
    );
}

async fn higher_priorities_are_taken_first_then_the_oldest(fx: &mut Fixture) {
    let store = fx.tasks();
    for (id, p) in [
        ("p1", Priority::Low),
        ("p2", Priority::Normal),
        ("p3", Priority::Low),
        ("p4", Priority::High),
        ("p5", Priority::Normal),
    ] {
        store.submit(task(id, "a", p)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(claim(store, "w", 2, 60_000).await, ["p4", "p2"]);
    assert_eq!(claim(store, "w", 10, 60_000).await, ["p5", "p1", "p3"]);
}

async fn failures_back_off_then_end_dead_and_retry_brings_them_back(fx: &mut Fixture) {
    let store = fx.tasks();
    store
        .submit(task("f1", "a", Priority::Normal))
        .await
        .unwrap();
    let c = store
        .claim(&queue("a"), "w", 1, 60_000)
        .await
        .unwrap()
        .remove(0);
    let error = TaskError::new(ErrorCode::FunctionFailed, "boom");
    let due_at = now() + 300;
    assert!(store
        .finish(
            &c,
            Finish::Retry {
                error: error.clone(),
                due_at
            }
        )
        .await
        .unwrap());
    let waiting = store.get("a", "f1").await.unwrap().unwrap();
    assert_eq!(
        (waiting.status, waiting.error.clone()),
        (TaskStatus::Failed, Some(error.clone()))
    );
    assert!(
        claim(store, "w", 1, 60_000).await.is_empty(),
        "taken before its backoff"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.active_queues().await.unwrap();
    let c = store
        .claim(&queue("a"), "w", 1, 60_000)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.task.attempts, 2);
    assert!(store.finish(&c, Finish::Dead(error.clone())).await.unwrap());
    let filter = TaskFilter::from_query(Some("status=dead")).unwrap();
    let dead = store.list("a", &filter).await.unwrap();
    assert_eq!(
        dead.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(),
        ["f1"]
    );
    assert_eq!(dead[0].error, Some(error));
    let a = store
        .stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.tenant == "a")
        .unwrap();
    assert_eq!((a.dead, a.queued, a.backlog_cost), (1, 0, 0));
    let again = store.requeue("a", "f1").await.unwrap().unwrap();
    assert_eq!(
        (again.status, again.attempts, again.error),
        (TaskStatus::Queued, 0, None)
    );
    assert_eq!(claim(store, "w", 1, 60_000).await, ["f1"]);
    let a = store
        .stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.tenant == "a")
        .unwrap();
    assert_eq!((a.dead, a.running), (0, 1));
}

async fn a_deferred_task_gives_its_attempt_back(fx: &mut Fixture) {
    let store = fx.tasks();
    store
        .submit(task("d1", "a", Priority::Normal))
        .await
        .unwrap();
    let c = store
        .claim(&queue("a"), "w", 1, 60_000)
        .await
        .unwrap()
        .remove(0);
    assert!(store
        .finish(&c, Finish::Defer { due_at: now() })
        .await
        .unwrap());
    store.active_queues().await.unwrap();
    let c = store
        .claim(&queue("a"), "w", 1, 60_000)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(c.task.attempts, 1);
}

async fn cancel_stops_a_waiting_task_only(fx: &mut Fixture) {
    let store = fx.tasks();
    store
        .submit(task("c1", "a", Priority::Normal))
        .await
        .unwrap();
    store
        .submit(task("c2", "a", Priority::Normal))
        .await
        .unwrap();
    let cancelled = store.cancel("a", "c1").await.unwrap().unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    assert_eq!(claim(store, "w", 10, 60_000).await, ["c2"]);
    let running = store.cancel("a", "c2").await.unwrap().unwrap();
    assert_eq!(
        running.status,
        TaskStatus::Running,
        "a running task is not cancelled"
    );
    assert!(store.cancel("a", "nope").await.unwrap().is_none());
    let back = store.requeue("a", "c1").await.unwrap().unwrap();
    assert_eq!(back.status, TaskStatus::Queued);
    // Cancelled while queued, then retried: it runs once, not twice.
    let again = store.claim(&queue("a"), "w", 10, 60_000).await.unwrap();
    let taken: Vec<(&str, u32)> = again
        .iter()
        .map(|c| (c.task.task_id.as_str(), c.task.attempts))
        .collect();
    assert_eq!(taken, [("c1", 1)]);
    assert!(claim(store, "w", 10, 60_000).await.is_empty());
}

async fn another_tenants_task_is_not_there(fx: &mut Fixture) {
    let store = fx.tasks();
    store
        .submit(task("x1", "a", Priority::Normal))
        .await
        .unwrap();
    assert!(store.get("b", "x1").await.unwrap().is_none());
    assert!(store.cancel("b", "x1").await.unwrap().is_none());
    assert!(store.requeue("b", "x1").await.unwrap().is_none());
    let all = TaskFilter::from_query(None).unwrap();
    assert!(store.list("b", &all).await.unwrap().is_empty());
    assert_eq!(store.list("a", &all).await.unwrap().len(), 1);
    assert_eq!(
        store.get("a", "x1").await.unwrap().unwrap().status,
        TaskStatus::Queued
    );
}

async fn a_lost_worker_s_task_is_taken_again_and_recorded_once(fx: &mut Fixture) {
    let store = fx.tasks();
    store
        .submit(task("l1", "a", Priority::Normal))
        .await
        .unwrap();
    let first = store
        .claim(&queue("a"), "dies", 1, 100)
        .await
        .unwrap()
        .remove(0);
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Every worker of a queue holds its tasks for the same lease.
    let second = store
        .claim(&queue("a"), "lives", 1, 100)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.task.task_id, "l1");
    assert_eq!(second.task.attempts, 2);
    // The first worker comes back late: its outcome is not recorded.
    assert!(!store
        .finish(&first, Finish::Succeeded(json!("late")))
        .await
        .unwrap());
    assert!(store
        .finish(&second, Finish::Succeeded(json!("on time")))
        .await
        .unwrap());
    let done = store.get("a", "l1").await.unwrap().unwrap();
    assert_eq!(done.result, Some(json!("on time")));
    // With no attempt left, a lost one ends the task dead.
    store
        .submit(task("l2", "a", Priority::Normal))
        .await
        .unwrap();
    let _ = store.claim(&queue("a"), "dies", 1, 50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = store.claim(&queue("a"), "dies", 1, 50).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(claim(store, "w", 1, 50).await.is_empty());
    let dead = store.get("a", "l2").await.unwrap().unwrap();
    assert_eq!(dead.status, TaskStatus::Dead);
    assert!(dead.error.unwrap().message.contains("lost"));
}

async fn queued_tasks_survive_a_crash(fx: &mut Fixture) {
    fx.tasks()
        .submit(task("s1", "a", Priority::High))
        .await
        .unwrap();
    fx.tasks()
        .submit(task("s2", "a", Priority::Normal))
        .await
        .unwrap();
    fx.crash_and_reopen().await;
    let store = fx.tasks();
    assert_eq!(
        store.get("a", "s1").await.unwrap().unwrap().status,
        TaskStatus::Queued
    );
    assert_eq!(claim(store, "w", 10, 60_000).await, ["s1", "s2"]);
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let mut fx = super::Fixture::embedded().await;
                super::$name(&mut fx).await;
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let mut fx = super::Fixture::redis().await;
                super::$name(&mut fx).await;
            })*
        }
    };
}

both!(
    a_task_runs_once_and_keeps_its_result_exactly,
    idempotency_keys_give_back_the_same_task_per_client,
    higher_priorities_are_taken_first_then_the_oldest,
    failures_back_off_then_end_dead_and_retry_brings_them_back,
    a_deferred_task_gives_its_attempt_back,
    cancel_stops_a_waiting_task_only,
    another_tenants_task_is_not_there,
    a_lost_worker_s_task_is_taken_again_and_recorded_once,
    queued_tasks_survive_a_crash,
);
