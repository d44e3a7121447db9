#!/usr/bin/env bash
# Taskmesh development set-up. Idempotent: safe to run again; steps whose
# outputs already exist are skipped, so a second run takes about a second.
#
#   1. Debian packages (cmake, redis-server, nghttp2-client, curl, pkg-config,
#      libssl-dev, build-essential), installed only when missing.
#   2. Python packages (onnxruntime, onnx, skl2onnx, scikit-learn, numpy, pinned)
#      into the project-local folder .deps/python (nothing system-wide).
#   3. .deps/lib/libonnxruntime.so -> the ONNX Runtime library from that wheel
#      (for the `ort` crate's load-dynamic: ORT_DYLIB_PATH).
#   4. examples/*/model.onnx + reference.json built by examples/build_examples.py,
#      which also builds the test-only tests/models/{slow,addpair}/model.onnx.
#
# Needs no stdin (works with CI=true). Run from anywhere.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

PYTHON="${PYTHON:-python3}"
ORT_VERSION="1.31.1"
# Exact pins, transitive dependencies included, so every machine gets the same
# bytes (and the same example models). Tested together on Python 3.11.
PY_REQUIREMENTS=(
  "onnxruntime==${ORT_VERSION}"
  "onnx==1.23.2"
  "skl2onnx==1.20.0"
  "scikit-learn==1.9.1"
  "numpy==2.4.6"
  "scipy==1.17.1"
  "joblib==1.6.0"
  "threadpoolctl==3.8.0"
  "protobuf==7.36.2"
  "flatbuffers==25.12.19"
  "packaging==26.3"
  "ml_dtypes==0.6.0"
  "typing_extensions==4.16.0"
  "narwhals==2.29.0"
  "cloudpickle==3.1.2"
)
DEB_PACKAGES=(cmake redis-server nghttp2-client curl pkg-config libssl-dev build-essential)

PY_DIR="$ROOT/.deps/python"
LIB_DIR="$ROOT/.deps/lib"
ORT_LIB_NAME="libonnxruntime.so.${ORT_VERSION}"

log() { printf '[setup] %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# --- 1. Debian packages ----------------------------------------------------
t0=$(now)
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${DEB_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "installed" ]] || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    SUDO=()
    if [[ "$(id -u)" != 0 ]]; then
      # Prompt for a password only when there is a terminal to ask on.
      if [[ -t 0 ]]; then SUDO=(sudo); else SUDO=(sudo -n); fi
    fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"
    log "apt: done ($(elapsed "$t0"))"
  else
    log "apt: all ${#DEB_PACKAGES[@]} packages present, skipped ($(elapsed "$t0"))"
  fi
else
  log "apt: dpkg-query not found (not Debian?); make sure these are installed: ${DEB_PACKAGES[*]}"
fi

# --- 2. Python packages into .deps/python ------------------------------------
t0=$(now)
py_tag="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
req_hash="$(printf '%s\n' "$py_tag" "${PY_REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
STAMP="$PY_DIR/.stamp-$req_hash"
if [[ -f "$STAMP" ]]; then
  log "python: .deps/python up to date ($py_tag, stamp $req_hash), skipped ($(elapsed "$t0"))"
else
  log "python: installing ${#PY_REQUIREMENTS[@]} pinned packages into .deps/python ($py_tag)"
  mkdir -p "$ROOT/.deps"
  tmp="$ROOT/.deps/python.tmp"
  rm -rf "$tmp"
  "$PYTHON" -m pip install --disable-pip-version-check --no-input -q \
    --root-user-action=ignore --target "$tmp" "${PY_REQUIREMENTS[@]}" </dev/null
  touch "$tmp/.stamp-$req_hash"
  rm -rf "$PY_DIR"
  mv "$tmp" "$PY_DIR"
  log "python: done ($(elapsed "$t0"))"
fi

# --- 3. ONNX Runtime shared library ----------------------------------------
t0=$(now)
ORT_REAL="$PY_DIR/onnxruntime/capi/$ORT_LIB_NAME"
ORT_LINK="$LIB_DIR/libonnxruntime.so"
if [[ ! -f "$ORT_REAL" ]]; then
  echo "[setup] error: $ORT_REAL not found in the onnxruntime wheel" >&2
  exit 1
fi
mkdir -p "$LIB_DIR"
# Relative links, so the checkout can move. The real file's RUNPATH is
# $ORIGIN; the providers library is linked too for dlopen via this folder.
want="../python/onnxruntime/capi/$ORT_LIB_NAME"
if [[ "$(readlink "$ORT_LINK" 2>/dev/null || true)" != "$want" ]]; then
  ln -sfn "$want" "$ORT_LINK"
  ln -sfn "$want" "$LIB_DIR/$ORT_LIB_NAME"
  ln -sfn "../python/onnxruntime/capi/libonnxruntime_providers_shared.so" \
    "$LIB_DIR/libonnxruntime_providers_shared.so"
  log "ort: linked $ORT_LINK ($(elapsed "$t0"))"
else
  log "ort: link present, skipped ($(elapsed "$t0"))"
fi
log "ort: ORT_DYLIB_PATH=$ORT_LINK"

# --- 4. Example models -------------------------------------------------------
t0=$(now)
BUILD_SCRIPT="examples/build_examples.py"
EXAMPLE_OUTPUTS=(
  examples/digits/model.onnx examples/digits/reference.json
  examples/digits/sample.json examples/digits/sample_label.txt
  examples/iris/model.onnx examples/iris/reference.json examples/iris/sample.json
  examples/tensors/model.onnx examples/tensors/reference.json
  tests/models/slow/model.onnx tests/models/addpair/model.onnx
)
rebuild=0
for f in "${EXAMPLE_OUTPUTS[@]}"; do
  if [[ ! -f "$f" || "$BUILD_SCRIPT" -nt "$f" || "$STAMP" -nt "$f" ]]; then
    rebuild=1
    break
  fi
done
if ((rebuild)); then
  log "examples: building with $BUILD_SCRIPT"
  PYTHONPATH="$PY_DIR${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$BUILD_SCRIPT" </dev/null
  log "examples: done ($(elapsed "$t0"))"
else
  log "examples: all outputs newer than $BUILD_SCRIPT, skipped ($(elapsed "$t0"))"
fi

# --- Summary -----------------------------------------------------------------
digits_label="$(cat examples/digits/sample_label.txt)"
echo "setup ok: onnxruntime ${ORT_VERSION} at .deps/lib/libonnxruntime.so;" \
  "examples digits, iris, tensors built (digits sample label ${digits_label})"
