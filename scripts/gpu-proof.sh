#!/usr/bin/env bash
# Proves a GPU run on a machine with an NVIDIA GPU (CI has none; nothing runs this there).
#
#   1. installs the onnxruntime-gpu==1.31.1 wheel with the CUDA 13 and cuDNN 9 runtime
#      wheels its `cuda` and `cudnn` extras name (that wheel is built for CUDA 13, so the
#      host needs an NVIDIA driver >= 580) into .deps/gpu-python, and points
#      ORT_DYLIB_PATH at its libonnxruntime.so;
#   2. starts `taskmesh up`, registers the digits example twice: on the CPU and with
#      "resources": {"gpu": true};
#   3. invokes both with the same reference inputs and checks that the outputs agree
#      within 1e-4, that the node reports a GPU in GET /v1/nodes, and that the cold-start
#      log line of the GPU function says provider=cuda.
#
# Usage: bash scripts/gpu-proof.sh   (prints PASS or the reason it failed)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
bash scripts/setup.sh >/dev/null

GPU_PY="$ROOT/.deps/gpu-python"
if [[ ! -f "$GPU_PY/.stamp-ort-gpu-1.31.1-cu13" ]]; then
  python3 -m pip install --disable-pip-version-check -q --target "$GPU_PY" \
    "onnxruntime-gpu[cuda,cudnn]==1.31.1"
  touch "$GPU_PY/.stamp-ort-gpu-1.31.1-cu13"
fi
ORT_LIB=$(ls "$GPU_PY"/onnxruntime/capi/libonnxruntime.so.* | head -1)
# The CUDA provider library and the CUDA/cuDNN libraries from the wheels.
LIBS=$(find "$GPU_PY/nvidia" -name lib -type d | tr '\n' ':')
export LD_LIBRARY_PATH="$GPU_PY/onnxruntime/capi:${LIBS}${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH="$ORT_LIB"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || { echo "FAIL: no NVIDIA GPU visible"; exit 1; }
PYTHONPATH="$GPU_PY" python3 -c 'import onnxruntime as o; p=o.get_available_providers(); print("onnxruntime-gpu providers:", p); assert "CUDAExecutionProvider" in p'

cargo build --release -q -p taskmesh
DATA=$(mktemp -d)
LOG="$DATA/taskmesh.log"
TASKMESH_LOG=info ./target/release/taskmesh up --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:18081 \
  --data-dir "$DATA" --no-examples >"$DATA/stdout" 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "taskmesh is up" "$DATA/stdout" 2>/dev/null && break; sleep 0.2; done
KEY=$(cat "$DATA/admin.key")
export KEY DATA ROOT
python3 - <<'PY'
import json, os, subprocess, sys

key, root = os.environ["KEY"], os.environ["ROOT"]
def curl(method, url, body=None, ctype="application/json"):
    args = ["curl", "-s", "--http2-prior-knowledge", "-X", method, "-H", f"authorization: Bearer {key}"]
    if body is not None:
        args += ["-H", f"content-type: {ctype}", "--data-binary", "@-"]
    out = subprocess.run(args + [url], input=body, capture_output=True, check=True).stdout
    return json.loads(out)

digest = curl("POST", "http://127.0.0.1:18081/v1/models", open(f"{root}/examples/digits/model.onnx", "rb").read(), "application/octet-stream")["digest"]
definition = json.load(open(f"{root}/examples/digits/function.json"))
definition["model"] = digest
for name, gpu in [("digits-cpu", False), ("digits-gpu", True)]:
    d = dict(definition, name=name, resources={"gpu": gpu})
    print("registered", curl("POST", "http://127.0.0.1:18081/v1/functions", json.dumps(d).encode()))
nodes = curl("GET", "http://127.0.0.1:18081/v1/nodes")
print("node gpus:", nodes["nodes"][0]["gpus"])
assert nodes["nodes"][0]["gpus"] >= 1, "the node does not report a GPU"
reference = json.load(open(f"{root}/examples/digits/reference.json"))
worst = 0.0
for case in reference["cases"]:
    body = json.dumps({"pixels": case["input"]["float_input"]["data"]}).encode()
    cpu = curl("POST", "http://127.0.0.1:18080/v1/functions/digits-cpu/invoke", body)
    gpu = curl("POST", "http://127.0.0.1:18080/v1/functions/digits-gpu/invoke", body)
    assert "error" not in gpu, gpu
    assert cpu["label"] == gpu["label"], (cpu, gpu)
    worst = max(worst, max(abs(a - b) for a, b in zip(cpu["probabilities"], gpu["probabilities"])))
print(f"{len(reference['cases'])} cases: labels equal, largest probability difference {worst:.2e}")
assert worst < 1e-4
PY
PLAIN=$(sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep "cold start" || true)
echo "$PLAIN"
echo "$PLAIN" | grep "digits-gpu" | grep -q 'provider="cuda"' \
  || { echo "FAIL: no cold-start log line with provider=cuda"; exit 1; }
echo "PASS: digits ran on the CUDA execution provider and matched the CPU run"
