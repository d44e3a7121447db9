"""The same call (digits, its sample) through each protocol the router
speaks, against one `taskmesh up`: the /v1 invoke (JSON), OIP REST with JSON,
OIP REST with binary tensors (Triton's extension), and OIP over gRPC. Latency
at one stream and throughput at `conns` × `streams`. See README.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import ROOT, Load, Taskmesh, h2load, http, log, median

HERE = Path(__file__).resolve().parent


def run(ctx) -> dict:
    work = ctx.workdir / "protocols"
    work.mkdir(parents=True, exist_ok=True)
    tm = Taskmesh(work / "taskmesh", ctx.server_cpus)
    try:
        digest = tm.upload_model(ROOT / "examples/digits/model.onnx")
        d = json.loads((ROOT / "examples/digits/function.json").read_text())
        d["model"] = digest
        tm.register(d)
        host = tm.router.removeprefix("http://")
        p = subprocess.run(
            [sys.executable, str(HERE / "bodies.py"), str(work), host, tm.key],
            env={"PYTHONPATH": str(ROOT / ".deps/python-triton")}, capture_output=True, text=True,
        )  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError(f"protocols: bodies.py failed:\n{p.stdout[-1000:]}\n{p.stderr[-2000:]}")
        header_length = (work / "infer.bin.header-length").read_text()
        json_headers = {"content-type": "application/json", **tm.auth}
        paths = {
            "v1-invoke-json": ("/v1/functions/digits/invoke", "invoke.json", json_headers),
            "oip-rest-json": ("/v2/models/digits/infer", "infer.json", json_headers),
            "oip-rest-binary": ("/v2/models/digits/infer", "infer.bin",
                                {"content-type": "application/octet-stream",
                                 "inference-header-content-length": header_length, **tm.auth}),
            "oip-grpc": ("/inference.GRPCInferenceService/ModelInfer", "infer.grpc",
                         {"content-type": "application/grpc", "te": "trailers", **tm.auth}),
        }  # fmt: skip
        for name, (path, body, headers) in paths.items():
            if name.startswith("oip-grpc"):
                continue  # checked by bodies.py with the gRPC client
            st, _, out = http("POST", tm.router + path, (work / body).read_bytes(), headers, timeout=10)
            if st != 200:
                raise RuntimeError(f"protocols: {name} answered {st}: {out[:300]!r}")
        shapes = {"one_stream": dict(conns=1, streams=1),
                  "loaded": dict(conns=ctx.conns, streams=8)}  # fmt: skip
        reps: dict = {}
        for rep in range(ctx.reps):
            for name, (path, body, headers) in paths.items():
                for shape, load in shapes.items():
                    r = h2load(
                        Load(url=tm.router + path, body=work / body, headers=headers,
                             duration=ctx.duration, warmup=ctx.warmup, **load),
                        ctx.loadgen_cpus, work / "h2load", watch={"server": tm.cpu},
                    )  # fmt: skip
                    reps.setdefault(name, {}).setdefault(shape, []).append(r)
                    log(f"protocols rep {rep + 1}/{ctx.reps} {name:16s} {shape:10s} "
                        f"{r['rps']:8.0f} req/s  p50 {r['p50_us']:6.0f} µs  "
                        f"cpu {r.get('cpu_us_per_req_server', 0):5.0f} µs/req")  # fmt: skip
        out = {"model": "digits", "paths": {}}
        for name, shapes_run in reps.items():
            out["paths"][name] = {
                shape: {
                    "rps": median([r["rps"] for r in rs]),
                    "p50_us": median([r["p50_us"] for r in rs]),
                    "p99_us": median([r["p99_us"] for r in rs]),
                    "cpu_us_per_req": median([r.get("cpu_us_per_req_server") for r in rs]),
                    "config": rs[0]["config"],
                }
                for shape, rs in shapes_run.items()
            }
        base = out["paths"]["oip-rest-json"]
        out["vs_rest_json"] = {
            name: {
                "p50": row["one_stream"]["p50_us"] / base["one_stream"]["p50_us"],
                "throughput": row["loaded"]["rps"] / base["loaded"]["rps"],
            }
            for name, row in out["paths"].items()
        }
        return out
    finally:
        tm.stop()
