#!/usr/bin/env python3
"""Build Taskmesh's example ONNX models and their reference outputs.

Run from anywhere (normally via scripts/setup.sh):

    PYTHONPATH=.deps/python python3 examples/build_examples.py

Writes, for each example <name> in digits, iris, tensors:

    examples/<name>/model.onnx       the model (git-ignored, rebuilt by setup)
    examples/<name>/reference.json   inputs + outputs computed by onnxruntime's
                                     CPUExecutionProvider (git-ignored)

and the small, committed request samples:

    examples/digits/sample.json        {"pixels": [64 numbers]}  (first test image)
    examples/digits/sample_label.txt   label predicted for it
    examples/iris/sample.json          {"features": [4 numbers]}

Two more examples come from real models and data that scripts/setup.sh fetches
(pinned, sha256-checked) before it runs this script:

    examples/minilm-embed/model.onnx       all-MiniLM-L6-v2 int8 (copied by setup.sh,
                                           not built here; git-ignored)
    examples/minilm-embed/tokenizer.json   its HF tokenizer (setup.sh; git-ignored)
    examples/minilm-embed/reference.json   token ids, last_hidden_state, mean-pooled
                                           L2-normalised embeddings, cosines
                                           (git-ignored)
    examples/minilm-embed/sample.json      {"text": ...} (committed)
    examples/fashion-mnist/model.onnx      MLP trained here on Fashion-MNIST
                                           (git-ignored)
    examples/fashion-mnist/reference.json  200 test images as PNG + predictions
                                           (git-ignored)
    examples/fashion-mnist/sample.json     {"image": base64 PNG} of test image 0
                                           (committed)
    examples/fashion-mnist/sample_label.txt  its true label name (committed)

The Fashion-MNIST *-ubyte.gz files are read from .deps/datasets/fashion-mnist
(override with FASHION_MNIST_DIR).

It also writes two test-only models (git-ignored) under tests/models/, not
under examples/ (`taskmesh up` registers every folder in examples/):

    tests/models/slow/model.onnx     x [N, 512] -> y [N, 512]: 128 x
                                     (MatMul by one shared 512x512 weight, Tanh);
                                     run time grows linearly with N
    tests/models/addpair/model.onnx  a [N, 3], b [M, 3] -> s = a + b; fails at
                                     run time (broadcast error) when N != M and
                                     neither is 1

Everything is seeded (random_state=0) and BLAS is kept single-threaded so
that reruns give the same models and the same predictions.

With arguments, builds only the named examples (digits, iris, tensors, slow,
addpair, minilm-embed, fashion-mnist); scripts/setup.sh passes the stale ones.
"""

import os

# Single-threaded BLAS, forced before numpy is imported: with more threads the
# MLP's trained weights differ in the low bits (observed: a different
# digits/model.onnx with OPENBLAS_NUM_THREADS=8), so the bytes would depend on
# the machine's core count.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import base64  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.numpy_helper  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from skl2onnx import to_onnx  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402
from sklearn.datasets import load_digits, load_iris  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent
TEST_MODELS = EXAMPLES.parent / "tests" / "models"

# Opsets that onnxruntime 1.31.1 (and older runtimes) load without trouble.
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8  # matches opset 17


def _pin_model_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make the serialized bytes independent of the converter's defaults."""
    model.ir_version = IR_VERSION
    model.producer_name = "taskmesh-examples"
    model.producer_version = "1"
    model.doc_string = ""
    # skl2onnx (1.20.0) lists the default domain twice for the forest model;
    # keep one entry per domain (the highest version).
    versions = {}
    for op in model.opset_import:
        versions[op.domain] = max(op.version, versions.get(op.domain, 0))
    del model.opset_import[:]
    for domain in sorted(versions):
        model.opset_import.append(helper.make_opsetid(domain, versions[domain]))
    return model


def _to_json_value(x):
    """Flatten a numpy array into a list of plain JSON values (full precision)."""
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        return [bool(v) for v in arr.reshape(-1)]
    if np.issubdtype(arr.dtype, np.integer):
        return [int(v) for v in arr.reshape(-1)]
    if arr.dtype == object or arr.dtype.kind in "US":
        return [str(v) for v in arr.reshape(-1)]
    if np.issubdtype(arr.dtype, np.floating):
        # float(np.float32) is exact; json writes the shortest round-trip repr
        # of that double, so no precision is lost.
        return [float(v) for v in arr.reshape(-1)]
    raise TypeError(f"unsupported dtype {arr.dtype}")


def _tensor_json(x):
    arr = np.asarray(x)
    return {"shape": [int(d) for d in arr.shape], "data": _to_json_value(arr)}


def _write_json(path: Path, obj, compact: bool = False) -> None:
    if compact:
        text = json.dumps(obj, separators=(",", ":"))
    else:
        text = json.dumps(obj)
    path.write_text(text + "\n")


def _save_and_reference(name: str, model: onnx.ModelProto, cases):
    """Check and save the model, run every case through onnxruntime (CPU),
    write reference.json, and return (session, list of output dicts)."""
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    out_dir = EXAMPLES / name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(data)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]

    ref_cases = []
    results = []
    for feeds in cases:
        outs = sess.run(out_names, feeds)
        out_map = dict(zip(out_names, outs))
        results.append(out_map)
        ref_cases.append(
            {
                "input": {k: _tensor_json(v) for k, v in feeds.items()},
                "outputs": {k: _tensor_json(v) for k, v in out_map.items()},
            }
        )
    _write_json(
        out_dir / "reference.json",
        {"model_sha256": hashlib.sha256(data).hexdigest(), "cases": ref_cases},
    )
    print(
        f"[{name}] model.onnx {len(data)} bytes sha256={hashlib.sha256(data).hexdigest()[:16]}…"
        f" reference cases={len(ref_cases)}"
    )
    return sess, results


def _describe(sess) -> None:
    for kind, items in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        for it in items:
            print(f"    {kind:6} {it.name}: {it.type} {it.shape}")


def build_digits() -> None:
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0
    )
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        clf.fit(X_train, y_train)

    model = to_onnx(
        clf,
        initial_types=[("float_input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    model = _pin_model_metadata(model)

    # ONNX accuracy on the whole test split (must agree with scikit-learn).
    cases = [{"float_input": X_test[i : i + 1]} for i in range(5)]
    sess, results = _save_and_reference("digits", model, cases)
    onnx_labels = sess.run(["label"], {"float_input": X_test})[0]
    skl_acc = float(clf.score(X_test, y_test))
    onnx_acc = float(np.mean(onnx_labels == y_test))
    agree = float(np.mean(onnx_labels == clf.predict(X_test)))
    print(
        f"[digits] test accuracy: sklearn={skl_acc:.4f} onnx={onnx_acc:.4f}"
        f" (onnx/sklearn agreement {agree:.4f}, n_iter={clf.n_iter_})"
    )
    _describe(sess)

    first = X_test[0]
    label = int(results[0]["label"][0])
    _write_json(
        EXAMPLES / "digits" / "sample.json",
        {"pixels": [float(v) for v in first]},
        compact=True,
    )
    (EXAMPLES / "digits" / "sample_label.txt").write_text(f"{label}\n")
    print(
        f"[digits] sample.json = first test image; expected label {label}"
        f" (true label {int(y_test[0])})"
    )


def build_iris() -> None:
    X64, y = load_iris(return_X_y=True)
    X = X64.astype(np.float32)
    clf = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    clf.fit(X, y)

    model = to_onnx(
        clf,
        initial_types=[("float_input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    model = _pin_model_metadata(model)

    # One flower of each class: setosa (0), versicolor (50), virginica (100).
    idx = [0, 50, 100]
    cases = [{"float_input": X[i : i + 1]} for i in idx]
    sess, results = _save_and_reference("iris", model, cases)
    onnx_labels = sess.run(["label"], {"float_input": X})[0]
    print(
        f"[iris] train accuracy: sklearn={clf.score(X, y):.4f}"
        f" onnx={float(np.mean(onnx_labels == y)):.4f}"
    )
    _describe(sess)

    _write_json(
        EXAMPLES / "iris" / "sample.json",
        # The dataset's own decimals (5.1, not 5.099999904632568); they round
        # to exactly the float32 values used in reference.json.
        {"features": [float(v) for v in X64[idx[0]]]},
        compact=True,
    )
    names = load_iris().target_names
    label = int(results[0]["label"][0])
    print(f"[iris] sample.json = iris row {idx[0]}; expected label {label} ({names[label]})")


def build_tensors() -> None:
    T = TensorProto
    inputs = [
        helper.make_tensor_value_info("a", T.DOUBLE, ["N", 3]),
        helper.make_tensor_value_info("b", T.INT32, [2]),
        helper.make_tensor_value_info("c", T.INT64, [1, 2]),
        helper.make_tensor_value_info("d", T.BOOL, [3]),
        helper.make_tensor_value_info("e", T.FLOAT, ["N"]),
    ]
    outputs = [
        helper.make_tensor_value_info("a2", T.DOUBLE, ["N", 3]),
        helper.make_tensor_value_info("b1", T.INT32, [2]),
        helper.make_tensor_value_info("c3", T.INT64, [1, 2]),
        helper.make_tensor_value_info("nd", T.BOOL, [3]),
        helper.make_tensor_value_info("esum", T.FLOAT, []),
    ]
    initializers = [
        helper.make_tensor("two_f64", T.DOUBLE, [], [2.0]),
        helper.make_tensor("one_i32", T.INT32, [], [1]),
        helper.make_tensor("three_i64", T.INT64, [], [3]),
    ]
    nodes = [
        helper.make_node("Mul", ["a", "two_f64"], ["a2"], name="mul_a"),
        helper.make_node("Add", ["b", "one_i32"], ["b1"], name="add_b"),
        helper.make_node("Mul", ["c", "three_i64"], ["c3"], name="mul_c"),
        helper.make_node("Not", ["d"], ["nd"], name="not_d"),
        # Opset >= 13: no axes input => reduce over all axes; keepdims=0 => scalar.
        helper.make_node("ReduceSum", ["e"], ["esum"], name="sum_e", keepdims=0),
    ]
    graph = helper.make_graph(nodes, "taskmesh_tensors", inputs, outputs, initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model = _pin_model_metadata(model)

    cases = [
        {
            "a": np.array([[1.5, -2.25, 1e-300]], dtype=np.float64),
            "b": np.array([7, -2147483647], dtype=np.int32),
            "c": np.array([[-5, 3000000000]], dtype=np.int64),
            "d": np.array([True, False, True]),
            "e": np.array([0.1], dtype=np.float32),
        },
        {
            "a": np.array(
                [[0.1, 0.2, 0.3], [-1.0, 0.0, 2.5], [1e10, -3.75, 0.125]],
                dtype=np.float64,
            ),
            "b": np.array([0, 41], dtype=np.int32),
            "c": np.array([[1, -1]], dtype=np.int64),
            "d": np.array([False, False, True]),
            "e": np.array([0.1, 0.2, 0.3], dtype=np.float32),
        },
    ]
    sess, results = _save_and_reference("tensors", model, cases)
    for feeds, out in zip(cases, results):
        assert np.array_equal(out["a2"], feeds["a"] * 2)
        assert np.array_equal(out["b1"], feeds["b"] + 1)
        assert np.array_equal(out["c3"], feeds["c"] * 3)
        assert np.array_equal(out["nd"], ~feeds["d"])
        assert out["esum"].shape == () and out["esum"].dtype == np.float32
    _describe(sess)


def build_dtypes() -> None:
    """The Open Inference Protocol's other datatypes: unsigned and narrow
    integers, float16 and strings (BYTES), each passed through, plus two
    outputs computed from them."""
    T = TensorProto
    kinds = [
        ("u8", T.UINT8, ["N", 4]),
        ("u16", T.UINT16, [2]),
        ("u32", T.UINT32, [2]),
        ("u64", T.UINT64, [2]),
        ("i8", T.INT8, [2]),
        ("i16", T.INT16, [2]),
        ("h", T.FLOAT16, ["N"]),
        ("s", T.STRING, ["N"]),
    ]
    inputs = [helper.make_tensor_value_info(n, t, shape) for n, t, shape in kinds]
    outputs = [helper.make_tensor_value_info(f"{n}_out", t, shape) for n, t, shape in kinds]
    outputs += [
        helper.make_tensor_value_info("u8_sum", T.FLOAT, []),
        helper.make_tensor_value_info("h_double", T.FLOAT, ["N"]),
    ]
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"], name=f"id_{n}") for n, _, _ in kinds]
    nodes += [
        helper.make_node("Cast", ["u8"], ["u8_f"], name="cast_u8", to=T.FLOAT),
        helper.make_node("ReduceSum", ["u8_f"], ["u8_sum"], name="sum_u8", keepdims=0),
        helper.make_node("Cast", ["h"], ["h_f"], name="cast_h", to=T.FLOAT),
        helper.make_node("Mul", ["h_f", "two_f32"], ["h_double"], name="double_h"),
    ]
    initializers = [helper.make_tensor("two_f32", T.FLOAT, [], [2.0])]
    graph = helper.make_graph(nodes, "taskmesh_dtypes", inputs, outputs, initializers)
    model = _pin_model_metadata(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    cases = [
        {
            "u8": np.array([[0, 1, 254, 255]], dtype=np.uint8),
            "u16": np.array([0, 65535], dtype=np.uint16),
            "u32": np.array([7, 4294967295], dtype=np.uint32),
            "u64": np.array([1, 18446744073709551615], dtype=np.uint64),
            "i8": np.array([-128, 127], dtype=np.int8),
            "i16": np.array([-32768, 32767], dtype=np.int16),
            "h": np.array([0.5, -1.25, 65504.0], dtype=np.float16),
            "s": np.array(["hello", "wörld", ""], dtype=object),
        },
    ]
    sess, results = _save_and_reference("dtypes", model, cases)
    for feeds, out in zip(cases, results):
        for n, _, _ in kinds:
            assert np.array_equal(out[f"{n}_out"], feeds[n]), n
        assert out["u8_sum"] == np.float32(feeds["u8"].astype(np.float32).sum())
    _describe(sess)


def _ort_session(data: bytes, quiet: bool = False):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if quiet:
        opts.log_severity_level = 4  # fatal only: no log line for expected failures
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _save_test_model(name: str, model: onnx.ModelProto, quiet: bool = False):
    """Check and save a test-only model as tests/models/<name>/model.onnx
    (no reference.json); return an onnxruntime session for it."""
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    out_dir = TEST_MODELS / name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(data)
    print(
        f"[{name}] tests/models/{name}/model.onnx {len(data)} bytes"
        f" sha256={hashlib.sha256(data).hexdigest()[:16]}…"
    )
    return _ort_session(data, quiet)


# The slow model: cost is about SLOW_LAYERS * N * SLOW_WIDTH^2 multiply-adds.
# With onnxruntime on one thread (2-core dev machine) one run took about
# 3 ms for N=1, 50-55 ms for N=64 and 410-440 ms for N=512.
SLOW_WIDTH = 512
SLOW_LAYERS = 128


def build_slow() -> None:
    T = TensorProto
    rng = np.random.default_rng(0)
    # Scaled by 1/sqrt(width) so that h @ W keeps h's magnitude; Tanh bounds it.
    weight = (rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / np.sqrt(SLOW_WIDTH)).astype(
        np.float32
    )
    nodes = []
    h = "x"
    for i in range(SLOW_LAYERS):
        out = "y" if i == SLOW_LAYERS - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [h, "W"], [f"m{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out], name=f"tanh{i}"))
        h = out
    graph = helper.make_graph(
        nodes,
        "taskmesh_slow",
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", SLOW_WIDTH])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["N", SLOW_WIDTH])],
        [onnx.numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model = _pin_model_metadata(model)

    sess = _save_test_model("slow", model)
    for n in (1, 64, 512):
        x = rng.standard_normal((n, SLOW_WIDTH)).astype(np.float32)
        sess.run(["y"], {"x": x})  # warm-up
        t0 = time.perf_counter()
        (y,) = sess.run(["y"], {"x": x})
        ms = (time.perf_counter() - t0) * 1e3
        assert y.shape == (n, SLOW_WIDTH) and y.dtype == np.float32
        assert np.all(np.isfinite(y)) and float(np.abs(y).max()) <= 1.0
        print(f"[slow] N={n}: one run {ms:.1f} ms (1 thread), mean |y| {float(np.abs(y).mean()):.3f}")
    _describe(sess)


def build_addpair() -> None:
    T = TensorProto
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"], name="add")],
        "taskmesh_addpair",
        [
            helper.make_tensor_value_info("a", T.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", T.FLOAT, ["M", 3]),
        ],
        [helper.make_tensor_value_info("s", T.FLOAT, [None, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model = _pin_model_metadata(model)

    sess = _save_test_model("addpair", model, quiet=True)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    for b in (np.ones((2, 3), np.float32), np.ones((1, 3), np.float32)):
        (s,) = sess.run(["s"], {"a": a, "b": b})
        assert np.array_equal(s, a + b)
    (s,) = sess.run(["s"], {"a": a[:1], "b": np.ones((4, 3), np.float32)})
    assert s.shape == (4, 3)
    try:
        sess.run(["s"], {"a": a, "b": np.ones((3, 3), np.float32)})
    except Exception as err:  # onnxruntime's Fail / RuntimeException
        print(f"[addpair] N=2, M=3 fails as intended: {type(err).__name__}: {str(err).strip()}")
    else:
        raise AssertionError("addpair: N=2, M=3 should fail to broadcast")
    _describe(sess)


def build_exfil() -> None:
    """A hostile test model: its one initializer keeps its bytes "outside the
    model" at a path relative to where it is loaded (the operator key of
    `taskmesh up`), and the graph returns them. Taskmesh must refuse it at
    upload and on the node. Not checked with onnx.checker (which would look
    for the file) and never run here."""
    T = TensorProto
    stolen = TensorProto()
    stolen.name = "stolen"
    stolen.data_type = T.UINT8
    stolen.dims.extend([16])
    stolen.data_location = TensorProto.EXTERNAL
    entry = stolen.external_data.add()
    entry.key, entry.value = "location", ".taskmesh/admin.key"
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["stolen"], ["leak"], name="leak"),
            helper.make_node("Identity", ["x"], ["y"], name="pass"),
        ],
        "taskmesh_exfil",
        [helper.make_tensor_value_info("x", T.FLOAT, ["N", 1])],
        [
            helper.make_tensor_value_info("y", T.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("leak", T.UINT8, [16]),
        ],
        [stolen],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model = _pin_model_metadata(model)
    data = model.SerializeToString()
    out_dir = TEST_MODELS / "exfil"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(data)
    print(f"[exfil] tests/models/exfil/model.onnx {len(data)} bytes (external data: .taskmesh/admin.key)")


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _signature(sess):
    """Inputs and outputs as onnxruntime reports them: name, dtype, shape
    (symbolic dimensions as their names, unknown ones as null)."""
    dtypes = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32"}

    def one(it):
        return {
            "name": it.name,
            "dtype": dtypes.get(it.type, it.type),
            "shape": [d if isinstance(d, (int, str)) else None for d in it.shape],
        }

    return {
        "inputs": [one(i) for i in sess.get_inputs()],
        "outputs": [one(o) for o in sess.get_outputs()],
    }


# --- minilm-embed -------------------------------------------------------------

MINILM_DIR = EXAMPLES / "minilm-embed"
MINILM_MAX_LENGTH = 128
MINILM_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "set a timer for ten minutes",
]


def _mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of hidden [B, S, H] over the positions where mask [B, S] is 1,
    then L2-normalised; computed in float64, returned as float32 [B, H]."""
    m = mask.astype(np.float64)[:, :, None]
    summed = (hidden.astype(np.float64) * m).sum(axis=1)
    mean = summed / np.maximum(m.sum(axis=1), 1e-9)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32)


def build_minilm() -> None:
    from tokenizers import Tokenizer, __version__ as tokenizers_version

    model_path = MINILM_DIR / "model.onnx"
    tok_path = MINILM_DIR / "tokenizer.json"
    for path in (model_path, tok_path):
        if not path.is_file():
            raise SystemExit(f"[minilm-embed] {path} is missing: run scripts/setup.sh")

    # The tokenizer.json pads and truncates to a fixed 128: turn padding off for
    # the reference ids, keep truncation at 128.
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    tok.enable_truncation(max_length=MINILM_MAX_LENGTH)
    padded_tok = Tokenizer.from_file(str(tok_path))
    padded_tok.enable_padding(length=MINILM_MAX_LENGTH, pad_id=0, pad_type_id=0, pad_token="[PAD]")
    padded_tok.enable_truncation(max_length=MINILM_MAX_LENGTH)

    sess = _ort_session(model_path.read_bytes())
    signature = _signature(sess)
    out_names = [o.name for o in sess.get_outputs()]
    assert out_names == ["last_hidden_state"], out_names

    cases = []
    embeddings = []
    padded_diffs = []
    for text in MINILM_SENTENCES:
        enc = tok.encode(text)
        feeds = {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        }
        (hidden,) = sess.run(out_names, feeds)
        emb = _mean_pool_normalise(hidden, feeds["attention_mask"])[0]
        embeddings.append(emb)

        # The same sentence padded to 128 with attention mask 0 on the pads.
        penc = padded_tok.encode(text)
        assert penc.ids[: len(enc.ids)] == enc.ids and len(penc.ids) == MINILM_MAX_LENGTH
        pfeeds = {
            "input_ids": np.array([penc.ids], dtype=np.int64),
            "attention_mask": np.array([penc.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([penc.type_ids], dtype=np.int64),
        }
        (phidden,) = sess.run(out_names, pfeeds)
        pemb = _mean_pool_normalise(phidden, pfeeds["attention_mask"])[0]
        padded_diffs.append(float(np.max(np.abs(pemb.astype(np.float64) - emb))))

        cases.append(
            {
                "text": text,
                "input_ids": list(enc.ids),
                "attention_mask": list(enc.attention_mask),
                "token_type_ids": list(enc.type_ids),
                "tokens": list(enc.tokens),
                "embedding": _to_json_value(emb),
                # The raw model run, in the same form as the other examples.
                "input": {k: _tensor_json(v) for k, v in feeds.items()},
                "outputs": {"last_hidden_state": _tensor_json(hidden)},
            }
        )

    E = np.array(embeddings, dtype=np.float64)
    cosines = [
        {"a": i, "b": j, "cosine": float(E[i] @ E[j])} for i in range(3) for j in range(i + 1, 3)
    ]
    cos = {(c["a"], c["b"]): c["cosine"] for c in cosines}
    padded_max = max(padded_diffs)

    # Sanity checks against the published numbers (shared/MODELS.md).
    assert abs(cos[(0, 1)] - 0.7535) < 1e-3, cos
    assert abs(cos[(0, 2)] - (-0.105)) < 2e-3, cos
    assert cases[3]["input_ids"] == [101, 2275, 1037, 25309, 2005, 2702, 2781, 102], cases[3]
    for c in cases:
        assert c["input_ids"][0] == 101 and c["input_ids"][-1] == 102
        assert set(c["attention_mask"]) == {1} and set(c["token_type_ids"]) == {0}

    model_bytes = model_path.read_bytes()
    _write_json(
        MINILM_DIR / "reference.json",
        {
            "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
            "tokenizer_sha256": _sha256_file(tok_path),
            "tokenizers_version": tokenizers_version,
            "signature": signature,
            "tokenization": {
                "padding": None,
                "truncation": {"max_length": MINILM_MAX_LENGTH},
                "add_special_tokens": True,
            },
            "pooling": "mean of last_hidden_state over attention_mask, then L2-normalised",
            "embedding_dim": int(E.shape[1]),
            "cases": cases,
            "cosines": cosines,
            "padded_to_128": {
                "max_abs_diff": padded_max,
                "equal_within_1e-5": bool(padded_max <= 1e-5),
            },
        },
    )
    _write_json(MINILM_DIR / "sample.json", {"text": MINILM_SENTENCES[0]})
    print(
        f"[minilm-embed] model.onnx {len(model_bytes)} bytes; tokenizers {tokenizers_version};"
        f" cos(0,1)={cos[(0, 1)]:.4f} cos(0,2)={cos[(0, 2)]:.4f} cos(1,2)={cos[(1, 2)]:.4f}"
    )
    print(
        f"[minilm-embed] ids of {MINILM_SENTENCES[3]!r}: {cases[3]['input_ids']};"
        f" padded-to-128 vs unpadded embedding max |diff| {padded_max:.2e}"
        f" ({'within' if padded_max <= 1e-5 else 'NOT within'} 1e-5)"
    )
    _describe(sess)


# --- fashion-mnist ------------------------------------------------------------

FASHION_DIR = EXAMPLES / "fashion-mnist"
FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_REFERENCE_CASES = 200


def _fashion_data_dir() -> Path:
    env = os.environ.get("FASHION_MNIST_DIR")
    return Path(env) if env else EXAMPLES.parent / ".deps" / "datasets" / "fashion-mnist"


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd): magic 0x0801 (labels) or 0x0803 (images), big-endian."""
    data = gzip.decompress(path.read_bytes())
    magic = int.from_bytes(data[:4], "big")
    if magic == 0x0801:
        n = int.from_bytes(data[4:8], "big")
        arr = np.frombuffer(data, dtype=np.uint8, offset=8)
        assert arr.size == n, (path, arr.size, n)
        return arr
    if magic == 0x0803:
        n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
        arr = np.frombuffer(data, dtype=np.uint8, offset=16)
        assert arr.size == n * rows * cols, (path, arr.size)
        return arr.reshape(n, rows, cols)
    raise ValueError(f"{path}: not an IDX file (magic {magic:#x})")


def _png_base64(img: np.ndarray) -> str:
    """28x28 uint8 -> base64 of an 8-bit grayscale PNG (Pillow, lossless)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    data = buf.getvalue()
    # Round trip: the PNG must decode to exactly the same pixels.
    back = Image.open(io.BytesIO(data))
    assert back.mode == "L" and back.size == (28, 28)
    back = np.asarray(back)
    assert back.dtype == np.uint8 and np.array_equal(back, img)
    return base64.b64encode(data).decode("ascii")


def build_fashion() -> None:
    data_dir = _fashion_data_dir()
    files = {
        k: data_dir / f"{k}-ubyte.gz"
        for k in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
    }
    for path in files.values():
        if not path.is_file():
            raise SystemExit(f"[fashion-mnist] {path} is missing: run scripts/setup.sh")
    train_img = _read_idx(files["train-images-idx3"])
    train_lbl = _read_idx(files["train-labels-idx1"])
    test_img = _read_idx(files["t10k-images-idx3"])
    test_lbl = _read_idx(files["t10k-labels-idx1"])
    assert train_img.shape == (60000, 28, 28) and train_lbl.shape == (60000,)
    assert test_img.shape == (10000, 28, 28) and test_lbl.shape == (10000,)

    # Scaling used everywhere (training, reference, and what a client must do
    # with a decoded PNG): float32(pixel) / 255, correctly rounded.
    X_train = train_img.reshape(-1, 784).astype(np.float32) / np.float32(255)
    X_test = test_img.reshape(-1, 784).astype(np.float32) / np.float32(255)
    y_train = train_lbl.astype(np.int64)
    y_test = test_lbl.astype(np.int64)

    t0 = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=15, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        clf.fit(X_train, y_train)
    train_s = time.perf_counter() - t0

    model = to_onnx(
        clf,
        initial_types=[("float_input", FloatTensorType([None, 784]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    model = _pin_model_metadata(model)
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    FASHION_DIR.mkdir(parents=True, exist_ok=True)
    (FASHION_DIR / "model.onnx").write_bytes(data)

    sess = _ort_session(data)
    signature = _signature(sess)
    labels, probs = sess.run(["label", "probabilities"], {"float_input": X_test})
    assert labels.dtype == np.int64 and probs.dtype == np.float32 and probs.shape == (10000, 10)
    onnx_acc = float(np.mean(labels == y_test))
    skl_acc = float(clf.score(X_test, y_test))
    agree = float(np.mean(labels == clf.predict(X_test)))

    cases = []
    for i in range(FASHION_REFERENCE_CASES):
        # One image per run, as a client would send it.
        lab, pr = sess.run(["label", "probabilities"], {"float_input": X_test[i : i + 1]})
        cases.append(
            {
                "index": i,
                "image": _png_base64(test_img[i]),
                "true_label": int(y_test[i]),
                "predicted_label": int(lab[0]),
                "probabilities": _to_json_value(pr[0]),
            }
        )

    _write_json(
        FASHION_DIR / "reference.json",
        {
            "model_sha256": hashlib.sha256(data).hexdigest(),
            "signature": signature,
            "labels": FASHION_LABELS,
            "input_scaling": "float32 pixel / 255, row-major 28x28 -> [1, 784]",
            "test_accuracy": onnx_acc,
            "test_size": int(len(y_test)),
            "cases": cases,
        },
    )

    first_label = int(y_test[0])
    assert FASHION_LABELS[first_label] == "Ankle boot", first_label
    _write_json(FASHION_DIR / "sample.json", {"image": cases[0]["image"]}, compact=True)
    (FASHION_DIR / "sample_label.txt").write_text(f"{FASHION_LABELS[first_label]}\n")

    print(
        f"[fashion-mnist] model.onnx {len(data)} bytes"
        f" sha256={hashlib.sha256(data).hexdigest()[:16]}… trained in {train_s:.1f}s"
        f" (n_iter={clf.n_iter_})"
    )
    print(
        f"[fashion-mnist] test accuracy: sklearn={skl_acc:.4f} onnx={onnx_acc:.4f}"
        f" (onnx/sklearn agreement {agree:.4f}); reference cases={len(cases)},"
        f" {sum(c['predicted_label'] == c['true_label'] for c in cases)} correct"
    )
    print(
        f"[fashion-mnist] sample.json = test image 0; true label {FASHION_LABELS[first_label]},"
        f" predicted {FASHION_LABELS[cases[0]['predicted_label']]}"
    )
    _describe(sess)


BUILDERS = {
    "digits": build_digits,
    "iris": build_iris,
    "tensors": build_tensors,
    "dtypes": build_dtypes,
    "slow": build_slow,
    "addpair": build_addpair,
    "exfil": build_exfil,
    "minilm-embed": build_minilm,
    "fashion-mnist": build_fashion,
}


def main(argv) -> int:
    names = argv or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        print(f"unknown example(s): {unknown}; known: {list(BUILDERS)}", file=sys.stderr)
        return 2
    print(
        f"build_examples: onnxruntime {ort.__version__}, onnx {onnx.__version__},"
        f" numpy {np.__version__}, opset {OPSET} (ai.onnx.ml {ML_OPSET}), ir {IR_VERSION};"
        f" building {', '.join(names)}"
    )
    for name in names:
        BUILDERS[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
