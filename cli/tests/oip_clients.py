"""Open Inference Protocol clients against a running `taskmesh up`: the
official Triton HTTP client (tritonclient 2.73) with its defaults (binary
inputs and outputs), with JSON, and a plain KServe-style JSON client.

Outputs must equal onnxruntime's in Python (each example's reference.json,
written by examples/build_examples.py). Prints one JSON object of findings;
cli/tests/oip_clients.rs asserts on it. Run with PYTHONPATH=.deps/python-triton.
"""
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

URL = os.environ["TASKMESH_ROUTER"]  # host:port
KEY = os.environ["TASKMESH_KEY"]
EXAMPLES = os.environ["TASKMESH_EXAMPLES"]


def auth():
    # A fresh dict per call: tritonclient adds Inference-Header-Content-Length
    # to the headers dict it is given, which would follow into later calls.
    return {"authorization": "Bearer " + KEY}


NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}

client = httpclient.InferenceServerClient(url=URL)
found = {"failures": []}


def cases(name):
    with open(f"{EXAMPLES}/{name}/reference.json") as f:
        return json.load(f)["cases"]


def same(got, want, what):
    if want.dtype == np.object_:
        got = [g.decode() if isinstance(g, bytes) else g for g in got.reshape(-1)]
        ok = got == list(want.reshape(-1))
    elif np.issubdtype(want.dtype, np.floating):
        ok = got.shape == want.shape and np.allclose(got, want, rtol=1e-6, atol=0, equal_nan=True)
    else:
        ok = got.shape == want.shape and np.array_equal(got, want)
    if not ok or (hasattr(got, "dtype") and want.dtype != np.object_ and got.dtype != want.dtype):
        found["failures"].append(f"{what}: got {got!r}, want {want!r}")


def infer(name, mode):
    """mode: 'default' (binary in and out, no outputs named), 'binary' (outputs
    named, binary), 'json' (JSON in and out)."""
    meta = client.get_model_metadata(name, headers=auth())
    in_types = {t["name"]: t["datatype"] for t in meta["inputs"]}
    out_types = {t["name"]: t["datatype"] for t in meta["outputs"]}
    for n, case in enumerate(cases(name)):
        inputs = []
        for tensor, value in case["input"].items():
            arr = np.array(value["data"], dtype=NUMPY[in_types[tensor]]).reshape(value["shape"])
            item = httpclient.InferInput(tensor, list(arr.shape), in_types[tensor])
            item.set_data_from_numpy(arr, binary_data=(mode != "json"))
            inputs.append(item)
        outputs = None
        if mode != "default":
            outputs = [httpclient.InferRequestedOutput(o, binary_data=(mode == "binary"))
                       for o in case["outputs"]]
        result = client.infer(name, inputs, outputs=outputs, headers=auth())
        for tensor, value in case["outputs"].items():
            want = np.array(value["data"], dtype=NUMPY[out_types[tensor]]).reshape(value["shape"])
            same(result.as_numpy(tensor), want, f"{name} case {n} {mode} {tensor}")
    found.setdefault("inferred", []).append(f"{name}/{mode}")


def kserve_json(name):
    """A plain HTTP/JSON client, as the protocol's spec writes requests."""
    case = cases(name)[0]
    types = {i["name"]: i["datatype"] for i in client.get_model_metadata(name, headers=auth())["inputs"]}
    body = {"id": "req-1", "inputs": [
        {"name": t, "shape": v["shape"], "datatype": types[t], "data": v["data"]}
        for t, v in case["input"].items()]}
    request = urllib.request.Request(
        f"http://{URL}/v2/models/{name}/infer", data=json.dumps(body).encode(),
        headers={**auth(), "content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        answer = json.load(r)
    found["kserve_id"] = answer.get("id")
    for out in answer["outputs"]:
        want = case["outputs"][out["name"]]
        got = np.array(out["data"], dtype=NUMPY[out["datatype"]]).reshape(out["shape"])
        same(got, np.array(want["data"], dtype=NUMPY[out["datatype"]]).reshape(want["shape"]),
             f"kserve {name} {out['name']}")
    # Errors on /v2 paths carry the protocol's body: {"error": "<message>"}.
    bad = dict(body, inputs=body["inputs"][:0])
    request = urllib.request.Request(
        f"http://{URL}/v2/models/{name}/infer", data=json.dumps(bad).encode(),
        headers={**auth(), "content-type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(request, timeout=30)
        found["failures"].append("an infer request without inputs was answered 200")
    except urllib.error.HTTPError as e:
        found["kserve_error"] = [e.code, json.loads(e.read())]


found["live"] = client.is_server_live(headers=auth())
found["ready"] = client.is_server_ready(headers=auth())
found["server"] = client.get_server_metadata(headers=auth())
found["model_ready"] = client.is_model_ready("digits", headers=auth())
found["unknown_ready"] = client.is_model_ready("no-such-model", headers=auth())
found["digits_inputs"] = client.get_model_metadata("digits", headers=auth())["inputs"]
for name in ("digits", "tensors", "dtypes"):
    for mode in ("default", "binary", "json"):
        try:
            infer(name, mode)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            found["failures"].append(f"{name} {mode}: {type(e).__name__}: {e}")
try:
    kserve_json("digits")
except urllib.error.HTTPError as e:
    found["failures"].append(f"kserve json: {e.code} {e.read()!r}")

# A bad request gives the client a clean exception with the server's message.
try:
    wrong = httpclient.InferInput("float_input", [2, 64], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 64), dtype=np.float32))
    client.infer("digits", [wrong], headers=auth())
    found["failures"].append("a [2, 64] input to a [1, 64] model was answered")
except InferenceServerException as e:
    found["bad_request"] = [e.status(), e.message()]
try:
    client.infer("digits", [], headers={"authorization": "Bearer tm_nobody_0000"})
except InferenceServerException as e:
    found["unauthenticated"] = [e.status(), e.message()]

json.dump(found, sys.stdout)
