"""Scale on paper: the placement ring (`policies::ring::Ring`) over 3 to 1,000
simulated nodes and 10,000 functions. Runs `policies/examples/ring_scale.rs`,
which prints JSON, and keeps it. See README.md beside this file."""

from __future__ import annotations

import json
import subprocess

from common import PROFILE, ROOT, log, pinned


def run(ctx) -> dict:
    release = PROFILE == "release"
    # Build first, unpinned (compiling on one core would be slow), then run pinned.
    # The debug build (quick mode) takes the workspace's features, so it reuses
    # the dependencies scripts/test.sh built.
    scope = ["--release", "-p", "taskmesh-policies"] if release else ["--workspace"]
    subprocess.run(["cargo", "build", *scope, "--example", "ring_scale"], cwd=ROOT, check=True)
    exe = ROOT / "target" / ("release" if release else "debug") / "examples" / "ring_scale"
    args = ["--quick"] if ctx.quick else []
    p = subprocess.run(pinned([str(exe), *args], ctx.server_cpus[:1]), cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"ring_scale failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout)
    for b, m in zip(out["balance"], out["movement"]):
        log(f"ring: {b['nodes']:5d} nodes  owned max/avg {b['ring']['max_over_avg']:.2f} "
            f"(hash mod N {b['mod_n']['max_over_avg']:.2f})  join moves {m['join']['fraction']:.2%} "
            f"(ideal {m['join']['ideal']:.2%}, mod N {m['join']['mod_n_fraction']:.0%})  "
            f"leave moves {m['leave']['fraction']:.2%}")  # fmt: skip
    for x in out["bounded_load"]:
        bl, pl = x["bounded"], x["plain"]
        log(f"ring: {x['nodes']:5d} nodes, {x['calls_in_flight']} calls in flight  in-flight max/avg "
            f"bounded {bl['max_over_avg']:.2f} vs plain {pl['max_over_avg']:.2f}; hottest function on "
            f"{bl['hottest_function_nodes']} vs {pl['hottest_function_nodes']} node(s); "
            f"place {bl['place_us_per_call']:.1f} µs/call")  # fmt: skip
    return out
