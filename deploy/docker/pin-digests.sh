#!/usr/bin/env bash
# Pins every base image of the Dockerfiles here by digest: each
# `FROM image:tag` becomes `FROM image:tag@sha256:<index digest>`, resolved from
# the registry with `docker buildx imagetools inspect` (the multi-platform
# index, so one digest serves linux/amd64 and linux/arm64). Lines already
# pinned are left alone. Run it before building a release (deploy/README.md,
# step 3) and commit the result; `--check` only reports unpinned lines and
# exits 1 when there are any (for a release pipeline).
#
# The development machines cannot reach Docker Hub or nvcr.io, which is why the
# committed files carry tags only: a digest must come from the registry, never
# be typed in.
#
#   deploy/docker/pin-digests.sh [--check] [Dockerfile ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

check=false
if [[ "${1:-}" == "--check" ]]; then
  check=true
  shift
fi
files=("$@")
[[ ${#files[@]} -gt 0 ]] || files=(Dockerfile Dockerfile.gpu)

unpinned=0
for file in "${files[@]}"; do
  tmp="$(mktemp)"
  while IFS= read -r line || [[ -n "$line" ]]; do
    if [[ "$line" =~ ^FROM[[:space:]]+([^[:space:]@]+)([[:space:]].*)?$ ]]; then
      image="${BASH_REMATCH[1]}"
      rest="${BASH_REMATCH[2]:-}"
      if $check; then
        echo "$file: not pinned: $image"
        unpinned=$((unpinned + 1))
      else
        digest="$(docker buildx imagetools inspect --format '{{json .Manifest.Digest}}' "$image" | tr -d '"')"
        if [[ ! "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
          echo "$file: no digest for $image (got: $digest)" >&2
          rm -f "$tmp"
          exit 1
        fi
        echo "$file: $image@$digest"
        line="FROM $image@$digest$rest"
      fi
    fi
    printf '%s\n' "$line" >>"$tmp"
  done <"$file"
  if $check; then
    rm -f "$tmp"
  else
    cat "$tmp" >"$file"
    rm -f "$tmp"
  fi
done
if $check && [[ $unpinned -gt 0 ]]; then
  exit 1
fi
