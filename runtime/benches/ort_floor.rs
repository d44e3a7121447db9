//! The Rust floor of a call: one ONNX Runtime run of the digits example
//! through `ort`, the way a node runs it (`runtime::session::run`: tensors in,
//! typed tensors out), with no HTTP, JSON or queue around it. The node's own
//! overhead is its direct p50 minus this (benchmarks/cases/micro folds it in).

use contract::tensor::{Tensor, TensorData};
use criterion::{criterion_group, criterion_main, Criterion};
use taskmesh_runtime::session::{self, SessionOptions};

fn digits_input() -> Vec<(String, Tensor)> {
    let pixels: Vec<f32> = (0..64).map(|i| (i % 17) as f32).collect();
    vec![(
        "float_input".to_string(),
        Tensor {
            shape: vec![1, 64],
            data: TensorData::Float32(pixels),
        },
    )]
}

fn ort_floor(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = std::fs::read(root.join("examples/digits/model.onnx"))
        .expect("examples/digits/model.onnx (scripts/setup.sh makes it)");
    let mut session =
        session::build_session(&model, SessionOptions::default()).expect("digits loads");
    let mut group = c.benchmark_group("ort_floor");
    group.bench_function("digits_run", |b| {
        b.iter(|| session::run(&mut session, digits_input()).expect("digits runs"))
    });
    group.finish();
}

criterion_group!(benches, ort_floor);
criterion_main!(benches);
