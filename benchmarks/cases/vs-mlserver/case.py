"""Serving peer: MLServer (custom onnxruntime runtime) vs Taskmesh's OIP v2 infer,
same model, same request body, same protocol and concurrency. See README.md."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from common import (
    ROOT,
    Load,
    Taskmesh,
    free_port,
    h2load,
    http,
    log,
    median,
    pinned,
    start,
    stop,
    tree_cpu_seconds,
    wait_until,
)

HERE = Path(__file__).resolve().parent
MODEL = "digits"

# MLServer configurations: its default (inference in one separate worker
# process) and in-process inference (no IPC hop), to give it its best case.
MLSERVER_VARIANTS = {
    "mlserver": {"parallel_workers": 1},
    "mlserver-inproc": {"parallel_workers": 0},
}


def infer_body() -> dict:
    pixels = json.loads((ROOT / "examples/digits/sample.json").read_text())["pixels"]
    return {"inputs": [{"name": "float_input", "shape": [1, 64], "datatype": "FP32", "data": pixels}]}


def start_mlserver(work: Path, name: str, settings: dict, cpus: list[int]):
    folder = work / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / MODEL).mkdir(parents=True)
    shutil.copy(ROOT / "examples/digits/model.onnx", folder / MODEL / "model.onnx")
    shutil.copy(HERE / "onnx_runtime.py", folder / "onnx_runtime.py")
    port = free_port()
    server = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
        **settings,
    }
    (folder / "settings.json").write_text(json.dumps(server, indent=2))
    (folder / MODEL / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "onnx_runtime.OnnxRuntime",
                "parameters": {"uri": "./model.onnx"},
            },
            indent=2,
        )
    )
    logp = work / f"{name}.log"
    env = {"PYTHONPATH": f"{folder}:{':'.join(p for p in sys.path if p)}"}
    cmd = [sys.executable, "-m", "mlserver.cli.main", "start", str(folder)]
    p = start(pinned(cmd, cpus), logp, env=env, cwd=folder)
    return p, f"http://127.0.0.1:{port}", logp


def run(ctx) -> dict:
    work = ctx.workdir / "vs-mlserver"
    work.mkdir(parents=True, exist_ok=True)
    body_path = work / "infer.json"
    body_path.write_text(json.dumps(infer_body()))
    body = body_path.read_bytes()
    path = f"/v2/models/{MODEL}/infer"

    tm = Taskmesh(work / "taskmesh", ctx.server_cpus)
    procs = []
    try:
        digest = tm.upload_model(ROOT / "examples/digits/model.onnx")
        d = json.loads((ROOT / "examples/digits/function.json").read_text())
        d["model"] = digest
        tm.register(d)
        tm_headers = {"content-type": "application/json", **tm.auth}

        servers = {
            "taskmesh": {"url": tm.router + path, "headers": tm_headers, "cpu": tm.cpu,
                         "what": "Taskmesh router + node (one process), OIP v2 infer with an API key"},
        }  # fmt: skip
        skipped = None
        try:
            import mlserver  # noqa: F401
        except ImportError:
            skipped = "MLServer is not installed (.deps/bench-python, installed by run.sh); only Taskmesh was measured"
            log(f"vs-mlserver: SKIPPED the peer: {skipped}")
        else:
            for name, settings in MLSERVER_VARIANTS.items():
                p, url, logp = start_mlserver(work, name, settings, ctx.server_cpus)
                procs.append(p)
                servers[name] = {
                    "url": url + path,
                    "headers": {"content-type": "application/json"},
                    "cpu": (lambda p=p: tree_cpu_seconds(p.pid)),
                    "what": f"MLServer {mlserver_version()} (uvicorn), custom onnxruntime runtime, {settings}",
                    "proc": p,
                    "log": logp,
                }

        answers = {}
        for name, s in servers.items():
            def ok(s=s):
                st, _, out = http("POST", s["url"], body, s["headers"], timeout=5)
                if st == 200:
                    return json.loads(out)
                return None
            answers[name] = wait_until(ok, 120, f"vs-mlserver: {name}", s.get("proc"), s.get("log"))
        check_same_answer(answers)

        loads = {}
        for c in ctx.mlserver_concurrency:
            loads[f"h1_c{c}"] = dict(conns=c, streams=1, h1=True)
        reps: dict = {}
        for rep in range(ctx.reps):
            for name, s in servers.items():
                shapes = dict(loads)
                if name == "taskmesh":
                    # Taskmesh's native transport: one h2c connection, N streams.
                    for c in ctx.mlserver_concurrency:
                        shapes[f"h2c_m{c}"] = dict(conns=1, streams=c)
                for kind, shape in shapes.items():
                    r = h2load(
                        Load(url=s["url"], body=body_path, headers=s["headers"], duration=ctx.duration,
                             warmup=ctx.warmup, **shape),
                        ctx.loadgen_cpus, work / "h2load", watch={"server": s["cpu"]},
                    )  # fmt: skip
                    reps.setdefault(name, {}).setdefault(kind, []).append(r)
                    log(f"vs-mlserver rep {rep + 1}/{ctx.reps} {name:15s} {kind:7s} "
                        f"{r['rps']:8.0f} req/s  p50 {r['p50_us']:7.0f} µs  p99 {r['p99_us']:7.0f} µs")  # fmt: skip
        res = summarize(servers, reps, answers)
        if skipped:
            res["skipped"] = skipped
        return res
    finally:
        for p in procs:
            stop(p)
        tm.stop()


def mlserver_version() -> str:
    try:
        import mlserver

        return mlserver.__version__
    except Exception:  # noqa: BLE001
        return "?"


def check_same_answer(answers: dict) -> None:
    """Every server must return the same label for the sample (a 2)."""
    for name, a in answers.items():
        outs = {o["name"]: o for o in a.get("outputs", [])}
        label = outs.get("label", {}).get("data", [None])[0]
        if label != 2:
            raise RuntimeError(f"vs-mlserver: {name} answered label {label!r}: {json.dumps(a)[:400]}")


def summarize(servers, reps, answers) -> dict:
    out = {"model": MODEL, "servers": {}, "ratios": {}}
    for name, kinds in reps.items():
        row = {"what": servers[name]["what"], "loads": {}}
        for kind, rs in kinds.items():
            row["loads"][kind] = {
                "rps": median([r["rps"] for r in rs]),
                "p50_us": median([r["p50_us"] for r in rs]),
                "p99_us": median([r["p99_us"] for r in rs]),
                "cpu_us_per_req": median([r.get("cpu_us_per_req_server") for r in rs]),
                "config": rs[0]["config"],
                "reps": rs,
            }
        out["servers"][name] = row
    tm = out["servers"]["taskmesh"]["loads"]
    for name, row in out["servers"].items():
        if name == "taskmesh":
            continue
        out["ratios"][name] = {}
        for kind, v in row["loads"].items():
            t = tm[kind]
            out["ratios"][name][kind] = {
                "throughput_taskmesh_vs_peer": t["rps"] / v["rps"],
                "p50_taskmesh_vs_peer": t["p50_us"] / v["p50_us"],
                "p99_taskmesh_vs_peer": t["p99_us"] / v["p99_us"],
                "cpu_per_req_taskmesh_vs_peer": t["cpu_us_per_req"] / v["cpu_us_per_req"]
                if v["cpu_us_per_req"]
                else None,
            }
    return out
