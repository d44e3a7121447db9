"""The floor: bare ONNX Runtime in-process (floor.py), pinned like the servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import log, pinned

HERE = Path(__file__).resolve().parent


def run(ctx) -> dict:
    out = ctx.workdir / "floor.json"
    cmd = [sys.executable, str(HERE / "floor.py"), "--out", str(out),
           "--calls", str(ctx.floor_calls), "--seconds", str(ctx.floor_seconds)]  # fmt: skip
    p = subprocess.run(pinned(cmd, ctx.server_cpus[:1]), capture_output=True, text=True)
    for line in p.stdout.splitlines():
        log(line.removeprefix("[floor] ").join(["floor: ", ""]))
    if p.returncode != 0:
        raise RuntimeError(f"floor.py failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(out.read_text())
