//! Cluster membership: runtime nodes heartbeat a record with a TTL; routers
//! and the registry read the live set. [`Membership`] is what callers use;
//! [`RedisMembership`] keeps it in Redis.
//!
//! Key layout in Redis (prefix `tm:`):
//! - `tm:node:{id}`: the node's record as JSON, written with `SET … PX ttl` on
//!   every heartbeat, so it disappears by itself when the node stops;
//! - `tm:nodes`: a set of node ids, the index readers scan. Ids whose record
//!   has expired are removed by the next reader.
//!
//! Expiry is Redis's own clock, so hosts need not agree on the time. With a
//! heartbeat every [`HEARTBEAT`] and a TTL of [`TTL`], a node that stops is gone
//! from the live set within `TTL` (routers also eject a node the moment it
//! refuses a connection).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::connection::RedisStore;
use crate::store::StoreError;

/// How often a node writes its record.
pub const HEARTBEAT: Duration = Duration::from_millis(400);
/// How long a record lives without a heartbeat.
pub const TTL: Duration = Duration::from_millis(1500);

const PREFIX: &str = "tm:";

/// What a node advertises: where to reach it, its capacity, its load and its
/// warm set. Fields beyond these travel in `extra` (shown by `GET /v1/nodes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// `host:port` routers connect to.
    pub address: String,
    pub cores: u32,
    pub gpus: u32,
    pub memory_budget_bytes: u64,
    pub memory_used_bytes: u64,
    pub in_flight: u64,
    /// True while the node drains before it exits: routers stop sending to it.
    #[serde(default)]
    pub draining: bool,
    /// Loaded function versions (each with `tenant`, `name`, `version`, …).
    #[serde(default)]
    pub warm: Vec<Value>,
}

impl NodeRecord {
    /// The record as `GET /v1/nodes` shows it, with the warm set limited to
    /// `tenant` when given.
    pub fn view(&self, tenant: Option<&str>) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let (Some(tenant), Some(warm)) = (tenant, value.get_mut("warm")) {
            if let Some(list) = warm.as_array_mut() {
                list.retain(|f| f.get("tenant").and_then(Value::as_str) == Some(tenant));
            }
        }
        value
    }
}

/// The live set of runtime nodes, as nodes publish it and routers and the
/// registry read it.
#[async_trait]
pub trait Membership: Send + Sync {
    /// Writes `record` with a fresh TTL (a node's heartbeat).
    async fn heartbeat(&self, record: &NodeRecord) -> Result<(), StoreError>;

    /// Removes a node at once (a clean shutdown).
    async fn leave(&self, id: &str) -> Result<(), StoreError>;

    /// The live nodes, sorted by id.
    async fn live(&self) -> Result<Vec<NodeRecord>, StoreError>;
}

/// [`Membership`] in Redis: a handle on the membership keys, over the
/// registry's Redis connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisMembership {
    redis: RedisStore,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn node_key(id: &str) -> String {
    format!("{PREFIX}node:{id}")
}

fn index_key() -> String {
    format!("{PREFIX}nodes")
}

/// Removes the ids whose record is still absent (a node may have come back
/// between the read and this cleanup).
const FORGET_EXPIRED: &str = "for i, id in ipairs(ARGV) do \
   if redis.call('EXISTS', KEYS[i + 1]) == 0 then redis.call('SREM', KEYS[1], id) end \
 end return 0";

impl RedisMembership {
    pub fn new(redis: RedisStore) -> Self {
        RedisMembership { redis }
    }
}

#[async_trait]
impl Membership for RedisMembership {
    /// Writes `record` with a fresh TTL.
    async fn heartbeat(&self, record: &NodeRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(backend)?;
        let (key, id) = (node_key(&record.id), record.id.clone());
        self.redis
            .run(true, move |mut conn| {
                let (key, id, json) = (key.clone(), id.clone(), json.clone());
                async move {
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(key)
                        .arg(json)
                        .arg("PX")
                        .arg(TTL.as_millis() as u64)
                        .ignore()
                        .cmd("SADD")
                        .arg(index_key())
                        .arg(id)
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await
    }

    /// Removes a node at once (a clean shutdown).
    async fn leave(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.redis
            .run(true, move |mut conn| {
                let id = id.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .cmd("DEL")
                        .arg(node_key(&id))
                        .ignore()
                        .cmd("SREM")
                        .arg(index_key())
                        .arg(&id)
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                }
            })
            .await
    }

    /// The live nodes, sorted by id; forgets the ids whose record expired.
    async fn live(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut ids: Vec<String> = self
            .redis
            .run(true, |mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(index_key())
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
        let records: Vec<Option<String>> = self
            .redis
            .run(true, |mut conn| {
                let keys = keys.clone();
                async move { redis::cmd("MGET").arg(keys).query_async(&mut conn).await }
            })
            .await?;
        let mut live = Vec::with_capacity(ids.len());
        let mut expired = Vec::new();
        for (id, record) in ids.into_iter().zip(records) {
            match record.map(|r| serde_json::from_str::<NodeRecord>(&r)) {
                Some(Ok(record)) => live.push(record),
                Some(Err(e)) => tracing::warn!(node = %id, error = %e, "unreadable node record"),
                None => expired.push(id),
            }
        }
        if !expired.is_empty() {
            let script = redis::Script::new(FORGET_EXPIRED);
            let _ = self
                .redis
                .run(true, |mut conn| {
                    let mut invocation = script.prepare_invoke();
                    invocation.key(index_key());
                    for id in &expired {
                        invocation.key(node_key(id));
                    }
                    for id in &expired {
                        invocation.arg(id);
                    }
                    async move { invocation.invoke_async::<i64>(&mut conn).await }
                })
                .await;
        }
        Ok(live)
    }
}

/// A Redis URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("redis://:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn views_limit_the_warm_set_to_the_tenant() {
        let record = NodeRecord {
            id: "n1".into(),
            address: "127.0.0.1:9000".into(),
            cores: 2,
            gpus: 0,
            memory_budget_bytes: 1,
            memory_used_bytes: 0,
            in_flight: 0,
            draining: false,
            warm: vec![
                serde_json::json!({"tenant": "a", "name": "f"}),
                serde_json::json!({"tenant": "b", "name": "g"}),
            ],
        };
        assert_eq!(record.view(Some("a"))["warm"].as_array().unwrap().len(), 1);
        assert_eq!(record.view(None)["warm"].as_array().unwrap().len(), 2);
        let back: NodeRecord = serde_json::from_value(record.view(None)).unwrap();
        assert_eq!(back, record);
    }
}
