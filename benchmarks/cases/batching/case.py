"""Dynamic batching: the same function with and without `batching`, through the
router, at 1, 8 and 64 concurrent calls, for a tiny model (digits) and
MiniLM. See README.md beside this file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from common import ROOT, Load, Taskmesh, h2load, http, log, median

# Per model: the example it comes from, and the batching settings. The two
# definitions of a model differ only in `batching`; both get the same
# `scaling` (one instance, room in the queue for every call in flight), which
# batching needs so that concurrent calls meet in one place.
MODELS = {
    "digits": {
        "example": "digits",
        # Batching needs a dynamic first dimension; the unbatched twin gets it too.
        "inputs": {"pixels": {"tensor": "float_input", "dtype": "float32", "shape": [-1, 64]}},
        "batching": {"max_batch_size": 64, "max_delay_us": 500},
    },
    "minilm": {
        "example": "minilm-embed",
        "batching": {"max_batch_size": 64, "max_delay_us": 5000},
    },
}
SCALING = {"min_instances": 0, "max_instances": 1, "concurrency": 128, "idle_timeout_s": 600}
VARIANTS = ("unbatched", "batched")


def upload_artifact(tm: Taskmesh, path: Path) -> str:
    st, _, body = http("POST", f"{tm.admin}/v1/artifacts", path.read_bytes(), tm.auth)
    if st not in (200, 201):
        raise RuntimeError(f"artifact upload {path}: {st} {body[:500]!r}")
    return json.loads(body)["digest"]


def definitions(tm: Taskmesh, model: str) -> dict[str, dict]:
    """{variant: definition} for one model; identical but for `batching` and the name."""
    spec = MODELS[model]
    ex = ROOT / "examples" / spec["example"]
    d = json.loads((ex / "function.json").read_text())
    d["model"] = tm.upload_model(ex / "model.onnx")
    for binding in d["inputs"].values():
        text = binding.get("text")
        if isinstance(text, dict) and str(text.get("tokenizer", "")).startswith("./"):
            text["tokenizer"] = upload_artifact(tm, ex / text["tokenizer"])
    if "inputs" in spec:
        d["inputs"] = spec["inputs"]
    d["scaling"] = dict(SCALING)
    d.pop("batching", None)
    out = {}
    for variant in VARIANTS:
        v = json.loads(json.dumps(d))
        v["name"] = f"{model}-{variant}"
        if variant == "batched":
            v["batching"] = dict(spec["batching"])
        out[variant] = v
    return out


def body_file(model: str) -> Path:
    return ROOT / "examples" / MODELS[model]["example"] / "sample.json"


def invoke(tm: Taskmesh, name: str, body: bytes, timeout: float = 15.0) -> tuple[int, dict | None]:
    st, _, out = http(
        "POST",
        f"{tm.router}/v1/functions/{name}/invoke",
        body,
        {**tm.auth, "content-type": "application/json"},
        timeout=timeout,
    )
    try:
        return st, json.loads(out)
    except ValueError:
        return st, None


def close(a, b, tol: float) -> bool:
    """Same JSON structure, numbers within `tol`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


METRIC = re.compile(r'^taskmesh_runtime_batch_size_(count|sum)\{tenant="[^"]*",function="([^"]+)"\}\s+([0-9.eE+-]+)', re.M)


def batch_counters(tm: Taskmesh) -> dict[str, tuple[float, float]]:
    """{function: (runs, calls)} from the node's batch-size histogram (router /metrics)."""
    st, _, out = http("GET", f"{tm.router}/metrics", headers=tm.auth, timeout=10)
    runs: dict[str, float] = {}
    calls: dict[str, float] = {}
    if st == 200:
        for kind, fn, value in METRIC.findall(out.decode(errors="replace")):
            (runs if kind == "count" else calls)[fn] = float(value)
    return {fn: (runs.get(fn, 0.0), calls.get(fn, 0.0)) for fn in set(runs) | set(calls)}


class Stack:
    """One `taskmesh up` with both variants of every model registered and warm."""

    def __init__(self, ctx, work: Path):
        self.tm = Taskmesh(work / "taskmesh", ctx.server_cpus)
        try:
            self.defs = {m: definitions(self.tm, m) for m in MODELS}
            for variants in self.defs.values():
                for d in variants.values():
                    self.tm.register(d)
            self.reference = {}
            for m, variants in self.defs.items():
                body = body_file(m).read_bytes()
                answers = {}
                for variant, d in variants.items():
                    st, out = invoke(self.tm, d["name"], body, timeout=60)
                    if st != 200:
                        raise RuntimeError(f"batching: {d['name']} answered {st}: {out}")
                    answers[variant] = out
                # Batching must not change the answer.
                if not close(answers["unbatched"], answers["batched"], 1e-4):
                    raise RuntimeError(f"batching: {m}: batched and unbatched answers differ")
                self.reference[m] = answers["unbatched"]
        except BaseException:
            self.tm.stop()
            raise

    def healthy(self, model: str) -> bool:
        body = body_file(model).read_bytes()
        return all(invoke(self.tm, d["name"], body, timeout=10)[0] == 200 for d in self.defs[model].values())

    def stop(self):
        self.tm.stop()


def run(ctx) -> dict:
    work = ctx.workdir / "batching"
    work.mkdir(parents=True, exist_ok=True)
    levels = ctx.batching_levels
    incidents: list[dict] = []
    stack = Stack(ctx, work)
    reps: dict = {m: {str(c): {v: [] for v in VARIANTS} for c in levels} for m in MODELS}
    last = "start"
    try:
        for rep in range(ctx.reps):
            for m in MODELS:
                for c in levels:
                    # The two variants take turns, in an order flipped every repetition.
                    order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
                    for variant in order:
                        for attempt in (1, 2):
                            if not stack.healthy(m):
                                incidents.append({"after": last, "before": f"rep {rep + 1} {m} c={c} {variant}",
                                                  "what": f"{m} stopped answering; stack restarted"})  # fmt: skip
                                log(f"batching: INCIDENT: {m} stopped answering after {last}; restarting")
                                stack.stop()
                                stack = Stack(ctx, work)
                            name = stack.defs[m][variant]["name"]
                            before = batch_counters(stack.tm).get(name, (0.0, 0.0))
                            try:
                                r = h2load(
                                    Load(url=f"{stack.tm.router}/v1/functions/{name}/invoke", body=body_file(m),
                                         headers={"content-type": "application/json", **stack.tm.auth},
                                         conns=c, streams=1, duration=ctx.batching_duration,
                                         warmup=ctx.batching_warmup),
                                    ctx.loadgen_cpus, work / "h2load",
                                )  # fmt: skip
                                break
                            except RuntimeError as e:
                                if attempt == 2 or stack.healthy(m):
                                    raise
                                last = f"{last}, then during rep {rep + 1} {m} c={c} {variant} ({str(e).splitlines()[0][:120]})"
                        after = batch_counters(stack.tm).get(name, (0.0, 0.0))
                        runs, calls = after[0] - before[0], after[1] - before[1]
                        r["batch_runs"] = runs
                        r["batch_calls"] = calls
                        r["mean_batch_size"] = calls / runs if runs else (1.0 if variant == "unbatched" else None)
                        last = f"rep {rep + 1} {m} c={c} {variant}"
                        reps[m][str(c)][variant].append(r)
                        mb = r["mean_batch_size"]
                        log(f"batching rep {rep + 1}/{ctx.reps} {m:7s} c={c:<3d} {variant:9s} "
                            f"{r['rps']:8.0f} req/s  p50 {r['p50_us']:8.0f} µs  p99 {r['p99_us']:8.0f} µs"
                            + (f"  mean batch {mb:.1f}" if mb else ""))  # fmt: skip
    finally:
        stack.stop()

    out: dict = {"levels": levels, "scaling": SCALING, "models": {}, "incidents": incidents,
                 "duration_s": ctx.batching_duration, "warmup_s": ctx.batching_warmup}  # fmt: skip
    for m, spec in MODELS.items():
        d = stack.defs[m]["batched"]
        row: dict = {
            "example": spec["example"],
            "batching": spec["batching"],
            "definition": {k: v for k, v in d.items() if k not in ("model", "name")},
            "levels": {},
        }
        for c in levels:
            lv: dict = {}
            for variant in VARIANTS:
                rs = reps[m][str(c)][variant]
                lv[variant] = {
                    "rps": median([r["rps"] for r in rs]),
                    "p50_us": median([r["p50_us"] for r in rs]),
                    "p99_us": median([r["p99_us"] for r in rs]),
                    "mean_batch_size": median([r["mean_batch_size"] for r in rs if r.get("mean_batch_size")]),
                    "reps": rs,
                }
            b, u = lv["batched"], lv["unbatched"]
            lv["ratio"] = {
                "throughput": b["rps"] / u["rps"],
                "p50": b["p50_us"] / u["p50_us"],
                "p99": b["p99_us"] / u["p99_us"],
                "added_p50_us": b["p50_us"] - u["p50_us"],
            }
            row["levels"][str(c)] = lv
        out["models"][m] = row
    return out
