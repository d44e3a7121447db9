//! Placement: consistent hashing of function versions over runtime nodes,
//! with bounded load.
//!
//! The ring is the `consistent_hash` crate's virtual-node ring. For a function
//! version it yields every node in a stable preference order (the
//! *candidates*); the first candidate owns the function, so its model stays
//! warm there. Adding or removing one of n nodes changes the owner of about
//! 1/n of the functions, and only to or from that node.
//!
//! Bounded load (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with
//! Bounded Loads", 2017): a call skips a candidate whose in-flight count has
//! reached the bound `ceil((1 + ε) × (total in flight + 1) / eligible nodes)`,
//! so a hot function spills over its next candidates as its load grows and
//! comes back to its owner as it cools. Skipped candidates are not dropped:
//! they come last, after every candidate under the bound, as the fallbacks
//! retries use.
//!
//! One departure from the paper: the bound is never below a floor (default
//! 4 calls). With the pure bound, a second concurrent call of an otherwise idle
//! cluster would already skip the owner and pay a cold start elsewhere; below
//! the floor a node is never considered overloaded, so light traffic stays on
//! the warm owner and spreading starts only when there is real load to spread.

use consistent_hash::{DefaultHash, Node, StaticHashRing};

/// Virtual nodes per real node: enough for a max/average balance within a few
/// percent at 10,000 functions (see `benchmarks/cases/ring`).
pub const DEFAULT_VNODES: usize = 160;

/// How far above the average in-flight count a node may go (ε and a floor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// ε of bounded load: a node may carry (1 + ε) × the average.
    pub epsilon: f64,
    /// Below this many calls in flight a node is never skipped.
    pub floor: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            epsilon: 0.25,
            floor: 4,
        }
    }
}

impl Bounds {
    /// The most calls a node may have in flight before the next call skips it:
    /// `max(floor, ceil((1 + ε) × (total + 1) / nodes))`, at least 1.
    pub fn bound(&self, total_in_flight: u64, nodes: usize) -> u64 {
        if nodes == 0 {
            return u64::MAX;
        }
        let epsilon = if self.epsilon.is_finite() && self.epsilon > 0.0 {
            self.epsilon
        } else {
            0.0
        };
        let average = (total_in_flight as f64 + 1.0) / nodes as f64;
        (((1.0 + epsilon) * average).ceil() as u64)
            .max(self.floor)
            .max(1)
    }
}

/// A runtime node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable identity of the node (its ring position depends only on this).
    pub id: String,
    /// Whether the node advertises a GPU.
    pub gpu: bool,
}

/// A placement ring over a fixed set of members; rebuilt when membership changes.
pub struct Ring {
    ring: StaticHashRing<'static, String, bool, DefaultHash>,
    gpu_nodes: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("nodes", &self.ring.nodes().len())
            .field("vnodes", &self.ring.len())
            .finish()
    }
}

impl Ring {
    /// Builds a ring with `vnodes` virtual nodes per member (duplicates ignored).
    pub fn new(members: impl IntoIterator<Item = Member>, vnodes: usize) -> Ring {
        let nodes = members
            .into_iter()
            .map(|m| Node::new(m.id).value(m.gpu).quantity(vnodes.max(1)));
        let ring = StaticHashRing::new(DefaultHash, nodes);
        let gpu_nodes = ring.nodes().iter().filter(|n| n.value).count();
        Ring { ring, gpu_nodes }
    }

    /// Nodes that may serve a function (every node, or the GPU nodes).
    pub fn eligible(&self, gpu: bool) -> usize {
        if gpu {
            self.gpu_nodes
        } else {
            self.ring.nodes().len()
        }
    }

    pub fn len(&self) -> usize {
        self.ring.nodes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.nodes().is_empty()
    }

    /// Every eligible node for `key` in preference order, owner first.
    pub fn candidates<'r>(&'r self, key: &str, gpu: bool) -> impl Iterator<Item = &'r str> + 'r {
        let key = key.to_string();
        // The ring hashes `&str` and `String` alike; computing it here keeps the
        // iterator independent of the caller's borrow.
        let hashed = self.ring.calc_candidates(&key);
        hashed
            .filter(move |node| !gpu || node.value)
            .map(|node| node.key.as_str())
    }

    /// The owner of `key`: the first eligible candidate.
    pub fn owner(&self, key: &str, gpu: bool) -> Option<&str> {
        self.candidates(key, gpu).next()
    }

    /// Candidates for one call under bounded load: those under the bound in
    /// ring order, then those at or over it (fallbacks), also in ring order.
    ///
    /// `in_flight(id)` is the node's current number of calls in flight.
    pub fn place<'r>(
        &'r self,
        key: &str,
        gpu: bool,
        bounds: Bounds,
        in_flight: impl Fn(&str) -> u64,
    ) -> Vec<&'r str> {
        let eligible: Vec<&str> = self.candidates(key, gpu).collect();
        if eligible.is_empty() {
            return eligible;
        }
        let loads: Vec<u64> = eligible.iter().map(|id| in_flight(id)).collect();
        let total: u64 = loads.iter().sum();
        let bound = bounds.bound(total, eligible.len());
        let (mut under, over): (Vec<_>, Vec<_>) = eligible
            .into_iter()
            .zip(loads)
            .partition(|(_, load)| *load < bound);
        under.extend(over);
        under.into_iter().map(|(id, _)| id).collect()
    }
}

impl Ring {
    /// The node one call goes to, under bounded load: the first candidate
    /// under the bound that `accept` takes (e.g. not tried yet, breaker
    /// closed), else the first candidate over the bound that it takes.
    ///
    /// The same choice as the first accepted entry of [`Ring::place`], without
    /// listing every candidate: the bound needs one pass over the nodes'
    /// loads, and the walk stops at the first fit, usually the owner. A caller
    /// that keeps a running total of calls in flight computes the bound in
    /// O(1) and calls [`Ring::pick_within`] instead.
    pub fn pick<'r>(
        &'r self,
        key: &str,
        gpu: bool,
        bounds: Bounds,
        in_flight: impl Fn(&str) -> u64,
        accept: impl FnMut(&str) -> bool,
    ) -> Option<&'r str> {
        let total: u64 = self
            .ring
            .nodes()
            .iter()
            .filter(|node| !gpu || node.value)
            .map(|node| in_flight(&node.key))
            .sum();
        let bound = bounds.bound(total, self.eligible(gpu));
        self.pick_within(key, gpu, bound, in_flight, accept)
    }

    /// [`Ring::pick`] with the bound given: `bounds.bound(total in flight on
    /// the eligible nodes, self.eligible(gpu))`.
    pub fn pick_within<'r>(
        &'r self,
        key: &str,
        gpu: bool,
        bound: u64,
        in_flight: impl Fn(&str) -> u64,
        mut accept: impl FnMut(&str) -> bool,
    ) -> Option<&'r str> {
        if self.eligible(gpu) == 0 {
            return None;
        }
        // `accept` is asked only about a candidate that is chosen if it
        // accepts, so it may take a resource (a breaker permit) when it does.
        let mut over = Vec::new();
        for id in self.candidates(key, gpu) {
            if in_flight(id) >= bound {
                over.push(id);
            } else if accept(id) {
                return Some(id);
            }
        }
        over.into_iter().find(|id| accept(id))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn members(ids: impl IntoIterator<Item = usize>) -> Vec<Member> {
        ids.into_iter()
            .map(|i| Member {
                id: format!("node-{i}"),
                gpu: false,
            })
            .collect()
    }

    fn functions(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("default/fn-{i}@1")).collect()
    }

    fn owners(ring: &Ring, keys: &[String]) -> Vec<String> {
        keys.iter()
            .map(|k| ring.owner(k, false).unwrap().to_string())
            .collect()
    }

    #[test]
    fn candidates_list_every_node_once_owner_first_and_stable() {
        let ring = Ring::new(members(0..5), DEFAULT_VNODES);
        let first: Vec<_> = ring.candidates("default/a@1", false).collect();
        assert_eq!(first.len(), 5);
        let mut unique = first.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 5);
        // The same members in another order make the same ring.
        let again = Ring::new(members((0..5).rev()), DEFAULT_VNODES);
        assert_eq!(
            first,
            again.candidates("default/a@1", false).collect::<Vec<_>>()
        );
        assert_eq!(ring.owner("default/a@1", false), Some(first[0]));
    }

    #[test]
    fn joining_moves_about_one_nth_and_only_to_the_new_node() {
        let keys = functions(10_000);
        for n in [3usize, 10, 50] {
            let before = Ring::new(members(0..n), DEFAULT_VNODES);
            let after = Ring::new(members(0..=n), DEFAULT_VNODES);
            let (old, new) = (owners(&before, &keys), owners(&after, &keys));
            let newcomer = format!("node-{n}");
            let mut moved = 0;
            for (o, m) in old.iter().zip(&new) {
                if o != m {
                    assert_eq!(m, &newcomer, "a function moved between old nodes");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (fraction - ideal).abs() < ideal * 0.35,
                "{n}+1 nodes: moved {fraction:.3}, ideal {ideal:.3}"
            );
        }
    }

    #[test]
    fn leaving_moves_only_the_leavers_functions() {
        let keys = functions(10_000);
        let before = Ring::new(members(0..8), DEFAULT_VNODES);
        let after = Ring::new(members((0..8).filter(|i| *i != 3)), DEFAULT_VNODES);
        for (o, m) in owners(&before, &keys).iter().zip(owners(&after, &keys)) {
            if o != "node-3" {
                assert_eq!(o, &m);
            }
        }
    }

    #[test]
    fn owners_are_balanced() {
        let keys = functions(10_000);
        for n in [3usize, 10, 100] {
            let ring = Ring::new(members(0..n), DEFAULT_VNODES);
            let mut counts: HashMap<String, usize> = HashMap::new();
            for o in owners(&ring, &keys) {
                *counts.entry(o).or_default() += 1;
            }
            assert_eq!(counts.len(), n);
            let max = *counts.values().max().unwrap() as f64;
            let ratio = max / (keys.len() as f64 / n as f64);
            assert!(ratio < 1.35, "{n} nodes: max/avg {ratio:.2}");
        }
    }

    #[test]
    fn pick_agrees_with_place_and_honours_accept() {
        let ring = Ring::new(members(0..7), DEFAULT_VNODES);
        let bounds = Bounds::default();
        let mut load: HashMap<String, u64> = HashMap::new();
        for (i, key) in functions(300).iter().enumerate() {
            let loads = |id: &str| load.get(id).copied().unwrap_or(0);
            let placed = ring.place(key, false, bounds, loads);
            let picked = ring.pick(key, false, bounds, loads, |_| true);
            assert_eq!(picked, placed.first().copied(), "{key}");
            // Refusing the first choice gives the next one in place's order.
            let first = placed[0];
            let second = ring.pick(key, false, bounds, loads, |id| id != first);
            assert_eq!(second, Some(placed[1]));
            *load.entry(picked.unwrap().to_string()).or_default() += (i % 3) as u64;
        }
        assert_eq!(
            ring.pick("default/x@1", false, bounds, |_| 0, |_| false),
            None
        );
        assert_eq!(
            ring.pick("default/x@1", true, bounds, |_| 0, |_| true),
            None
        );
    }

    #[test]
    fn gpu_functions_only_go_to_gpu_nodes() {
        let mut m = members(0..6);
        m[2].gpu = true;
        m[4].gpu = true;
        let ring = Ring::new(m, DEFAULT_VNODES);
        for key in functions(200) {
            let gpu: Vec<_> = ring.candidates(&key, true).collect();
            assert_eq!(gpu.len(), 2);
            assert!(gpu.iter().all(|id| *id == "node-2" || *id == "node-4"));
            assert_eq!(ring.candidates(&key, false).count(), 6);
        }
        let none = Ring::new(members(0..3), DEFAULT_VNODES);
        assert!(none
            .place("default/g@1", true, Bounds::default(), |_| 0)
            .is_empty());
    }

    #[test]
    fn bound_follows_the_formula() {
        let pure = |epsilon| Bounds { epsilon, floor: 0 };
        assert_eq!(pure(0.25).bound(0, 4), 1);
        assert_eq!(pure(0.25).bound(7, 4), 3); // 1.25 × 8 / 4 = 2.5 → 3
        assert_eq!(pure(0.0).bound(99, 4), 25);
        assert_eq!(pure(0.25).bound(5, 0), u64::MAX);
        assert_eq!(pure(f64::NAN).bound(3, 2), 2);
        assert_eq!(Bounds::default().bound(0, 4), 4);
        assert_eq!(Bounds::default().bound(99, 4), 32);
    }

    #[test]
    fn a_hot_function_spreads_over_its_next_candidates_and_shrinks_back() {
        let ring = Ring::new(members(0..4), DEFAULT_VNODES);
        let key = "default/hot@1";
        let order: Vec<String> = ring.candidates(key, false).map(str::to_string).collect();
        let bounds = Bounds::default();
        let place = |load: &HashMap<String, u64>| {
            ring.place(key, false, bounds, |id| load.get(id).copied().unwrap_or(0))[0].to_string()
        };
        let mut load: HashMap<String, u64> = HashMap::new();
        // Light traffic stays on the warm owner.
        for _ in 0..4 {
            let chosen = place(&load);
            assert_eq!(chosen, order[0]);
            *load.entry(chosen).or_default() += 1;
        }
        // 40 concurrent calls: the function spreads, within the bound.
        for _ in 4..40 {
            let chosen = place(&load);
            *load.entry(chosen).or_default() += 1;
        }
        let bound = bounds.bound(39, 4);
        assert!(load.values().all(|l| *l <= bound), "{load:?}");
        assert_eq!(load.len(), 4, "{load:?}");
        // Cooling down: as calls finish, new ones go back to the owner.
        let mut cooling: HashMap<String, u64> = HashMap::new();
        cooling.insert(order[1].clone(), 3);
        assert_eq!(place(&cooling), order[0]);
        // An owner far over the bound is the last resort, not dropped.
        let over = ring.place(key, false, bounds, |id| if id == order[0] { 50 } else { 0 });
        assert_eq!(over.len(), 4);
        assert_eq!(over.last().copied(), Some(order[0].as_str()));
        assert_eq!(over[0], order[1]);
    }
}
