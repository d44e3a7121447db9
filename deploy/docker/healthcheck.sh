#!/bin/bash
# Docker HEALTHCHECK for the taskmesh image: GET /healthz (liveness) on the port
# this container's taskmesh process listens on. Needs nothing beyond bash, so the
# runtime image carries no curl.
#
# The port comes from, in order: a --listen flag on PID 1 (the ENTRYPOINT), then
# TASKMESH_LISTEN, then the role's default (router 8080, registry 8081, node 9000).
# Kubernetes does not use this: its probes are httpGet /healthz and /readyz.
set -euo pipefail

role=""
listen="${TASKMESH_LISTEN:-}"
if [[ -r /proc/1/cmdline ]]; then
  mapfile -d '' args </proc/1/cmdline
  role="${args[1]:-}"
  for ((i = 1; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
      --listen) listen="${args[i + 1]:-$listen}" ;;
      --listen=*) listen="${args[i]#--listen=}" ;;
    esac
  done
fi

case "$role" in
  registry) port=8081 ;;
  node) port=9000 ;;
  *) port=8080 ;;
esac
host=127.0.0.1
if [[ -n "$listen" ]]; then
  port="${listen##*:}"
  host="${listen%:*}"
  host="${host#[}"
  host="${host%]}"
  case "$host" in
    "" | 0.0.0.0 | "::") host=127.0.0.1 ;;
  esac
fi

exec 3<>"/dev/tcp/$host/$port"
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
IFS= read -r -t 5 status <&3
[[ "$status" =~ ^HTTP/1\.[01]\ 200 ]] || { echo "unhealthy: ${status:-no answer} from $host:$port"; exit 1; }
