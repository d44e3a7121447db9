//! Pre- and post-processing end to end: text functions (tokenizer artifacts,
//! mean pooling) and image functions (base64 PNG/JPEG, argmax with labels),
//! checked against Python references. The real `taskmesh up` process over HTTP/2.

mod support;

use base64::Engine as _;
use http::Method;
use serde_json::{json, Value};
use support::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Uploads bytes as an artifact and returns its digest.
async fn upload_artifact(client: &TestClient, p: &Platform, bytes: Vec<u8>) -> String {
    upload_bytes(client, &p.admin_url("/v1/artifacts"), bytes).await
}

/// The minilm-embed definition with its model and tokenizer uploaded, renamed, plus `changes`.
async fn minilm_definition(p: &Platform, name: &str, changes: Value) -> Value {
    let client = p.client();
    let model = upload(&client, p, "examples/minilm-embed/model.onnx").await;
    let tokenizer = upload_artifact(
        &client,
        p,
        generated("examples/minilm-embed/tokenizer.json"),
    )
    .await;
    let mut doc = definition_with("examples/minilm-embed/function.json", &model);
    doc["name"] = json!(name);
    doc["inputs"]["text"]["text"]["tokenizer"] = json!(tokenizer);
    merge(&mut doc, changes);
    doc
}

/// The fashion-mnist definition with its model uploaded, renamed, plus `changes`.
async fn fashion_definition(p: &Platform, name: &str, changes: Value) -> Value {
    let model = upload(&p.client(), p, "examples/fashion-mnist/model.onnx").await;
    let mut doc = definition_with("examples/fashion-mnist/function.json", &model);
    doc["name"] = json!(name);
    merge(&mut doc, changes);
    doc
}

fn merge(doc: &mut Value, changes: Value) {
    match (doc, changes) {
        (Value::Object(doc), Value::Object(changes)) => {
            for (k, v) in changes {
                merge(doc.entry(k).or_insert(Value::Null), v);
            }
        }
        (doc, changes) => *doc = changes,
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[tokio::test]
async fn minilm_embed_matches_the_python_reference() {
    let p = Platform::start(&["--no-examples"]);
    // `taskmesh fn register` uploads the model and the tokenizer given as paths.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskmesh"))
        .args(["fn", "register", "examples/minilm-embed/function.json"])
        .current_dir(repo_root())
        .env("TASKMESH_API_KEY", &p.admin_key)
        .env("TASKMESH_ADMIN_URL", p.admin_url(""))
        .output()
        .expect("run taskmesh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registered: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(registered["version"], 1, "{stdout}");
    let version = p
        .client()
        .get(&p.admin_url("/v1/functions/minilm-embed/versions/1"))
        .await
        .json();
    let tokenizer = version["definition"]["inputs"]["text"]["text"]["tokenizer"]
        .as_str()
        .unwrap()
        .to_string();
    let reference = generated_json("examples/minilm-embed/reference.json");
    assert_eq!(
        tokenizer,
        format!("sha256:{}", reference["tokenizer_sha256"].as_str().unwrap())
    );

    let client = p.client();
    let url = p.router_url("/v1/functions/minilm-embed/invoke");
    let mut embeddings = Vec::new();
    for case in reference["cases"].as_array().unwrap() {
        let reply = client.post_json(&url, &json!({"text": case["text"]})).await;
        assert_eq!(reply.status, 200, "{}", reply.json());
        let embedding = numbers(&reply.json()["embedding"]);
        assert_eq!(embedding.len(), 384);
        let diff = max_abs_diff(&embedding, &numbers(&case["embedding"]));
        assert!(diff <= 1e-4, "{}: max difference {diff}", case["text"]);
        embeddings.push(embedding);
    }
    // The cosines the issue names, and every cosine of the reference.
    let food_bread = cosine(&embeddings[0], &embeddings[1]);
    let food_girl = cosine(&embeddings[0], &embeddings[2]);
    assert!((food_bread - 0.7535).abs() <= 0.01, "{food_bread}");
    assert!((food_girl - -0.105).abs() <= 0.01, "{food_girl}");
    for pair in reference["cosines"].as_array().unwrap() {
        let (a, b) = (
            pair["a"].as_u64().unwrap() as usize,
            pair["b"].as_u64().unwrap() as usize,
        );
        let got = cosine(&embeddings[a], &embeddings[b]);
        assert!(
            (got - pair["cosine"].as_f64().unwrap()).abs() <= 1e-4,
            "{pair}: {got}"
        );
    }
}

#[tokio::test]
async fn a_batch_of_texts_is_padded_and_pooled_text_by_text() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let all = json!({"outputs": {"embedding": {"take": "all"}}});
    let mut padded = minilm_definition(&p, "embed-batch", all.clone()).await;
    padded["inputs"]["text"]["text"]["padding"] = json!("longest");
    register(&client, &p, &padded).await;
    let unpadded = minilm_definition(&p, "embed-unpadded", all).await;
    register(&client, &p, &unpadded).await;

    let reference = generated_json("examples/minilm-embed/reference.json");
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&Value> = cases.iter().map(|c| &c["text"]).collect();
    let reply = client
        .post_json(
            &p.router_url("/v1/functions/embed-batch/invoke"),
            &json!({ "text": texts }),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let body = reply.json();
    let rows = body["embedding"].as_array().unwrap();
    assert_eq!(rows.len(), cases.len());
    for (row, case) in rows.iter().zip(cases) {
        // Padding tokens are masked out of the mean: the same as one text alone.
        let diff = max_abs_diff(&numbers(row), &numbers(&case["embedding"]));
        assert!(diff <= 1e-4, "{}: {diff}", case["text"]);
    }

    // Without padding, texts of different token counts cannot share a call.
    let err = client
        .post_json(
            &p.router_url("/v1/functions/embed-unpadded/invoke"),
            &json!({ "text": texts }),
        )
        .await
        .expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/text");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("\"padding\": \"none\""),
        "{err}"
    );
    // A function whose output takes the first item refuses arrays instead of dropping items.
    let single = minilm_definition(&p, "embed-one", json!({})).await;
    register(&client, &p, &single).await;
    let err = client
        .post_json(
            &p.router_url("/v1/functions/embed-one/invoke"),
            &json!({"text": ["a", "b"]}),
        )
        .await
        .expect_error(422, "invalid_input");
    assert!(
        err["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("one item at a time"),
        "{err}"
    );
}

#[tokio::test]
async fn fashion_mnist_labels_the_reference_test_images() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let doc = fashion_definition(&p, "fashion-mnist", json!({})).await;
    register(&client, &p, &doc).await;
    let reference = generated_json("examples/fashion-mnist/reference.json");
    let labels: Vec<&str> = reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 200);
    let url = p.router_url("/v1/functions/fashion-mnist/invoke");
    let class = |v: &Value| -> usize {
        match v {
            Value::String(s) => s.parse().unwrap(),
            other => other.as_u64().unwrap() as usize,
        }
    };
    let (mut correct, mut reference_correct, mut agree) = (0, 0, 0);
    for case in cases {
        let reply = client
            .post_json(&url, &json!({"image": case["image"]}))
            .await;
        assert_eq!(
            reply.status,
            200,
            "case {}: {}",
            case["index"],
            reply.json()
        );
        let body = reply.json();
        let label = body["label"].as_str().unwrap();
        let truth = labels[class(&case["true_label"])];
        let predicted = labels[class(&case["predicted_label"])];
        correct += usize::from(label == truth);
        reference_correct += usize::from(predicted == truth);
        agree += usize::from(label == predicted);
        let probabilities = numbers(&body["probabilities"]);
        let expected = match &case["probabilities"] {
            Value::String(s) => serde_json::from_str::<Value>(s).unwrap(),
            other => other.clone(),
        };
        assert!(
            max_abs_diff(&probabilities, &numbers(&expected)) <= 1e-5,
            "case {}",
            case["index"]
        );
    }
    let accuracy = correct as f64 / cases.len() as f64;
    let reference_accuracy = reference_correct as f64 / cases.len() as f64;
    assert!(
        (accuracy - reference_accuracy).abs() <= 0.03,
        "accuracy {accuracy} vs the reference model's {reference_accuracy} on the same images"
    );
    assert!(
        agree * 100 >= cases.len() * 99,
        "only {agree} of {} labels equal the Python reference",
        cases.len()
    );
    // And the model's accuracy on the whole test set is what these cases sample.
    let full = reference["test_accuracy"].as_f64().unwrap();
    assert!((accuracy - full).abs() <= 0.05, "{accuracy} vs {full}");
}

#[tokio::test]
async fn bad_texts_and_images_get_contract_errors_with_pointers() {
    let mut p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let embed = minilm_definition(&p, "minilm-embed", json!({})).await;
    register(&client, &p, &embed).await;
    let mut fashion = fashion_definition(&p, "fashion-mnist", json!({})).await;
    register(&client, &p, &fashion).await;
    let text_url = p.router_url("/v1/functions/minilm-embed/invoke");
    let image_url = p.router_url("/v1/functions/fashion-mnist/invoke");

    // Texts: checked at the router.
    for (body, pointer, message) in [
        (
            json!({"text": 5}),
            "/text",
            "expected a string, got a number",
        ),
        (
            json!({"text": null}),
            "/text",
            "expected a string, got null",
        ),
        (json!({}), "/text", "required field \"text\" is missing"),
        (
            json!({"text": "hi", "extra": 1}),
            "/extra",
            "unknown field \"extra\"",
        ),
        (
            json!({"text": "x".repeat(70_000)}),
            "/text",
            "text is 70000 bytes; the limit is 65536",
        ),
    ] {
        let err = client
            .post_json(&text_url, &body)
            .await
            .expect_error(422, "invalid_input");
        assert_eq!(err["details"][0]["pointer"], pointer, "{err}");
        assert_eq!(err["details"][0]["message"], message, "{err}");
    }

    // Images: base64 is checked at the router, the image itself on the node.
    let png = generated_json("examples/fashion-mnist/sample.json")["image"].clone();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image::GrayImage::new(28, 28))
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let mut huge = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image::GrayImage::new(5000, 5000))
        .write_to(&mut huge, image::ImageFormat::Png)
        .unwrap();
    let truncated = {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        b64(&bytes[..60])
    };
    for (image, pointer, message) in [
        (json!(7), "/image", "expected a base64 string, got a number"),
        (json!("%%%"), "/image", "not valid base64"),
        (json!(b64(b"hello world")), "/image", "not a PNG image"),
        (json!(b64(&jpeg.into_inner())), "/image", "not a PNG image"),
        (json!(truncated), "/image", "not a valid PNG image"),
        (
            json!(b64(&huge.into_inner())),
            "/image",
            "the image is 5000x5000; each side must be in 1..=4096",
        ),
    ] {
        let err = client
            .post_json(&image_url, &json!({ "image": image }))
            .await
            .expect_error(422, "invalid_input");
        assert_eq!(err["details"][0]["pointer"], pointer, "{err}");
        let got = err["details"][0]["message"].as_str().unwrap();
        assert!(
            got.starts_with(message),
            "{got:?} does not start with {message:?}"
        );
    }
    // A body over the cap is refused before it is read.
    let big = json!({"image": "A".repeat(2 * 1024 * 1024)});
    client
        .post_json(&image_url, &big)
        .await
        .expect_error(413, "payload_too_large");
    // The node answers the same error itself, with the contract's shape.
    let node = p.node_url("/v1/functions/fashion-mnist/invoke");
    let reply = TestClient::h2c()
        .with_header("x-taskmesh-cluster-key", &p.cluster_key())
        .post_json(&node, &json!({"image": b64(b"hello world")}))
        .await;
    let err = reply.expect_error(422, "invalid_input");
    assert_eq!(err["details"][0]["pointer"], "/image");
    assert_eq!(reply.header("x-taskmesh-error-code"), Some("invalid_input"));

    // The same function with decode "any" reads JPEG too, and resizes.
    fashion["name"] = json!("fashion-any");
    fashion["inputs"]["image"]["image"]["decode"] = json!("any");
    register(&client, &p, &fashion).await;
    let mut big_jpeg = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma8(image::GrayImage::new(56, 56))
        .write_to(&mut big_jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let reply = client
        .post_json(
            &p.router_url("/v1/functions/fashion-any/invoke"),
            &json!({"image": b64(&big_jpeg.into_inner())}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    assert!(reply.json()["label"].is_string());

    // None of it hurt the node.
    let reply = client.post_json(&image_url, &json!({ "image": png })).await;
    assert_eq!(reply.status, 200, "{}", reply.json());
    let label = String::from_utf8(generated("examples/fashion-mnist/sample_label.txt")).unwrap();
    assert_eq!(reply.json()["label"], label.trim());
}

#[tokio::test]
async fn registration_checks_artifacts_and_processing() {
    let p = Platform::start(&["--no-examples"]);
    let client = p.client();
    let register_error = |doc: Value| {
        let client = client.clone();
        let url = p.admin_url("/v1/functions");
        async move {
            client
                .post_json(&url, &doc)
                .await
                .expect_error(422, "invalid_input")
        }
    };

    // Artifacts are content-addressed, need bytes, and need the admin scope.
    let tokenizer = generated("examples/minilm-embed/tokenizer.json");
    let a = upload_artifact(&client, &p, tokenizer.clone()).await;
    let b = upload_artifact(&client, &p, tokenizer).await;
    assert_eq!(a, b);
    client
        .send(Method::POST, &p.admin_url("/v1/artifacts"), &[], Vec::new())
        .await
        .expect_error(422, "invalid_input");
    let (_, app_key) =
        create_client(&client, &p, json!({"name": "app", "scopes": ["invoke"]})).await;
    TestClient::h2c()
        .with_key(&app_key)
        .send(
            Method::POST,
            &p.admin_url("/v1/artifacts"),
            &[],
            b"x".to_vec(),
        )
        .await
        .expect_error(403, "forbidden");

    // A tokenizer that was never uploaded, or that is not a tokenizer.
    let mut doc = minilm_definition(&p, "embed", json!({})).await;
    let missing = format!("sha256:{}", "ab".repeat(32));
    doc["inputs"]["text"]["text"]["tokenizer"] = json!(missing);
    let err = register_error(doc.clone()).await;
    assert_eq!(err["details"][0]["pointer"], "/inputs/text/text/tokenizer");
    assert!(
        err["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("has not been uploaded (POST /v1/artifacts)"),
        "{err}"
    );
    let junk = upload_artifact(&client, &p, b"{\"version\": 1}".to_vec()).await;
    doc["inputs"]["text"]["text"]["tokenizer"] = json!(junk);
    let err = register_error(doc.clone()).await;
    assert_eq!(err["details"][0]["pointer"], "/inputs/text/text/tokenizer");
    assert!(
        err["details"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("not a loadable tokenizer.json"),
        "{err}"
    );
    // Unknown keys in a text block; a tensor name the model lacks; pooling over a non-mask.
    let mut typo = minilm_definition(&p, "embed", json!({})).await;
    typo["inputs"]["text"]["text"]["max_len"] = json!(64);
    let err = register_error(typo).await;
    assert_eq!(err["details"][0]["pointer"], "/inputs/text/text/max_len");
    let wrong = minilm_definition(
        &p,
        "embed",
        json!({"inputs": {"text": {"ids": "ids"}}, "outputs": {"embedding": {"mean_pool": "input_ids"}}}),
    )
    .await;
    let err = register_error(wrong).await;
    assert_eq!(
        pointers(&err),
        vec![
            "/inputs/text/ids",
            "/inputs",
            "/outputs/embedding/mean_pool"
        ],
        "{err}"
    );

    // Labels must match the model's classes; the image must fit the tensor.
    let nine = fashion_definition(&p, "fashion", json!({})).await;
    let mut nine = nine;
    nine["outputs"]["label"]["labels"]
        .as_array_mut()
        .unwrap()
        .pop();
    let err = register_error(nine).await;
    assert_eq!(err["details"][0]["pointer"], "/outputs/label/labels");
    assert_eq!(
        err["details"][0]["message"],
        "9 labels given, but tensor \"probabilities\" has 10 classes"
    );
    let rgb = fashion_definition(
        &p,
        "fashion",
        json!({"inputs": {"image": {"image": {"grayscale": false}}}}),
    )
    .await;
    let err = register_error(rgb).await;
    assert_eq!(err["details"][0]["pointer"], "/inputs/image/image");

    // The original definitions register.
    let doc = minilm_definition(&p, "embed", json!({})).await;
    assert_eq!(register(&client, &p, &doc).await, 1);
}
