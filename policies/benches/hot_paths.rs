//! Micro-benchmarks of the per-call decision code on the router's hot path.
//!
//! Run with `cargo bench -p taskmesh-policies` (add `-- --quick` for a few
//! seconds). `benchmarks/run.sh` runs this and folds the medians into
//! `benchmarks/results/summary.md`; see `benchmarks/cases/micro/README.md`.
//!
//! Every input is built once outside the timed closure, and every result goes
//! through `black_box`, so the numbers are the cost of the call itself.

use std::hint::black_box;
use std::time::{Duration, Instant};

use contract::json::parse_body;
use contract::tensor::{tensor_from_json, DType};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::{json, Value};
use taskmesh_policies::breaker::{BreakerConfig, CircuitBreaker, Outcome};
use taskmesh_policies::ratelimit::{KeyedLimiter, RateLimitConfig};
use taskmesh_policies::ring::{Bounds, Member, Ring, DEFAULT_VNODES};

/// Same depth limit as the router and node (`contract::limits`).
const MAX_DEPTH: usize = 32;

/// The digits sample (`examples/digits/sample.json`): 64 floats.
const DIGITS_BODY: &str = r#"{"pixels":[0.0,0.0,11.0,16.0,15.0,3.0,0.0,0.0,0.0,5.0,16.0,12.0,11.0,13.0,0.0,0.0,0.0,3.0,13.0,1.0,5.0,15.0,0.0,0.0,0.0,0.0,0.0,0.0,12.0,11.0,0.0,0.0,0.0,0.0,0.0,1.0,16.0,7.0,0.0,0.0,0.0,0.0,0.0,10.0,15.0,0.0,0.0,0.0,0.0,0.0,12.0,16.0,16.0,11.0,1.0,0.0,0.0,0.0,13.0,13.0,8.0,13.0,16.0,8.0]}"#;

/// A 28×28 image (784 floats, MNIST-sized), written as JSON the way a client
/// would send it: pixel values in [0, 1] with a few decimals.
fn mnist_body() -> String {
    let pixels: Vec<String> = (0..784)
        .map(|i| format!("{:.4}", ((i * 37) % 256) as f64 / 255.0))
        .collect();
    format!("{{\"pixels\":[{}]}}", pixels.join(","))
}

fn json_to_tensor(c: &mut Criterion) {
    let mut group = c.benchmark_group("tensor_from_json");
    let digits: Value = serde_json::from_str(DIGITS_BODY).unwrap();
    let mnist: Value = serde_json::from_str(&mnist_body()).unwrap();
    for (name, value, shape) in [
        ("flat_64_f32", &digits["pixels"], vec![1i64, 64]),
        ("flat_784_f32", &mnist["pixels"], vec![1i64, 784]),
    ] {
        let n = shape.iter().product::<i64>() as u64;
        group.throughput(Throughput::Elements(n));
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    tensor_from_json(black_box(value), DType::Float32, &shape, "/pixels").unwrap(),
                )
            })
        });
    }
    group.finish();
}

fn json_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_body");
    let mnist = mnist_body();
    // A hostile body: a million '[' is refused by the linear pre-scan.
    let hostile = vec![b'['; 1_000_000];
    for (name, bytes) in [
        ("digits_64", DIGITS_BODY.as_bytes()),
        ("mnist_784", mnist.as_bytes()),
    ] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| black_box(parse_body(black_box(bytes), MAX_DEPTH).unwrap()))
        });
    }
    // Refused after 33 bytes, so no throughput: the point is that it is cheap.
    group.throughput(Throughput::Elements(1));
    group.bench_function("hostile_1M_brackets_refused", |b| {
        b.iter(|| black_box(parse_body(black_box(&hostile), MAX_DEPTH).unwrap_err()))
    });
    group.finish();
}

fn schema_check(c: &mut Criterion) {
    // The digits input_schema (examples/digits/function.json), compiled with the
    // same options as contract/src/schema.rs `compile`.
    let schema = json!({
        "type": "object",
        "required": ["pixels"],
        "properties": {
            "pixels": {"type": "array", "minItems": 64, "maxItems": 64,
                       "items": {"type": "number", "minimum": 0, "maximum": 16}}
        }
    });
    let validator = jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(1 << 20)
                .dfa_size_limit(1 << 20),
        )
        .build(&schema)
        .unwrap();
    let digits: Value = serde_json::from_str(DIGITS_BODY).unwrap();
    let mut group = c.benchmark_group("input_schema");
    group.bench_function("digits_valid", |b| {
        b.iter(|| black_box(validator.is_valid(black_box(&digits))))
    });
    group.finish();
}

fn rate_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_check");
    // Generous enough that every check is allowed (the steady state of a
    // well-behaved client).
    let config = RateLimitConfig::try_new(1e6, Some(1_000_000)).unwrap();
    let limiter: KeyedLimiter<(u64, u64)> = KeyedLimiter::new(&config);
    let key = (7u64, 42u64);
    group.bench_function("one_key_allowed", |b| {
        b.iter(|| black_box(limiter.check(black_box(&key))))
    });
    // Many keys: each check hits a different bucket of the keyed store.
    let many: KeyedLimiter<(u64, u64)> = KeyedLimiter::new(&config);
    let keys: Vec<(u64, u64)> = (0..10_000).map(|i| (i, i % 16)).collect();
    let mut i = 0usize;
    group.bench_function("10k_keys_round_robin", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(many.check(black_box(&keys[i])))
        })
    });
    // A limited key: the refusal path, with its retry-after computation.
    let tight = RateLimitConfig::try_new(1.0, Some(1)).unwrap();
    let limited: KeyedLimiter<(u64, u64)> = KeyedLimiter::new(&tight);
    limited.check(&key);
    group.bench_function("one_key_limited", |b| {
        b.iter(|| black_box(limited.check(black_box(&key))))
    });
    group.finish();
}

fn breaker(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");
    let config =
        BreakerConfig::try_new(0.5, 20, Duration::from_secs(10), Duration::from_secs(5), 3)
            .unwrap();
    let mut closed = CircuitBreaker::new(config);
    group.bench_function("acquire_record_success", |b| {
        b.iter(|| {
            let now = Instant::now();
            let permit = closed.try_acquire(black_box(now)).unwrap();
            closed.record(permit, Outcome::Success, now);
        })
    });
    // An open breaker refuses without touching the window.
    group.bench_function("acquire_rejected_open", |b| {
        b.iter_batched_ref(
            || {
                let mut br = CircuitBreaker::new(config);
                let now = Instant::now();
                for _ in 0..20 {
                    let p = br.try_acquire(now).unwrap();
                    br.record(p, Outcome::Failure, now);
                }
                br
            },
            |br| black_box(br.try_acquire(Instant::now()).unwrap_err()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn ring_place(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_place");
    // 1,000 function versions, keyed as the router keys them; each iteration
    // places the next one, so no single key's path through the ring is cached.
    let keys: Vec<String> = (0..1000)
        .map(|i| format!("tenant-{}/fn-{i}@1", i % 7))
        .collect();
    for nodes in [10usize, 100] {
        let ids: Vec<String> = (0..nodes).map(|i| format!("node-{i}")).collect();
        let ring = Ring::new(
            ids.iter().map(|id| Member {
                id: id.clone(),
                gpu: false,
            }),
            DEFAULT_VNODES,
        );
        // In-flight counts looked up by node id, as the router does (a map of
        // its live nodes): a busy cluster with 6 calls per node on average
        // and every fourth node at the bound, so some calls skip their owner.
        let load: std::collections::HashMap<String, u64> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), if i % 4 == 0 { 9 } else { 5 }))
            .collect();
        let bounds = Bounds::default();
        let mut i = 0usize;
        group.bench_function(format!("place_{nodes}_nodes"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(ring.place(black_box(&keys[i]), false, bounds, |id| {
                    load.get(id).copied().unwrap_or(0)
                }))
            })
        });
        // What the router does per attempt: the first fit under the bound,
        // without listing every candidate.
        let mut k = 0usize;
        group.bench_function(format!("pick_{nodes}_nodes"), |b| {
            b.iter(|| {
                k = (k + 1) % keys.len();
                black_box(ring.pick(
                    black_box(&keys[k]),
                    false,
                    bounds,
                    |id| load.get(id).copied().unwrap_or(0),
                    |_| true,
                ))
            })
        });
        // What the router does since it keeps a running total of its calls
        // in flight: the bound in O(1), then the same walk.
        let total: u64 = load.values().sum();
        let mut w = 0usize;
        group.bench_function(format!("pick_within_{nodes}_nodes"), |b| {
            b.iter(|| {
                w = (w + 1) % keys.len();
                let bound = bounds.bound(black_box(total), ring.eligible(false));
                black_box(ring.pick_within(
                    black_box(&keys[w]),
                    false,
                    bound,
                    |id| load.get(id).copied().unwrap_or(0),
                    |_| true,
                ))
            })
        });
        // The owner alone (no load): the first candidate only.
        let mut j = 0usize;
        group.bench_function(format!("owner_{nodes}_nodes"), |b| {
            b.iter(|| {
                j = (j + 1) % keys.len();
                black_box(ring.owner(black_box(&keys[j]), false))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    json_to_tensor,
    json_parse,
    schema_check,
    rate_limit,
    breaker,
    ring_place
);
criterion_main!(benches);
