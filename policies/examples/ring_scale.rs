//! Scale on paper: the placement ring (`policies::ring::Ring`) with simulated
//! nodes and functions, printed as one JSON document on stdout.
//!
//! ```sh
//! cargo run --release -p taskmesh-policies --example ring_scale            # the full set
//! cargo run --release -p taskmesh-policies --example ring_scale -- --quick # 3, 10, 100 nodes
//! ```
//!
//! `benchmarks/cases/ring/case.py` runs it and folds the JSON into
//! `benchmarks/results/`; see `benchmarks/cases/ring/README.md`. It measures:
//!
//! - **balance**: how many of the functions each node owns (first candidate),
//!   as max ÷ average and min ÷ average, next to a plain `hash mod N`;
//! - **movement**: the fraction of functions whose owner changes when one node
//!   joins or leaves, next to the ideal (the newcomer's or the leaver's fair
//!   share) and to `hash mod N`, and whether any function moved between two
//!   nodes that stayed (consistent hashing promises none);
//! - **bounded load**: a skewed workload (Zipf-distributed calls over the
//!   functions) placed with `Ring::place` one call at a time, every call still
//!   in flight when the next one arrives, with `Bounds::default()` and with a
//!   huge ε (plain consistent hashing): calls in flight per node (max ÷
//!   average), and how many nodes the hottest function uses.
//!
//! Everything is deterministic (fixed keys, a seeded generator), so two runs
//! print the same placements; only the timings vary. Timings here are
//! indicative (wall clock around a loop); `policies/benches/hot_paths.rs` has
//! the criterion measurement of `Ring::place`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::hint::black_box;
use std::time::Instant;

use taskmesh_policies::ring::{Bounds, Member, Ring, DEFAULT_VNODES};

struct Options {
    nodes: Vec<usize>,
    functions: usize,
    /// Calls in flight per node on average in the bounded-load workload...
    calls_per_node: usize,
    /// ...and at least this many in all.
    min_calls: usize,
    zipf_s: f64,
    seed: u64,
    /// Node counts above this skip the bounded-load simulation.
    max_bounded_nodes: usize,
}

impl Options {
    fn parse() -> Options {
        let mut o = Options {
            nodes: vec![3, 10, 30, 100, 300, 1000],
            functions: 10_000,
            calls_per_node: 10,
            min_calls: 1_000,
            zipf_s: 1.0,
            seed: 6,
            max_bounded_nodes: usize::MAX,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let value = || {
                args.get(i + 1)
                    .unwrap_or_else(|| fail(&format!("{} needs a value", args[i])))
                    .clone()
            };
            match args[i].as_str() {
                "--quick" => {
                    o.nodes = vec![3, 10, 100];
                    i += 1;
                    continue;
                }
                "--nodes" => {
                    o.nodes = value()
                        .split(',')
                        .map(|n| n.trim().parse().unwrap_or_else(|_| fail("--nodes: a,b,c")))
                        .collect()
                }
                "--functions" => o.functions = number(&value()),
                "--calls-per-node" => o.calls_per_node = number(&value()),
                "--min-calls" => o.min_calls = number(&value()),
                "--zipf" => o.zipf_s = value().parse().unwrap_or_else(|_| fail("--zipf: a number")),
                "--seed" => o.seed = number(&value()) as u64,
                "--max-bounded-nodes" => o.max_bounded_nodes = number(&value()),
                "-h" | "--help" => {
                    println!(
                        "ring_scale [--quick] [--nodes 3,10,...] [--functions N] [--calls-per-node N] \
                         [--min-calls N] [--zipf S] [--seed N] [--max-bounded-nodes N]"
                    );
                    std::process::exit(0);
                }
                other => fail(&format!("unknown argument {other:?} (try --help)")),
            }
            i += 2;
        }
        if o.nodes.iter().any(|n| *n < 2) || o.functions == 0 {
            fail("every node count must be at least 2, and --functions at least 1");
        }
        o
    }
}

fn number(s: &str) -> usize {
    s.parse()
        .unwrap_or_else(|_| fail(&format!("{s:?} is not a number")))
}

fn fail(message: &str) -> ! {
    eprintln!("ring_scale: {message}");
    std::process::exit(2)
}

/// splitmix64: a small seeded generator, enough to sample a workload.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Function version keys as the router writes them: `tenant/name@version`.
fn function_keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("tenant-{}/fn-{i}@{}", i % 97, 1 + i % 3))
        .collect()
}

fn members(ids: &[String]) -> Vec<Member> {
    ids.iter()
        .map(|id| Member {
            id: id.clone(),
            gpu: false,
        })
        .collect()
}

fn node_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i}")).collect()
}

fn owners(ring: &Ring, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| ring.owner(k, false).expect("a non-empty ring").to_string())
        .collect()
}

fn hash64(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The peer: owner = ids[hash(key) mod N].
fn mod_n_owner(key: &str, n: usize) -> usize {
    (hash64(key) % n as u64) as usize
}

/// max ÷ average, min ÷ average and the coefficient of variation of per-node counts.
fn spread(counts: &[u64], total: u64) -> serde_json::Value {
    let n = counts.len() as f64;
    let avg = total as f64 / n;
    let max = *counts.iter().max().unwrap_or(&0) as f64;
    let min = *counts.iter().min().unwrap_or(&0) as f64;
    let var = counts
        .iter()
        .map(|c| (*c as f64 - avg).powi(2))
        .sum::<f64>()
        / n;
    serde_json::json!({
        "avg": avg,
        "max": max,
        "min": min,
        "max_over_avg": max / avg,
        "min_over_avg": min / avg,
        "cv": var.sqrt() / avg,
    })
}

fn balance(n: usize, keys: &[String]) -> serde_json::Value {
    let ids = node_ids(n);
    let t = Instant::now();
    let ring = Ring::new(members(&ids), DEFAULT_VNODES);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        index.insert(id, i);
    }
    let mut counts = vec![0u64; n];
    for k in keys {
        let owner = ring.owner(k, false).expect("owner");
        counts[index[owner]] += 1;
    }
    // Timed on a second pass, with the ring already in the cache.
    let t = Instant::now();
    for k in keys {
        black_box(ring.owner(black_box(k), false));
    }
    let owner_ns = t.elapsed().as_secs_f64() * 1e9 / keys.len() as f64;
    let mut mod_counts = vec![0u64; n];
    for k in keys {
        mod_counts[mod_n_owner(k, n)] += 1;
    }
    let total = keys.len() as u64;
    let ring_spread = spread(&counts, total);
    let mod_spread = spread(&mod_counts, total);
    // The node that owns the most keys: how much more than its fair share.
    serde_json::json!({
        "nodes": n,
        "vnodes_per_node": DEFAULT_VNODES,
        "functions": keys.len(),
        "ring": ring_spread,
        "mod_n": mod_spread,
        "ring_build_ms": build_ms,
        "owner_lookup_ns": owner_ns,
    })
}

fn movement(n: usize, keys: &[String]) -> serde_json::Value {
    let ids = node_ids(n);
    let before = owners(&Ring::new(members(&ids), DEFAULT_VNODES), keys);

    // Join: one more node.
    let mut joined = ids.clone();
    let newcomer = format!("node-{n}");
    joined.push(newcomer.clone());
    let after = owners(&Ring::new(members(&joined), DEFAULT_VNODES), keys);
    let (mut moved, mut between_old) = (0usize, 0usize);
    for (o, m) in before.iter().zip(&after) {
        if o != m {
            moved += 1;
            if *m != newcomer {
                between_old += 1;
            }
        }
    }
    let mod_moved_join = keys
        .iter()
        .filter(|k| mod_n_owner(k, n) != mod_n_owner(k, n + 1))
        .count();

    // Leave: one node (the middle one) goes.
    let leaver = ids[n / 2].clone();
    let left: Vec<String> = ids.iter().filter(|id| **id != leaver).cloned().collect();
    let after = owners(&Ring::new(members(&left), DEFAULT_VNODES), keys);
    let (mut moved_leave, mut not_leavers) = (0usize, 0usize);
    let leaver_owned = before.iter().filter(|o| **o == leaver).count();
    for (o, m) in before.iter().zip(&after) {
        if o != m {
            moved_leave += 1;
            if *o != leaver {
                not_leavers += 1;
            }
        }
    }
    // hash mod N on a leave: the ids after the leaver shift down by one slot.
    let mod_moved_leave = keys
        .iter()
        .filter(|k| {
            let old = mod_n_owner(k, n);
            let new = mod_n_owner(k, n - 1);
            let new_id = if new >= n / 2 { new + 1 } else { new };
            old != new_id
        })
        .count();

    let f = keys.len() as f64;
    serde_json::json!({
        "nodes": n,
        "join": {
            "moved": moved,
            "fraction": moved as f64 / f,
            "ideal": 1.0 / (n + 1) as f64,
            "moved_between_old_nodes": between_old,
            "mod_n_fraction": mod_moved_join as f64 / f,
        },
        "leave": {
            "moved": moved_leave,
            "fraction": moved_leave as f64 / f,
            "ideal": 1.0 / n as f64,
            "leaver_owned_fraction": leaver_owned as f64 / f,
            "moved_not_from_leaver": not_leavers,
            "mod_n_fraction": mod_moved_leave as f64 / f,
        },
    })
}

/// Zipf(s) call counts over `functions` ranks, as a cumulative distribution.
fn zipf_cdf(functions: usize, s: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(functions);
    let mut acc = 0.0;
    for r in 1..=functions {
        acc += 1.0 / (r as f64).powf(s);
        cdf.push(acc);
    }
    for c in cdf.iter_mut() {
        *c /= acc;
    }
    cdf
}

struct Placed {
    per_node: Vec<u64>,
    hottest_nodes: usize,
    off_owner: usize,
    place_us: f64,
}

fn place_all(
    ring: &Ring,
    ids: &[String],
    keys: &[String],
    calls: &[usize],
    bounds: Bounds,
) -> Placed {
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut per_node = vec![0u64; ids.len()];
    let mut hottest: HashSet<usize> = HashSet::new();
    let mut off_owner = 0;
    let t = Instant::now();
    for &f in calls {
        let key = &keys[f];
        let chosen = {
            let order = ring.place(key, false, bounds, |id| per_node[index[id]]);
            let chosen = index[order[0]];
            if order[0] != ring.owner(key, false).expect("owner") {
                off_owner += 1;
            }
            chosen
        };
        per_node[chosen] += 1;
        if f == 0 {
            hottest.insert(chosen);
        }
    }
    Placed {
        per_node,
        hottest_nodes: hottest.len(),
        off_owner,
        place_us: t.elapsed().as_secs_f64() * 1e6 / calls.len().max(1) as f64,
    }
}

fn bounded_load(n: usize, keys: &[String], cdf: &[f64], o: &Options) -> serde_json::Value {
    let ids = node_ids(n);
    let ring = Ring::new(members(&ids), DEFAULT_VNODES);
    let total = (o.calls_per_node * n).max(o.min_calls);
    let mut rng = Rng(o.seed ^ (n as u64).wrapping_mul(0x1000_0000_01B3));
    // Calls in arrival order; rank 0 (the hottest function) is keys[0].
    let calls: Vec<usize> = (0..total)
        .map(|_| {
            let u = rng.unit();
            cdf.partition_point(|c| *c <= u).min(cdf.len() - 1)
        })
        .collect();
    let hottest_calls = calls.iter().filter(|f| **f == 0).count();
    let distinct = calls.iter().collect::<HashSet<_>>().len();
    let default = Bounds::default();
    // A huge ε: the bound is never reached, so every call goes to its owner.
    let plain = Bounds {
        epsilon: 1e9,
        ..Bounds::default()
    };
    let mut out = serde_json::json!({
        "nodes": n,
        "calls_in_flight": total,
        "functions_called": distinct,
        "hottest_function_calls": hottest_calls,
        "hottest_function_share": hottest_calls as f64 / total as f64,
    });
    for (name, bounds) in [("bounded", default), ("plain", plain)] {
        let p = place_all(&ring, &ids, keys, &calls, bounds);
        let mut s = spread(&p.per_node, total as u64);
        s["epsilon"] = serde_json::json!(bounds.epsilon);
        s["floor"] = serde_json::json!(bounds.floor);
        s["final_bound"] = serde_json::json!(bounds.bound(total as u64 - 1, n).min(1 << 53));
        s["hottest_function_nodes"] = serde_json::json!(p.hottest_nodes);
        s["off_owner_fraction"] = serde_json::json!(p.off_owner as f64 / total as f64);
        s["place_us_per_call"] = serde_json::json!(p.place_us);
        out[name] = s;
    }
    out
}

fn main() {
    let o = Options::parse();
    let t0 = Instant::now();
    let keys = function_keys(o.functions);
    let cdf = zipf_cdf(o.functions, o.zipf_s);
    let mut bal = Vec::new();
    let mut mov = Vec::new();
    let mut bl = Vec::new();
    for &n in &o.nodes {
        let t = Instant::now();
        bal.push(balance(n, &keys));
        mov.push(movement(n, &keys));
        if n <= o.max_bounded_nodes {
            bl.push(bounded_load(n, &keys, &cdf, &o));
        }
        eprintln!(
            "ring_scale: {n} nodes done in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let doc = serde_json::json!({
        "vnodes_per_node": DEFAULT_VNODES,
        "functions": o.functions,
        "key_example": keys[0],
        "node_counts": o.nodes,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "workload": {
            "zipf_s": o.zipf_s,
            "calls_per_node": o.calls_per_node,
            "min_calls": o.min_calls,
            "seed": o.seed,
            "default_bounds": {"epsilon": Bounds::default().epsilon, "floor": Bounds::default().floor},
        },
        "balance": bal,
        "movement": mov,
        "bounded_load": bl,
        "elapsed_s": t0.elapsed().as_secs_f64(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("JSON of plain values")
    );
}
