//! Pipelines in the embedded store: one redb table keyed like functions'
//! versions, `(tenant, name, version)` → JSON of a [`PipelineVersion`].

use async_trait::async_trait;
use contract::pipeline::PipelineVersion;
use redb::{ReadableDatabase, TableDefinition};

use super::{backend, latest_in, EmbeddedStore};
use crate::store::{FunctionSummary, PipelineStore, StoreError};

pub(super) const PIPELINES: TableDefinition<(&str, &str, u32), &[u8]> =
    TableDefinition::new("pipelines_v1");

fn decode(bytes: &[u8]) -> Result<PipelineVersion, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl PipelineStore for EmbeddedStore {
    async fn append_pipeline(
        &self,
        mut record: PipelineVersion,
    ) -> Result<PipelineVersion, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(PIPELINES).map_err(backend)?;
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

    async fn get_pipeline(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<PipelineVersion>, StoreError> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(PIPELINES).map_err(backend)?;
            let found = table
                .get((tenant.as_str(), name.as_str(), version))
                .map_err(backend)?;
            found.map(|g| decode(g.value())).transpose()
        })
        .await
    }

    async fn latest_pipeline(&self, tenant: &str, name: &str) -> Result<Option<u32>, StoreError> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(PIPELINES).map_err(backend)?;
            latest_in(&table, &tenant, &name)
        })
        .await
    }

    async fn list_pipelines(&self, tenant: &str) -> Result<Vec<FunctionSummary>, StoreError> {
        let tenant = tenant.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(PIPELINES).map_err(backend)?;
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
}
