//! Text, image and output post-processing declarations: checked at parse
//! time, bound against a model's signature, and the router's cheap checks.

use serde_json::{json, Value};
use taskmesh_contract::definition::{parse, InputKind, Syntax, TaskDefinition};
use taskmesh_contract::limits::{MAX_IMAGE_BYTES, MAX_TEXT_BYTES};
use taskmesh_contract::processing::{image, text, ImageDecode, ItemLimits, Layout, Padding};
use taskmesh_contract::tensor::{DType, Violation};
use taskmesh_contract::version::bind;
use taskmesh_contract::{InputSource, ModelSignature, ModelType, TensorInfo};
fn hex(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn parse_json(inputs: Value, outputs: Value) -> Result<TaskDefinition, Vec<Violation>> {
    let body = json!({"name": "f", "model": hex('0'), "inputs": inputs, "outputs": outputs});
    parse(&serde_json::to_vec(&body).unwrap(), Syntax::Json).map_err(|e| e.violations)
}

fn pointers(violations: &[Violation]) -> Vec<&str> {
    violations.iter().map(|v| v.pointer.as_str()).collect()
}

fn info(name: &str, dtype: DType, shape: &[i64]) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        dtype: ModelType::Supported(dtype),
        shape: Some(shape.to_vec()),
    }
}

/// all-MiniLM-L6-v2 and the fashion-mnist MLP, as ONNX Runtime reports them.
fn bert() -> ModelSignature {
    ModelSignature {
        inputs: vec![
            info("input_ids", DType::Int64, &[-1, -1]),
            info("attention_mask", DType::Int64, &[-1, -1]),
            info("token_type_ids", DType::Int64, &[-1, -1]),
        ],
        outputs: vec![info("last_hidden_state", DType::Float32, &[-1, -1, 384])],
    }
}

fn mlp() -> ModelSignature {
    ModelSignature {
        inputs: vec![info("float_input", DType::Float32, &[-1, 784])],
        outputs: vec![
            info("label", DType::Int64, &[-1]),
            info("probabilities", DType::Float32, &[-1, 10]),
        ],
    }
}

fn minilm_inputs() -> Value {
    json!({"text": {"text": {"tokenizer": hex('1'), "max_length": 128}}})
}

fn embedding() -> Value {
    json!({"embedding": {"tensor": "last_hidden_state", "mean_pool": "attention_mask", "normalize": true, "take": "first"}})
}

fn fashion_image() -> Value {
    json!({"image": {"image": {"decode": "png", "resize": [28, 28], "grayscale": true, "layout": "flat"}, "tensor": "float_input"}})
}

#[test]
fn the_kind_of_an_input_is_read_from_its_keys() {
    let d = parse_json(
        json!({"text": {"text": {"tokenizer": hex('1')}}, "image": {"image": {}, "tensor": "x"}, "n": {"tensor": "y"}}),
        json!({"y": {"tensor": "y"}}),
    )
    .unwrap();
    let InputKind::Text(text) = d.inputs["text"].kind() else {
        panic!("not text")
    };
    assert_eq!(
        (text.max_length, text.padding, text.add_special_tokens),
        (512, Padding::None, true)
    );
    let InputKind::Image(image) = d.inputs["image"].kind() else {
        panic!("not image")
    };
    assert_eq!(
        (image.decode, image.layout, image.scale, image.grayscale),
        (ImageDecode::Any, Layout::Nchw, 255.0, false)
    );
    assert!(matches!(d.inputs["n"].kind(), InputKind::Tensor));
}

#[test]
fn keys_of_another_kind_and_bad_values_are_refused_with_pointers() {
    let err = parse_json(
        json!({
            "a": {"text": {"tokenizer": "./tokenizer.json", "max_length": 0}, "tensor": "x"},
            "b": {"image": {"resize": [0, 28], "std": [0.0], "mean": [1, 2]}, "ids": "x"},
            "c": {"attention_mask": "m"},
            "d": {"text": {"tokenizer": hex('1')}, "image": {}}
        }),
        json!({"y": {"tensor": "y", "labels": []}}),
    )
    .unwrap_err();
    assert_eq!(
        pointers(&err),
        vec![
            "/inputs/a/tensor",
            "/inputs/a/text/tokenizer",
            "/inputs/a/text/max_length",
            "/inputs/b/ids",
            "/inputs/b/tensor",
            "/inputs/b/image/resize",
            "/inputs/b/image/mean",
            "/inputs/b/image/std",
            "/inputs/c/attention_mask",
            "/inputs/c/tensor",
            "/inputs/d",
            "/outputs/y/labels",
        ]
    );
    // Unknown keys inside the blocks are refused too.
    let err = parse_json(
        json!({"t": {"text": {"tokenizer": hex('1'), "maxlength": 8}}}),
        json!({"y": {"tensor": "y"}}),
    )
    .unwrap_err();
    assert_eq!(pointers(&err), vec!["/inputs/t/text/maxlength"]);
    let err = parse_json(
        json!({"t": {"image": {"layout": "chw"}, "tensor": "x"}}),
        json!({"y": {"tensor": "y"}}),
    )
    .unwrap_err();
    assert_eq!(pointers(&err), vec!["/inputs/t/image/layout"]);
}

#[test]
fn text_inputs_bind_their_tensors_with_defaults() {
    let d = parse_json(minilm_inputs(), embedding()).unwrap();
    let (inputs, _) = bind(&d, &bert()).unwrap();
    let bound: Vec<(&str, InputSource)> = inputs
        .iter()
        .map(|b| (b.tensor.as_str(), b.source))
        .collect();
    assert_eq!(
        bound,
        vec![
            ("input_ids", InputSource::TextIds),
            ("attention_mask", InputSource::TextAttentionMask),
            ("token_type_ids", InputSource::TextTypeIds),
        ]
    );
    // A model without token types: the default is skipped, not required.
    let mut no_types = bert();
    no_types.inputs.pop();
    let (inputs, _) = bind(&d, &no_types).unwrap();
    assert_eq!(inputs.len(), 2);
    // Named explicitly, a missing tensor is an error.
    let d = parse_json(
        json!({"text": {"text": {"tokenizer": hex('1')}, "type_ids": "segments"}}),
        embedding(),
    )
    .unwrap();
    let err = bind(&d, &bert()).unwrap_err();
    assert_eq!(
        pointers(&err),
        vec!["/inputs/text/type_ids", "/inputs"],
        "{err:?}"
    );
}

#[test]
fn a_fixed_sequence_length_needs_max_length_padding() {
    let mut fixed = bert();
    for t in &mut fixed.inputs {
        t.shape = Some(vec![1, 128]);
    }
    let d = parse_json(minilm_inputs(), embedding()).unwrap();
    let err = bind(&d, &fixed).unwrap_err();
    assert_eq!(err[0].pointer, "/inputs/text/text");
    assert!(err[0].message.contains("\"max_length\": 128"), "{err:?}");
    let d = parse_json(
        json!({"text": {"text": {"tokenizer": hex('1'), "max_length": 128, "padding": "max_length"}}}),
        embedding(),
    )
    .unwrap();
    assert!(bind(&d, &fixed).is_ok());
}

#[test]
fn image_inputs_must_fit_the_tensor() {
    let labels = json!(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
    let outputs = json!({"label": {"tensor": "probabilities", "argmax": true, "labels": labels, "take": "first"}});
    let d = parse_json(fashion_image(), outputs.clone()).unwrap();
    let (inputs, _) = bind(&d, &mlp()).unwrap();
    assert_eq!(inputs[0].source, InputSource::Image);
    assert_eq!(inputs[0].shape, vec![-1, 784]);
    // 3 channels * 28 * 28 is not 784; nchw is rank 4.
    for image in [
        json!({"resize": [28, 28], "layout": "flat"}),
        json!({"resize": [28, 28], "grayscale": true}),
    ] {
        let d = parse_json(
            json!({"image": {"image": image, "tensor": "float_input"}}),
            outputs.clone(),
        )
        .unwrap();
        let err = bind(&d, &mlp()).unwrap_err();
        assert_eq!(pointers(&err), vec!["/inputs/image/image"], "{err:?}");
    }
}

#[test]
fn post_processing_is_checked_against_the_model() {
    // labels must match the class dimension
    let d = parse_json(
        fashion_image(),
        json!({"label": {"tensor": "probabilities", "argmax": true, "labels": ["a", "b"]}}),
    )
    .unwrap();
    let err = bind(&d, &mlp()).unwrap_err();
    assert_eq!(pointers(&err), vec!["/outputs/label/labels"]);
    assert!(err[0].message.contains("2 labels given"), "{err:?}");
    // labels on an integer tensor of class indices need no argmax
    let d = parse_json(
        fashion_image(),
        json!({"label": {"tensor": "label", "labels": ["a"], "take": "first"}}),
    )
    .unwrap();
    assert!(bind(&d, &mlp()).is_ok());
    // but on floats they do; softmax of an int tensor and mean_pool without a text input fail
    let d = parse_json(
        fashion_image(),
        json!({
            "p": {"tensor": "probabilities", "labels": ["a"]},
            "q": {"tensor": "label", "softmax": true},
            "r": {"tensor": "probabilities", "mean_pool": "attention_mask"}
        }),
    )
    .unwrap();
    let err = bind(&d, &mlp()).unwrap_err();
    assert_eq!(
        pointers(&err),
        vec![
            "/outputs/p/labels",
            "/outputs/q/softmax",
            "/outputs/r/mean_pool",
            "/outputs/r/mean_pool"
        ],
        "{err:?}"
    );
    // mean_pool must name a text input's attention mask
    let d = parse_json(
        minilm_inputs(),
        json!({"e": {"tensor": "last_hidden_state", "mean_pool": "input_ids"}}),
    )
    .unwrap();
    let err = bind(&d, &bert()).unwrap_err();
    assert_eq!(pointers(&err), vec!["/outputs/e/mean_pool"]);
    assert!(err[0].message.contains("\"attention_mask\""), "{err:?}");
}

const ANY: ItemLimits = ItemLimits {
    fixed: -1,
    arrays: true,
};

#[test]
fn text_fields_are_strings_within_limits() {
    assert_eq!(text::texts(&json!("hi"), "/t", ANY).unwrap(), vec!["hi"]);
    assert_eq!(text::texts(&json!(["a", "b"]), "/t", ANY).unwrap().len(), 2);
    let err = text::texts(&json!(5), "/t", ANY).unwrap_err();
    assert_eq!(
        err[0].message,
        "expected a string (or an array of them), got a number"
    );
    let err = text::texts(&json!(["a", 5]), "/t", ANY).unwrap_err();
    assert_eq!(pointers(&err), vec!["/t/1"]);
    let err = text::texts(&json!([]), "/t", ANY).unwrap_err();
    assert!(err[0].message.contains("0 items"), "{err:?}");
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    let err = text::texts(&json!(long), "/t", ANY).unwrap_err();
    assert!(err[0].message.contains("the limit is 65536"), "{err:?}");
    let one = ItemLimits {
        fixed: -1,
        arrays: false,
    };
    let err = text::texts(&json!(["a"]), "/t", one).unwrap_err();
    assert!(err[0].message.contains("one item at a time"), "{err:?}");
    let two = ItemLimits {
        fixed: 2,
        arrays: true,
    };
    assert!(text::texts(&json!("a"), "/t", two).is_err());
}

#[test]
fn image_fields_are_base64_in_its_usual_spellings() {
    let decoded = |s: &str| image::images(&json!(s), "/i", ANY).map(|mut v| v.remove(0));
    assert_eq!(decoded("aGVsbG8=").unwrap(), b"hello");
    assert_eq!(decoded("aGVsbG8").unwrap(), b"hello");
    assert_eq!(decoded("aGVs\nbG8=\n").unwrap(), b"hello");
    assert_eq!(decoded("data:image/png;base64,aGVsbG8=").unwrap(), b"hello");
    assert!(decoded("data:image/png,hello").is_err());
    let err = decoded("not base64!").unwrap_err();
    assert_eq!(pointers(&err), vec!["/i"]);
    assert!(err[0].message.starts_with("not valid base64"), "{err:?}");
    assert_eq!(decoded("").unwrap_err()[0].message, "the image is empty");
    let huge = "A".repeat((MAX_IMAGE_BYTES / 3 + 8) * 4);
    assert!(decoded(&huge).unwrap_err()[0].message.contains("over"));
}
