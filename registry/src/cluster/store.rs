//! The Redis backend of the registry's [`Store`]: `impl Store for RedisStore`,
//! its key layout and the records' encoding. Connections, bounds and
//! reconnection are in `cluster::connection`; the scripts in [`scripts`].
//!
//! # Key layout
//!
//! Every key starts with a prefix, `tm:` by default ([`RedisOptions::prefix`]).
//! Tenant and function names are key segments in which `%`, `:`, `{` and `}`
//! are percent-encoded, so two different (tenant, name) pairs never share a key.
//! Valid names contain none of these characters, so real keys read as written.
//!
//! | key                                 | type    | holds                                |
//! |-------------------------------------|---------|--------------------------------------|
//! | `tm:{<tenant>}:fn:<name>:versions`  | hash    | field `<n>` → JSON of version `n`    |
//! | `tm:{<tenant>}:fn:<name>:latest`    | string  | the latest version number            |
//! | `tm:{<tenant>}:functions`           | set     | the names of the tenant's functions  |
//! | `tm:client:<client id>`             | string  | JSON of a [`ClientRecord`]           |
//! | `tm:counter:<counter key>`          | integer | a quota counter (plain `INCRBY`)     |
//! | `tm:{<tenant>}:fn:<name>:aliases`   | hash    | field `<alias>` → JSON of the alias  |
//! | `tm:{<tenant>}:fn:<name>:rollouts`  | hash    | field `<id>` → JSON of a rollout     |
//! | `tm:rollouts:active`                | hash    | `<tenant>:<name>:<alias>` → rollout id |
//! | `tm:lease:<name>`                   | string  | the holder of a lease (with a TTL)   |
//!
//! Rollouts are created and updated by scripts ([`CREATE_ROLLOUT_SCRIPT`],
//! [`UPDATE_ROLLOUT_SCRIPT`]): creating checks and sets the alias's active
//! rollout together; updating compares the stored record's `revision` (the
//! script decodes the JSON only to read it, and stores the new JSON as Rust
//! wrote it) and frees the alias when the rollout ended. A lease
//! ([`LEASE_SCRIPT`]) is taken with `SET PX` when free and renewed only by
//! its holder, on Redis's clock.
//!
//! The `{<tenant>}` hash tag keeps the three keys of one registration in one
//! hash slot. Versions are numbered 1, 2, 3, … with no gaps and are never
//! removed, so a function's versions are `1..=latest`.
//!
//! # Appending a version
//!
//! One Lua script ([`APPEND_SCRIPT`], run with EVALSHA, and EVAL when the
//! server does not know it yet) reads the latest pointer, writes version
//! `latest + 1` into the hash, adds the name to the tenant's set and moves the
//! pointer. Redis runs one script at a time, so appends from any number of
//! processes get distinct, consecutive numbers. Nothing is ever half written:
//! - The script starts with a `#!lua` shebang, so Redis refuses it *before it
//!   runs* when it is over `maxmemory` (it has no `allow-oom` flag).
//! - Every check that could fail (a key of the wrong type, a corrupt pointer,
//!   an existing field) comes before the first write, and the writes
//!   themselves cannot fail.
//! - Redis records a script's effects in the AOF as one MULTI/EXEC block,
//!   which it replays whole, or drops when a crash cut the file inside it.
//!
//! The record's JSON is stored exactly as serde wrote it: the script never
//! decodes it (re-encoding with cjson would change how floats such as `0.1`
//! are written). Rust serialises the record with `version: 0`; the number is
//! the hash field's name, and a read sets `version` from it and checks the
//! tenant and name inside the JSON against the key.
//!
//! # Counters
//!
//! Counters are plain Redis integers, so other components may `INCRBY` them
//! too. [`Store::add_counters`] applies all deltas in one script
//! ([`ADD_COUNTERS_SCRIPT`]): it first checks that every counter holds an
//! integer that the delta cannot overflow, then runs the `INCRBY`s, so the
//! deltas are applied all together or not at all.
//!
//! [`scripts`]: super::scripts
//! [`RedisOptions::prefix`]: crate::RedisOptions::prefix
//! [`APPEND_SCRIPT`]: super::scripts::APPEND_SCRIPT
//! [`ADD_COUNTERS_SCRIPT`]: super::scripts::ADD_COUNTERS_SCRIPT
//! [`CREATE_ROLLOUT_SCRIPT`]: super::scripts::CREATE_ROLLOUT_SCRIPT
//! [`UPDATE_ROLLOUT_SCRIPT`]: super::scripts::UPDATE_ROLLOUT_SCRIPT
//! [`LEASE_SCRIPT`]: super::scripts::LEASE_SCRIPT

use async_trait::async_trait;

use super::connection::{segment, RedisStore, Retry};
use crate::aliases::AliasRecord;
use crate::clients::ClientRecord;
use crate::rollouts::RolloutRecord;
use crate::store::{FunctionSummary, Store, StoreError};
use contract::version::FunctionVersion;

/// The key layout (see the module docs).
impl RedisStore {
    fn function_key(&self, tenant: &str, name: &str, what: &str) -> String {
        format!(
            "{}{{{}}}:fn:{}:{what}",
            self.inner.options.prefix,
            segment(tenant),
            segment(name)
        )
    }

    fn index_key(&self, tenant: &str) -> String {
        format!(
            "{}{{{}}}:functions",
            self.inner.options.prefix,
            segment(tenant)
        )
    }

    fn client_key(&self, client_id: &str) -> String {
        format!("{}client:{client_id}", self.inner.options.prefix)
    }

    fn active_rollouts_key(&self) -> String {
        format!("{}rollouts:active", self.inner.options.prefix)
    }

    fn active_field(tenant: &str, function: &str, alias: &str) -> String {
        format!(
            "{}:{}:{}",
            segment(tenant),
            segment(function),
            segment(alias)
        )
    }

    /// The Redis key of quota counter `key`, for components that update
    /// counters themselves (they are plain integers).
    pub fn counter_key_of(&self, key: &str) -> String {
        format!("{}counter:{key}", self.inner.options.prefix)
    }

    /// One JSON record from a hash field, if present.
    async fn hget_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        field: &str,
    ) -> Result<Option<T>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg(field)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(corrupt))
            .transpose()
    }
}

/// Undoes [`segment`].
fn unsegment(segment: &str) -> String {
    segment
        .replace("%7D", "}")
        .replace("%7B", "{")
        .replace("%3A", ":")
        .replace("%25", "%")
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Decodes the stored JSON of `tenant`/`name` version `version`.
fn decode_version(
    bytes: &[u8],
    tenant: &str,
    name: &str,
    version: u32,
) -> Result<FunctionVersion, StoreError> {
    let mut record: FunctionVersion = serde_json::from_slice(bytes).map_err(corrupt)?;
    if record.tenant != tenant || record.name != name {
        return Err(StoreError::Corrupt(format!(
            "version {version} of {tenant}/{name} holds a record of {}/{}",
            record.tenant, record.name
        )));
    }
    record.version = version;
    Ok(record)
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("{key} holds {value:?}, not a number")))
}

#[async_trait]
impl Store for RedisStore {
    async fn append_version(
        &self,
        mut record: FunctionVersion,
    ) -> Result<FunctionVersion, StoreError> {
        record.version = 0;
        let json = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Backend(format!("encoding the version failed: {e}")))?;
        let keys = [
            self.function_key(&record.tenant, &record.name, "latest"),
            self.function_key(&record.tenant, &record.name, "versions"),
            self.index_key(&record.tenant),
        ];
        let version = self.append_versioned(&keys, &record.name, &json).await?;
        record.version = version;
        Ok(record)
    }

    async fn get_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<FunctionVersion>, StoreError> {
        let key = self.function_key(tenant, name, "versions");
        let bytes = self.versioned_record(&key, version).await?;
        bytes
            .map(|b| decode_version(&b, tenant, name, version))
            .transpose()
    }

    async fn latest_version(&self, tenant: &str, name: &str) -> Result<Option<u32>, StoreError> {
        self.latest_versioned(&self.function_key(tenant, name, "latest"))
            .await
    }

    async fn list_functions(&self, tenant: &str) -> Result<Vec<FunctionSummary>, StoreError> {
        let latest_key = |name: &str| self.function_key(tenant, name, "latest");
        self.list_versioned(&self.index_key(tenant), latest_key, "function")
            .await
    }

    async fn put_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(client)
            .map_err(|e| StoreError::Backend(format!("encoding the client failed: {e}")))?;
        let key = self.client_key(&client.client_id);
        let (key, json) = (&key, &json);
        self.call(Retry::Idempotent, |mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(json)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let key = self.client_key(client_id);
        let key = &key;
        let removed: u32 = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("DEL").arg(key).query_async(&mut c).await
            })
            .await?;
        Ok(removed > 0)
    }

    /// SCANs the client keys (an admin's occasional listing, not a hot path).
    async fn list_clients(&self, tenant: Option<&str>) -> Result<Vec<ClientRecord>, StoreError> {
        let pattern = format!("{}*", self.client_key(""));
        let pattern = &pattern;
        let keys: Vec<String> = self
            .call(Retry::Idempotent, |mut c| async move {
                let mut keys = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    keys.extend(batch);
                    if next == 0 {
                        return Ok(keys);
                    }
                    cursor = next;
                }
            })
            .await?;
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let values: Vec<Option<Vec<u8>>> = self
                .call(Retry::Idempotent, |mut c| async move {
                    redis::cmd("MGET").arg(chunk).query_async(&mut c).await
                })
                .await?;
            for bytes in values.into_iter().flatten() {
                let record: ClientRecord = serde_json::from_slice(&bytes).map_err(corrupt)?;
                if tenant.is_none_or(|t| t == record.tenant) {
                    out.push(record);
                }
            }
        }
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(out)
    }

    async fn get_client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let key = self.client_key(client_id);
        let key = &key;
        let bytes: Option<Vec<u8>> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        bytes
            .map(|b| serde_json::from_slice(&b).map_err(corrupt))
            .transpose()
    }

    async fn add_counters(&self, deltas: Vec<(String, u64)>) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::with_capacity(deltas.len());
        let mut amounts = Vec::with_capacity(deltas.len());
        for (key, delta) in &deltas {
            let delta = i64::try_from(*delta).map_err(|_| {
                StoreError::Backend(format!("counter delta {delta} for {key} is out of range"))
            })?;
            keys.push(self.counter_key_of(key));
            amounts.push(delta);
        }
        let (script, keys, amounts) = (&self.inner.add_counters, &keys, &amounts);
        self.call(Retry::Never, |mut c| async move {
            let mut invocation = script.prepare_invoke();
            invocation.key(&keys[..]).arg(&amounts[..]);
            invocation.invoke_async::<()>(&mut c).await
        })
        .await
    }

    async fn get_counter(&self, key: &str) -> Result<u64, StoreError> {
        let key = self.counter_key_of(key);
        let key_ref = &key;
        let value: Option<String> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("GET").arg(key_ref).query_async(&mut c).await
            })
            .await?;
        value.map_or(Ok(0), |v| parse_number(&key, &v))
    }
    async fn get_counters(&self, keys: &[String]) -> Result<Vec<u64>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys.iter().map(|k| self.counter_key_of(k)).collect();
        let full = &full;
        let values: Vec<Option<String>> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("MGET").arg(full).query_async(&mut c).await
            })
            .await?;
        full.iter()
            .zip(values)
            .map(|(key, v)| v.map_or(Ok(0), |v| parse_number(key, &v)))
            .collect()
    }

    async fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        let key = self.function_key(&alias.tenant, &alias.function, "aliases");
        let json = serde_json::to_vec(alias)
            .map_err(|e| StoreError::Backend(format!("encoding the alias failed: {e}")))?;
        let (key, field, json) = (&key, &alias.name, &json);
        self.call(Retry::Idempotent, |mut c| async move {
            redis::cmd("HSET")
                .arg(key)
                .arg(field)
                .arg(json)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    async fn get_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<Option<AliasRecord>, StoreError> {
        self.hget_json(&self.function_key(tenant, function, "aliases"), alias)
            .await
    }

    async fn delete_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<bool, StoreError> {
        let key = self.function_key(tenant, function, "aliases");
        let key = &key;
        let removed: u32 = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("HDEL")
                    .arg(key)
                    .arg(alias)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(removed > 0)
    }

    async fn list_aliases(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<AliasRecord>, StoreError> {
        let key = self.function_key(tenant, function, "aliases");
        let key = &key;
        let all: Vec<(String, Vec<u8>)> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut c).await
            })
            .await?;
        let mut out: Vec<AliasRecord> = all
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).map_err(corrupt))
            .collect::<Result<_, _>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create_rollout(&self, record: &RolloutRecord) -> Result<Option<String>, StoreError> {
        let json = serde_json::to_vec(record)
            .map_err(|e| StoreError::Backend(format!("encoding the rollout failed: {e}")))?;
        let keys = [
            self.active_rollouts_key(),
            self.function_key(&record.tenant, &record.function, "rollouts"),
        ];
        let field = Self::active_field(&record.tenant, &record.function, &record.alias);
        let (script, keys, field, id, json) =
            (&self.inner.create_rollout, &keys, &field, &record.id, &json);
        let existing: String = self
            .call(Retry::Never, |mut c| async move {
                let mut invocation = script.prepare_invoke();
                invocation.key(&keys[..]).arg(field).arg(id).arg(json);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok((!existing.is_empty()).then_some(existing))
    }

    async fn update_rollout(
        &self,
        record: &RolloutRecord,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        let mut next = record.clone();
        next.revision = record.revision + 1;
        next.updated_at_ms = crate::store::now_ms();
        let json = serde_json::to_vec(&next)
            .map_err(|e| StoreError::Backend(format!("encoding the rollout failed: {e}")))?;
        let keys = [
            self.active_rollouts_key(),
            self.function_key(&record.tenant, &record.function, "rollouts"),
        ];
        let field = Self::active_field(&record.tenant, &record.function, &record.alias);
        let active = if next.is_active() { "1" } else { "0" };
        let (script, keys, field, id, json, revision) = (
            &self.inner.update_rollout,
            &keys,
            &field,
            &record.id,
            &json,
            record.revision,
        );
        let written: u32 = self
            .call(Retry::Never, |mut c| async move {
                let mut invocation = script.prepare_invoke();
                invocation
                    .key(&keys[..])
                    .arg(field)
                    .arg(id)
                    .arg(revision)
                    .arg(json)
                    .arg(active);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok((written == 1).then_some(next))
    }

    async fn get_rollout(
        &self,
        tenant: &str,
        function: &str,
        id: &str,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        self.hget_json(&self.function_key(tenant, function, "rollouts"), id)
            .await
    }

    async fn list_rollouts(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        let key = self.function_key(tenant, function, "rollouts");
        let key = &key;
        let all: Vec<(String, Vec<u8>)> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut c).await
            })
            .await?;
        let mut out: Vec<RolloutRecord> = all
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).map_err(corrupt))
            .collect::<Result<_, _>>()?;
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    async fn active_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let key = self.active_rollouts_key();
        let key = &key;
        let all: Vec<(String, String)> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut c).await
            })
            .await?;
        let mut out = Vec::new();
        for (field, id) in all {
            let mut parts = field.split(':');
            let (Some(tenant), Some(function)) = (parts.next(), parts.next()) else {
                return Err(StoreError::Corrupt(format!(
                    "{key} has the field {field:?}"
                )));
            };
            let (tenant, function) = (unsegment(tenant), unsegment(function));
            if let Some(record) = self.get_rollout(&tenant, &function, &id).await? {
                out.push(record);
            }
        }
        Ok(out)
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let key = format!("{}lease:{name}", self.inner.options.prefix);
        let (script, key) = (&self.inner.lease, &key);
        let granted: u32 = self
            .call(Retry::Never, |mut c| async move {
                let mut invocation = script.prepare_invoke();
                invocation.key(key).arg(holder).arg(ttl_ms);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Ok(granted == 1)
    }
}

/// Versioned records (functions' versions, pipelines' versions) share one
/// layout: a hash `versions` (field `<n>` → JSON), a string `latest`, and the
/// tenant's index set of names; appends run the one append script.
impl RedisStore {
    /// Appends `json` as the next version of `name` under `[latest, versions,
    /// index]`; its number.
    pub(super) async fn append_versioned(
        &self,
        keys: &[String; 3],
        name: &str,
        json: &[u8],
    ) -> Result<u32, StoreError> {
        let script = &self.inner.append;
        self.call(Retry::Never, |mut c| async move {
            let mut invocation = script.prepare_invoke();
            invocation.key(&keys[..]).arg(name).arg(json);
            invocation.invoke_async(&mut c).await
        })
        .await
    }

    /// The stored JSON of version `version` in the hash `versions_key`.
    pub(super) async fn versioned_record(
        &self,
        versions_key: &str,
        version: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(Retry::Idempotent, |mut c| async move {
            redis::cmd("HGET")
                .arg(versions_key)
                .arg(version)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// The number in `latest_key`, if any.
    pub(super) async fn latest_versioned(
        &self,
        latest_key: &str,
    ) -> Result<Option<u32>, StoreError> {
        let value: Option<String> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("GET").arg(latest_key).query_async(&mut c).await
            })
            .await?;
        value.map(|v| parse_number(latest_key, &v)).transpose()
    }

    /// The names in `index` with their latest versions, by name; `what`
    /// names the kind in a corruption error.
    pub(super) async fn list_versioned(
        &self,
        index: &str,
        latest_key: impl Fn(&str) -> String,
        what: &str,
    ) -> Result<Vec<FunctionSummary>, StoreError> {
        let mut names: Vec<String> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("SMEMBERS").arg(index).query_async(&mut c).await
            })
            .await?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        names.sort();
        let keys: Vec<String> = names.iter().map(|n| latest_key(n)).collect();
        let keys_ref = &keys;
        let latest: Vec<Option<String>> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("MGET").arg(keys_ref).query_async(&mut c).await
            })
            .await?;
        names
            .into_iter()
            .zip(keys.iter().zip(latest))
            .map(|(name, (key, latest))| {
                let latest: u32 = match latest {
                    Some(v) => parse_number(key, &v)?,
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "{what} {name:?} is listed but {key} is missing"
                        )))
                    }
                };
                Ok(FunctionSummary {
                    name,
                    latest_version: latest,
                    versions: (1..=latest).collect(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_segments_cannot_collide() {
        assert_eq!(segment("digits"), "digits");
        assert_eq!(segment("a:b"), "a%3Ab");
        assert_eq!(segment("{x}%"), "%7Bx%7D%25");
        assert_ne!(
            format!("{}:{}", segment("a:b"), segment("c")),
            format!("{}:{}", segment("a"), segment("b:c"))
        );
    }
}
