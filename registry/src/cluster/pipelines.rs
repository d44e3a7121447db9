//! Pipelines in Redis, kept as functions' versions are (`store.rs`):
//!
//! | key                                 | type    | holds                                |
//! |-------------------------------------|---------|--------------------------------------|
//! | `tm:{<tenant>}:pl:<name>:versions`  | hash    | field `<n>` → JSON of version `n`    |
//! | `tm:{<tenant>}:pl:<name>:latest`    | string  | the latest version number            |
//! | `tm:{<tenant>}:pipelines`           | set     | the names of the tenant's pipelines  |
//!
//! Appends run the functions' append script on these keys, so concurrent
//! registrations get distinct, consecutive numbers and nothing is half written.

use async_trait::async_trait;
use contract::pipeline::PipelineVersion;

use super::connection::{segment, RedisStore, Retry};
use crate::store::{FunctionSummary, PipelineStore, StoreError};

impl RedisStore {
    fn pipeline_key(&self, tenant: &str, name: &str, what: &str) -> String {
        format!(
            "{}{{{}}}:pl:{}:{what}",
            self.inner.options.prefix,
            segment(tenant),
            segment(name)
        )
    }

    fn pipeline_index_key(&self, tenant: &str) -> String {
        format!(
            "{}{{{}}}:pipelines",
            self.inner.options.prefix,
            segment(tenant)
        )
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn number(key: &str, value: &str) -> Result<u32, StoreError> {
    value
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("{key} holds {value:?}, not a number")))
}

#[async_trait]
impl PipelineStore for RedisStore {
    async fn append_pipeline(
        &self,
        mut record: PipelineVersion,
    ) -> Result<PipelineVersion, StoreError> {
        record.version = 0;
        let json = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Backend(format!("encoding the pipeline failed: {e}")))?;
        let keys = [
            self.pipeline_key(&record.tenant, &record.name, "latest"),
            self.pipeline_key(&record.tenant, &record.name, "versions"),
            self.pipeline_index_key(&record.tenant),
        ];
        let (script, keys, name, json) = (&self.inner.append, &keys, &record.name, &json);
        let version: u32 = self
            .call(Retry::Never, |mut c| async move {
                let mut invocation = script.prepare_invoke();
                invocation.key(&keys[..]).arg(name).arg(json);
                invocation.invoke_async(&mut c).await
            })
            .await?;
        record.version = version;
        Ok(record)
    }

    async fn get_pipeline(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<PipelineVersion>, StoreError> {
        let key = self.pipeline_key(tenant, name, "versions");
        let key = &key;
        let bytes: Option<Vec<u8>> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg(version)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let mut record: PipelineVersion = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if record.tenant != tenant || record.name != name {
            return Err(corrupt(format!(
                "pipeline version {version} of {tenant}/{name} holds a record of {}/{}",
                record.tenant, record.name
            )));
        }
        record.version = version;
        Ok(Some(record))
    }

    async fn latest_pipeline(&self, tenant: &str, name: &str) -> Result<Option<u32>, StoreError> {
        let key = self.pipeline_key(tenant, name, "latest");
        let key_ref = &key;
        let value: Option<String> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("GET").arg(key_ref).query_async(&mut c).await
            })
            .await?;
        value.map(|v| number(&key, &v)).transpose()
    }

    async fn list_pipelines(&self, tenant: &str) -> Result<Vec<FunctionSummary>, StoreError> {
        let index = self.pipeline_index_key(tenant);
        let index = &index;
        let mut names: Vec<String> = self
            .call(Retry::Idempotent, |mut c| async move {
                redis::cmd("SMEMBERS").arg(index).query_async(&mut c).await
            })
            .await?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some(latest) = self.latest_pipeline(tenant, &name).await? else {
                return Err(corrupt(format!(
                    "pipeline {name:?} is listed but has no latest version"
                )));
            };
            out.push(FunctionSummary {
                name,
                latest_version: latest,
                versions: (1..=latest).collect(),
            });
        }
        Ok(out)
    }
}
