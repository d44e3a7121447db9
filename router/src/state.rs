//! The router's shared state: what every call's phase hooks work with.
//!
//! Third layer: names `guards`, `metrics`, `placement`, `cache` and `node_call`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use contract::ports::{Authenticator, Catalog, Counters, SharedLimits};
use contract::task::TaskStore;
use contract::{ClusterKey, FunctionVersion};
use policies::breaker::Permit;

use crate::cache::ResultCache;
use crate::guards::Guards;
use crate::metrics::{Metrics, MetricsSource};
use crate::placement::{placement_key, LiveNode, NodeSet};

/// The task queues a router serves and works (contract: tasks).
pub struct Tasks {
    pub store: Arc<dyn TaskStore>,
    /// Wakes this router's worker when a task was queued here.
    pub wake: tokio::sync::Notify,
    /// Completion webhooks.
    pub callbacks: Arc<crate::tasks::callback::Callbacks>,
}

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
    /// Tasks, when this router serves them.
    pub tasks: Option<Tasks>,
    /// The router's own calls of nodes (pipeline steps).
    pub node_client: crate::node_call::NodeClient,
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
            tasks: None,
            node_client: crate::node_call::node_client(),
        }
    }

    /// Placement: ring order under bounded load. A retry goes to the first
    /// candidate not tried yet (all tried: start over); a node whose breaker
    /// is open is passed over. Returns the node and its node-breaker permit.
    pub fn choose_node(
        &self,
        version: &FunctionVersion,
        tried: &[String],
    ) -> Option<(Arc<LiveNode>, Permit)> {
        let key = placement_key(version);
        let gpu = version.definition.resources.gpu;
        let mut permit = None;
        let guards = &self.guards;
        let mut take = |node: &Arc<LiveNode>, untried_only: bool| {
            if untried_only && tried.contains(&node.info.id) {
                return false;
            }
            permit = guards.acquire_node(node.info.addr);
            permit.is_some()
        };
        let policy = version.definition.placement.as_ref();
        self.nodes
            .pick(&key, gpu, policy, |n| take(n, true))
            .or_else(|| self.nodes.pick(&key, gpu, policy, |n| take(n, false)))
            .zip(permit)
    }
}
