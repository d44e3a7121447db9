#!/usr/bin/env bash
# Taskmesh benchmarks: every scenario of benchmarks/cases/, measured against its
# peer in the same run, on the same machine. See benchmarks/README.md.
#
#   bash benchmarks/run.sh                 full run (~10 min): 5 repetitions, medians,
#                                          writes benchmarks/results/
#   bash benchmarks/run.sh --quick         a few seconds per scenario (CI): 1 repetition,
#                                          debug build (the one scripts/test.sh leaves),
#                                          writes benchmarks/results/quick/ (git-ignored)
#   bash benchmarks/run.sh --only router-overhead,floor   a subset of scenarios
#   bash benchmarks/run.sh --skip-install  assume the tools are there already
#
# Installs what is missing and skips what is there, so it is safe to run again:
#   - scripts/setup.sh (ONNX Runtime, the example models);
#   - the Debian packages nghttp2-client (h2load), haproxy, nginx;
#   - the pinned Python packages of benchmarks/requirements.txt (MLServer,
#     onnxruntime, matplotlib) into .deps/bench-python (pip --target);
#   - `cargo build --release -p taskmesh` (with --quick: `cargo test --workspace
#     --locked --no-run`, the debug build scripts/test.sh has already made).
# Nothing here asserts speed: the run fails only when a scenario cannot run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"

install=1
quick=0
args=()
for a in "$@"; do
  case "$a" in
    --skip-install) install=0 ;;
    --quick) quick=1; args+=("$a") ;;
    -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

log() { printf '[bench] %s\n' "$*"; }

# Quick mode checks that every scenario still runs, not how fast: it uses the
# debug build, which scripts/test.sh has already made, instead of a release
# build from scratch (minutes on a small CI machine).
if ((quick)); then
  export TASKMESH_BENCH_PROFILE="${TASKMESH_BENCH_PROFILE:-debug}"
else
  export TASKMESH_BENCH_PROFILE="${TASKMESH_BENCH_PROFILE:-release}"
fi

BENCH_PY="$ROOT/.deps/bench-python"
if ((install)); then
  bash scripts/setup.sh

  # --- Debian packages -------------------------------------------------------
  DEB_PACKAGES=(nghttp2-client haproxy nginx util-linux)
  missing=()
  for pkg in "${DEB_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
      if [[ -t 0 ]]; then SUDO=(sudo); else SUDO=(sudo -n); fi
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # The packages' own services are never used (no systemd here, and the
    # benchmark starts its own instances with their own configs on free ports).
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    log "apt: ${DEB_PACKAGES[*]} present, skipped"
  fi

  # --- Python packages -------------------------------------------------------
  py_tag="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  req_hash="$( (echo "$py_tag"; cat benchmarks/requirements.txt) | sha256sum | cut -c1-16)"
  if [[ -f "$BENCH_PY/.stamp-$req_hash" ]]; then
    log "python: .deps/bench-python up to date ($py_tag, stamp $req_hash), skipped"
  else
    log "python: installing benchmarks/requirements.txt into .deps/bench-python ($py_tag)"
    tmp="$ROOT/.deps/bench-python.tmp"
    rm -rf "$tmp"
    mkdir -p "$ROOT/.deps"
    "$PYTHON" -m pip install --disable-pip-version-check --no-input -q --no-deps \
      --root-user-action=ignore --target "$tmp" -r benchmarks/requirements.txt </dev/null
    touch "$tmp/.stamp-$req_hash"
    rm -rf "$BENCH_PY"
    mv "$tmp" "$BENCH_PY"
  fi

  # --- Taskmesh --------------------------------------------------------------
  if [[ "$TASKMESH_BENCH_PROFILE" == release ]]; then
    log "cargo: building taskmesh (release)"
    cargo build --release -p taskmesh
  else
    # The same build as scripts/test.sh (same packages, same features, dev
    # dependencies included), so after the tests it is already fresh: a plain
    # `cargo build -p taskmesh` resolves features without the dev
    # dependencies and would rebuild part of the dependency graph.
    log "cargo: building taskmesh (debug, as scripts/test.sh builds it)"
    cargo test --workspace --locked --no-run
  fi
fi

# The harness and every Python child (MLServer, the floor) see the bench
# packages first; the harness itself needs only the standard library, numpy
# and matplotlib.
export PYTHONPATH="$BENCH_PY${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
exec "$PYTHON" benchmarks/lib/bench.py "${args[@]}"
