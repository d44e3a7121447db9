//! The Open Inference Protocol's wire forms: the binary tensor data extension
//! in both directions, parameters honoured or refused by name, and metadata
//! that says exactly what infer accepts.

use serde_json::{json, Value};
use taskmesh_contract::definition::{parse, Syntax};
use taskmesh_contract::oip::{self, OipRequest};
use taskmesh_contract::protocol::TensorOutputs;
use taskmesh_contract::tensor::{DType, Tensor, TensorData};
use taskmesh_contract::version::bind;
use taskmesh_contract::{FunctionVersion, ModelSignature, ModelType, TensorInfo};

fn info(name: &str, dtype: DType, shape: &[i64]) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        dtype: ModelType::Supported(dtype),
        shape: Some(shape.to_vec()),
    }
}

/// x: FP32 [1, 2] (the model says [-1, 2]); s: BYTES [-1]; outputs y, t.
fn version() -> FunctionVersion {
    let definition = parse(
        &serde_json::to_vec(&json!({
            "name": "f",
            "model": format!("sha256:{}", "0".repeat(64)),
            "inputs": {
                "x": {"tensor": "x", "dtype": "float32", "shape": [1, 2]},
                "s": {"tensor": "s", "dtype": "string", "shape": [-1]},
            },
            "outputs": {"y": {"tensor": "y"}, "t": {"tensor": "t"}},
        }))
        .unwrap(),
        Syntax::Json,
    )
    .unwrap();
    let signature = ModelSignature {
        inputs: vec![
            info("x", DType::Float32, &[-1, 2]),
            info("s", DType::String, &[-1]),
        ],
        outputs: vec![
            info("y", DType::UInt8, &[-1]),
            info("t", DType::String, &[-1]),
        ],
    };
    let (inputs, outputs) = bind(&definition, &signature).unwrap();
    FunctionVersion {
        tenant: "default".into(),
        name: "f".into(),
        version: 3,
        created_at_ms: 0,
        definition,
        signature,
        inputs,
        outputs,
        model_size_bytes: 0,
        schemas: Default::default(),
    }
}

fn binary_body(head: &Value, raw: &[u8]) -> (Vec<u8>, String) {
    let mut body = serde_json::to_vec(head).unwrap();
    let length = body.len().to_string();
    body.extend_from_slice(raw);
    (body, length)
}

#[test]
fn binary_inputs_are_read_in_order_after_the_json_header() {
    let v = version();
    let mut raw: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    raw.extend_from_slice(&[2, 0, 0, 0, b'h', b'i']);
    let (body, length) = binary_body(
        &json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
            {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
        ], "parameters": {"binary_data_output": true}}),
        &raw,
    );
    let request = oip::parse_infer(&v, &body, Some(&length)).unwrap();
    assert_eq!(
        request.inputs[0].1.data,
        TensorData::Float32(vec![1.5, -2.0])
    );
    assert_eq!(
        request.inputs[1].1.data,
        TensorData::String(vec!["hi".into()])
    );
    assert!(request.binary_default);

    // Without the header, the same body is not JSON.
    assert!(oip::parse_infer(&v, &body, None).is_err());
    // Bytes left over, or too few, are the caller's fault, located.
    let (long, length) = binary_body(
        &json!({"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
            {"name": "s", "datatype": "BYTES", "shape": [0], "data": []},
        ]}),
        &raw,
    );
    let err = oip::parse_infer(&v, &long, Some(&length)).unwrap_err();
    assert!(err.message.contains("left after"), "{err}");
    let err =
        oip::parse_infer(&v, &body[..body.len() - 1], Some(&body.len().to_string())).unwrap_err();
    assert_eq!(err.code.as_str(), "bad_request", "{err}");
}

#[test]
fn unknown_parameters_are_refused_by_name_never_ignored() {
    let v = version();
    for (body, pointer) in [
        (
            json!({"inputs": [], "parameters": {"priority": 1}}),
            "/parameters/priority",
        ),
        (
            json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2],
                    "parameters": {"shared_memory_region": "r"}}]}),
            "/inputs/0/parameters/shared_memory_region",
        ),
        (
            json!({"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}),
            "/outputs/0/parameters/classification",
        ),
    ] {
        let err = oip::infer_request(&v, &body, &[]).unwrap_err();
        let details = err.details.clone().unwrap();
        let pointers: Vec<&str> = details
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["pointer"].as_str().unwrap())
            .collect();
        assert!(pointers.contains(&pointer), "{pointers:?} for {body}");
    }
}

fn outputs() -> TensorOutputs {
    let mut out = TensorOutputs::new();
    out.insert(
        "y".into(),
        Tensor {
            shape: vec![3],
            data: TensorData::UInt8(vec![1, 2, 255]),
        },
    );
    out.insert(
        "t".into(),
        Tensor {
            shape: vec![1],
            data: TensorData::String(vec!["ok".into()]),
        },
    );
    out
}

#[test]
fn answers_are_binary_per_output_as_asked_and_json_otherwise() {
    let v = version();
    let request = OipRequest {
        id: Some("7".into()),
        inputs: Vec::new(),
        outputs: vec![
            oip::RequestedOutput {
                name: "t".into(),
                binary: true,
            },
            oip::RequestedOutput {
                name: "y".into(),
                binary: false,
            },
        ],
        binary_default: false,
    };
    let answer = oip::infer_answer(&v, &request, &outputs());
    let length = answer.json_length.expect("binary answer");
    let head: Value = serde_json::from_slice(&answer.body[..length]).unwrap();
    assert_eq!(head["id"], "7");
    assert_eq!(head["model_version"], "3");
    assert_eq!(
        head["outputs"],
        json!([
            {"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}},
            {"name": "y", "datatype": "UINT8", "shape": [3], "data": [1, 2, 255]},
        ])
    );
    assert_eq!(&answer.body[length..], &[2, 0, 0, 0, b'o', b'k']);

    let json_only = OipRequest {
        id: None,
        inputs: Vec::new(),
        outputs: Vec::new(),
        binary_default: false,
    };
    let answer = oip::infer_answer(&v, &json_only, &outputs());
    assert_eq!(answer.json_length, None);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["outputs"].as_array().unwrap().len(), 2);
}

#[test]
fn metadata_gives_the_shapes_infer_accepts() {
    let v = version();
    let meta = oip::model_metadata(&v, &[1, 3]);
    assert_eq!(
        meta["inputs"],
        json!([
            {"name": "x", "datatype": "FP32", "shape": [1, 2]},
            {"name": "s", "datatype": "BYTES", "shape": [-1]},
        ])
    );
    assert_eq!(meta["versions"], json!(["1", "3"]));
    let server = oip::server_metadata();
    assert_eq!(server["extensions"], json!(["binary_tensor_data"]));
    let err = taskmesh_contract::ApiError::not_found("no model");
    assert_eq!(
        serde_json::from_slice::<Value>(&oip::error_body(&err)).unwrap(),
        json!({"error": "no model"})
    );
}
