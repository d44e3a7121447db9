"""Shared plumbing of the benchmark harness: processes, ports, h2load, statistics.

Only the standard library is used here, so every case can import it.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
# The cargo profile whose builds the harness runs: `release` for real numbers;
# `debug` in quick mode (run.sh sets it), which only checks that the harness
# works and reuses the debug build that scripts/test.sh leaves behind.
PROFILE = os.environ.get("TASKMESH_BENCH_PROFILE", "release")
if PROFILE not in ("release", "debug"):
    raise SystemExit(f"TASKMESH_BENCH_PROFILE must be release or debug, not {PROFILE!r}")
# TASKMESH_BENCH_BIN measures another build of the binary (an A/B run).
TASKMESH_BIN = Path(os.environ.get("TASKMESH_BENCH_BIN") or ROOT / "target" / PROFILE / "taskmesh")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------
# CPU pinning
# --------------------------------------------------------------------------


def cpu_split() -> tuple[list[int], list[int]]:
    """(load generator CPUs, server CPUs).

    The load generator gets one core, the servers the rest, so h2load never
    steals cycles from the process it measures. On a single-core machine both
    share it (and the summary says so).
    """
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get("TASKMESH_BENCH_UNPINNED") == "1":
        # Everything shares every core, as users deploy it without pinning.
        return cpus, cpus
    if len(cpus) < 2:
        return cpus, cpus
    return cpus[:1], cpus[1:]


def pinned(cmd: list[str], cpus: list[int]) -> list[str]:
    if shutil.which("taskset") and cpus:
        return ["taskset", "-c", ",".join(map(str, cpus))] + cmd
    return cmd


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

_STARTED: list[subprocess.Popen] = []


def start(cmd: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Starts a server process in its own process group, logging to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    p = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=str(cwd or ROOT),
        start_new_session=True,
    )
    _STARTED.append(p)
    return p


def stop(p: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Stops a process this harness started (its own group, by id)."""
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


def stop_all() -> None:
    for p in reversed(_STARTED):
        stop(p)


atexit.register(stop_all)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log_path: Path | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            r = check()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path and log_path.exists() else ""
    raise RuntimeError(f"{what}: not ready after {timeout}s ({last})\n{tail}")


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30.0):
    """One HTTP/1.1 request: (status, headers, body bytes). Never raises on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def h2c_post(url: str, body_file: Path, headers: dict, timeout: float = 10.0) -> int:
    """POST over h2c with prior knowledge (curl); returns the status (0 on failure)."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2-prior-knowledge",
           "--max-time", str(timeout), "--data-binary", f"@{body_file}"]  # fmt: skip
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    p = subprocess.run(cmd + [url], capture_output=True, text=True)
    try:
        return int(p.stdout.strip() or 0)
    except ValueError:
        return 0


# --------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """utime + stime per thread name (threads of one name summed)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def descendants(pid: int) -> list[int]:
    """`pid` and all its descendant processes (from /proc/*/stat ppid)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in descendants(pid):
        try:
            total += proc_cpu_seconds(p)
        except OSError:
            pass
    return total


# --------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def median(values: list[float]) -> float:
    vals = [v for v in values if v is not None and v == v]
    return statistics.median(vals) if vals else float("nan")


def latency_summary(us: list[float]) -> dict:
    s = sorted(us)
    return {
        "n": len(s),
        "p50_us": percentile(s, 50),
        "p90_us": percentile(s, 90),
        "p99_us": percentile(s, 99),
        "p999_us": percentile(s, 99.9),
        "mean_us": statistics.fmean(s) if s else float("nan"),
        "max_us": s[-1] if s else float("nan"),
    }


def median_of_reps(reps: list[dict], keys: list[str] | None = None) -> dict:
    """Per-key median of a list of flat numeric dicts."""
    keys = keys or [k for k, v in reps[0].items() if isinstance(v, (int, float))]
    return {k: median([r.get(k) for r in reps]) for k in keys}


# --------------------------------------------------------------------------
# h2load
# --------------------------------------------------------------------------


@dataclass
class Load:
    """One h2load run: `conns` connections × `streams` in flight on each."""

    url: str
    body: Path | None = None
    headers: dict = field(default_factory=dict)
    conns: int = 1
    streams: int = 1
    duration: float = 10.0
    warmup: float = 1.0
    h1: bool = False
    threads: int = 1


def h2load(load: Load, cpus: list[int], workdir: Path, watch: dict[str, callable] | None = None) -> dict:
    """Runs h2load and returns throughput, status counts and latency percentiles.

    Percentiles come from h2load's per-request log (`--log-file`: start time,
    status, duration in µs) over the measured period only; the warm-up's
    requests are not logged. `watch` maps a name to a zero-argument function
    returning CPU seconds; each is sampled after the warm-up and at the end,
    and reported as CPU µs per measured request.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = Path(tempfile.mkstemp(prefix="h2load-", suffix=".tsv", dir=workdir)[1])
    cmd = ["h2load", "-c", str(load.conns), "-m", str(load.streams), "-t", str(load.threads)]
    cmd += ["-D", f"{round(load.duration * 1000)}ms", "--warm-up-time", f"{round(load.warmup * 1000)}ms"]
    cmd += ["--log-file", str(log_file)]
    if load.h1:
        cmd += ["--h1"]
    if load.body is not None:
        cmd += ["-d", str(load.body)]
    for k, v in load.headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(load.url)
    p = subprocess.Popen(pinned(cmd, cpus), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = after = None
    t_measure = None
    if watch:
        # h2load connects, warms up, then measures; sample at the switch.
        time.sleep(load.warmup + 0.05)
        before = {k: f() for k, f in watch.items()}
        t_measure = time.monotonic()
    out, _ = p.communicate(timeout=load.duration + load.warmup + 120)
    if watch:
        after = {k: f() for k, f in watch.items()}
        elapsed_cpu_window = time.monotonic() - t_measure
    if p.returncode != 0:
        raise RuntimeError(f"h2load failed ({p.returncode}): {redacted(cmd)}\n{out[-2000:]}")
    res = parse_h2load(out)
    durations, statuses = [], {}
    with open(log_file) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) < 3:
                continue
            st = int(parts[1])
            statuses[st] = statuses.get(st, 0) + 1
            if 200 <= st < 300:
                durations.append(float(parts[2]))
    log_file.unlink(missing_ok=True)
    res.update(latency_summary(durations))
    res["log_statuses"] = {str(k): v for k, v in sorted(statuses.items())}
    res["config"] = {
        "conns": load.conns,
        "streams": load.streams,
        "duration_s": load.duration,
        "warmup_s": load.warmup,
        "protocol": "http/1.1" if load.h1 else "h2c",
    }
    if watch and res.get("requests_done"):
        for k in watch:
            res[f"cpu_us_per_req_{k}"] = (after[k] - before[k]) * 1e6 / res["requests_done"]
            res[f"cpu_util_{k}"] = (after[k] - before[k]) / max(elapsed_cpu_window, 1e-9)
    bad = res.get("status_4xx", 0) + res.get("status_5xx", 0) + res.get("errored", 0)
    if bad:
        raise RuntimeError(f"h2load saw {bad} failed requests against {load.url}:\n{out[-2000:]}")
    if not res.get("requests_done"):
        raise RuntimeError(f"h2load finished no request against {load.url}:\n{out[-2000:]}")
    return res


def redacted(cmd: list[str]) -> str:
    """The command line with API keys blanked (errors and logs never show keys)."""
    return " ".join("authorization: Bearer <redacted>" if c.lower().startswith("authorization:") else c for c in cmd)


def parse_h2load(out: str) -> dict:
    res: dict = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            # finished in 10.00s, 12345.60 req/s, 1.23MB/s
            parts = line.split(",")
            res["elapsed_s"] = float(parts[0].split()[-1].rstrip("s"))
            res["rps"] = float(parts[1].split()[0])
        elif line.startswith("requests:"):
            # requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout
            for chunk in line[len("requests:") :].split(","):
                n, what = chunk.split()[:2]
                res[f"requests_{what}"] = int(n)
            res["errored"] = res.get("requests_errored", 0) + res.get("requests_failed", 0)
        elif line.startswith("status codes:"):
            for chunk in line[len("status codes:") :].split(","):
                n, what = chunk.split()[:2]
                res[f"status_{what}"] = int(n)
    return res


def h2load_version() -> str:
    try:
        return subprocess.run(["h2load", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "missing"


# --------------------------------------------------------------------------
# Taskmesh
# --------------------------------------------------------------------------


class Taskmesh:
    """A fresh `taskmesh up` on free ports, with its own data directory."""

    def __init__(self, workdir: Path, cpus: list[int], examples: bool = False, env: dict | None = None):
        self.workdir = workdir
        self.data = workdir / "data"
        if self.data.exists():
            shutil.rmtree(self.data)
        self.data.mkdir(parents=True)
        self.port, self.admin_port, self.node_port = free_port(), free_port(), free_port()
        self.router = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.node = f"http://127.0.0.1:{self.node_port}"
        cmd = [
            str(TASKMESH_BIN),
            "up",
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--node-listen", f"127.0.0.1:{self.node_port}",
            "--data-dir", str(self.data),
        ]  # fmt: skip
        if not examples:
            cmd.append("--no-examples")
        self.log_path = workdir / "taskmesh.log"
        self.t_start = time.monotonic()
        self.proc = start(pinned(cmd, cpus), self.log_path, env={"TASKMESH_LOG": "warn", **(env or {})})
        wait_until(self._ready, 60, "taskmesh up", self.proc, self.log_path)
        self.startup_s = time.monotonic() - self.t_start
        self.key = (self.data / "admin.key").read_text().strip()
        # Nodes serve the routers of their cluster only; a direct call (the
        # baseline of router-overhead) proves it with the cluster key.
        self.cluster_key = (self.data / "cluster.key").read_text().strip()
        # `taskset` execs, so the pid is taskmesh's own.
        self.pid = self.proc.pid

    def _ready(self) -> bool:
        if not (self.data / "admin.key").exists():
            return False
        st, _, _ = http("GET", f"{self.router}/readyz", timeout=2)
        return st == 200

    @property
    def auth(self) -> dict:
        return {"authorization": f"Bearer {self.key}"}

    def upload_model(self, path: Path) -> str:
        st, _, body = http("POST", f"{self.admin}/v1/models", path.read_bytes(), self.auth)
        if st not in (200, 201):
            raise RuntimeError(f"model upload {path}: {st} {body[:500]!r}")
        return json.loads(body)["digest"]

    def register(self, definition: dict | str, content_type: str = "application/json") -> dict:
        body = definition.encode() if isinstance(definition, str) else json.dumps(definition).encode()
        st, _, out = http(
            "POST", f"{self.admin}/v1/functions", body, {**self.auth, "content-type": content_type}
        )
        if st not in (200, 201):
            raise RuntimeError(f"register: {st} {out[:800]!r}")
        return json.loads(out)

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self) -> None:
        stop(self.proc)


def example_definition(example_dir: Path, digest: str) -> tuple[str, str]:
    """The example's definition with its model path replaced by `digest`:
    (document, content type). JSON and YAML definitions are supported."""
    js = example_dir / "function.json"
    if js.exists():
        d = json.loads(js.read_text())
        d["model"] = digest
        return json.dumps(d), "application/json"
    for name in ("function.yaml", "function.yml"):
        y = example_dir / name
        if y.exists():
            lines = []
            for line in y.read_text().splitlines():
                if line.startswith("model:"):
                    line = f"model: {digest}"
                lines.append(line)
            return "\n".join(lines) + "\n", "application/yaml"
    raise FileNotFoundError(f"{example_dir}: no function.json or function.yaml")


def example_input(example_dir: Path) -> dict | None:
    """An invocation body for an example: sample.json, else the first reference
    case's inputs (flat data per input field), else None."""
    sample = example_dir / "sample.json"
    if sample.exists():
        return json.loads(sample.read_text())
    ref = example_dir / "reference.json"
    js = example_dir / "function.json"
    if ref.exists() and js.exists():
        cases = json.loads(ref.read_text()).get("cases") or []
        if not cases:
            return None
        inputs = json.loads(js.read_text())["inputs"]
        given = cases[0]["input"]
        body = {}
        for fld, binding in inputs.items():
            src = given.get(fld) or given.get(binding.get("tensor", fld))
            if src is None:
                return None
            body[fld] = src["data"] if isinstance(src, dict) and "data" in src else src
        return body
    return None


# --------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------


def machine_info() -> dict:
    cpu_model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass

    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = run(["git", "rev-parse", "HEAD"]) or "unknown"
    dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]))
    loadgen, servers = cpu_split()
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": commit,
        "git_dirty": dirty,
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadgen_cpus": loadgen,
        "server_cpus": servers,
        "h2load": h2load_version(),
        "haproxy": (run(["haproxy", "-v"]).splitlines() or [""])[0],
        "nginx": run(["sh", "-c", "nginx -v 2>&1"]),
        "rustc": run(["rustc", "--version"]),
    }
