"""The floor: bare ONNX Runtime, in-process, single-threaded, no I/O.

For every example model (examples/*/model.onnx), builds the input tensors of
the example's sample once, then times `session.run` call by call with
`time.perf_counter_ns`. The session uses one intra-op and one inter-op thread,
as Taskmesh's node does by default (`session_threads = 1`).

This is the Python binding over the same libonnxruntime 1.31 that Taskmesh
loads; a call through it costs a few µs more than a call through the C API
(argument conversion, GIL), so the true floor is slightly lower still.

Usage: python3 floor.py --out floor.json [--calls N] [--warmup N] [--seconds S]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks" / "lib"))
from common import example_input, latency_summary  # noqa: E402

NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(float16)": np.float16,
    "tensor(string)": np.object_,
}


def feeds_for(example: Path, session: ort.InferenceSession) -> tuple[dict, str] | None:
    """The model's input tensors for the example's first case: (feeds, source).

    Taken from reference.json when it records the model's inputs (tensor name
    -> shape + data); else, for an image input, decoded from the sample PNG
    with Pillow as the definition's `image` step says. None when neither fits.
    """
    ref_path = example / "reference.json"
    ref = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    case = (ref.get("cases") or [{}])[0]
    given = case.get("input") if isinstance(case.get("input"), dict) else None
    inputs = session.get_inputs()
    if given and all(i.name in given for i in inputs):
        feeds = {}
        for i in inputs:
            t = given[i.name]
            feeds[i.name] = np.asarray(t["data"], dtype=NUMPY[i.type]).reshape(t["shape"])
        return feeds, "reference.json tensors"
    definition = example / "function.json"
    if definition.exists() and len(inputs) == 1:
        bindings = json.loads(definition.read_text())["inputs"]
        body = example_input(example) or {}
        for field, b in bindings.items():
            spec = b.get("image") if isinstance(b, dict) else None
            if spec and field in body:
                import base64
                import io

                from PIL import Image

                img = Image.open(io.BytesIO(base64.b64decode(body[field])))
                if spec.get("grayscale"):
                    img = img.convert("L")
                if spec.get("resize"):
                    img = img.resize(tuple(spec["resize"]))
                arr = np.asarray(img, dtype=np.float32) / float(spec.get("scale", 1.0))
                return {inputs[0].name: arr.reshape(1, -1)}, "sample PNG decoded with Pillow (decode not timed)"
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=5.0, help="time cap per model (large models)")
    args = ap.parse_args()

    results = {"onnxruntime": ort.__version__, "threads": 1, "calls": args.calls, "models": {}}
    models = sorted(ROOT.glob("examples/*/model.onnx"))
    if models:
        # The first session of a process also creates ONNX Runtime's environment
        # (once per process, as in Taskmesh's node); keep that out of the timings.
        ort.InferenceSession(str(models[0]), providers=["CPUExecutionProvider"])
    for model in models:
        example = model.parent
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        t0 = time.perf_counter_ns()
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        load_us = (time.perf_counter_ns() - t0) / 1e3
        found = feeds_for(example, session)
        if found is None:
            print(f"[floor] {example.name}: no sample input, skipped", flush=True)
            continue
        feeds, source = found
        outputs = [o.name for o in session.get_outputs()]
        first_t0 = time.perf_counter_ns()
        session.run(outputs, feeds)
        first_us = (time.perf_counter_ns() - first_t0) / 1e3
        warm_deadline = time.monotonic() + args.seconds / 5
        for _ in range(args.warmup):
            session.run(outputs, feeds)
            if time.monotonic() > warm_deadline:
                break
        times = []
        run = session.run
        clock = time.perf_counter_ns
        deadline = time.monotonic() + args.seconds
        for _ in range(args.calls):
            t = clock()
            run(outputs, feeds)
            times.append((clock() - t) / 1e3)
            if len(times) >= 50 and time.monotonic() > deadline:
                break
        summary = latency_summary(times)
        summary.update(
            {
                "session_load_us": load_us,
                "first_run_us": first_us,
                "calls_per_s_one_thread": 1e6 / statistics.fmean(times),
                "inputs": {k: list(v.shape) for k, v in feeds.items()},
                "input_source": source,
            }
        )
        results["models"][example.name] = summary
        print(
            f"[floor] {example.name:10s} p50 {summary['p50_us']:7.1f} µs  p99 {summary['p99_us']:7.1f} µs"
            f"  (session load {load_us / 1e3:.1f} ms)",
            flush=True,
        )
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
