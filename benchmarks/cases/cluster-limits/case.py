"""Cluster-wide limits and the result cache: in cluster mode (redis-server,
`taskmesh registry`, `taskmesh node`, `taskmesh router`), the same digits
function three ways through the same router, side by side in one run:
  - `plain`: no rate limit, no quota;
  - `limited`: a cluster-wide rate limit and daily quota (Redis), so generous
    they never refuse: the cost of keeping them is what is measured;
  - `cached`: `cache` on, the same input every time: every call after the
    first is a hit answered by the router;
and the node called directly as the floor. See README.md beside this file."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from common import (
    ROOT,
    TASKMESH_BIN,
    Load,
    free_port,
    h2load,
    http,
    median,
    pinned,
    proc_cpu_seconds,
    start,
    stop,
    wait_until,
)

OPERATOR_KEY = "tm_bench_operator_key_0123456789abcdef"
CLUSTER_KEY = "bench-cluster-key-0123456789abcdef0123456789"


def definition(name: str, digest: str, extra: dict) -> dict:
    d = json.loads((ROOT / "examples/digits/function.json").read_text())
    d["name"] = name
    d["model"] = digest
    d.setdefault("scaling", {}).update({"max_instances": 1, "concurrency": 256})
    d.update(extra)
    return d


VARIANTS = {
    "plain": {},
    "limited": {
        "rate_limit": {"per_second": 1000000, "burst": 1000000},
        "quota": {"per_day": 1000000000},
    },
    "cached": {"cache": {"ttl_s": 3600, "max_entries": 16}},
}


class Cluster:
    def __init__(self, work: Path, cpus: list[int]):
        self.work = work
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        self.procs = []
        redis_port = free_port()
        self.procs.append(start(pinned(["redis-server", "--port", str(redis_port), "--save", "",
                                        "--appendonly", "no", "--dir", str(work)], cpus),
                                work / "redis.log"))  # fmt: skip
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"],
                                          capture_output=True).returncode == 0, 20, "redis")  # fmt: skip
        self.redis = f"redis://127.0.0.1:{redis_port}"
        env = {"TASKMESH_ADMIN_KEY": OPERATOR_KEY, "TASKMESH_CLUSTER_KEY": CLUSTER_KEY,
               "TASKMESH_LOG": "warn"}  # fmt: skip
        shared = work / "models"
        shared.mkdir()
        self.admin = self.role("registry", cpus, env, ["--model-store", f"file://{shared}"])
        self.node = self.role("node", cpus, env, ["--model-store", f"file://{shared}"])
        self.router = self.role("router", cpus, env, [])
        self.router_pid = self.procs[-1].pid

    def role(self, role: str, cpus: list[int], env: dict, extra: list[str]) -> str:
        port = free_port()
        data = self.work / role
        data.mkdir()
        cmd = [str(TASKMESH_BIN), role, "--listen", f"127.0.0.1:{port}", "--redis", self.redis,
               "--data-dir", str(data), *extra]  # fmt: skip
        log_path = self.work / f"{role}.log"
        proc = start(pinned(cmd, cpus), log_path, env=env, cwd=ROOT)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http("GET", f"{url}/healthz", timeout=2)[0] == 200, 60, role, proc, log_path)
        return url

    @property
    def auth(self) -> dict:
        return {"authorization": f"Bearer {OPERATOR_KEY}"}

    def stop(self):
        for p in reversed(self.procs):
            stop(p)


def run(ctx) -> dict:
    cluster = Cluster(ctx.workdir / "cluster-limits", ctx.server_cpus)
    try:
        st, _, body = http("POST", f"{cluster.admin}/v1/models",
                           (ROOT / "examples/digits/model.onnx").read_bytes(), cluster.auth)  # fmt: skip
        if st not in (200, 201):
            raise RuntimeError(f"model upload: {st} {body[:300]!r}")
        digest = json.loads(body)["digest"]
        for name, extra in VARIANTS.items():
            doc = json.dumps(definition(name, digest, extra)).encode()
            st, _, out = http("POST", f"{cluster.admin}/v1/functions", doc,
                              {**cluster.auth, "content-type": "application/json"})  # fmt: skip
            if st != 201:
                raise RuntimeError(f"register {name}: {st} {out[:300]!r}")
        sample = ctx.workdir / "cluster-limits-sample.json"
        sample.write_text((ROOT / "examples/digits/sample.json").read_text())
        headers = {**cluster.auth, "content-type": "application/json"}
        targets = {f"router/{name}": f"{cluster.router}/v1/functions/{name}/invoke" for name in VARIANTS}
        targets["direct"] = f"{cluster.node}/v1/functions/plain/invoke"
        # Every target answers (and the router has seen each version) first.
        for name, url in targets.items():
            h = {**headers, "x-taskmesh-cluster-key": CLUSTER_KEY} if name == "direct" else headers
            deadline = time.monotonic() + 30
            while http("POST", url, sample.read_bytes(), h)[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} never answered 200")
                time.sleep(0.2)
        reps = []
        for _ in range(ctx.reps):
            rep = {}
            for name, url in targets.items():
                h = {**headers, "x-taskmesh-cluster-key": CLUSTER_KEY} if name == "direct" else headers
                watch = {"router": lambda: proc_cpu_seconds(cluster.router_pid)}
                one = h2load(Load(url=url, body=sample, headers=h, conns=1, streams=1,
                                  duration=ctx.duration, warmup=ctx.warmup),
                             ctx.loadgen_cpus, ctx.workdir, watch)  # fmt: skip
                many = h2load(Load(url=url, body=sample, headers=h, conns=4, streams=8,
                                   duration=ctx.duration, warmup=ctx.warmup),
                              ctx.loadgen_cpus, ctx.workdir, watch)  # fmt: skip
                rep[name] = {
                    "p50_us_1_stream": one["p50_us"],
                    "p99_us_1_stream": one["p99_us"],
                    "rps_4x8": many["rps"],
                    "router_cpu_us_per_req_4x8": many.get("cpu_us_per_req_router"),
                }
            reps.append(rep)
        return summarize(reps)
    finally:
        cluster.stop()


def summarize(reps: list[dict]) -> dict:
    names = list(reps[0])
    med = {n: {k: median([r[n][k] for r in reps if r[n].get(k) is not None] or [0]) for k in reps[0][n]}
           for n in names}  # fmt: skip
    plain = med["router/plain"]["p50_us_1_stream"]
    direct = med["direct"]["p50_us_1_stream"]
    return {
        "targets": med,
        "limits_cost_p50_us": round(med["router/limited"]["p50_us_1_stream"] - plain, 1),
        "router_added_p50_us": round(plain - direct, 1),
        "cache_hit_p50_us": med["router/cached"]["p50_us_1_stream"],
        "cache_hit_vs_direct_p50": round(med["router/cached"]["p50_us_1_stream"] / direct, 2) if direct else None,
        "limited_vs_plain_rps": round(med["router/limited"]["rps_4x8"] / med["router/plain"]["rps_4x8"], 2)
        if med["router/plain"]["rps_4x8"] else None,
        "reps": len(reps),
    }
