#!/usr/bin/env bash
# Starts Taskmesh on this machine: router, registry and one runtime node in one
# process, with the example functions registered. Installs what is missing
# first (scripts/setup.sh), so it works on a fresh machine and is safe to rerun.
# Extra arguments go to `taskmesh up` (see `taskmesh up --help`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec cargo run --release --locked -p taskmesh -- up "$@"
