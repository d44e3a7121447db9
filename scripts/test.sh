#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that start the
# real taskmesh binary with real ONNX Runtime and real HTTP/2 clients.
# Installs what is missing first (scripts/setup.sh); safe to rerun.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
