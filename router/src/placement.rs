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
//!
//! Independent layer: names nothing else in the crate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use contract::definition::PlacementPolicy;
use contract::FunctionVersion;
use policies::ring::{Bounds, Member, Ring, DEFAULT_VNODES};

/// How long a node that refused a connection stays out of the ring.
pub const EJECTION: Duration = Duration::from_secs(3);

/// What a function version is placed by on the ring: `tenant/name@version`.
pub fn placement_key(version: &FunctionVersion) -> String {
    format!("{}/{}@{}", version.tenant, version.name, version.version)
}

/// A member as membership reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub addr: SocketAddr,
    pub gpu: bool,
}

/// This router's calls in flight over all nodes, and over the GPU nodes: the
/// running totals behind the bounded-load bound, so choosing a node never
/// sums over the cluster. Calls still running on a node that has left (or
/// was ejected) count until they end, which raises the bound a little for
/// that long.
#[derive(Debug, Default)]
struct Totals {
    all: AtomicU64,
    gpu: AtomicU64,
}

impl Totals {
    fn of(&self, gpu: bool) -> &AtomicU64 {
        if gpu {
            &self.gpu
        } else {
            &self.all
        }
    }
}

/// A live node with this router's in-flight count on it.
#[derive(Debug)]
pub struct LiveNode {
    pub info: NodeInfo,
    in_flight: AtomicU64,
    totals: Arc<Totals>,
}

impl LiveNode {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one call on this node until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.totals.all.fetch_add(1, Ordering::Relaxed);
        if self.info.gpu {
            self.totals.gpu.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(self.clone())
    }
}

/// One call in flight on a node; dropping it ends the call.
#[derive(Debug)]
pub struct InFlight(Arc<LiveNode>);

impl InFlight {
    pub fn node(&self) -> &Arc<LiveNode> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let node = &self.0;
        node.in_flight.fetch_sub(1, Ordering::Relaxed);
        node.totals.all.fetch_sub(1, Ordering::Relaxed);
        if node.info.gpu {
            node.totals.gpu.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

struct Snapshot {
    ring: Ring,
    nodes: HashMap<String, Arc<LiveNode>>,
    /// When the first ejected node is due back (the hot path checks this
    /// without taking the members lock).
    readmit_at: Option<Instant>,
}

#[derive(Default)]
struct Members {
    /// Every member membership reported last, ejected or not.
    all: Vec<NodeInfo>,
    /// Node objects by id, kept across rebuilds so in-flight counts survive.
    known: HashMap<String, Arc<LiveNode>>,
    ejected: HashMap<String, Instant>,
}

/// The live nodes and their ring; cheap to read on every call.
pub struct NodeSet {
    snapshot: RwLock<Arc<Snapshot>>,
    members: Mutex<Members>,
    totals: Arc<Totals>,
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
                readmit_at: None,
            })),
            members: Mutex::new(Members::default()),
            totals: Arc::default(),
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

    /// Nodes in the membership, and of those the live ones (the rest are ejected).
    pub fn counts(&self) -> (usize, usize) {
        let members = self.members.lock().expect("members lock").all.len();
        (members, self.len())
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
    pub fn place(&self, key: &str, gpu: bool) -> Vec<Arc<LiveNode>> {
        let snapshot = self.current_readmitted();
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
    /// `policy` overrides this set's bounds field by field (a function's own).
    pub fn pick(
        &self,
        key: &str,
        gpu: bool,
        policy: Option<&PlacementPolicy>,
        mut accept: impl FnMut(&Arc<LiveNode>) -> bool,
    ) -> Option<Arc<LiveNode>> {
        let snapshot = self.current_readmitted();
        let load = |id: &str| snapshot.nodes.get(id).map_or(0, |n| n.in_flight());
        let total = self.totals.of(gpu).load(Ordering::Relaxed);
        let bounds = Bounds {
            epsilon: policy
                .and_then(|p| p.epsilon)
                .unwrap_or(self.bounds.epsilon),
            floor: policy.and_then(|p| p.floor).unwrap_or(self.bounds.floor),
        };
        let bound = bounds.bound(total, snapshot.ring.eligible(gpu));
        let id = snapshot.ring.pick_within(key, gpu, bound, load, |id| {
            snapshot.nodes.get(id).is_some_and(&mut accept)
        })?;
        snapshot.nodes.get(id).cloned()
    }

    /// The owner of `key` (first candidate regardless of load).
    pub fn owner(&self, key: &str, gpu: bool) -> Option<Arc<LiveNode>> {
        let snapshot = self.current();
        let id = snapshot.ring.owner(key, gpu)?;
        snapshot.nodes.get(id).cloned()
    }

    fn current(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    /// The current snapshot, rebuilt first when an ejected node is due back.
    fn current_readmitted(&self) -> Arc<Snapshot> {
        let snapshot = self.current();
        let now = Instant::now();
        if snapshot.readmit_at.is_none_or(|at| at > now) {
            return snapshot;
        }
        let mut members = self.members.lock().expect("members lock");
        if members.ejected.values().any(|until| *until <= now) {
            self.rebuild(&mut members, now);
        }
        drop(members);
        self.current()
    }

    fn rebuild(&self, members: &mut Members, now: Instant) {
        members.ejected.retain(|_, until| *until > now);
        let mut known = std::mem::take(&mut members.known);
        let mut nodes = HashMap::new();
        for info in &members.all {
            let node = match known.remove(&info.id) {
                Some(node) if node.info == *info => node,
                _ => Arc::new(LiveNode {
                    info: info.clone(),
                    in_flight: AtomicU64::new(0),
                    totals: self.totals.clone(),
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
        let readmit_at = members.ejected.values().min().copied();
        *self.snapshot.write().expect("snapshot lock") = Arc::new(Snapshot {
            ring,
            nodes,
            readmit_at,
        });
    }
}

/// This thread's number among the router's workers (from 1, in the order
/// they first ask).
pub fn thread_slot() -> u64 {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static SLOT: u64 = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
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
    fn running_totals_follow_calls_across_rebuilds_and_set_the_bound() {
        let set = NodeSet::new(Bounds {
            epsilon: 0.0,
            floor: 1,
        });
        set.update(vec![info(0), info(1), info(2)]);
        let total = |gpu| set.totals.of(gpu).load(Ordering::Relaxed);
        let owner = set.owner("t/f@1", false).unwrap();
        let gpu = set.owner("t/g@1", true).unwrap();
        let mut calls = vec![owner.begin(), owner.begin(), gpu.begin()];
        assert_eq!((total(false), total(true)), (3, 1));
        // The owner carries 2 of 3 calls; the bound is ceil(4 / 3) = 2, so
        // the next call goes to the next candidate.
        let picked = set.pick("t/f@1", false, None, |_| true).unwrap();
        assert_ne!(picked.info.id, owner.info.id);
        assert_eq!(
            picked.info.id,
            set.place("t/f@1", false)[0].info.id,
            "pick agrees with place"
        );
        // A node that leaves keeps counting until its calls end.
        set.update(vec![info(1), info(2)]);
        assert_eq!(total(false), 3);
        calls.clear();
        assert_eq!((total(false), total(true)), (0, 0));
        assert_eq!(
            set.pick("t/f@1", false, None, |_| true)
                .unwrap()
                .in_flight(),
            0
        );
    }

    #[test]
    fn a_function_policy_changes_how_soon_its_calls_spill() {
        let set = NodeSet::new(Bounds {
            epsilon: 0.0,
            floor: 1,
        });
        set.update(vec![info(0), info(1)]);
        let owner = set.owner("t/f@1", false).unwrap();
        let _calls = [owner.begin(), owner.begin(), owner.begin()];
        // The router's bounds: ceil(4 / 2) = 2 < 3 in flight: spill.
        let spilled = set.pick("t/f@1", false, None, |_| true).unwrap();
        assert_ne!(spilled.info.id, owner.info.id);
        // A function that spills less: ε = 1 makes the bound ceil(2 × 2) = 4.
        let patient = PlacementPolicy {
            epsilon: Some(1.0),
            floor: None,
        };
        let kept = set.pick("t/f@1", false, Some(&patient), |_| true).unwrap();
        assert_eq!(kept.info.id, owner.info.id);
        // Or a floor: below 8 in flight the owner is never skipped.
        let floor = PlacementPolicy {
            epsilon: None,
            floor: Some(8),
        };
        let kept = set.pick("t/f@1", false, Some(&floor), |_| true).unwrap();
        assert_eq!(kept.info.id, owner.info.id);
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
            let now = Instant::now();
            for until in members.ejected.values_mut() {
                *until = now;
            }
            // The snapshot learns when the node is due (as after an ejection).
            set.rebuild(&mut members, now - Duration::from_millis(1));
        }
        assert_eq!(set.len(), 2, "not readmitted before a call looks");
        assert_eq!(set.place("t/f@1", false)[0].info.id, owner.info.id);
        assert_eq!(set.len(), 3);
    }
}
