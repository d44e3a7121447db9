//! The runtime against real ONNX Runtime: signatures and runs of generated models.

use std::path::Path;

use contract::tensor::{tensor_from_parts, DType};
use contract::{ModelInspector, ModelType};
use serde_json::Value;
use taskmesh_runtime::session::{build_session, run, SessionOptions};
use taskmesh_runtime::OrtInspector;

fn generated(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}): run scripts/setup.sh first",
            path.display()
        )
    })
}

#[test]
fn signatures_report_types_and_dynamic_dimensions() {
    let sig = OrtInspector
        .inspect(&generated("examples/tensors/model.onnx"))
        .unwrap();
    let input = |n: &str| sig.inputs.iter().find(|t| t.name == n).unwrap().clone();
    assert_eq!(input("a").dtype, ModelType::Supported(DType::Float64));
    assert_eq!(input("a").shape, Some(vec![-1, 3]));
    assert_eq!(input("b").dtype, ModelType::Supported(DType::Int32));
    assert_eq!(input("c").dtype, ModelType::Supported(DType::Int64));
    assert_eq!(input("d").dtype, ModelType::Supported(DType::Bool));
    let esum = sig.outputs.iter().find(|t| t.name == "esum").unwrap();
    assert_eq!(esum.shape, Some(vec![]));
}

#[test]
fn junk_bytes_are_not_a_model() {
    let err = OrtInspector
        .inspect(b"definitely not protobuf")
        .unwrap_err();
    assert!(!err.is_empty());
}

#[test]
fn runs_match_onnxruntime_in_python() {
    let reference: Value =
        serde_json::from_slice(&generated("examples/tensors/reference.json")).unwrap();
    let bytes = generated("examples/tensors/model.onnx");
    let mut session = build_session(&bytes, SessionOptions::default()).unwrap();
    let dtypes = [
        ("a", DType::Float64),
        ("b", DType::Int32),
        ("c", DType::Int64),
        ("d", DType::Bool),
        ("e", DType::Float32),
    ];
    for case in reference["cases"].as_array().unwrap() {
        let inputs = dtypes
            .iter()
            .map(|(name, dtype)| {
                let t = &case["input"][name];
                let shape: Vec<i64> = t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect();
                let declared: Vec<i64> = vec![-1; shape.len()];
                (
                    name.to_string(),
                    tensor_from_parts(&shape, &t["data"], *dtype, &declared, "/").unwrap(),
                )
            })
            .collect();
        let outputs = run(&mut session, inputs).unwrap();
        for (name, want) in case["outputs"].as_object().unwrap() {
            let got = &outputs[name];
            let shape: Vec<usize> = want["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(got.shape, shape, "{name}");
            assert_eq!(got.data.to_flat_json(), want["data"], "{name}");
        }
    }
}

#[test]
fn a_run_with_a_wrong_shape_fails_with_a_reason() {
    let bytes = generated("examples/tensors/model.onnx");
    let mut session = build_session(&bytes, SessionOptions::default()).unwrap();
    let t = tensor_from_parts(
        &[4],
        &serde_json::json!([1, 2, 3, 4]),
        DType::Int32,
        &[-1],
        "/",
    )
    .unwrap();
    let err = run(&mut session, vec![("b".to_string(), t)]).unwrap_err();
    assert!(!err.is_empty());
}

#[test]
fn a_model_with_external_data_never_reaches_onnx_runtime() {
    // It names `.taskmesh/admin.key`, the operator key of `taskmesh up`.
    let exfil = generated("tests/models/exfil/model.onnx");
    let err = OrtInspector.inspect(&exfil).unwrap_err();
    assert!(err.contains("external data"), "{err}");
    let err = build_session(&exfil, SessionOptions::default()).unwrap_err();
    assert!(err.contains(".taskmesh/admin.key"), "{err}");
}
