//! What the data plane asks of the control plane, as traits.
//!
//! The router and the node never name a store: they are given these traits,
//! and the registry implements them (over the embedded store in `taskmesh up`,
//! over Redis in cluster mode). So the data plane's dependency tree has no
//! storage engine, and a new backend is one more implementation.

use std::sync::Arc;

use async_trait::async_trait;

use crate::definition::TextSpec;
use crate::{ApiError, FunctionVersion, ModelSignature, Principal, Qualifier};
use policies::ratelimit::RateLimitConfig;

/// Resolves names to immutable function versions within a tenant.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// The version `qualifier` names; another tenant's function is 404.
    async fn resolve(
        &self,
        tenant: &str,
        name: &str,
        qualifier: &Qualifier,
    ) -> Result<Arc<FunctionVersion>, ApiError>;

    /// Like [`Catalog::resolve`], but an alias picks its version by
    /// `routing_key`; returns the alias used, if any.
    async fn resolve_routed(
        &self,
        tenant: &str,
        name: &str,
        qualifier: &Qualifier,
        routing_key: &str,
    ) -> Result<(Arc<FunctionVersion>, Option<String>), ApiError>;

    /// Every version number of a function, ascending (empty when unknown).
    async fn versions(&self, tenant: &str, name: &str) -> Result<Vec<u32>, ApiError>;

    /// A pipeline's version (`None`: the latest); another tenant's is 404.
    async fn pipeline(
        &self,
        tenant: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<Arc<crate::pipeline::PipelineVersion>, ApiError>;
}

/// Checks API keys.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The caller of an `authorization` header value (401 when absent or wrong).
    async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError>;
}

/// Durable counters (quotas, rollout statistics) that several processes add to.
#[async_trait]
pub trait Counters: Send + Sync + 'static {
    async fn get_counter(&self, key: &str) -> Result<u64, String>;
    async fn add_counters(&self, deltas: Vec<(String, u64)>) -> Result<(), String>;
}

/// Content-addressed bytes (models, tokenizers) by the hex of their sha256.
#[async_trait]
pub trait Blobs: Send + Sync + 'static {
    /// The bytes, checked against their digest.
    async fn get(&self, hex: &str) -> std::io::Result<Vec<u8>>;
    /// The size in bytes when the blob is already local.
    fn size_of(&self, hex: &str) -> Option<u64>;
}

/// Tokens taken from a cluster-wide rate limit's bucket at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrant {
    /// Tokens granted (0 to the number asked for).
    pub granted: u32,
    /// Calls that could still follow at once, cluster-wide.
    pub remaining: u32,
    /// Granted: until the bucket is full again; none granted: until one may be.
    pub wait: std::time::Duration,
    /// Routers that took tokens in the last 10 s (this one included): a router
    /// that loses the shared limits enforces 1/`routers` of each limit alone.
    pub routers: u32,
}

/// Units of a quota reserved at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaGrant {
    /// This many calls (at least 1) are counted in every window.
    Granted(u64),
    /// The window at this index is used up.
    Exhausted(usize),
}

/// Limits shared by every router of a cluster (cluster mode: Redis). Routers
/// take tokens and quota units in small leases, ahead of need, so that a call
/// rarely waits for the store; when it fails, a router enforces its share of
/// each limit alone.
#[async_trait]
pub trait SharedLimits: Send + Sync + 'static {
    /// Takes up to `want` tokens (1 ≤ `want` ≤ burst) of the GCRA bucket `key`.
    async fn take_tokens(
        &self,
        key: &str,
        config: &RateLimitConfig,
        want: u32,
    ) -> Result<TokenGrant, String>;

    /// Counts up to `want` calls in every window `(counter key, limit, ttl_s)`,
    /// as many as every window still has room for.
    async fn reserve_quota(
        &self,
        windows: &[(String, u64, u64)],
        want: u64,
    ) -> Result<QuotaGrant, String>;

    /// Gives back `unused` reserved calls to each of the counters `keys`.
    async fn release_quota(&self, keys: &[String], unused: u64) -> Result<(), String>;
}

/// Reads what uploaded bytes are, for registration; the runtime implements it
/// over ONNX Runtime and the tokenizers library, so the registry links neither.
pub trait ModelInspector: Send + Sync + 'static {
    /// Loads `bytes` as a model; `Err` says why it is not a usable model.
    fn inspect(&self, bytes: &[u8]) -> Result<ModelSignature, String>;

    /// Loads `bytes` as a tokenizer.json configured as `text` declares;
    /// `Err` says why it cannot serve that text input.
    fn check_tokenizer(&self, bytes: &[u8], text: &TextSpec) -> Result<(), String>;
}
