"""Runs the benchmark scenarios of benchmarks/cases/ and writes the results.

Called by benchmarks/run.sh (which installs the tools first):
    python3 benchmarks/lib/bench.py [--quick] [--only a,b] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, PROFILE, TASKMESH_BIN, cpu_split, log, machine_info  # noqa: E402

# Scenario order: cheap and independent first.
SCENARIOS = ["micro", "ring", "floor", "router-overhead", "cluster-limits", "protocols", "vs-mlserver", "cold-start",
             "batching", "tasks"]


@dataclass
class Ctx:
    quick: bool
    workdir: Path
    loadgen_cpus: list[int]
    server_cpus: list[int]
    reps: int
    duration: float
    warmup: float
    conns: int = 4
    streams: int = 32
    mlserver_concurrency: list[int] = field(default_factory=lambda: [1, 16])
    floor_calls: int = 20000
    floor_seconds: float = 5.0
    warm_calls: int = 20
    micro_warmup: float = 1.0
    micro_measure: float = 3.0
    batching_levels: list[int] = field(default_factory=lambda: [1, 8, 64])
    batching_duration: float = 5.0
    batching_warmup: float = 1.0


def make_ctx(quick: bool, workdir: Path) -> Ctx:
    loadgen, servers = cpu_split()
    if quick:
        return Ctx(quick=True, workdir=workdir, loadgen_cpus=loadgen, server_cpus=servers,
                   reps=1, duration=1, warmup=0.3, floor_calls=2000, floor_seconds=1.0,
                   warm_calls=5, micro_warmup=0.2, micro_measure=0.5,
                   batching_duration=1.0, batching_warmup=0.3)  # fmt: skip
    # Five short repetitions rather than three long ones: on a shared, noisy
    # machine a median of five shrugs off two disturbed runs.
    # TASKMESH_BENCH_REPS and TASKMESH_BENCH_DURATION shorten a full run for
    # side experiments (the committed results use the defaults).
    reps = int(os.environ.get("TASKMESH_BENCH_REPS", "5"))
    duration = float(os.environ.get("TASKMESH_BENCH_DURATION", "5"))
    return Ctx(quick=False, workdir=workdir, loadgen_cpus=loadgen, server_cpus=servers,
               reps=reps, duration=duration, warmup=1)  # fmt: skip


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def _measured(machine: dict, profile: str, load_start, load_end) -> dict:
    """When and at which commit a scenario was measured (kept across partial runs)."""
    return {
        "date_utc": machine.get("date_utc"),
        "git_commit": machine.get("git_commit"),
        "git_dirty": machine.get("git_dirty"),
        "profile": profile,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
    }


def load_case(name: str):
    path = BENCH / "cases" / name / "case.py"
    spec = importlib.util.spec_from_file_location(f"case_{name.replace('-', '_')}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a few seconds per scenario; writes results/quick/")
    ap.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    ap.add_argument("--out", default="", help="results folder (default: benchmarks/results[/quick])")
    args = ap.parse_args()

    out = Path(args.out) if args.out else BENCH / "results" / ("quick" if args.quick else "")
    out = out.resolve()
    only = [s for s in args.only.split(",") if s]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {SCENARIOS}")
    committed = (BENCH / "results").resolve()
    if args.quick and out == committed:
        ap.error("a quick run never writes the committed results (benchmarks/results/); use results/quick/")
    chosen = [s for s in SCENARIOS if not only or s in only]
    needs_binary = {"floor", "router-overhead", "cluster-limits", "vs-mlserver", "cold-start", "batching", "tasks"}
    if needs_binary & set(chosen) and not TASKMESH_BIN.exists():
        how = "cargo build --release -p taskmesh" if PROFILE == "release" else "cargo build -p taskmesh"
        ap.error(f"{TASKMESH_BIN} is missing: run `{how}` (run.sh does)")

    workdir = out / "tmp"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ctx = make_ctx(args.quick, workdir)
    machine = machine_info()
    log(f"{'quick' if args.quick else 'full'} run ({PROFILE} build): {', '.join(chosen)}; "
        f"load generator on CPU {ctx.loadgen_cpus}, servers on CPUs {ctx.server_cpus}; "
        f"{machine['nproc']} × {machine['cpu_model']}")  # fmt: skip

    results = {
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in ctx.__dict__.items()},
        "loadavg_start": _loadavg(),
        "profile": PROFILE,
        "scenarios": {},
        "errors": {},
        "notes": [],
    }
    if PROFILE != "release":
        results["notes"].append(
            f"Built with the `{PROFILE}` profile (unoptimised), as quick mode does: these numbers only show "
            "that every scenario runs; they say nothing about speed."
        )
    # A partial run (--only) keeps the other scenarios of an earlier run of the
    # same mode, each with the date and commit it was measured at, so the
    # summary is always written from every scenario's latest result.
    previous = out / "results.json"
    if only and previous.exists():
        try:
            old = json.loads(previous.read_text())
            if old.get("mode") == results["mode"]:
                for k, v in old.get("scenarios", {}).items():
                    if k in chosen:
                        continue
                    if "measured" not in v:
                        v["measured"] = _measured(old["machine"], old.get("profile", "release"),
                                                  old.get("loadavg_start"), old.get("loadavg_end"))  # fmt: skip
                    results["scenarios"][k] = v
                results["carried_over"] = sorted(results["scenarios"])
        except (OSError, ValueError, KeyError):
            pass

    t_all = time.monotonic()
    for name in chosen:
        t0 = time.monotonic()
        log(f"=== {name}")
        try:
            load0 = _loadavg()
            res = load_case(name).run(ctx)
            res["elapsed_s"] = round(time.monotonic() - t0, 1)
            res["measured"] = _measured(machine, PROFILE, load0, _loadavg())
            results["scenarios"][name] = res
            log(f"=== {name} done in {res['elapsed_s']} s")
        except Exception as e:  # noqa: BLE001 - record, go on, fail at the end
            traceback.print_exc()
            results["errors"][name] = f"{type(e).__name__}: {e}"[:4000]
            log(f"=== {name} FAILED: {e}")
    results["elapsed_s"] = round(time.monotonic() - t_all, 1)
    results["loadavg_end"] = _loadavg()

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    import report  # after the runs: it needs matplotlib, which only plots need

    report.write(results, out)
    log(f"results in {out} ({results['elapsed_s']} s)")
    if results["errors"]:
        log(f"failed scenarios: {', '.join(results['errors'])}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
