//! The router's view of the runtime nodes: the live members, their placement
//! ring, the calls this router has in flight on each, and passive ejection.
//!
//! Membership comes from outside (Redis in cluster mode, a fixed list in
//! single-process mode) through [`NodeSet::update`]. A node that refuses a
//! connection is ejected at once for [`EJECTION`], without waiting for its
//! heartbeat to expire; it returns on its own when the ejection ends and it is
//! still a member.
//!
//! Load is this router's own in-flight count per node: exact and current, with
//! no round trip. With several routers each balances its own share of the
//! traffic, which keeps the sum balanced within the same bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use policies::ring::{Bounds, Member, Ring, DEFAULT_VNODES};

/// How long a node that refused a connection stays out of the ring.
pub const EJECTION: Duration = Duration::from_secs(3);

/// A member as membership reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub addr: SocketAddr,
    pub gpu: bool,
}

/// A live node with this router's in-flight count on it.
#[derive(Debug)]
pub struct Node {
    pub info: NodeInfo,
    in_flight: AtomicU64,
}

impl Node {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one call on this node until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One call in flight on a node; dropping it ends the call.
#[derive(Debug)]
pub struct InFlight(Arc<Node>);

impl InFlight {
    pub fn node(&self) -> &Arc<Node> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Snapshot {
    ring: Ring,
    nodes: HashMap<String, Arc<Node>>,
}

#[derive(Default)]
struct Members {
    /// Every member membership reported last, ejected or not.
    all: Vec<NodeInfo>,
    /// Node objects by id, kept across rebuilds so in-flight counts survive.
    known: HashMap<String, Arc<Node>>,
    ejected: HashMap<String, Instant>,
}

/// The live nodes and their ring; cheap to read on every call.
pub struct NodeSet {
    snapshot: RwLock<Arc<Snapshot>>,
    members: Mutex<Members>,
    bounds: Bounds,
    vnodes: usize,
}

impl std::fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSet")
            .field("live", &self.len())
            .field("bounds", &self.bounds)
            .finish()
    }
}

impl NodeSet {
    pub fn new(bounds: Bounds) -> Self {
        NodeSet {
            snapshot: RwLock::new(Arc::new(Snapshot {
                ring: Ring::new(Vec::new(), DEFAULT_VNODES),
                nodes: HashMap::new(),
            })),
            members: Mutex::new(Members::default()),
            bounds,
            vnodes: DEFAULT_VNODES,
        }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Live (not ejected) nodes.
    pub fn len(&self) -> usize {
        self.current().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live node ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.current().nodes.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Replaces the membership; rebuilds the ring only when it changed.
    pub fn update(&self, mut all: Vec<NodeInfo>) {
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all.dedup_by(|a, b| a.id == b.id);
        let mut members = self.members.lock().expect("members lock");
        if members.all == all {
            return;
        }
        members.all = all;
        self.rebuild(&mut members, Instant::now());
    }

    /// Takes a node out of the ring for [`EJECTION`] (it refused a connection).
    pub fn eject(&self, id: &str) {
        let mut members = self.members.lock().expect("members lock");
        let now = Instant::now();
        members.ejected.insert(id.to_string(), now + EJECTION);
        self.rebuild(&mut members, now);
        tracing::warn!(
            node = id,
            seconds = EJECTION.as_secs(),
            "node refused a connection; ejected"
        );
    }

    /// Candidates for one call of `key`, preferred first (see [`Ring::place`]).
    pub fn place(&self, key: &str, gpu: bool) -> Vec<Arc<Node>> {
        self.readmit_expired();
        let snapshot = self.current();
        snapshot
            .ring
            .place(key, gpu, self.bounds, |id| {
                snapshot.nodes.get(id).map_or(0, |n| n.in_flight())
            })
            .into_iter()
            .filter_map(|id| snapshot.nodes.get(id).cloned())
            .collect()
    }

    /// The node for one call of `key` under bounded load: the first candidate
    /// under the bound that `accept` takes, else the first over it that it
    /// takes (see [`Ring::pick`]); `accept` may take a resource when it says yes.
    pub fn pick(
        &self,
        key: &str,
        gpu: bool,
        mut accept: impl FnMut(&Arc<Node>) -> bool,
    ) -> Option<Arc<Node>> {
        self.readmit_expired();
        let snapshot = self.current();
        let load = |id: &str| snapshot.nodes.get(id).map_or(0, |n| n.in_flight());
        let id = snapshot.ring.pick(key, gpu, self.bounds, load, |id| {
            snapshot.nodes.get(id).is_some_and(&mut accept)
        })?;
        snapshot.nodes.get(id).cloned()
    }

    /// The owner of `key` (first candidate regardless of load).
    pub fn owner(&self, key: &str, gpu: bool) -> Option<Arc<Node>> {
        let snapshot = self.current();
        let id = snapshot.ring.owner(key, gpu)?;
        snapshot.nodes.get(id).cloned()
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    fn readmit_expired(&self) {
        let now = Instant::now();
        let mut members = self.members.lock().expect("members lock");
        if members.ejected.values().any(|until| *until <= now) {
            self.rebuild(&mut members, now);
        }
    }

    fn rebuild(&self, members: &mut Members, now: Instant) {
        members.ejected.retain(|_, until| *until > now);
        let mut known = std::mem::take(&mut members.known);
        let mut nodes = HashMap::new();
        for info in &members.all {
            let node = match known.remove(&info.id) {
                Some(node) if node.info == *info => node,
                _ => Arc::new(Node {
                    info: info.clone(),
                    in_flight: AtomicU64::new(0),
                }),
            };
            members.known.insert(info.id.clone(), node.clone());
            if !members.ejected.contains_key(&info.id) {
                nodes.insert(info.id.clone(), node);
            }
        }
        let ring = Ring::new(
            nodes.values().map(|n| Member {
                id: n.info.id.clone(),
                gpu: n.info.gpu,
            }),
            self.vnodes,
        );
        *self.snapshot.write().expect("snapshot lock") = Arc::new(Snapshot { ring, nodes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(i: u16) -> NodeInfo {
        NodeInfo {
            id: format!("n{i}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
            gpu: i == 2,
        }
    }

    #[test]
    fn updates_rebuild_the_ring_and_keep_in_flight_counts() {
        let set = NodeSet::new(Bounds::default());
        assert!(set.place("t/f@1", false).is_empty());
        set.update(vec![info(0), info(1)]);
        assert_eq!(set.ids(), ["n0", "n1"]);
        let owner = set.place("t/f@1", false)[0].clone();
        let call = owner.begin();
        set.update(vec![info(1), info(0), info(2)]);
        assert_eq!(set.len(), 3);
        let same = set
            .place("t/f@1", false)
            .into_iter()
            .find(|n| n.info.id == owner.info.id)
            .unwrap();
        assert_eq!(same.in_flight(), 1);
        drop(call);
        assert_eq!(same.in_flight(), 0);
        assert_eq!(set.place("t/g@1", true).len(), 1, "only n2 has a GPU");
    }

    #[test]
    fn ejected_nodes_leave_at_once_and_return_after_the_ejection() {
        let set = NodeSet::new(Bounds::default());
        set.update(vec![info(0), info(1), info(3)]);
        let owner = set.owner("t/f@1", false).unwrap();
        set.eject(&owner.info.id);
        assert_eq!(set.len(), 2);
        assert!(set
            .place("t/f@1", false)
            .iter()
            .all(|n| n.info.id != owner.info.id));
        // Membership updates do not bring it back early.
        set.update(vec![info(3), info(1), info(0)]);
        assert_eq!(set.len(), 2);
        {
            let mut members = set.members.lock().unwrap();
            for until in members.ejected.values_mut() {
                *until = Instant::now();
            }
        }
        assert_eq!(set.place("t/f@1", false)[0].info.id, owner.info.id);
        assert_eq!(set.len(), 3);
    }
}
