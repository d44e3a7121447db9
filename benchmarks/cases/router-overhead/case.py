"""Router overhead: the same runtime node, called directly, through the Taskmesh
router, through HAProxy (h2c both sides) and through NGINX (h2c in front,
HTTP/1.1 behind). See README.md beside this file."""

from __future__ import annotations

import json
import time
import shutil
from pathlib import Path

from common import (
    ROOT,
    Load,
    Taskmesh,
    descendants,
    free_port,
    h2c_post,
    http,
    h2load,
    log,
    median,
    pinned,
    proc_cpu_seconds,
    start,
    stop,
    thread_cpu_seconds,
    tree_cpu_seconds,
    wait_until,
)

HERE = Path(__file__).resolve().parent
FUNCTION = "digits-rl"


def digits_rl(digest: str, in_flight: int) -> dict:
    """The digits example (input_schema, output_schema, timeout) plus a rate
    limit so generous it never triggers: the check runs on every call.

    The node queues at most `max_instances × concurrency` calls per version and
    sheds the rest with 503 `overloaded`; the throughput load keeps
    conns × streams calls in flight, so the queue is made big enough for it."""
    d = json.loads((ROOT / "examples/digits/function.json").read_text())
    d["name"] = FUNCTION
    d["model"] = digest
    d["rate_limit"] = {"per_second": 1000000, "burst": 1000000}
    scaling = d.setdefault("scaling", {})
    scaling["max_instances"] = max(1, scaling.get("max_instances", 4))
    scaling["concurrency"] = max(scaling.get("concurrency", 8), -(-2 * in_flight // scaling["max_instances"]))
    return d


def start_haproxy(workdir: Path, node: str, cpus: list[int]):
    port = free_port()
    cfg = (HERE / "haproxy.cfg.in").read_text()
    cfg = cfg.replace("@THREADS@", str(len(cpus))).replace("@LISTEN@", f"127.0.0.1:{port}")
    cfg = cfg.replace("@NODE@", node.removeprefix("http://"))
    path = workdir / "haproxy.cfg"
    path.write_text(cfg)
    logp = workdir / "haproxy.log"
    p = start(pinned(["haproxy", "-db", "-f", str(path)], cpus), logp)
    url = f"http://127.0.0.1:{port}"
    return p, url, logp


def start_nginx(workdir: Path, node: str, cpus: list[int]):
    port = free_port()
    prefix = workdir / "nginx"
    if prefix.exists():
        shutil.rmtree(prefix)
    prefix.mkdir(parents=True)
    cfg = (HERE / "nginx.conf.in").read_text()
    cfg = cfg.replace("@WORKERS@", str(len(cpus))).replace("@PREFIX@", str(prefix))
    cfg = cfg.replace("@LISTEN@", f"127.0.0.1:{port}").replace("@NODE@", node.removeprefix("http://"))
    path = prefix / "nginx.conf"
    path.write_text(cfg)
    logp = workdir / "nginx.log"
    p = start(pinned(["nginx", "-p", str(prefix), "-c", str(path)], cpus), logp)
    return p, f"http://127.0.0.1:{port}", logp


ROUTER_THREADS = ("Pingora", "taskmesh-router", "BG ")


def router_threads(tm: Taskmesh) -> float:
    """CPU seconds of the router's threads, by name: Pingora's workers
    ("Pingora HTTP Pr..."), its main thread ("taskmesh-router") and background
    services ("BG ..."). The node, admin API and ONNX Runtime run on tokio
    ("tokio-rt-worker", blocking threads included) and "taskmesh" threads."""
    per = thread_cpu_seconds(tm.pid)
    return sum(v for k, v in per.items() if k.startswith(ROUTER_THREADS))


BODY = ROOT / "examples/digits/sample.json"
PATH = f"/v1/functions/{FUNCTION}/invoke"


class Stack:
    """Taskmesh (router + node) plus HAProxy and NGINX in front of its node."""

    def __init__(self, ctx, work: Path):
        self.procs = []
        self.why = ""
        self.tm = tm = Taskmesh(work / "taskmesh", ctx.server_cpus)
        try:
            digest = tm.upload_model(ROOT / "examples/digits/model.onnx")
            tm.register(digits_rl(digest, ctx.conns * ctx.streams))
            # The same headers for every target: the router replaces the
            # cluster key with its own; HAProxy and NGINX pass it to the node.
            self.headers = {"content-type": "application/json", **tm.auth,
                            "x-taskmesh-cluster-key": tm.cluster_key}
            self.targets: dict[str, dict] = {
                "direct": {"url": tm.node + PATH, "peer_cpu": None,
                           "what": "runtime node, no proxy"},
                "taskmesh": {"url": tm.router + PATH, "peer_cpu": None,
                             "what": "Taskmesh router (auth, schema, rate limit, breaker, hashing)"},
            }  # fmt: skip
            if shutil.which("haproxy"):
                hp, hurl, hlog = start_haproxy(work, tm.node, ctx.server_cpus)
                self.procs.append(hp)
                self.targets["haproxy"] = {"url": hurl + PATH, "peer_cpu": (lambda p=hp: tree_cpu_seconds(p.pid)),
                                           "what": "HAProxy, h2c in front and to the node", "proc": hp, "log": hlog}  # fmt: skip
            else:
                log("router-overhead: haproxy not installed, skipped")
            if shutil.which("nginx"):
                ng, nurl, nlog = start_nginx(work, tm.node, ctx.server_cpus)
                self.procs.append(ng)
                self.targets["nginx"] = {"url": nurl + PATH, "peer_cpu": (lambda p=ng: tree_cpu_seconds(p.pid)),
                                         "what": "NGINX, h2c in front, HTTP/1.1 keep-alive to the node", "proc": ng, "log": nlog}  # fmt: skip
            else:
                log("router-overhead: nginx not installed, skipped")
            # Each target answers one call (and warms the model) before anything is timed.
            for name, t in self.targets.items():
                def ok(u=t["url"]):
                    return h2c_post(u, BODY, self.headers, timeout=5) == 200
                wait_until(ok, 30, f"router-overhead: {name}", t.get("proc"), t.get("log"))
        except BaseException:
            self.stop()
            raise

    def healthy(self) -> bool:
        """The node answers a call within 3 s (or, if not, within 3 s once
        more after a 2 s pause: a node still draining the previous load is
        slow, not wedged). When it does not, `self.why` says what it answered
        and what its pool of digits-rl looked like."""
        statuses = []
        for attempt in (1, 2):
            statuses.append(h2c_post(self.tm.node + PATH, BODY, self.headers, timeout=3))
            if statuses[-1] == 200:
                if attempt == 2:
                    log(f"router-overhead: the node answered {statuses[0]}, then 200 after a pause (draining, not wedged)")
                return True
            if attempt == 1:
                time.sleep(2)
        try:
            _, _, nodes = http("GET", self.tm.admin + "/v1/nodes", headers=self.tm.auth, timeout=3)
            pool = [f for n in json.loads(nodes)["nodes"] for f in n.get("warm", []) if f["function"] == FUNCTION]
        except Exception as e:  # noqa: BLE001 - a diagnosis, never a failure
            pool = f"GET /v1/nodes failed: {e}"
        self.why = f"answers {statuses} (0: no answer within 3 s), pool {pool}"
        log(f"router-overhead: the node does not answer {FUNCTION}: {self.why}")
        return False

    def stop(self):
        for p in self.procs:
            stop(p)
        self.tm.stop()


def run(ctx) -> dict:
    work = ctx.workdir / "router-overhead"
    work.mkdir(parents=True, exist_ok=True)
    loads = {
        "latency": dict(conns=1, streams=1),
        "throughput": dict(conns=ctx.conns, streams=ctx.streams),
    }
    # The node can stop serving a function after a burst of calls abandoned
    # mid-flight (HTTP/1.1 connections closed with calls in flight, as NGINX
    # does to its upstream when h2load stops): every later call then times
    # out (504) or is shed (503). The harness checks the node before each
    # run, and when it no longer answers, records an incident and restarts
    # the whole stack, so the other paths can still be measured. Incidents
    # are listed in the summary: they are findings, not noise.
    incidents: list[dict] = []
    stack = Stack(ctx, work)
    targets = {n: {k: v for k, v in t.items() if k not in ("proc", "log", "url", "peer_cpu")}
               for n, t in stack.targets.items()}  # fmt: skip
    reps: dict[str, dict[str, list]] = {n: {k: [] for k in loads} for n in targets}
    last = "start"
    try:
        names = list(targets)
        for rep in range(ctx.reps):
            # Targets interleaved within a repetition, in an order rotated each
            # repetition, so drift and disturbances hit them all alike.
            for name in names[rep % len(names):] + names[: rep % len(names)]:
                for kind, shape in loads.items():
                    for attempt in (1, 2):
                        if not stack.healthy():
                            incidents.append({"after": last, "before": f"rep {rep + 1} {name} {kind}",
                                              "what": f"node stopped answering digits-rl: {stack.why}; stack restarted"})  # fmt: skip
                            log(f"router-overhead: INCIDENT: the node stopped answering after {last}; restarting")
                            stack.stop()
                            stack = Stack(ctx, work)
                        t = stack.targets[name]
                        tm = stack.tm
                        watch = {"taskmesh": tm.cpu, "taskmesh_router_threads": lambda tm=tm: router_threads(tm)}
                        if t["peer_cpu"]:
                            watch["proxy"] = t["peer_cpu"]
                        try:
                            r = h2load(
                                Load(url=t["url"], body=BODY, headers=stack.headers, duration=ctx.duration,
                                     warmup=ctx.warmup, **shape),
                                ctx.loadgen_cpus, work / "h2load", watch=watch,
                            )  # fmt: skip
                            break
                        except RuntimeError as e:
                            if attempt == 2 or stack.healthy():
                                raise
                            # It wedged during this run: restart (recorded above) and retry once.
                            last = f"{last}, then during rep {rep + 1} {name} {kind} ({str(e).splitlines()[0][:120]})"
                    last = f"rep {rep + 1} {name} {kind}"
                    reps[name][kind].append(r)
                    log(f"router-overhead rep {rep + 1}/{ctx.reps} {name:9s} {kind:10s} "
                        f"{r['rps']:9.0f} req/s  p50 {r['p50_us']:7.0f} µs  p99 {r['p99_us']:7.0f} µs")  # fmt: skip
        if not stack.healthy():
            incidents.append({"after": last, "before": "end",
                              "what": f"node stopped answering digits-rl: {stack.why}"})  # fmt: skip
        out = summarize(targets, reps)
        out["incidents"] = incidents
        return out
    finally:
        stack.stop()


def summarize(targets, reps) -> dict:
    out = {"function": FUNCTION, "targets": {}, "ratios": {}}
    for name, t in targets.items():
        lat = reps[name]["latency"]
        thr = reps[name]["throughput"]
        row = {
            "what": t["what"],
            "latency_p50_us": median([r["p50_us"] for r in lat]),
            "latency_p90_us": median([r["p90_us"] for r in lat]),
            "latency_p99_us": median([r["p99_us"] for r in lat]),
            "latency_rps": median([r["rps"] for r in lat]),
            "throughput_rps": median([r["rps"] for r in thr]),
            "throughput_p50_us": median([r["p50_us"] for r in thr]),
            "throughput_p99_us": median([r["p99_us"] for r in thr]),
            "cpu_us_per_req_taskmesh": median([r.get("cpu_us_per_req_taskmesh") for r in thr]),
            "cpu_us_per_req_taskmesh_router_threads": median(
                [r.get("cpu_us_per_req_taskmesh_router_threads") for r in thr]
            ),
            "cpu_us_per_req_proxy": median([r.get("cpu_us_per_req_proxy") for r in thr])
            if name in ("haproxy", "nginx")
            else None,
            "reps": {"latency": lat, "throughput": thr},
        }
        out["targets"][name] = row
    d = out["targets"]["direct"]
    for name, row in out["targets"].items():
        if name == "direct":
            continue
        # CPU the proxy layer costs per request: the proxy's own process, or for
        # Taskmesh (router and node in one process) its CPU minus the direct run's.
        if name == "taskmesh":
            proxy_cpu = row["cpu_us_per_req_taskmesh"] - d["cpu_us_per_req_taskmesh"]
        else:
            proxy_cpu = row["cpu_us_per_req_proxy"]
        paired = [r["p50_us"] - dr["p50_us"] for r, dr in zip(row["reps"]["latency"], d["reps"]["latency"])]
        out["ratios"][name] = {
            "added_p50_us_paired": median(paired),
            "p50_vs_direct": row["latency_p50_us"] / d["latency_p50_us"],
            "p99_vs_direct": row["latency_p99_us"] / d["latency_p99_us"],
            "added_p50_us": row["latency_p50_us"] - d["latency_p50_us"],
            "added_p99_us": row["latency_p99_us"] - d["latency_p99_us"],
            "throughput_vs_direct": row["throughput_rps"] / d["throughput_rps"],
            "proxy_cpu_us_per_req": proxy_cpu,
        }
    return out
