//! Real models, built by scripts/setup.sh with the onnx Python package: every
//! example is self-contained, so the external-data guard lets it pass, and the
//! hostile test model whose initializer names the operator key is refused.

use std::path::Path;

use taskmesh_contract::onnx::check_self_contained;

#[test]
fn every_example_model_is_self_contained() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for dir in ["examples", "tests/models"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("examples exist (scripts/setup.sh)") {
            let model = entry.unwrap().path().join("model.onnx");
            if model.exists() && !model.starts_with(root.join("tests/models/exfil")) {
                let bytes = std::fs::read(&model).unwrap();
                assert_eq!(check_self_contained(&bytes), Ok(()), "{}", model.display());
                checked += 1;
            }
        }
    }
    // digits, iris, tensors, minilm-embed, fashion-mnist, slow, addpair.
    assert!(
        checked >= 7,
        "only {checked} models found: run scripts/setup.sh"
    );
}

#[test]
fn a_model_whose_initializer_names_a_host_file_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/exfil/model.onnx");
    let bytes = std::fs::read(&path).expect("tests/models/exfil (scripts/setup.sh)");
    let err = check_self_contained(&bytes).unwrap_err();
    assert!(err.contains(".taskmesh/admin.key"), "{err}");
    assert!(err.contains("\"stolen\""), "{err}");
}
