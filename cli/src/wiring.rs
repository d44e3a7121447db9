//! How the roles are plugged together: the registry implements the ports
//! (`contract::ports`) that the node and the router are given.

use std::sync::Arc;

use registry::{Auth, Registry, Store, StoreCounters};
use runtime::engine::Sources;

/// What a node reads: versions, model bytes and artifacts, all from the registry.
pub fn node_sources(registry: &Arc<Registry>) -> Sources {
    Sources {
        catalog: registry.clone(),
        models: Arc::new(registry.models().clone()),
        artifacts: Arc::new(registry.artifacts().clone()),
    }
}

/// The router's view of the registry, the keys and the counters.
pub fn router_deps(
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    store: Arc<dyn Store>,
    nodes: Arc<router::placement::NodeSet>,
    cluster_key: contract::ClusterKey,
) -> router::RouterDeps {
    router::RouterDeps {
        catalog: registry,
        auth,
        counters: Arc::new(StoreCounters(store)),
        nodes,
        extra_metrics: None,
        limits: None,
        cluster_key,
        tasks: None,
    }
}
