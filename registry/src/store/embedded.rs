//! The embedded backend of the [`Store`]: [redb], a pure-Rust, ACID,
//! copy-on-write B-tree in one file, with no server and no C dependency. Every
//! registration is one write transaction that reads the latest version and
//! writes the next, so version numbers never repeat and a crash never leaves
//! half a version.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{now_ms, FunctionSummary, Store, StoreError};
use crate::aliases::AliasRecord;
use crate::clients::ClientRecord;
use crate::rollouts::RolloutRecord;
use contract::version::FunctionVersion;

/// (tenant, function name, version) → JSON of a [`FunctionVersion`].
mod pipelines;

const VERSIONS: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("versions_v1");
/// client id → JSON of a [`ClientRecord`].
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients_v1");
/// quota counter key → calls counted.
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters_v1");
/// (tenant, function, alias) → JSON of an [`AliasRecord`].
const ALIASES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("aliases_v1");
/// (tenant, function, rollout id) → JSON of a [`RolloutRecord`].
const ROLLOUTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("rollouts_v1");
/// (tenant, function, alias) → id of the alias's active rollout.
const ACTIVE_ROLLOUTS: TableDefinition<(&str, &str, &str), &str> =
    TableDefinition::new("active_rollouts_v1");
/// lease name → `<expires at, ms since the epoch> <holder>`.
const LEASES: TableDefinition<&str, &str> = TableDefinition::new("leases_v1");

fn encode_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encoding failed: {e}")))
}

/// A table of JSON records keyed by (tenant, function, name).
type JsonTable =
    TableDefinition<'static, (&'static str, &'static str, &'static str), &'static [u8]>;

impl EmbeddedStore {
    /// One JSON record of a (tenant, function, name) table, if present.
    async fn get_json<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: JsonTable,
        tenant: &str,
        function: &str,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let key = (tenant.to_string(), function.to_string(), name.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(table).map_err(backend)?;
            let found = table
                .get((key.0.as_str(), key.1.as_str(), key.2.as_str()))
                .map_err(backend)?;
            found.map(|g| decode_json(g.value())).transpose()
        })
        .await
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The embedded store: one redb file in the data directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(VERSIONS).map_err(backend)?;
        txn.open_table(CLIENTS).map_err(backend)?;
        txn.open_table(COUNTERS).map_err(backend)?;
        txn.open_table(ALIASES).map_err(backend)?;
        txn.open_table(ROLLOUTS).map_err(backend)?;
        txn.open_table(ACTIVE_ROLLOUTS).map_err(backend)?;
        txn.open_table(LEASES).map_err(backend)?;
        txn.open_table(pipelines::PIPELINES).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode(bytes: &[u8]) -> Result<FunctionVersion, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn latest_in<T: ReadableTable<(&'static str, &'static str, u32), &'static [u8]>>(
    table: &T,
    tenant: &str,
    name: &str,
) -> Result<Option<u32>, StoreError> {
    let mut range = table
        .range((tenant, name, 0)..=(tenant, name, u32::MAX))
        .map_err(backend)?;
    match range.next_back() {
        Some(entry) => Ok(Some(entry.map_err(backend)?.0.value().2)),
        None => Ok(None),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn append_version(
        &self,
        mut record: FunctionVersion,
    ) -> Result<FunctionVersion, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(VERSIONS).map_err(backend)?;
                let next = latest_in(&table, &record.tenant, &record.name)?.unwrap_or(0) + 1;
                record.version = next;
                let bytes = serde_json::to_vec(&record).map_err(backend)?;
                table
                    .insert(
                        (record.tenant.as_str(), record.name.as_str(), next),
                        bytes.as_slice(),
                    )
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(record)
        })
        .await
    }

    async fn get_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<FunctionVersion>, StoreError> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(VERSIONS).map_err(backend)?;
            match table
                .get((tenant.as_str(), name.as_str(), version))
                .map_err(backend)?
            {
                Some(guard) => decode(guard.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn latest_version(&self, tenant: &str, name: &str) -> Result<Option<u32>, StoreError> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(VERSIONS).map_err(backend)?;
            latest_in(&table, &tenant, &name)
        })
        .await
    }

    async fn list_functions(&self, tenant: &str) -> Result<Vec<FunctionSummary>, StoreError> {
        let tenant = tenant.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(VERSIONS).map_err(backend)?;
            let mut out: Vec<FunctionSummary> = Vec::new();
            for entry in table.range((tenant.as_str(), "", 0)..).map_err(backend)? {
                let (key, _) = entry.map_err(backend)?;
                let (t, name, version) = key.value();
                if t != tenant {
                    break;
                }
                match out.last_mut() {
                    Some(last) if last.name == name => {
                        last.latest_version = version;
                        last.versions.push(version);
                    }
                    _ => out.push(FunctionSummary {
                        name: name.to_string(),
                        latest_version: version,
                        versions: vec![version],
                    }),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(client).map_err(backend)?;
        let id = client.client_id.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(CLIENTS)
                .map_err(backend)?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(backend)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let id = client_id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let removed = txn
                .open_table(CLIENTS)
                .map_err(backend)?
                .remove(id.as_str())
                .map_err(backend)?
                .is_some();
            txn.commit().map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    async fn list_clients(&self, tenant: Option<&str>) -> Result<Vec<ClientRecord>, StoreError> {
        let tenant = tenant.map(str::to_string);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(CLIENTS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(backend)? {
                let (_, value) = entry.map_err(backend)?;
                let record: ClientRecord = serde_json::from_slice(value.value())
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                if tenant.as_deref().is_none_or(|t| t == record.tenant) {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn get_client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let id = client_id.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(CLIENTS).map_err(backend)?;
            match table.get(id.as_str()).map_err(backend)? {
                Some(guard) => serde_json::from_slice(guard.value())
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(e.to_string())),
                None => Ok(None),
            }
        })
        .await
    }

    async fn add_counters(&self, deltas: Vec<(String, u64)>) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(COUNTERS).map_err(backend)?;
                for (key, delta) in &deltas {
                    let current = table
                        .get(key.as_str())
                        .map_err(backend)?
                        .map_or(0, |g| g.value());
                    table
                        .insert(key.as_str(), current.saturating_add(*delta))
                        .map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn get_counter(&self, key: &str) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(COUNTERS).map_err(backend)?;
            Ok(table
                .get(key.as_str())
                .map_err(backend)?
                .map_or(0, |g| g.value()))
        })
        .await
    }
    async fn get_counters(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        let keys = keys.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(COUNTERS).map_err(backend)?;
            keys.iter()
                .map(|k| {
                    Ok(table
                        .get(k.as_str())
                        .map_err(backend)?
                        .map_or(0, |g| g.value()))
                })
                .collect()
        })
        .await
    }

    async fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        let bytes = encode_json(alias)?;
        let alias = alias.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            txn.open_table(ALIASES)
                .map_err(backend)?
                .insert(
                    (
                        alias.tenant.as_str(),
                        alias.function.as_str(),
                        alias.name.as_str(),
                    ),
                    bytes.as_slice(),
                )
                .map_err(backend)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn get_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<Option<AliasRecord>, StoreError> {
        self.get_json(ALIASES, tenant, function, alias).await
    }

    async fn delete_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<bool, StoreError> {
        let key = (tenant.to_string(), function.to_string(), alias.to_string());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let removed = txn
                .open_table(ALIASES)
                .map_err(backend)?
                .remove((key.0.as_str(), key.1.as_str(), key.2.as_str()))
                .map_err(backend)?
                .is_some();
            txn.commit().map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    async fn list_aliases(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<AliasRecord>, StoreError> {
        let (tenant, function) = (tenant.to_string(), function.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(ALIASES).map_err(backend)?;
            let mut out = Vec::new();
            for entry in table
                .range((tenant.as_str(), function.as_str(), "")..)
                .map_err(backend)?
            {
                let (key, value) = entry.map_err(backend)?;
                let (t, f, _) = key.value();
                if t != tenant || f != function {
                    break;
                }
                out.push(decode_json(value.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn create_rollout(&self, record: &RolloutRecord) -> Result<Option<String>, StoreError> {
        let bytes = encode_json(record)?;
        let record = record.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let alias_key = (
                record.tenant.as_str(),
                record.function.as_str(),
                record.alias.as_str(),
            );
            {
                let mut active = txn.open_table(ACTIVE_ROLLOUTS).map_err(backend)?;
                if let Some(existing) = active.get(alias_key).map_err(backend)? {
                    return Ok(Some(existing.value().to_string()));
                }
                active
                    .insert(alias_key, record.id.as_str())
                    .map_err(backend)?;
                txn.open_table(ROLLOUTS)
                    .map_err(backend)?
                    .insert(
                        (
                            record.tenant.as_str(),
                            record.function.as_str(),
                            record.id.as_str(),
                        ),
                        bytes.as_slice(),
                    )
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(None)
        })
        .await
    }

    async fn update_rollout(
        &self,
        record: &RolloutRecord,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        let mut next = record.clone();
        next.revision = record.revision + 1;
        next.updated_at_ms = now_ms();
        let bytes = encode_json(&next)?;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(ROLLOUTS).map_err(backend)?;
                let key = (
                    next.tenant.as_str(),
                    next.function.as_str(),
                    next.id.as_str(),
                );
                let current: Option<RolloutRecord> = table
                    .get(key)
                    .map_err(backend)?
                    .map(|g| decode_json(g.value()))
                    .transpose()?;
                match current {
                    Some(c) if c.revision + 1 == next.revision => {}
                    _ => return Ok(None),
                }
                table.insert(key, bytes.as_slice()).map_err(backend)?;
                if !next.is_active() {
                    let mut active = txn.open_table(ACTIVE_ROLLOUTS).map_err(backend)?;
                    let alias_key = (
                        next.tenant.as_str(),
                        next.function.as_str(),
                        next.alias.as_str(),
                    );
                    let ours = active
                        .get(alias_key)
                        .map_err(backend)?
                        .is_some_and(|g| g.value() == next.id);
                    if ours {
                        active.remove(alias_key).map_err(backend)?;
                    }
                }
            }
            txn.commit().map_err(backend)?;
            Ok(Some(next))
        })
        .await
    }

    async fn get_rollout(
        &self,
        tenant: &str,
        function: &str,
        id: &str,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        self.get_json(ROLLOUTS, tenant, function, id).await
    }

    async fn list_rollouts(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        let (tenant, function) = (tenant.to_string(), function.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(ROLLOUTS).map_err(backend)?;
            let mut out: Vec<RolloutRecord> = Vec::new();
            for entry in table
                .range((tenant.as_str(), function.as_str(), "")..)
                .map_err(backend)?
            {
                let (key, value) = entry.map_err(backend)?;
                let (t, f, _) = key.value();
                if t != tenant || f != function {
                    break;
                }
                out.push(decode_json(value.value())?);
            }
            out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
            Ok(out)
        })
        .await
    }

    async fn active_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let active = txn.open_table(ACTIVE_ROLLOUTS).map_err(backend)?;
            let rollouts = txn.open_table(ROLLOUTS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in active.iter().map_err(backend)? {
                let (key, id) = entry.map_err(backend)?;
                let (tenant, function, _) = key.value();
                if let Some(g) = rollouts
                    .get((tenant, function, id.value()))
                    .map_err(backend)?
                {
                    out.push(decode_json(g.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.blocking(move |db| {
            let now = now_ms();
            let txn = db.begin_write().map_err(backend)?;
            let granted = {
                let mut table = txn.open_table(LEASES).map_err(backend)?;
                let current = table
                    .get(name.as_str())
                    .map_err(backend)?
                    .map(|g| g.value().to_string());
                let free = match current.as_deref().and_then(|v| v.split_once(' ')) {
                    Some((expires, who)) => {
                        who == holder || expires.parse::<u64>().map_or(true, |e| e <= now)
                    }
                    None => true,
                };
                if free {
                    let value = format!("{} {holder}", now + ttl_ms);
                    table
                        .insert(name.as_str(), value.as_str())
                        .map_err(backend)?;
                }
                free
            };
            txn.commit().map_err(backend)?;
            Ok(granted)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::definition::{parse, Syntax};
    use contract::version::ModelSignature;

    fn record(tenant: &str, name: &str) -> FunctionVersion {
        let body = format!(
            r#"{{"name": "{name}", "model": "sha256:{}", "inputs": {{"x": {{"tensor": "x"}}}}, "outputs": {{"y": {{"tensor": "y"}}}}}}"#,
            "0".repeat(64)
        );
        FunctionVersion {
            tenant: tenant.into(),
            name: name.into(),
            version: 0,
            created_at_ms: 1,
            definition: parse(body.as_bytes(), Syntax::Json).unwrap(),
            signature: ModelSignature {
                inputs: vec![],
                outputs: vec![],
            },
            inputs: vec![],
            outputs: vec![],
            model_size_bytes: 0,
            schemas: Default::default(),
        }
    }

    #[tokio::test]
    async fn versions_count_up_per_function_and_tenant_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            assert_eq!(
                store
                    .append_version(record("default", "a"))
                    .await
                    .unwrap()
                    .version,
                1
            );
            assert_eq!(
                store
                    .append_version(record("default", "a"))
                    .await
                    .unwrap()
                    .version,
                2
            );
            assert_eq!(
                store
                    .append_version(record("default", "b"))
                    .await
                    .unwrap()
                    .version,
                1
            );
            assert_eq!(
                store
                    .append_version(record("other", "a"))
                    .await
                    .unwrap()
                    .version,
                1
            );
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.latest_version("default", "a").await.unwrap(), Some(2));
        assert_eq!(store.latest_version("default", "zzz").await.unwrap(), None);
        assert_eq!(
            store
                .get_version("default", "a", 2)
                .await
                .unwrap()
                .unwrap()
                .version,
            2
        );
        assert!(store
            .get_version("default", "a", 3)
            .await
            .unwrap()
            .is_none());
        let listed = store.list_functions("default").await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].versions, vec![1, 2]);
        assert_eq!(store.list_functions("other").await.unwrap()[0].name, "a");
    }

    #[tokio::test]
    async fn concurrent_appends_get_distinct_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("r.redb")).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append_version(record("default", "a"))
                        .await
                        .unwrap()
                        .version
                })
            })
            .collect();
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await.unwrap());
        }
        versions.sort();
        assert_eq!(versions, (1..=8).collect::<Vec<u32>>());
    }
}
