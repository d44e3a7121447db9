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

use super::connection::{segment, RedisStore};
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
        let version = self.append_versioned(&keys, &record.name, &json).await?;
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
        let bytes = self.versioned_record(&key, version).await?;
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
        self.latest_versioned(&self.pipeline_key(tenant, name, "latest"))
            .await
    }

    async fn list_pipelines(&self, tenant: &str) -> Result<Vec<FunctionSummary>, StoreError> {
        let latest_key = |name: &str| self.pipeline_key(tenant, name, "latest");
        self.list_versioned(&self.pipeline_index_key(tenant), latest_key, "pipeline")
            .await
    }
}
