#!/usr/bin/env bash
# Static checks of deploy/ (issue #8): no cloud, no Docker engine and no
# terraform binary are needed. Idempotent; installs its tools (pinned, from PyPI)
# into .deps/deploy-tools and skips that step when they are already there.
#
#   1. every .tf file under deploy/terraform parses (python-hcl2);
#  1b. every reference resolves to a declaration, every module argument to a
#      variable of the module (deploy/checks/tf_refs.py), as terraform validate
#      would check first;
#   2. each module README's inputs/outputs tables match its variables.tf/outputs.tf;
#   3. the kubernetes module's objects are rendered from what Terraform would
#      compute for the examples (deploy/checks/k8s-scenarios.yaml: an example
#      root configuration each, evaluated by deploy/checks/hcl_config.py) and
#      validated against the Kubernetes JSON schemas (kubernetes-validate,
#      strict), canonical quantities and the module's own promises;
#   4. checkov: Terraform (deploy/terraform), the Dockerfiles, and the rendered
#      Kubernetes objects; every skip must carry a written reason;
#   5. the image's health-check script against a local HTTP server;
#   6. deploy/docker/pin-digests.sh against a stand-in docker.
#
# Needs no stdin (works with CI=true). Run from anywhere.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

PYTHON="${PYTHON:-python3}"
TOOLS="$ROOT/.deps/deploy-tools"
# Kubernetes versions the rendered objects must be valid for: the oldest one
# the module supports and the aws module's default EKS version.
K8S_VERSIONS=(1.30.0 1.34.0)

log() { printf '[deploy-checks] %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
T_START=$(now)

# --- 0. tools ------------------------------------------------------------------
install_tools() { # name requirements-file
  local name="$1" req="$2" py_tag hash dir tmp
  py_tag="$("$PYTHON" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  hash="$( (echo "$py_tag"; cat "$req") | sha256sum | cut -c1-16)"
  dir="$TOOLS/$name"
  if [[ -f "$dir/.stamp-$hash" ]]; then
    log "tools: $name up to date ($py_tag, stamp $hash), skipped"
    return
  fi
  local t0; t0=$(now)
  log "tools: installing $name from $(basename "$req") into .deps/deploy-tools/$name"
  mkdir -p "$TOOLS"
  tmp="$dir.tmp"
  rm -rf "$tmp"
  "$PYTHON" -m pip install --disable-pip-version-check --no-input -q --root-user-action=ignore \
    --no-warn-conflicts --target "$tmp" -r "$req" </dev/null
  touch "$tmp/.stamp-$hash"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  log "tools: $name done ($(elapsed "$t0"))"
}
install_tools lint "$ROOT/deploy/checks/requirements-lint.txt"
install_tools checkov "$ROOT/deploy/checks/requirements-checkov.txt"

lint_py() { PYTHONPATH="$TOOLS/lint" PYTHONNOUSERSITE=1 "$PYTHON" "$@" </dev/null; }
checkov() {
  PYTHONPATH="$TOOLS/checkov" PYTHONNOUSERSITE=1 LOG_LEVEL=ERROR \
    "$PYTHON" -m checkov.main --skip-download --compact --quiet "$@" </dev/null
}
failed=()

# --- 1. HCL ----------------------------------------------------------------------
t0=$(now)
mapfile -t TF_FILES < <(find deploy/terraform -name '*.tf' -not -path '*/.terraform/*' | sort)
if lint_py - "${TF_FILES[@]}" <<'PY'
import sys
import hcl2
bad = 0
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            hcl2.load(f)
    except Exception as e:  # any parse error is a failure, with its file
        print(f"FAIL: {path}: {e}")
        bad += 1
sys.exit(1 if bad else 0)
PY
then
  log "hcl: ${#TF_FILES[@]} .tf files parse ($(elapsed "$t0"))"
else
  failed+=("hcl")
fi

# --- 1b. references ------------------------------------------------------------------
# What terraform validate rejects first, without a terraform binary or provider
# schemas: in every root and module directory each var., local., data., module.
# and resource reference resolves, module.NAME.OUTPUT names an output of a local
# module, module calls pass exactly that module's variables (every one without
# a default), and each./count./self. appear only where they are valid. Unused
# variables and locals are printed as warnings. The checker's own unit tests
# run first.
t0=$(now)
if ! out=$("$PYTHON" deploy/checks/test_tf_refs.py 2>&1 </dev/null); then
  echo "$out"
  echo "FAIL: deploy/checks/test_tf_refs.py"
  failed+=("tf-refs-tests")
fi
if "$PYTHON" deploy/checks/tf_refs.py --quiet deploy/terraform </dev/null; then
  log "refs: every reference and module argument resolves ($(elapsed "$t0"))"
else
  failed+=("tf-refs")
fi

# --- 2. README tables ----------------------------------------------------------------
t0=$(now)
if lint_py deploy/checks/tfdocs.py deploy/terraform/modules/kubernetes deploy/terraform/modules/aws; then
  log "docs: module READMEs up to date ($(elapsed "$t0"))"
else
  failed+=("docs")
fi

# --- 3. Kubernetes objects ------------------------------------------------------------
t0=$(now)
# Outside the repository: checkov ignores folders whose names start with a dot.
RENDERED="$(mktemp -d "${TMPDIR:-/tmp}/taskmesh-k8s.XXXXXX")"
trap 'rm -rf "$RENDERED"' EXIT
k8s_args=()
for v in "${K8S_VERSIONS[@]}"; do k8s_args+=(--kubernetes-version "$v"); done
if out=$(lint_py -m unittest discover -s deploy/checks -p 'test_hcl_eval.py' 2>&1); then
  log "kubernetes: the HCL evaluator's tests pass ($(grep -m1 -oE 'Ran [0-9]+ tests' <<<"$out"))"
else
  echo "$out"
  failed+=("hcl-evaluator-tests")
fi
if lint_py deploy/checks/render_k8s.py --module deploy/terraform/modules/kubernetes \
  --scenarios deploy/checks/k8s-scenarios.yaml --out "$RENDERED" "${k8s_args[@]}"; then
  log "kubernetes: every rendered object is valid ($(elapsed "$t0"))"
else
  failed+=("kubernetes-schemas")
fi

# --- 4. checkov -----------------------------------------------------------------------
# Skips must say why: `#checkov:skip=CKV_X:reason` in Terraform, and
# `checkov.io/skipN: "CKV_X=reason"` annotations in the Kubernetes templates.
bare=$(grep -rnE '#checkov:skip=[A-Z0-9_]+(:.{0,19})?$' deploy || true)
bare+=$(grep -rnE 'checkov\.io/skip[0-9]+: "?[A-Z0-9_]+(=.{0,19})?"?$' deploy || true)
if [[ -n "$bare" ]]; then
  echo "FAIL: checkov skips without a reason:"; echo "$bare"
  failed+=("checkov-skip-reasons")
fi
n_skips=$(grep -rhoE '#checkov:skip=[A-Z0-9_]+|checkov\.io/skip[0-9]+: "?[A-Z0-9_]+' deploy | wc -l)
run_checkov() { # label args...
  local label="$1" out t0; shift
  t0=$(now)
  if out=$(checkov "$@" 2>&1); then
    log "checkov $label: $(grep -m1 -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' <<<"$out" || echo 'no resources') ($(elapsed "$t0"))"
  else
    echo "$out" | grep -v '^\s*$'
    failed+=("checkov-$label")
  fi
}
run_checkov terraform -d deploy/terraform --framework terraform
run_checkov dockerfile -f deploy/docker/Dockerfile -f deploy/docker/Dockerfile.gpu --framework dockerfile
run_checkov kubernetes -d "$RENDERED" --framework kubernetes
log "checkov: $n_skips skips in deploy/, each with its reason"

# --- 5. health-check script -------------------------------------------------------------
t0=$(now)
if "$PYTHON" - "$ROOT/deploy/docker/healthcheck.sh" <<'PY'
import http.server, os, subprocess, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    def do_GET(self):
        code = Handler.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]
def probe():
    env = dict(os.environ, TASKMESH_LISTEN=f"0.0.0.0:{port}")
    return subprocess.run(["bash", sys.argv[1]], env=env, capture_output=True, timeout=10).returncode
ok = probe() == 0
Handler.status = 503
ok = ok and probe() != 0
server.shutdown()
server.server_close()
# Nothing listens on the port any more.
ok = ok and probe() != 0
sys.exit(0 if ok else 1)
PY
then
  log "healthcheck.sh: healthy on 200, unhealthy on 503 and on a closed port ($(elapsed "$t0"))"
else
  echo "FAIL: deploy/docker/healthcheck.sh does not tell healthy from unhealthy"
  failed+=("healthcheck")
fi

# --- 6. base-image digests ------------------------------------------------------------
# pin-digests.sh on copies of both Dockerfiles, with a stand-in `docker` that
# answers a digest per image: every FROM line gets pinned, `--check` fails
# before and passes after, and nothing but the FROM lines changes.
t0=$(now)
pin_dir="$(mktemp -d)"
mkdir -p "$pin_dir/bin"
cat >"$pin_dir/bin/docker" <<'SH'
#!/bin/sh
# docker buildx imagetools inspect --format FORMAT IMAGE
printf '"sha256:%s"\n' "$(printf '%s' "$6" | sha256sum | cut -c1-64)"
SH
chmod +x "$pin_dir/bin/docker"
cp deploy/docker/Dockerfile deploy/docker/Dockerfile.gpu "$pin_dir/"
if ! deploy/docker/pin-digests.sh --check "$pin_dir/Dockerfile" "$pin_dir/Dockerfile.gpu" >/dev/null \
  && PATH="$pin_dir/bin:$PATH" deploy/docker/pin-digests.sh "$pin_dir/Dockerfile" "$pin_dir/Dockerfile.gpu" >/dev/null \
  && deploy/docker/pin-digests.sh --check "$pin_dir/Dockerfile" "$pin_dir/Dockerfile.gpu" \
  && [[ "$(diff deploy/docker/Dockerfile "$pin_dir/Dockerfile" | grep -c '^>')" == "$(grep -c '^FROM ' deploy/docker/Dockerfile)" ]] \
  && ! grep -E '^FROM ' "$pin_dir/Dockerfile" "$pin_dir/Dockerfile.gpu" | grep -vqE '@sha256:[0-9a-f]{64}( |$)'; then
  log "pin-digests.sh: pins every base image by digest, --check tells pinned from unpinned ($(elapsed "$t0"))"
else
  echo "FAIL: deploy/docker/pin-digests.sh does not pin every FROM line"
  failed+=("pin-digests")
fi
rm -rf "$pin_dir"

if ((${#failed[@]})); then
  log "FAILED: ${failed[*]} ($(elapsed "$T_START"))"
  exit 1
fi
log "all deploy checks passed ($(elapsed "$T_START"))"
