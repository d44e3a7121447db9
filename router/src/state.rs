//! The router's shared state: what every call's phase hooks work with.
//!
//! Third layer: names `guards`, `metrics`, `placement` and `cache`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use contract::ports::{Authenticator, Catalog, Counters, SharedLimits};
use contract::ClusterKey;

use crate::cache::ResultCache;
use crate::guards::Guards;
use crate::metrics::{Metrics, MetricsSource};
use crate::placement::NodeSet;

/// Shared state of the router.
pub struct RouterState {
    pub extra_metrics: Option<MetricsSource>,
    pub catalog: Arc<dyn Catalog>,
    pub auth: Arc<dyn Authenticator>,
    pub guards: Guards,
    pub nodes: Arc<NodeSet>,
    pub metrics: Metrics,
    /// Sent to nodes with every call: the proof that it comes from inside the cluster.
    pub cluster_key: ClusterKey,
    /// Set when a graceful stop begins: `/readyz` turns 503 so balancers move on.
    pub draining: AtomicBool,
    /// Results of versions that declare `cache`.
    pub cache: ResultCache,
    /// Each worker thread keeps its own upstream connections to a node (set
    /// with Pingora's no-steal runtime, where a task stays on its thread).
    pub per_thread_upstreams: bool,
}

impl RouterState {
    pub fn new(
        catalog: Arc<dyn Catalog>,
        auth: Arc<dyn Authenticator>,
        counters: Arc<dyn Counters>,
        nodes: Arc<NodeSet>,
        shared: Option<Arc<dyn SharedLimits>>,
        cluster_key: ClusterKey,
    ) -> Self {
        RouterState {
            extra_metrics: None,
            catalog,
            auth,
            guards: Guards::new(counters, shared),
            nodes,
            metrics: Metrics::new(),
            cluster_key,
            draining: AtomicBool::new(false),
            cache: ResultCache::default(),
            per_thread_upstreams: false,
        }
    }
}
