"""Micro-benchmarks: criterion benches in policies/benches/ and the Rust ONNX
Runtime floor in runtime/benches/, folded into the summary."""

from __future__ import annotations

import json
import subprocess

from common import PROFILE, ROOT, log, pinned


def target_dir():
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    from pathlib import Path

    return Path(json.loads(meta.stdout)["target_directory"])


def run(ctx) -> dict:
    # Build first, unpinned (compiling on one core would be slow), then measure pinned.
    # In quick mode (debug profile) the bench is built without optimisations,
    # with the workspace's features, so it reuses the dependencies that
    # scripts/test.sh built: it only checks the wiring.
    benches = [("taskmesh-policies", "hot_paths"), ("taskmesh-runtime", "ort_floor")]
    args = ["--warm-up-time", str(ctx.micro_warmup), "--measurement-time", str(ctx.micro_measure)]
    if ctx.quick:
        # Criterion's bootstrap (100,000 resamples per bench) dominates an
        # unoptimised build: 1,000 are plenty to show the bench runs.
        args += ["--quick", "--nresamples", "1000"]
    for package, bench in benches:
        profile = ["-p", package] if PROFILE == "release" else ["--workspace", "--profile", "dev"]
        subprocess.run(["cargo", "bench", *profile, "--bench", bench, "--no-run"], cwd=ROOT, check=True)
        cmd = ["cargo", "bench", *profile, "--bench", bench, "--", *args, "--noplot"]
        p = subprocess.run(pinned(cmd, ctx.server_cpus[:1]), cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"cargo bench {bench} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    root = target_dir() / "criterion"
    out = {"benches": {}, "profile": "bench" if PROFILE == "release" else "dev (unoptimised: quick mode)"}
    for est in sorted(root.glob("*/*/new/estimates.json")):
        group, bench = est.parts[-4], est.parts[-3]
        if not (root / group / bench / "new" / "benchmark.json").exists():
            continue
        info = json.loads((root / group / bench / "new" / "benchmark.json").read_text())
        if info.get("group_id") not in GROUPS:
            continue
        e = json.loads(est.read_text())
        name = f"{info['group_id']}/{info.get('function_id') or bench}"
        out["benches"][name] = {
            "median_ns": e["median"]["point_estimate"],
            "median_ci_ns": [e["median"]["confidence_interval"]["lower_bound"],
                             e["median"]["confidence_interval"]["upper_bound"]],  # fmt: skip
            "mean_ns": e["mean"]["point_estimate"],
            "throughput": info.get("throughput"),
        }
        log(f"micro: {name:45s} {e['median']['point_estimate']:10.1f} ns")
    return out


GROUPS = {"tensor_from_json", "parse_body", "input_schema", "ratelimit_check", "breaker", "ring_place", "ort_floor"}
