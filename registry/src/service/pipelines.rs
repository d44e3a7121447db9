//! Pipelines in the registry (contract: pipelines): registration, with the
//! checks that need the tenant's functions, and lookup for the router.
//!
//! Versions are immutable and cached forever once read; the latest number is
//! re-read at most every [`LATEST_TTL`], as functions' are.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use contract::definition::{DefinitionError, Syntax};
use contract::pipeline::{self, PipelineVersion};
use contract::tensor::Violation;
use contract::ApiError;

use super::{definition_error, Registry, LATEST_TTL, MAX_CACHED_NAMES};
use crate::cache::ReadCache;
use crate::store::{now_ms, store_error, FunctionSummary};

/// What one process remembers of pipelines.
pub struct PipelineCache {
    versions: RwLock<HashMap<(String, String, u32), Arc<PipelineVersion>>>,
    latest: ReadCache<(String, String), Option<u32>>,
}

impl Default for PipelineCache {
    fn default() -> Self {
        PipelineCache {
            versions: RwLock::default(),
            latest: ReadCache::new(LATEST_TTL, MAX_CACHED_NAMES),
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("pipeline {name:?} not found"))
}

impl Registry {
    /// Registers a pipeline document as the next version of its name: it
    /// parses and passes [`pipeline::check`], and every step's function (and
    /// pinned version) exists in `tenant`; else 422 with pointers.
    pub async fn register_pipeline(
        &self,
        tenant: &str,
        bytes: &[u8],
        syntax: Syntax,
    ) -> Result<Arc<PipelineVersion>, ApiError> {
        let definition = pipeline::parse(bytes, syntax).map_err(definition_error)?;
        let mut violations = Vec::new();
        for (i, step) in definition.steps.iter().enumerate() {
            let at = format!("/steps/{i}");
            match self.require_function(tenant, &step.function).await {
                Ok(latest) => {
                    if let Some(v) = step.version.filter(|v| *v == 0 || *v > latest) {
                        violations.push(Violation::new(
                            format!("{at}/version"),
                            format!("function {:?} has no version {v}", step.function),
                        ));
                    }
                }
                Err(e) if e.code == contract::ErrorCode::NotFound => {
                    violations.push(Violation::new(
                        format!("{at}/function"),
                        format!("no function {:?} in this tenant", step.function),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        if !violations.is_empty() {
            return Err(definition_error(DefinitionError { violations }));
        }
        let record = PipelineVersion {
            tenant: tenant.to_string(),
            name: definition.name.clone(),
            version: 0,
            created_at_ms: now_ms(),
            definition,
            schemas: Default::default(),
        };
        let stored = self
            .store
            .append_pipeline(record)
            .await
            .map_err(store_error)?;
        let stored = Arc::new(stored);
        let key = (stored.tenant.clone(), stored.name.clone());
        self.pipelines.latest.insert(key, Some(stored.version));
        self.remember_pipeline(stored.clone());
        Ok(stored)
    }

    fn remember_pipeline(&self, record: Arc<PipelineVersion>) {
        let key = (record.tenant.clone(), record.name.clone(), record.version);
        let mut versions = self.pipelines.versions.write().expect("pipelines lock");
        if versions.len() >= MAX_CACHED_NAMES {
            versions.clear();
        }
        versions.insert(key, record);
    }

    /// A pipeline's version (`None`: the latest); another tenant's is 404.
    pub async fn pipeline(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<PipelineVersion>, ApiError> {
        if !contract::names::valid_name(name) {
            return Err(not_found(name));
        }
        let version = match version {
            Some(v) => v,
            None => self.latest_pipeline(tenant, name).await?,
        };
        let key = (tenant.to_string(), name.to_string(), version);
        if let Some(hit) = self
            .pipelines
            .versions
            .read()
            .expect("pipelines lock")
            .get(&key)
        {
            return Ok(hit.clone());
        }
        let found = self
            .store
            .get_pipeline(tenant, name, version)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::not_found(format!("pipeline {name:?} has no version {version}"))
            })?;
        let found = Arc::new(found);
        self.remember_pipeline(found.clone());
        Ok(found)
    }

    async fn latest_pipeline(&self, tenant: &str, name: &str) -> Result<u32, ApiError> {
        let key = (tenant.to_string(), name.to_string());
        match self.pipelines.latest.get(&key) {
            Some((Some(v), true)) => return Ok(v),
            Some((None, true)) => return Err(not_found(name)),
            _ => {}
        }
        let found = self
            .store
            .latest_pipeline(tenant, name)
            .await
            .map_err(store_error)?;
        self.pipelines.latest.insert(key, found);
        found.ok_or_else(|| not_found(name))
    }

    pub async fn list_pipelines(&self, tenant: &str) -> Result<Vec<FunctionSummary>, ApiError> {
        self.store.list_pipelines(tenant).await.map_err(store_error)
    }
}
