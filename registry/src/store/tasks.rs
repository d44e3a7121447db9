//! The embedded task store (`taskmesh up`): `contract::task::TaskStore` on
//! the registry's redb file, so queued tasks survive a restart of the process.
//!
//! Every operation is one write transaction (durable at commit), so a task is
//! never half submitted, half claimed or half finished. One process owns the
//! file, so on open every task still marked running belonged to a process
//! that stopped: each is taken back at once ([`TaskRecord::lost_attempt`]).
//!
//! # Tables
//!
//! | table            | key                                        | value              |
//! |------------------|--------------------------------------------|--------------------|
//! | `tasks_v1`       | task id                                    | JSON [`TaskRecord`] |
//! | `task_queue_v1`  | (queue, priority rank, created at, id)     | cost               |
//! | `task_delayed_v1`| (due at, id)                               | queue              |
//! | `task_running_v1`| (lease until, id)                          | queue              |
//! | `task_index_v1`  | (tenant, created at, id)                   | –                  |
//! | `task_dead_v1`   | (queue, id)                                | –                  |
//! | `task_idem_v1`   | (client id, idempotency key)               | `<expires> <id>`   |
//! | `task_queues_v1` | queue                                      | –                  |
//!
//! A queue is `<tenant>\x1f<function>`.

use std::path::Path;

use async_trait::async_trait;
use contract::task::{
    Claim, Finish, QueueId, QueueStats, Submitted, TaskFilter, TaskRecord, TaskStatus, TaskStore,
    DEFAULT_RETENTION_MS, IDEMPOTENCY_TTL_MS,
};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::group_commit::GroupCommit;
use super::{now_ms, StoreError};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks_v1");
const QUEUE: TableDefinition<(&str, u8, u64, &str), u64> = TableDefinition::new("task_queue_v1");
const DELAYED: TableDefinition<(u64, &str), &str> = TableDefinition::new("task_delayed_v1");
const RUNNING: TableDefinition<(u64, &str), &str> = TableDefinition::new("task_running_v1");
const INDEX: TableDefinition<(&str, u64, &str), ()> = TableDefinition::new("task_index_v1");
const DEAD: TableDefinition<(&str, &str), ()> = TableDefinition::new("task_dead_v1");
const IDEM: TableDefinition<(&str, &str), &str> = TableDefinition::new("task_idem_v1");
const QUEUES: TableDefinition<&str, ()> = TableDefinition::new("task_queues_v1");

fn backend(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn queue_key(tenant: &str, function: &str) -> String {
    format!("{tenant}\x1f{function}")
}

fn split_queue(key: &str) -> QueueId {
    let (tenant, function) = key.split_once('\x1f').unwrap_or((key, ""));
    QueueId {
        tenant: tenant.to_string(),
        function: function.to_string(),
    }
}

/// The numbers of queue `key` in `by_queue`, added when missing.
fn slot<'m>(
    by_queue: &'m mut std::collections::BTreeMap<String, QueueStats>,
    key: &str,
) -> &'m mut QueueStats {
    by_queue.entry(key.to_string()).or_insert_with(|| {
        let q = split_queue(key);
        QueueStats {
            tenant: q.tenant,
            function: q.function,
            ..QueueStats::default()
        }
    })
}

/// The embedded task store; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedTasks {
    db: std::sync::Arc<Database>,
    retention_ms: u64,
    /// Writes: concurrent steps share a durable commit.
    writer: GroupCommit,
}

/// The open tables of one write transaction.
struct Tables<'t> {
    tasks: Table<'t, &'static str, &'static [u8]>,
    queue: Table<'t, (&'static str, u8, u64, &'static str), u64>,
    delayed: Table<'t, (u64, &'static str), &'static str>,
    running: Table<'t, (u64, &'static str), &'static str>,
    index: Table<'t, (&'static str, u64, &'static str), ()>,
    dead: Table<'t, (&'static str, &'static str), ()>,
    idem: Table<'t, (&'static str, &'static str), &'static str>,
    queues: Table<'t, &'static str, ()>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, String> {
        Ok(Tables {
            tasks: txn.open_table(TASKS).map_err(backend)?,
            queue: txn.open_table(QUEUE).map_err(backend)?,
            delayed: txn.open_table(DELAYED).map_err(backend)?,
            running: txn.open_table(RUNNING).map_err(backend)?,
            index: txn.open_table(INDEX).map_err(backend)?,
            dead: txn.open_table(DEAD).map_err(backend)?,
            idem: txn.open_table(IDEM).map_err(backend)?,
            queues: txn.open_table(QUEUES).map_err(backend)?,
        })
    }

    fn load(&self, id: &str) -> Result<Option<TaskRecord>, String> {
        match self.tasks.get(id).map_err(backend)? {
            Some(bytes) => serde_json::from_slice(bytes.value())
                .map(Some)
                .map_err(|e| format!("stored task {id} is corrupt: {e}")),
            None => Ok(None),
        }
    }

    fn save(&mut self, task: &TaskRecord) -> Result<(), String> {
        let bytes = serde_json::to_vec(task).map_err(backend)?;
        self.tasks
            .insert(task.task_id.as_str(), bytes.as_slice())
            .map_err(backend)?;
        Ok(())
    }

    /// Puts a waiting task where a worker finds it: the queue when it is
    /// due, else the delayed table.
    fn enqueue(&mut self, task: &TaskRecord, now: u64) -> Result<(), String> {
        let queue = queue_key(&task.tenant, &task.function);
        if task.due_at <= now {
            let key = (
                queue.as_str(),
                task.priority.rank(),
                task.created_at,
                task.task_id.as_str(),
            );
            self.queue.insert(key, task.cost).map_err(backend)?;
        } else {
            let key = (task.due_at, task.task_id.as_str());
            self.delayed.insert(key, queue.as_str()).map_err(backend)?;
        }
        Ok(())
    }

    /// Takes a waiting task out of wherever it waits.
    fn dequeue(&mut self, task: &TaskRecord) -> Result<(), String> {
        let queue = queue_key(&task.tenant, &task.function);
        let key = (
            queue.as_str(),
            task.priority.rank(),
            task.created_at,
            task.task_id.as_str(),
        );
        self.queue.remove(key).map_err(backend)?;
        self.delayed
            .remove((task.due_at, task.task_id.as_str()))
            .map_err(backend)?;
        Ok(())
    }

    /// Records an outcome on a task (whose claim the caller checked).
    fn settle(&mut self, task: &mut TaskRecord, finish: &Finish, now: u64) -> Result<(), String> {
        self.running
            .remove((task.lease_until, task.task_id.as_str()))
            .map_err(backend)?;
        task.apply(finish, now);
        if task.status.is_waiting() {
            self.enqueue(task, now)?;
        }
        if task.status == TaskStatus::Dead {
            let queue = queue_key(&task.tenant, &task.function);
            self.dead
                .insert((queue.as_str(), task.task_id.as_str()), ())
                .map_err(backend)?;
        }
        self.save(task)
    }

    /// Moves due delayed tasks into their queues.
    fn promote_due(&mut self, now: u64) -> Result<(), String> {
        let due: Vec<(u64, String)> = self
            .delayed
            .range(..(now + 1, ""))
            .map_err(backend)?
            .map(|e| e.map(|(k, _)| (k.value().0, k.value().1.to_string())))
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        for (due_at, id) in due {
            self.delayed
                .remove((due_at, id.as_str()))
                .map_err(backend)?;
            if let Some(task) = self.load(&id)? {
                if task.status.is_waiting() && task.due_at == due_at {
                    self.enqueue(&task, now)?;
                }
            }
        }
        Ok(())
    }

    /// Takes back running tasks whose lease ended before `before`.
    fn reclaim(&mut self, before: u64, now: u64) -> Result<(), String> {
        let lost: Vec<(u64, String)> = self
            .running
            .range(..(before, ""))
            .map_err(backend)?
            .map(|e| e.map(|(k, _)| (k.value().0, k.value().1.to_string())))
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        for (lease, id) in lost {
            match self.load(&id)? {
                Some(mut task)
                    if task.status == TaskStatus::Running && task.lease_until == lease =>
                {
                    tracing::warn!(task_id = %id, attempts = task.attempts, "a task's worker stopped; taking it back");
                    let finish = task.lost_attempt(now);
                    self.settle(&mut task, &finish, now)?;
                }
                // A stale entry: forget the key that was found.
                _ => {
                    self.running.remove((lease, id.as_str())).map_err(backend)?;
                }
            }
        }
        Ok(())
    }
}

impl EmbeddedTasks {
    /// Opens (or creates) the task tables in the redb file at `path`; every
    /// task still marked running is taken back (its process stopped).
    pub fn open(path: &Path, retention_ms: Option<u64>) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Backend(e.to_string()))?;
        let db = std::sync::Arc::new(db);
        let tasks = EmbeddedTasks {
            writer: GroupCommit::start(&db, now_ms),
            db,
            retention_ms: retention_ms.unwrap_or(DEFAULT_RETENTION_MS),
        };
        tasks
            .write(|t, now| t.reclaim(u64::MAX, now))
            .map_err(StoreError::Backend)?;
        Ok(tasks)
    }

    /// Runs `f` in one write transaction, committed when it succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut Tables<'_>, u64) -> Result<T, String>,
    ) -> Result<T, String> {
        let txn = self.db.begin_write().map_err(backend)?;
        let out = {
            let mut tables = Tables::open(&txn)?;
            f(&mut tables, now_ms())?
        };
        txn.commit().map_err(backend)?;
        Ok(out)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedTasks) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| format!("task store job failed: {e}"))?
    }

    /// Runs `f` in a durable write transaction, perhaps shared with other
    /// steps (`GroupCommit`); `f` may run twice (alone, after a batch failed).
    async fn commit<T: Send + 'static>(
        &self,
        mut f: impl FnMut(&mut Tables<'_>, u64) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        self.writer
            .run(move |txn, now| {
                let mut tables = Tables::open(txn)?;
                f(&mut tables, now)
            })
            .await
    }

    /// Updates a task of `tenant` with `f`.
    async fn update(
        &self,
        tenant: &str,
        task_id: &str,
        mut f: impl FnMut(&mut Tables<'_>, &mut TaskRecord, u64) -> Result<(), String> + Send + 'static,
    ) -> Result<Option<TaskRecord>, String> {
        let (tenant, id) = (tenant.to_string(), task_id.to_string());
        self.commit(move |t, now| match t.load(&id)? {
            Some(mut task) if task.tenant == tenant => {
                f(t, &mut task, now)?;
                Ok(Some(task))
            }
            _ => Ok(None),
        })
        .await
    }
}

#[async_trait]
impl TaskStore for EmbeddedTasks {
    async fn submit(&self, mut task: TaskRecord) -> Result<Submitted, String> {
        self.commit(move |t, now| {
            if let Some(key) = task.idempotency_key.clone() {
                let slot = (task.client_id.as_str(), key.as_str());
                let earlier = t
                    .idem
                    .get(slot)
                    .map_err(backend)?
                    .map(|v| v.value().to_string());
                if let Some((expires, id)) = earlier.as_deref().and_then(|v| v.split_once(' ')) {
                    if expires.parse::<u64>().is_ok_and(|e| e > now) {
                        if let Some(existing) = t.load(id)? {
                            return Ok(Submitted {
                                task: existing,
                                created: false,
                            });
                        }
                    }
                }
                let value = format!("{} {}", now + IDEMPOTENCY_TTL_MS, task.task_id);
                t.idem.insert(slot, value.as_str()).map_err(backend)?;
            }
            task.status = TaskStatus::Queued;
            t.enqueue(&task, now)?;
            let queue = queue_key(&task.tenant, &task.function);
            t.queues.insert(queue.as_str(), ()).map_err(backend)?;
            t.index
                .insert(
                    (task.tenant.as_str(), task.created_at, task.task_id.as_str()),
                    (),
                )
                .map_err(backend)?;
            t.save(&task)?;
            Ok(Submitted {
                task: task.clone(),
                created: true,
            })
        })
        .await
    }

    async fn get(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String> {
        let (tenant, id) = (tenant.to_string(), task_id.to_string());
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(backend)?;
            let table = txn.open_table(TASKS).map_err(backend)?;
            let found = table.get(id.as_str()).map_err(backend)?;
            let task: Option<TaskRecord> = found
                .map(|g| serde_json::from_slice(g.value()).map_err(backend))
                .transpose()?;
            Ok(task.filter(|t| t.tenant == tenant))
        })
        .await
    }

    async fn list(&self, tenant: &str, filter: &TaskFilter) -> Result<Vec<TaskRecord>, String> {
        let (tenant, filter) = (tenant.to_string(), filter.clone());
        self.blocking(move |s| {
            let txn = s.db.begin_read().map_err(backend)?;
            let index = txn.open_table(INDEX).map_err(backend)?;
            let tasks = txn.open_table(TASKS).map_err(backend)?;
            let range = index
                .range((tenant.as_str(), 0, "")..=(tenant.as_str(), u64::MAX, ""))
                .map_err(backend)?;
            let mut out = Vec::new();
            for entry in range.rev() {
                let (key, _) = entry.map_err(backend)?;
                let id = key.value().2;
                let Some(bytes) = tasks.get(id).map_err(backend)? else {
                    continue;
                };
                let task: TaskRecord = serde_json::from_slice(bytes.value()).map_err(backend)?;
                if filter.matches(&task) {
                    out.push(task);
                    if out.len() >= filter.limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn cancel(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String> {
        self.update(tenant, task_id, |t, task, now| {
            if task.status.is_waiting() {
                t.dequeue(task)?;
                task.status = TaskStatus::Cancelled;
                task.updated_at = now;
                t.save(task)?;
            }
            Ok(())
        })
        .await
    }

    async fn requeue(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String> {
        self.update(tenant, task_id, |t, task, now| {
            if matches!(task.status, TaskStatus::Dead | TaskStatus::Cancelled) {
                let queue = queue_key(&task.tenant, &task.function);
                t.dead
                    .remove((queue.as_str(), task.task_id.as_str()))
                    .map_err(backend)?;
                task.requeue(now);
                t.enqueue(task, now)?;
                t.save(task)?;
            }
            Ok(())
        })
        .await
    }

    async fn active_queues(&self) -> Result<Vec<QueueId>, String> {
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(backend)?;
            let queue = txn.open_table(QUEUE).map_err(backend)?;
            let delayed = txn.open_table(DELAYED).map_err(backend)?;
            let running = txn.open_table(RUNNING).map_err(backend)?;
            let now = now_ms();
            let mut keys = std::collections::BTreeSet::new();
            // Distinct queues, one seek each.
            let mut from = String::new();
            loop {
                let next = queue
                    .range((from.as_str(), 0, 0, "")..)
                    .map_err(backend)?
                    .next()
                    .transpose()
                    .map_err(backend)?;
                let Some((key, _)) = next else { break };
                let name = key.value().0.to_string();
                from = format!("{name}\0");
                keys.insert(name);
            }
            for table in [&delayed, &running] {
                for entry in table.range(..(now + 1, "")).map_err(backend)? {
                    keys.insert(entry.map_err(backend)?.1.value().to_string());
                }
            }
            Ok(keys.iter().map(|k| split_queue(k)).collect())
        })
        .await
    }

    async fn claim(
        &self,
        queue: &QueueId,
        worker: &str,
        max: usize,
        lease_ms: u64,
    ) -> Result<Vec<Claim>, String> {
        let (name, worker) = (
            queue_key(&queue.tenant, &queue.function),
            worker.to_string(),
        );
        self.commit(move |t, now| {
            t.reclaim(now, now)?;
            t.promote_due(now)?;
            let picked: Vec<(u8, u64, String)> = t
                .queue
                .range((name.as_str(), 0, 0, "")..(name.as_str(), u8::MAX, 0, ""))
                .map_err(backend)?
                .take(max)
                .map(|e| {
                    e.map(|(k, _)| {
                        let (_, rank, created, id) = k.value();
                        (rank, created, id.to_string())
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            let mut claims = Vec::new();
            for (rank, created, id) in picked {
                t.queue
                    .remove((name.as_str(), rank, created, id.as_str()))
                    .map_err(backend)?;
                let Some(mut task) = t.load(&id)? else {
                    continue;
                };
                if !task.status.is_waiting() {
                    continue;
                }
                let token = format!("{worker}:{:016x}", rand::random::<u64>());
                let lease_until = now + lease_ms;
                task.start_attempt(&token, now, lease_until);
                t.running
                    .insert((lease_until, id.as_str()), name.as_str())
                    .map_err(backend)?;
                t.save(&task)?;
                claims.push(Claim {
                    task,
                    token,
                    receipt: String::new(),
                });
            }
            Ok(claims)
        })
        .await
    }

    async fn finish(&self, claim: &Claim, finish: Finish) -> Result<bool, String> {
        let (id, token) = (claim.task.task_id.clone(), claim.token.clone());
        self.commit(move |t, now| match t.load(&id)? {
            Some(mut task) if task.claim.as_deref() == Some(token.as_str()) => {
                t.settle(&mut task, &finish, now)?;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, String> {
        self.blocking(|s| {
            let txn = s.db.begin_read().map_err(backend)?;
            let queue = txn.open_table(QUEUE).map_err(backend)?;
            let delayed = txn.open_table(DELAYED).map_err(backend)?;
            let running = txn.open_table(RUNNING).map_err(backend)?;
            let dead = txn.open_table(DEAD).map_err(backend)?;
            let tasks = txn.open_table(TASKS).map_err(backend)?;
            let mut by_queue = std::collections::BTreeMap::new();
            for e in txn
                .open_table(QUEUES)
                .map_err(backend)?
                .iter()
                .map_err(backend)?
            {
                slot(&mut by_queue, e.map_err(backend)?.0.value());
            }
            for e in queue.iter().map_err(backend)? {
                let (key, cost) = e.map_err(backend)?;
                let (name, _, created, _) = key.value();
                let stats = slot(&mut by_queue, name);
                stats.queued += 1;
                stats.backlog_cost += cost.value();
                stats.oldest_created_at =
                    Some(stats.oldest_created_at.map_or(created, |o| o.min(created)));
            }
            for (table, is_running) in [(&delayed, false), (&running, true)] {
                for e in table.iter().map_err(backend)? {
                    let (key, name) = e.map_err(backend)?;
                    let Some(bytes) = tasks.get(key.value().1).map_err(backend)? else {
                        continue;
                    };
                    let task: TaskRecord =
                        serde_json::from_slice(bytes.value()).map_err(backend)?;
                    let stats = slot(&mut by_queue, name.value());
                    stats.backlog_cost += task.cost;
                    if is_running {
                        stats.running += 1;
                    } else {
                        stats.queued += 1;
                        let created = task.created_at;
                        stats.oldest_created_at =
                            Some(stats.oldest_created_at.map_or(created, |o| o.min(created)));
                    }
                }
            }
            for e in dead.iter().map_err(backend)? {
                let (key, _) = e.map_err(backend)?;
                slot(&mut by_queue, key.value().0).dead += 1;
            }
            Ok(by_queue.into_values().collect())
        })
        .await
    }

    async fn sweep(&self) -> Result<(), String> {
        let retention = self.retention_ms;
        self.commit(move |t, now| {
            let cutoff = now.saturating_sub(retention);
            let expired_keys: Vec<(String, String)> = t
                .idem
                .iter()
                .map_err(backend)?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| {
                    v.value()
                        .split_once(' ')
                        .and_then(|(e, _)| e.parse::<u64>().ok())
                        .is_some_and(|e| e <= now)
                })
                .map(|(k, _)| (k.value().0.to_string(), k.value().1.to_string()))
                .collect();
            for (client, key) in expired_keys {
                t.idem
                    .remove((client.as_str(), key.as_str()))
                    .map_err(backend)?;
            }
            let old: Vec<(String, u64, String)> = t
                .index
                .iter()
                .map_err(backend)?
                .filter_map(|e| e.ok())
                .map(|(k, _)| {
                    let (tenant, created, id) = k.value();
                    (tenant.to_string(), created, id.to_string())
                })
                .filter(|(_, created, _)| *created <= cutoff)
                .collect();
            for (tenant, created, id) in old {
                let Some(task) = t.load(&id)? else {
                    t.index
                        .remove((tenant.as_str(), created, id.as_str()))
                        .map_err(backend)?;
                    continue;
                };
                if task.status.is_final() && task.updated_at <= cutoff {
                    let queue = queue_key(&task.tenant, &task.function);
                    t.dead
                        .remove((queue.as_str(), id.as_str()))
                        .map_err(backend)?;
                    t.index
                        .remove((tenant.as_str(), created, id.as_str()))
                        .map_err(backend)?;
                    t.tasks.remove(id.as_str()).map_err(backend)?;
                }
            }
            Ok(())
        })
        .await
    }
}
