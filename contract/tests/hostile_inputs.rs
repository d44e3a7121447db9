//! Property tests of everything that parses untrusted input: request bodies,
//! tensors, definitions (JSON and YAML), OIP requests, model bytes, header
//! values, query strings and keys. Each must answer (Ok or a contract error)
//! for any input: never panic, never recurse without bound.
//!
//! proptest runs on stable Rust (coverage-guided fuzzers such as cargo-fuzz
//! need a nightly toolchain, which these machines cannot install).

use proptest::prelude::*;
use serde_json::{json, Value};
use taskmesh_contract::definition::{parse, Syntax};
use taskmesh_contract::headers::Priority;
use taskmesh_contract::json::parse_body;
use taskmesh_contract::limits::MAX_JSON_DEPTH;
use taskmesh_contract::tensor::{tensor_from_json, DType};
use taskmesh_contract::version::bind;
use taskmesh_contract::{
    onnx, protocol, ClusterKey, FunctionVersion, ModelSignature, ModelType, Qualifier, TensorInfo,
};

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_/~]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(DType::ALL)
}

fn info(name: &str, dtype: DType, shape: &[i64]) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        dtype: ModelType::Supported(dtype),
        shape: Some(shape.to_vec()),
    }
}

/// A version with one float input [-1, 4] and one int64 input [-1], as the
/// registry would store it.
fn version() -> FunctionVersion {
    let definition = parse(
        &serde_json::to_vec(&json!({
            "name": "f",
            "model": format!("sha256:{}", "0".repeat(64)),
            "inputs": {"x": {"tensor": "x"}, "n": {"tensor": "n"}},
            "outputs": {"y": {"tensor": "y"}},
        }))
        .unwrap(),
        Syntax::Json,
    )
    .unwrap();
    let signature = ModelSignature {
        inputs: vec![
            info("x", DType::Float32, &[-1, 4]),
            info("n", DType::Int64, &[-1]),
        ],
        outputs: vec![info("y", DType::Float32, &[-1, 1])],
    };
    let (inputs, outputs) = bind(&definition, &signature).unwrap();
    FunctionVersion {
        tenant: "default".into(),
        name: "f".into(),
        version: 1,
        created_at_ms: 0,
        definition,
        signature,
        inputs,
        outputs,
        model_size_bytes: 0,
        schemas: Default::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_body_bytes_parse_or_get_a_client_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(err) = parse_body(&bytes, MAX_JSON_DEPTH) {
            prop_assert!(err.code.is_client_fault(), "{err}");
        }
    }

    #[test]
    fn any_json_text_parses_within_the_depth_guard(value in json_value()) {
        let text = serde_json::to_vec(&value).unwrap();
        prop_assert!(parse_body(&text, MAX_JSON_DEPTH).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing(depth in 33usize..200_000, open in prop::bool::ANY) {
        let (l, r) = if open { ("[", "]") } else { ("{\"a\":", "}") };
        let text = format!("{}1{}", l.repeat(depth), r.repeat(depth));
        let err = parse_body(text.as_bytes(), MAX_JSON_DEPTH).unwrap_err();
        prop_assert!(err.code.is_client_fault());
    }

    #[test]
    fn any_json_maps_onto_a_tensor_or_names_what_is_wrong(
        value in json_value(),
        dtype in dtype(),
        shape in prop::collection::vec(prop_oneof![Just(-1i64), 0i64..5], 0..4),
    ) {
        match tensor_from_json(&value, dtype, &shape, "/x") {
            Ok(tensor) => {
                prop_assert_eq!(tensor.shape.len(), shape.len());
                for (got, declared) in tensor.shape.iter().zip(&shape) {
                    prop_assert!(*declared < 0 || *got as i64 == *declared);
                }
                prop_assert_eq!(tensor.data.len(), tensor.shape.iter().product::<usize>());
            }
            Err(violations) => {
                prop_assert!(!violations.is_empty());
                prop_assert!(violations.iter().all(|v| v.pointer.starts_with("/x")));
            }
        }
    }

    #[test]
    fn any_definition_document_parses_or_gets_pointed_violations(
        value in json_value(),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        for syntax in [Syntax::Json, Syntax::Yaml] {
            let _ = parse(&serde_json::to_vec(&value).unwrap(), syntax);
            if let Err(err) = parse(&bytes, syntax) {
                prop_assert!(!err.violations.is_empty());
            }
        }
    }

    #[test]
    fn any_invoke_or_oip_body_is_mapped_or_refused_as_the_callers_fault(body in json_value()) {
        let version = version();
        for result in [
            protocol::invoke_inputs(&version, &body).map(drop),
            taskmesh_contract::oip::infer_request(&version, &body, &[]).map(drop),
        ] {
            if let Err(err) = result {
                prop_assert!(err.code.is_client_fault(), "{err}");
            }
        }
    }

    #[test]
    fn any_binary_infer_body_is_mapped_or_refused_as_the_callers_fault(
        body in prop::collection::vec(any::<u8>(), 0..512),
        split in 0usize..600,
    ) {
        let version = version();
        let header = split.to_string();
        if let Err(err) = taskmesh_contract::oip::parse_infer(&version, &body, Some(&header)) {
            prop_assert!(err.code.is_client_fault(), "{err}");
        }
    }

    #[test]
    fn any_model_bytes_are_judged_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = onnx::check_self_contained(&bytes);
    }

    #[test]
    fn any_header_query_or_key_text_is_judged(text in ".{0,300}") {
        let _ = Priority::from_header(Some(&text));
        let _ = Qualifier::from_query(Some(&text));
        let _ = Qualifier::from_path(&text);
        if let Ok(key) = ClusterKey::parse(&text) {
            prop_assert!(key.matches(text.trim().as_bytes()));
        }
    }
}
