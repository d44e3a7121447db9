//! The narrow storage interface of the registry: the [`Store`] trait, its
//! errors and their answers, and [`StoreCounters`] (the data plane's view of a
//! store's counters).
//!
//! Two backends implement it: [`embedded::EmbeddedStore`] (redb, one file, for
//! `taskmesh up`) and `crate::cluster::RedisStore` (Redis, for cluster mode).
//! This module depends on neither.

pub mod embedded;
mod group_commit;
pub mod tasks;

use std::sync::Arc;

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use contract::{ApiError, ErrorCode};

use crate::aliases::AliasRecord;
use crate::clients::ClientRecord;
use crate::rollouts::RolloutRecord;
use contract::pipeline::PipelineVersion;
use contract::version::FunctionVersion;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// A function's name and its versions, for listings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FunctionSummary {
    pub name: String,
    pub latest_version: u32,
    pub versions: Vec<u32>,
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The contract's answer to a store failure: an unreachable or failing
/// backend is 503 `unavailable` with `retry-after: 1` (the caller may try
/// again shortly); a corrupt record is a 500 `internal`. Both are logged.
pub fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Backend(message) => {
            tracing::error!(%message, "registry store unavailable");
            ApiError::new(ErrorCode::Unavailable, "the registry store is unavailable")
                .with_retry_after(1)
        }
        StoreError::Corrupt(_) => internal(err.to_string()),
    }
}

fn internal(message: String) -> ApiError {
    tracing::error!(%message, "registry internal error");
    ApiError::new(ErrorCode::Internal, "internal registry error")
}

/// Pipelines' versions (contract: pipelines), kept like functions': numbered
/// 1, 2, 3, … per (tenant, name), immutable.
#[async_trait]
pub trait PipelineStore: Send + Sync + 'static {
    /// Stores `record` as the next version of its pipeline and returns it
    /// with the version number set. Atomic, as [`Store::append_version`].
    async fn append_pipeline(&self, record: PipelineVersion)
        -> Result<PipelineVersion, StoreError>;

    async fn get_pipeline(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<PipelineVersion>, StoreError>;

    async fn latest_pipeline(&self, tenant: &str, name: &str) -> Result<Option<u32>, StoreError>;

    async fn list_pipelines(&self, tenant: &str) -> Result<Vec<FunctionSummary>, StoreError>;
}

/// What the registry needs from a storage backend; implemented by the embedded
/// store ([`embedded`]) and by Redis in cluster mode.
#[async_trait]
pub trait Store: PipelineStore {
    /// Stores `record` as the next version of its function and returns it with
    /// the version number set. Atomic: concurrent appends get distinct numbers.
    async fn append_version(&self, record: FunctionVersion) -> Result<FunctionVersion, StoreError>;

    async fn get_version(
        &self,
        tenant: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<FunctionVersion>, StoreError>;

    async fn latest_version(&self, tenant: &str, name: &str) -> Result<Option<u32>, StoreError>;

    async fn list_functions(&self, tenant: &str) -> Result<Vec<FunctionSummary>, StoreError>;

    async fn put_client(&self, client: &ClientRecord) -> Result<(), StoreError>;

    async fn get_client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError>;

    /// Removes a client (its key stops working); whether it existed.
    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError>;

    /// Every client (of `tenant` only, when given), by id.
    async fn list_clients(&self, tenant: Option<&str>) -> Result<Vec<ClientRecord>, StoreError>;

    /// Adds each delta to its counter in one transaction.
    async fn add_counters(&self, deltas: Vec<(String, u64)>) -> Result<(), StoreError>;

    async fn get_counter(&self, key: &str) -> Result<u64, StoreError>;

    /// Reads many counters at once (0 for a missing one), in the order given.
    async fn get_counters(&self, keys: &[String]) -> Result<Vec<u64>, StoreError>;

    /// Creates or replaces an alias.
    async fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError>;

    async fn get_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<Option<AliasRecord>, StoreError>;

    /// Removes an alias; false when there was none.
    async fn delete_alias(
        &self,
        tenant: &str,
        function: &str,
        alias: &str,
    ) -> Result<bool, StoreError>;

    /// A function's aliases, by name.
    async fn list_aliases(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<AliasRecord>, StoreError>;

    /// Stores a new (active) rollout unless its alias already has an active
    /// one, atomically; returns the id of that one instead.
    async fn create_rollout(&self, record: &RolloutRecord) -> Result<Option<String>, StoreError>;

    /// Replaces a rollout if the stored one still has `record.revision`,
    /// storing it with the revision bumped (returned); `None` when another
    /// write came first. A record that is no longer active frees its alias.
    async fn update_rollout(
        &self,
        record: &RolloutRecord,
    ) -> Result<Option<RolloutRecord>, StoreError>;

    async fn get_rollout(
        &self,
        tenant: &str,
        function: &str,
        id: &str,
    ) -> Result<Option<RolloutRecord>, StoreError>;

    /// A function's rollouts, oldest first.
    async fn list_rollouts(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<RolloutRecord>, StoreError>;

    /// Every active rollout of every tenant (for the driver).
    async fn active_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;

    /// Takes or renews the lease `name` for `holder` for `ttl_ms`; false while
    /// another holder's lease is unexpired.
    async fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError>;
}

/// A store's counters as the data plane sees them (quotas, rollout statistics).
pub struct StoreCounters(pub Arc<dyn Store>);

#[async_trait]
impl contract::ports::Counters for StoreCounters {
    async fn get_counter(&self, key: &str) -> Result<u64, String> {
        self.0.get_counter(key).await.map_err(|e| e.to_string())
    }

    async fn add_counters(&self, deltas: Vec<(String, u64)>) -> Result<(), String> {
        self.0.add_counters(deltas).await.map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unavailable_store_is_503_with_retry_after_and_corruption_is_500() {
        let err = store_error(StoreError::Backend("connection refused".into()));
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert_eq!(err.status(), 503);
        assert_eq!(err.retry_after_s, Some(1));
        assert!(!err.message.contains("refused"), "{}", err.message);
        let err = store_error(StoreError::Corrupt("bad json".into()));
        assert_eq!(err.code, ErrorCode::Internal);
        assert_eq!(err.status(), 500);
        assert_eq!(err.retry_after_s, None);
    }
}
