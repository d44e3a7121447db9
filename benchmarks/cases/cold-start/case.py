"""Cold start per example model: first call vs warm calls on a fresh platform.

For each repetition: a fresh `taskmesh up --no-examples` (empty data dir),
then for every example that has a model.onnx, a definition and a sample input:
register it with `taskmesh fn register` (timed; the CLI uploads the model and
any tokenizer first), then call it over one kept-alive HTTP/1.1
connection: the first call (a cold start: the node builds the ONNX Runtime
session), then `warm_calls` more. See README.md."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import time
from pathlib import Path

from common import ROOT, TASKMESH_BIN, Taskmesh, example_input, log, median, percentile


def definition_file(ex: Path) -> Path:
    for n in ("function.json", "function.yaml", "function.yml"):
        if (ex / n).exists():
            return ex / n
    raise FileNotFoundError(f"{ex}: no definition")


def function_name(ex: Path) -> str:
    f = definition_file(ex)
    if f.suffix == ".json":
        return json.loads(f.read_text())["name"]
    m = re.search(r"^name:\s*['\"]?([a-z][a-z0-9_-]*)", f.read_text(), re.M)
    if not m:
        raise ValueError(f"{f}: no top-level name")
    return m.group(1)


def discover() -> list[Path]:
    out = []
    for model in sorted(ROOT.glob("examples/*/model.onnx")):
        ex = model.parent
        if example_input(ex) is None:
            log(f"cold-start: {ex.name}: no sample input, skipped")
            continue
        if not any((ex / n).exists() for n in ("function.json", "function.yaml", "function.yml")):
            continue
        out.append(ex)
    return out


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cold_parts(log_path: Path, name: str, wait_s: float = 1.0) -> dict:
    """The node's own account of a cold start (fetch, load, first run), from its
    `cold start` log line (info level of taskmesh_runtime::engine); {} if the
    node does not log one."""
    deadline = time.monotonic() + wait_s
    while True:
        text = ANSI.sub("", log_path.read_text(errors="replace")) if log_path.exists() else ""
        for line in reversed(text.splitlines()):
            if "cold start" in line and re.search(rf'function="?{re.escape(name)}"?(\s|$)', line):
                return {k: float(v) for k, v in re.findall(r"(\w+_ms)=([0-9.eE+-]+)", line)}
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def call(conn: http.client.HTTPConnection, name: str, body: bytes, headers: dict) -> tuple[float, dict, int]:
    t = time.perf_counter()
    conn.request("POST", f"/v1/functions/{name}/invoke", body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    dt = (time.perf_counter() - t) * 1e3
    return dt, {k.lower(): v for k, v in r.getheaders()}, r.status


def run(ctx) -> dict:
    work = ctx.workdir / "cold-start"
    examples = discover()
    reps: dict[str, list[dict]] = {ex.name: [] for ex in examples}
    startups = []
    for rep in range(ctx.reps):
        tm = Taskmesh(work / "taskmesh", ctx.server_cpus,
                      env={"TASKMESH_LOG": "warn,taskmesh_runtime::engine=info"})  # fmt: skip
        startups.append(tm.startup_s * 1e3)
        try:
            for ex in examples:
                # The CLI uploads what the definition names by path (the model,
                # a tokenizer) and registers it: what an operator runs.
                t1 = time.perf_counter()
                p = subprocess.run(
                    [str(TASKMESH_BIN), "fn", "register", "--admin-url", tm.admin, str(definition_file(ex))],
                    capture_output=True, text=True, env={**os.environ, "TASKMESH_API_KEY": tm.key},
                )  # fmt: skip
                t2 = time.perf_counter()
                if p.returncode != 0:
                    raise RuntimeError(f"cold-start: registering {ex.name} failed: {p.stderr[-1500:]}")
                name = function_name(ex)
                body = json.dumps(example_input(ex)).encode()
                headers = {"content-type": "application/json", **tm.auth}
                conn = http.client.HTTPConnection("127.0.0.1", tm.port, timeout=60)
                conn.request("GET", "/healthz")  # the connection is up before timing
                conn.getresponse().read()
                first, h, st = call(conn, name, body, headers)
                if st != 200:
                    raise RuntimeError(f"cold-start: {name} answered {st}")
                warm, flags = [], []
                for _ in range(ctx.warm_calls):
                    dt, hw, st = call(conn, name, body, headers)
                    if st != 200:
                        raise RuntimeError(f"cold-start: {name} answered {st}")
                    warm.append(dt)
                    flags.append(hw.get("x-taskmesh-cold-start"))
                conn.close()
                parts = cold_parts(tm.log_path, name)
                warm.sort()
                r = {
                    "model_bytes": (ex / "model.onnx").stat().st_size,
                    "register_ms": (t2 - t1) * 1e3,
                    "first_ms": first,
                    "first_cold_start_header": h.get("x-taskmesh-cold-start"),
                    "warm_p50_ms": median(warm),
                    "warm_p90_ms": percentile(warm, 90),
                    "warm_cold_start_headers": sorted(set(flags)),
                    **{f"node_{k}": v for k, v in parts.items()},
                }
                reps[ex.name].append(r)
                log(f"cold-start rep {rep + 1}/{ctx.reps} {ex.name:14s} register {r['register_ms']:7.1f} ms  "
                    f"first {first:8.2f} ms (cold-start: {r['first_cold_start_header']})  "
                    f"warm p50 {r['warm_p50_ms']:7.2f} ms  node: {parts or 'no cold start line'}")  # fmt: skip
        finally:
            tm.stop()
    out = {"warm_calls": ctx.warm_calls, "startup_ms": median(startups), "models": {}}
    for name, rs in reps.items():
        keys = ["model_bytes", "register_ms", "first_ms", "warm_p50_ms", "warm_p90_ms"]
        keys += sorted({k for r in rs for k in r if k.startswith("node_")})
        row = {k: median([r.get(k) for r in rs]) for k in keys}
        row["first_vs_warm"] = row["first_ms"] / row["warm_p50_ms"]
        row["cold_extra_ms"] = row["first_ms"] - row["warm_p50_ms"]
        row["first_cold_start_headers"] = sorted({str(r["first_cold_start_header"]) for r in rs})
        row["warm_cold_start_headers"] = sorted({str(x) for r in rs for x in r["warm_cold_start_headers"]})
        row["reps"] = rs
        out["models"][name] = row
    return out
