//! Tasks in Redis (cluster mode): `contract::task::TaskStore` for
//! [`RedisStore`], on Redis Streams with a consumer group per queue.
//!
//! # Key layout (prefix `tm:`; `<t>`/`<f>` are key segments)
//!
//! | key                       | type   | holds                                          |
//! |---------------------------|--------|------------------------------------------------|
//! | `tm:task:<id>`            | hash   | `record` (the submitted JSON, never rewritten) and the mutable fields `status`, `attempts`, `updated_at`, `due_at`, `claim`, `lease_until`, `result`, `error`, `stream`, `cost`, `max_attempts` |
//! | `tm:tq:<t>:<f>:<rank>`    | stream | entries `id <task id>`; group `workers`; rank 0 high, 1 normal, 2 low |
//! | `tm:tq:<t>:<f>:stats`     | hash   | `queued`, `running`, `cost` (waiting and running) |
//! | `tm:tq:<t>:<f>:dead`      | set    | ids of dead tasks                              |
//! | `tm:tq:<t>:index`         | zset   | task ids by creation time (listing)            |
//! | `tm:tq:delayed`           | zset   | ids of tasks waiting for a backoff, by due time |
//! | `tm:tq:queues`            | set    | `<tenant>\x1f<function>` of every queue        |
//! | `tm:tq:idem:<client>:<key>` | string | the task an idempotency key named (24 h TTL) |
//!
//! # How a task moves
//!
//! Each step is one Lua script, so nothing is ever half written: submit
//! (hash, stream entry, index, counters and idempotency key together), claim
//! (`XPENDING … IDLE` + `XCLAIM` of entries pending longer than the lease,
//! whose worker died, then `XREADGROUP` of new ones, highest priority stream
//! first; each taken task gets a fresh claim token; an entry that is not the
//! task's current one, `entry` in its hash, is stale and dropped), finish (only under the token that holds
//! the task: `XACK` + `XDEL` of the entry, the outcome, and for a retry the
//! task's id in the delayed set; finished tasks expire after the retention),
//! promote (due delayed tasks get a new stream entry), cancel and requeue.
//! Results and inputs are JSON written by Rust and never re-encoded by Lua.
//! Durability is Redis's: with AOF (`appendfsync everysec` or `always`), a
//! restarted Redis replays each script whole or not at all.

use std::collections::HashMap;

use async_trait::async_trait;
use contract::task::{
    Claim, Finish, QueueId, QueueStats, Submitted, TaskError, TaskFilter, TaskRecord, TaskStatus,
    TaskStore, DEFAULT_RETENTION_MS, IDEMPOTENCY_TTL_MS,
};
use contract::ErrorCode;

use super::connection::{segment, RedisStore};
use super::scripts::{
    TASK_CANCEL, TASK_CLAIM, TASK_FINISH, TASK_PROMOTE, TASK_REQUEUE, TASK_SUBMIT,
};
use crate::store::{now_ms, StoreError};

/// The task queues of one Redis, with how long finished tasks are kept.
#[derive(Clone, Debug)]
pub struct RedisTasks {
    store: RedisStore,
    retention_ms: u64,
}

fn failed(e: StoreError) -> String {
    e.to_string()
}

/// Reads a task from its hash's fields (`None` for an empty hash).
fn from_fields(fields: HashMap<String, String>) -> Result<Option<TaskRecord>, String> {
    let Some(record) = fields.get("record") else {
        return Ok(None);
    };
    let mut task: TaskRecord =
        serde_json::from_str(record).map_err(|e| format!("stored task is corrupt: {e}"))?;
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let text = |name: &str| fields.get(name).filter(|v| !v.is_empty());
    task.status = fields
        .get("status")
        .and_then(|s| TaskStatus::parse(s))
        .ok_or("stored task has no status")?;
    task.attempts = number("attempts").unwrap_or(0) as u32;
    task.updated_at = number("updated_at").unwrap_or(task.created_at);
    task.due_at = number("due_at").unwrap_or(0);
    task.lease_until = number("lease_until").unwrap_or(0);
    task.claim = fields.get("claim").filter(|c| !c.is_empty()).cloned();
    task.result = text("result")
        .map(|v| serde_json::from_str(v))
        .transpose()
        .map_err(|e| e.to_string())?;
    task.error = text("error")
        .map(|v| serde_json::from_str(v))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(Some(task))
}

impl RedisTasks {
    pub fn new(store: RedisStore, retention_ms: Option<u64>) -> Self {
        RedisTasks {
            store,
            retention_ms: retention_ms.unwrap_or(DEFAULT_RETENTION_MS),
        }
    }

    fn prefix(&self) -> &str {
        &self.store.options().prefix
    }

    fn task_key(&self, id: &str) -> String {
        format!("{}task:{id}", self.prefix())
    }

    fn queue_base(&self, tenant: &str, function: &str) -> String {
        format!(
            "{}tq:{}:{}",
            self.prefix(),
            segment(tenant),
            segment(function)
        )
    }

    fn stream(&self, tenant: &str, function: &str, rank: u8) -> String {
        format!("{}:{rank}", self.queue_base(tenant, function))
    }

    fn delayed(&self) -> String {
        format!("{}tq:delayed", self.prefix())
    }

    fn queues(&self) -> String {
        format!("{}tq:queues", self.prefix())
    }

    fn index(&self, tenant: &str) -> String {
        format!("{}tq:{}:index", self.prefix(), segment(tenant))
    }

    async fn fields(&self, id: &str) -> Result<Option<TaskRecord>, String> {
        let mut all = self.records(&[self.task_key(id)]).await?;
        from_fields(all.pop().unwrap_or_default())
    }

    /// Runs a script on one task of `tenant` (checked first); then reads it again.
    async fn on_task(
        &self,
        tenant: &str,
        task_id: &str,
        script: &'static str,
        keys: impl Fn(&TaskRecord) -> Vec<String>,
        args: Vec<String>,
    ) -> Result<Option<TaskRecord>, String> {
        let Some(task) = self.get(tenant, task_id).await? else {
            return Ok(None);
        };
        let keys = keys(&task);
        let _: i64 = self.script(script, &keys, &args).await?;
        self.get(tenant, task_id).await
    }

    /// Runs one of the task scripts (never sent twice: scripts write).
    async fn script<T: redis::FromRedisValue>(
        &self,
        source: &'static str,
        keys: &[String],
        args: &[String],
    ) -> Result<T, String> {
        let script = redis::Script::new(source);
        self.store
            .run(false, |mut conn| {
                let mut invocation = script.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                for arg in args {
                    invocation.arg(arg);
                }
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await
            .map_err(failed)
    }

    /// The fields of each hash of `keys`, in one round trip.
    async fn records(&self, keys: &[String]) -> Result<Vec<HashMap<String, String>>, String> {
        self.store
            .run(true, |mut conn| {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("HGETALL").arg(key);
                }
                async move { pipe.query_async(&mut conn).await }
            })
            .await
            .map_err(failed)
    }

    /// Whether each of `keys` exists, in one round trip.
    async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, String> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.store
            .run(true, |mut conn| {
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("EXISTS").arg(key);
                }
                async move { pipe.query_async(&mut conn).await }
            })
            .await
            .map_err(failed)
    }

    /// Every queue that ever had a task.
    async fn all_queues(&self) -> Result<Vec<QueueId>, String> {
        let key = self.queues();
        let members: Vec<String> = self
            .store
            .run(true, |mut conn| {
                let key = key.clone();
                async move { redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await }
            })
            .await
            .map_err(failed)?;
        let mut queues: Vec<QueueId> = members
            .iter()
            .filter_map(|m| m.split_once('\x1f'))
            .map(|(tenant, function)| QueueId {
                tenant: tenant.to_string(),
                function: function.to_string(),
            })
            .collect();
        queues.sort();
        Ok(queues)
    }

    /// Gives due delayed tasks (retries after their backoff) a stream entry again.
    async fn promote(&self) -> Result<(), String> {
        let keys = [self.delayed()];
        let args = [
            now_ms().to_string(),
            format!("{}task:", self.prefix()),
            "500".to_string(),
        ];
        let _: i64 = self.script(TASK_PROMOTE, &keys, &args).await?;
        Ok(())
    }
}

fn error_json(error: &TaskError) -> String {
    serde_json::to_string(error).unwrap_or_default()
}

#[async_trait]
impl TaskStore for RedisTasks {
    async fn submit(&self, task: TaskRecord) -> Result<Submitted, String> {
        let record = serde_json::to_string(&task).map_err(|e| e.to_string())?;
        let base = self.queue_base(&task.tenant, &task.function);
        let idem = task.idempotency_key.as_deref().map_or_else(
            || format!("{base}:no-idempotency-key"),
            |k| {
                format!(
                    "{}tq:idem:{}:{}",
                    self.prefix(),
                    segment(&task.client_id),
                    segment(k)
                )
            },
        );
        let keys = [
            self.task_key(&task.task_id),
            self.stream(&task.tenant, &task.function, task.priority.rank()),
            format!("{base}:stats"),
            self.index(&task.tenant),
            self.queues(),
            idem,
        ];
        let args: Vec<String> = vec![
            record,
            task.created_at.to_string(),
            task.task_id.clone(),
            task.cost.to_string(),
            task.max_attempts.to_string(),
            task.created_at.to_string(),
            format!("{}\x1f{}", task.tenant, task.function),
            IDEMPOTENCY_TTL_MS.to_string(),
            if task.idempotency_key.is_some() {
                "1"
            } else {
                "0"
            }
            .to_string(),
            format!("{}task:", self.prefix()),
        ];
        let (created, id): (i64, String) = self.script(TASK_SUBMIT, &keys, &args).await?;
        if created == 1 {
            let mut task = task;
            task.status = TaskStatus::Queued;
            return Ok(Submitted {
                task,
                created: true,
            });
        }
        let existing = self
            .get(&task.tenant, &id)
            .await?
            .ok_or("the task of that idempotency key is gone")?;
        Ok(Submitted {
            task: existing,
            created: false,
        })
    }

    async fn get(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String> {
        Ok(self.fields(task_id).await?.filter(|t| t.tenant == tenant))
    }

    async fn list(&self, tenant: &str, filter: &TaskFilter) -> Result<Vec<TaskRecord>, String> {
        const PAGE: isize = 200;
        const MOST_SCANNED: isize = 10_000;
        let index = self.index(tenant);
        let mut out = Vec::new();
        let mut start = 0isize;
        while out.len() < filter.limit && start < MOST_SCANNED {
            let ids: Vec<String> = self
                .store
                .run(true, |mut conn| {
                    let index = index.clone();
                    async move {
                        redis::cmd("ZREVRANGE")
                            .arg(index)
                            .arg(start)
                            .arg(start + PAGE - 1)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await
                .map_err(failed)?;
            if ids.is_empty() {
                break;
            }
            let keys: Vec<String> = ids.iter().map(|id| self.task_key(id)).collect();
            let all = self.records(&keys).await?;
            for fields in all {
                if let Some(task) = from_fields(fields)? {
                    if task.tenant == tenant && filter.matches(&task) && out.len() < filter.limit {
                        out.push(task);
                    }
                }
            }
            start += PAGE;
        }
        Ok(out)
    }

    async fn cancel(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String> {
        let args = vec![
            now_ms().to_string(),
            self.retention_ms.to_string(),
            task_id.to_string(),
        ];
        self.on_task(
            tenant,
            task_id,
            TASK_CANCEL,
            |t| {
                let base = self.queue_base(&t.tenant, &t.function);
                vec![
                    self.task_key(&t.task_id),
                    format!("{base}:stats"),
                    self.delayed(),
                ]
            },
            args,
        )
        .await
    }

    async fn requeue(&self, tenant: &str, task_id: &str) -> Result<Option<TaskRecord>, String> {
        let args = vec![now_ms().to_string(), task_id.to_string()];
        self.on_task(
            tenant,
            task_id,
            TASK_REQUEUE,
            |t| {
                let base = self.queue_base(&t.tenant, &t.function);
                vec![
                    self.task_key(&t.task_id),
                    format!("{base}:stats"),
                    format!("{base}:dead"),
                    self.stream(&t.tenant, &t.function, t.priority.rank()),
                ]
            },
            args,
        )
        .await
    }

    async fn active_queues(&self) -> Result<Vec<QueueId>, String> {
        self.promote().await?;
        let queues = self.all_queues().await?;
        if queues.is_empty() {
            return Ok(queues);
        }
        // Only queues with waiting or running tasks (running ones may need
        // taking back): an idle queue costs a poll nothing more.
        let keys: Vec<String> = queues
            .iter()
            .map(|q| format!("{}:stats", self.queue_base(&q.tenant, &q.function)))
            .collect();
        let counts: Vec<(Option<i64>, Option<i64>)> = self
            .store
            .run(true, |mut conn| {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("HMGET").arg(key).arg("queued").arg("running");
                }
                async move { pipe.query_async(&mut conn).await }
            })
            .await
            .map_err(failed)?;
        Ok(queues
            .into_iter()
            .zip(counts)
            .filter(|(_, (queued, running))| queued.unwrap_or(0) > 0 || running.unwrap_or(0) > 0)
            .map(|(q, _)| q)
            .collect())
    }

    async fn claim(
        &self,
        queue: &QueueId,
        worker: &str,
        max: usize,
        lease_ms: u64,
    ) -> Result<Vec<Claim>, String> {
        let base = self.queue_base(&queue.tenant, &queue.function);
        let keys = [
            format!("{base}:0"),
            format!("{base}:1"),
            format!("{base}:2"),
            format!("{base}:stats"),
            format!("{base}:dead"),
        ];
        let lost_dead = TaskError::new(
            ErrorCode::Unavailable,
            "the last attempt was lost: its worker stopped before it finished",
        );
        let lost = TaskError::new(
            ErrorCode::Unavailable,
            "an attempt was lost: its worker stopped before it finished",
        );
        let token = format!("{worker}:{:016x}:", rand::random::<u64>());
        let args = [
            worker.to_string(),
            max.to_string(),
            lease_ms.to_string(),
            now_ms().to_string(),
            token,
            format!("{}task:", self.prefix()),
            error_json(&lost_dead),
            error_json(&lost),
            self.retention_ms.to_string(),
        ];
        let taken: Vec<(String, String, String, String)> =
            self.script(TASK_CLAIM, &keys, &args).await?;
        if taken.is_empty() {
            return Ok(Vec::new());
        }
        // The records (inputs included) are read apart from the claim: a
        // read can be retried, and a large reply cannot lose the claim.
        let task_keys: Vec<String> = taken
            .iter()
            .map(|(_, _, id, _)| self.task_key(id))
            .collect();
        let records = self.records(&task_keys).await?;
        let mut claims = Vec::with_capacity(taken.len());
        for ((entry, stream, id, token), fields) in taken.into_iter().zip(records) {
            match from_fields(fields) {
                Ok(Some(task)) => claims.push(Claim {
                    task,
                    token,
                    receipt: format!("{stream} {entry}"),
                }),
                // Left to its lease: it ends dead once its attempts are spent.
                Ok(None) | Err(_) => {
                    tracing::error!(task_id = %id, "a claimed task's record is missing or corrupt")
                }
            }
        }
        Ok(claims)
    }

    async fn finish(&self, claim: &Claim, finish: Finish) -> Result<bool, String> {
        let task = &claim.task;
        let (stream, entry) = claim
            .receipt
            .split_once(' ')
            .ok_or("a claim without its stream entry")?;
        let base = self.queue_base(&task.tenant, &task.function);
        let keys = [
            self.task_key(&task.task_id),
            stream.to_string(),
            format!("{base}:stats"),
            self.delayed(),
            format!("{base}:dead"),
        ];
        let (kind, payload, due_at) = match &finish {
            Finish::Succeeded(result) => (
                "succeeded",
                serde_json::to_string(result).map_err(|e| e.to_string())?,
                0,
            ),
            Finish::Dead(error) => ("dead", error_json(error), 0),
            Finish::Retry { error, due_at } => ("retry", error_json(error), *due_at),
            Finish::Defer { due_at } => ("defer", String::new(), *due_at),
        };
        let args = [
            claim.token.clone(),
            entry.to_string(),
            kind.to_string(),
            now_ms().to_string(),
            payload,
            due_at.to_string(),
            self.retention_ms.to_string(),
            task.task_id.clone(),
        ];
        let done: i64 = self.script(TASK_FINISH, &keys, &args).await?;
        Ok(done == 1)
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, String> {
        let queues = self.all_queues().await?;
        let mut out = Vec::with_capacity(queues.len());
        for queue in queues {
            let base = self.queue_base(&queue.tenant, &queue.function);
            type Firsts = Vec<(String, HashMap<String, String>)>;
            let (counts, dead, f0, f1, f2): (HashMap<String, i64>, u64, Firsts, Firsts, Firsts) =
                self.store
                    .run(true, |mut conn| {
                        let mut pipe = redis::pipe();
                        pipe.cmd("HGETALL").arg(format!("{base}:stats"));
                        pipe.cmd("SCARD").arg(format!("{base}:dead"));
                        for rank in 0..3 {
                            pipe.cmd("XRANGE")
                                .arg(format!("{base}:{rank}"))
                                .arg("-")
                                .arg("+")
                                .arg("COUNT")
                                .arg(1);
                        }
                        async move { pipe.query_async(&mut conn).await }
                    })
                    .await
                    .map_err(failed)?;
            let oldest = [f0, f1, f2]
                .iter()
                .filter_map(|f| f.first())
                .filter_map(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
                .min();
            let count = |k: &str| counts.get(k).copied().unwrap_or(0).max(0) as u64;
            out.push(QueueStats {
                tenant: queue.tenant,
                function: queue.function,
                queued: count("queued"),
                running: count("running"),
                backlog_cost: count("cost"),
                oldest_created_at: oldest,
                dead,
            });
        }
        Ok(out)
    }

    async fn sweep(&self) -> Result<(), String> {
        let cutoff = now_ms().saturating_sub(self.retention_ms);
        for queue in self.all_queues().await? {
            let dead_key = format!("{}:dead", self.queue_base(&queue.tenant, &queue.function));
            let index = self.index(&queue.tenant);
            let ids: Vec<String> = self
                .store
                .run(true, |mut conn| {
                    let dead_key = dead_key.clone();
                    async move {
                        redis::cmd("SMEMBERS")
                            .arg(dead_key)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await
                .map_err(failed)?;
            let keys: Vec<String> = ids.iter().map(|id| self.task_key(id)).collect();
            let exists = self.exist(&keys).await?;
            // Ids whose task expired leave the dead set and the index.
            let gone: Vec<&String> = ids
                .iter()
                .zip(exists)
                .filter(|(_, e)| !e)
                .map(|(id, _)| id)
                .collect();
            let old: Vec<String> = self
                .store
                .run(true, |mut conn| {
                    let index = index.clone();
                    async move {
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(index)
                            .arg("-inf")
                            .arg(cutoff)
                            .arg("LIMIT")
                            .arg(0)
                            .arg(1000)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await
                .map_err(failed)?;
            let old_keys: Vec<String> = old.iter().map(|id| self.task_key(id)).collect();
            let old_exists = self.exist(&old_keys).await?;
            let expired: Vec<&String> = old
                .iter()
                .zip(old_exists)
                .filter(|(_, e)| !e)
                .map(|(id, _)| id)
                .collect();
            let _: () = self
                .store
                .run(false, |mut conn| {
                    let mut pipe = redis::pipe();
                    for id in &gone {
                        pipe.cmd("SREM").arg(&dead_key).arg(id.as_str()).ignore();
                    }
                    for id in &expired {
                        pipe.cmd("ZREM").arg(&index).arg(id.as_str()).ignore();
                    }
                    async move { pipe.query_async(&mut conn).await }
                })
                .await
                .map_err(failed)?;
        }
        Ok(())
    }
}
