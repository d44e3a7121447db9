"""Tasks end to end on the digits example against one `taskmesh up`
(embedded task store): submit→result latency at low load against a
synchronous call measured in the same run, and tasks per second when a
backlog is submitted at once. See README.md."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from common import ROOT, Load, Taskmesh, h2load, http, log, median, percentile


def _poll(tm: Taskmesh, task_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st, _, out = http("GET", f"{tm.router}/v1/tasks/{task_id}", None, tm.auth, timeout=10)
        task = json.loads(out)
        if st != 200:
            raise RuntimeError(f"tasks: GET {task_id} answered {st}: {out[:300]!r}")
        if task["status"] in ("succeeded", "dead", "cancelled"):
            return task
        if time.monotonic() > deadline:
            raise RuntimeError(f"tasks: {task_id} still {task['status']} after {timeout} s")
        time.sleep(0.001)


def _succeeded(tm: Taskmesh) -> int:
    _, _, out = http("GET", f"{tm.router}/metrics", None, tm.auth, timeout=10)
    prefix = 'taskmesh_router_tasks_outcomes_total{tenant="default",function="digits",outcome="succeeded"} '
    for line in out.decode().splitlines():
        if line.startswith(prefix):
            return int(float(line[len(prefix):]))
    return 0


def run(ctx) -> dict:
    work = ctx.workdir / "tasks"
    work.mkdir(parents=True, exist_ok=True)
    tm = Taskmesh(work / "taskmesh", ctx.server_cpus)
    try:
        digest = tm.upload_model(ROOT / "examples/digits/model.onnx")
        d = json.loads((ROOT / "examples/digits/function.json").read_text())
        d["model"] = digest
        tm.register(d)
        body = (ROOT / "examples/digits/sample.json").read_bytes()
        headers = {"content-type": "application/json", **tm.auth}
        invoke = f"{tm.router}/v1/functions/digits/invoke"
        submit = f"{tm.router}/v1/functions/digits/tasks"

        # Low load: one call at a time, the same HTTP/1.1 client for both.
        calls = 20 if ctx.quick else 200
        sync_ms, task_ms = [], []
        for i in range(calls + 5):
            t0 = time.perf_counter()
            st, _, out = http("POST", invoke, body, headers, timeout=10)
            if st != 200:
                raise RuntimeError(f"tasks: invoke answered {st}: {out[:300]!r}")
            t1 = time.perf_counter()
            st, _, out = http("POST", submit, body, headers, timeout=10)
            if st != 202:
                raise RuntimeError(f"tasks: submit answered {st}: {out[:300]!r}")
            task = _poll(tm, json.loads(out)["task_id"])
            t2 = time.perf_counter()
            if task["status"] != "succeeded":
                raise RuntimeError(f"tasks: a task ended {task['status']}: {task}")
            if i >= 5:  # warm-up
                sync_ms.append((t1 - t0) * 1000)
                task_ms.append((t2 - t1) * 1000)
        sync_ms.sort()
        task_ms.sort()
        low = {
            "calls": calls,
            "sync_p50_ms": median(sync_ms),
            "sync_p99_ms": percentile(sync_ms, 99),
            "task_p50_ms": median(task_ms),
            "task_p99_ms": percentile(task_ms, 99),
        }
        low["added_p50_ms"] = low["task_p50_ms"] - low["sync_p50_ms"]
        low["ratio_p50"] = low["task_p50_ms"] / low["sync_p50_ms"]
        log(f"tasks low load: sync p50 {low['sync_p50_ms']:.2f} ms, submit→result p50 "
            f"{low['task_p50_ms']:.2f} ms (+{low['added_p50_ms']:.2f} ms)")  # fmt: skip

        # Throughput: a backlog submitted at once (16 submitters), then drained.
        n = 300 if ctx.quick else 3000
        before = _succeeded(tm)
        t0 = time.perf_counter()

        def one(_):
            st, _, out = http("POST", submit, body, headers, timeout=30)
            if st != 202:
                raise RuntimeError(f"tasks: submit answered {st}: {out[:300]!r}")

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(n)))
        submitted_s = time.perf_counter() - t0
        deadline = time.monotonic() + 600
        while _succeeded(tm) - before < n:
            if time.monotonic() > deadline:
                raise RuntimeError("tasks: the backlog did not drain in 600 s")
            time.sleep(0.05)
        drained_s = time.perf_counter() - t0
        backlog = {
            "tasks": n,
            "submit_per_s": n / submitted_s,
            "tasks_per_s": n / drained_s,
        }
        log(f"tasks backlog of {n}: submitted at {backlog['submit_per_s']:.0f}/s, "
            f"completed at {backlog['tasks_per_s']:.0f} tasks/s")  # fmt: skip

        # The synchronous baseline in the same run: h2load on the invoke path.
        sync = h2load(
            Load(url=invoke, body=ROOT / "examples/digits/sample.json", headers=headers,
                 duration=ctx.duration, warmup=ctx.warmup, conns=ctx.conns, streams=8),
            ctx.loadgen_cpus, work / "h2load",
        )  # fmt: skip
        backlog["sync_rps"] = sync["rps"]
        backlog["tasks_vs_sync_throughput"] = backlog["tasks_per_s"] / sync["rps"]
        return {"model": "digits", "store": "embedded (taskmesh up)", "low_load": low, "backlog": backlog}
    finally:
        tm.stop()
