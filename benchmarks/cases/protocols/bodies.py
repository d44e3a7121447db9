"""Writes the request bodies of the protocols case for the digits sample, and
checks the gRPC path answers the right label. Runs with
PYTHONPATH=.deps/python-triton (tritonclient's generated protobuf classes and
its gRPC client), apart from the benchmark's own Python environment.

    python3 bodies.py OUT_DIR ROUTER_HOST:PORT API_KEY
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2

ROOT = Path(__file__).resolve().parents[3]
out, router, key = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
pixels = json.loads((ROOT / "examples/digits/sample.json").read_text())["pixels"]
raw = struct.pack(f"<{len(pixels)}f", *pixels)

(out / "invoke.json").write_text(json.dumps({"pixels": pixels}))
(out / "infer.json").write_text(json.dumps(
    {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": pixels}]}))
head = json.dumps({
    "inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)}}],
    "outputs": [{"name": "label", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"binary_data": True}}],
}).encode()
(out / "infer.bin").write_bytes(head + raw)
(out / "infer.bin.header-length").write_text(str(len(head)))

request = service_pb2.ModelInferRequest(model_name="digits")
tensor = request.inputs.add()
tensor.name, tensor.datatype = "float_input", "FP32"
tensor.shape.extend([1, 64])
request.raw_input_contents.append(raw)
message = request.SerializeToString()
(out / "infer.grpc").write_bytes(b"\0" + struct.pack(">I", len(message)) + message)

# The gRPC path must answer what onnxruntime does (label 2 for the sample):
# h2load counts a gRPC error (a 200 with grpc-status) as a success.
client = grpcclient.InferenceServerClient(url=router)
item = grpcclient.InferInput("float_input", [1, 64], "FP32")
item.set_data_from_numpy(np.array(pixels, dtype=np.float32).reshape(1, 64))
label = client.infer("digits", [item], headers={"authorization": f"Bearer {key}"}).as_numpy("label")
if int(label[0]) != 2:
    sys.exit(f"gRPC answered label {label!r}, expected 2")
print("bodies written; the gRPC path answers label 2")
