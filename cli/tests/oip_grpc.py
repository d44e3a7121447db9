"""The Open Inference Protocol over gRPC against a running `taskmesh up`: the
official Triton gRPC client (tritonclient 2.73, grpcio) with its defaults.

Outputs must equal onnxruntime's in Python (each example's reference.json).
Prints one JSON object of findings; cli/tests/oip_clients.rs asserts on it.
Run with PYTHONPATH=.deps/python-triton.
"""
import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

URL = os.environ["TASKMESH_ROUTER"]  # host:port, h2c
KEY = os.environ["TASKMESH_KEY"]
EXAMPLES = os.environ["TASKMESH_EXAMPLES"]

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "BYTES": np.object_,
}


def auth():
    return {"authorization": "Bearer " + KEY}


client = grpcclient.InferenceServerClient(url=URL)
found = {"failures": []}


def cases(name):
    with open(f"{EXAMPLES}/{name}/reference.json") as f:
        return json.load(f)["cases"]


def same(got, want, what):
    if want.dtype == np.object_:
        got_list = [g.decode() if isinstance(g, bytes) else g for g in got.reshape(-1)]
        ok = got_list == list(want.reshape(-1))
    elif np.issubdtype(want.dtype, np.floating):
        ok = got.shape == want.shape and got.dtype == want.dtype and np.allclose(got, want, rtol=1e-6, atol=0)
    else:
        ok = got.shape == want.shape and got.dtype == want.dtype and np.array_equal(got, want)
    if not ok:
        found["failures"].append(f"{what}: got {got!r}, want {want!r}")


def infer(name, named_outputs):
    meta = client.get_model_metadata(name, headers=auth(), as_json=True)
    in_types = {t["name"]: t["datatype"] for t in meta["inputs"]}
    out_types = {t["name"]: t["datatype"] for t in meta["outputs"]}
    for n, case in enumerate(cases(name)):
        inputs = []
        for tensor, value in case["input"].items():
            arr = np.array(value["data"], dtype=NUMPY[in_types[tensor]]).reshape(value["shape"])
            item = grpcclient.InferInput(tensor, list(arr.shape), in_types[tensor])
            item.set_data_from_numpy(arr)
            inputs.append(item)
        outputs = [grpcclient.InferRequestedOutput(o) for o in case["outputs"]] if named_outputs else None
        result = client.infer(name, inputs, outputs=outputs, headers=auth(), request_id=f"r{n}")
        if result.get_response().id != f"r{n}":
            found["failures"].append(f"{name}: id {result.get_response().id!r}")
        for tensor, value in case["outputs"].items():
            want = np.array(value["data"], dtype=NUMPY[out_types[tensor]]).reshape(value["shape"])
            same(result.as_numpy(tensor), want, f"{name} case {n} {tensor}")
    found.setdefault("inferred", []).append(f"{name}/{'named' if named_outputs else 'all'}")


found["live"] = client.is_server_live(headers=auth())
found["ready"] = client.is_server_ready(headers=auth())
found["server"] = client.get_server_metadata(headers=auth(), as_json=True)
found["model_ready"] = client.is_model_ready("digits", headers=auth())
found["digits_inputs"] = client.get_model_metadata("digits", headers=auth(), as_json=True)["inputs"]
for name in ("digits", "tensors", "dtypes"):
    for named in (False, True):
        try:
            infer(name, named)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            found["failures"].append(f"{name} named={named}: {type(e).__name__}: {e}")

# Errors are gRPC statuses with the server's message.
def status_of(call):
    try:
        call()
        return None
    except InferenceServerException as e:
        return [e.status(), e.message()]

wrong = grpcclient.InferInput("float_input", [2, 64], "FP32")
wrong.set_data_from_numpy(np.zeros((2, 64), dtype=np.float32))
found["bad_shape"] = status_of(lambda: client.infer("digits", [wrong], headers=auth()))
found["unknown_model"] = status_of(lambda: client.get_model_metadata("no-such-model", headers=auth()))
found["unauthenticated"] = status_of(
    lambda: client.infer("digits", [wrong], headers={"authorization": "Bearer tm_nobody_0"}))
zeros = grpcclient.InferInput("float_input", [1, 64], "FP32")
zeros.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
found["deadline"] = status_of(lambda: client.infer("hurried", [zeros], headers=auth()))
json.dump(found, sys.stdout)
