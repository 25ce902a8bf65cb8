#!/usr/bin/env bash
# Install the system packages the project needs and the machine lacks:
# redis-server (tests and the demo start their own on free ports), make,
# lua5.4 (runs the Argo CD health check in tests) and promtool (Debian's
# prometheus package; checks the metrics' names and format) and jq (runs the
# Argo CD ignore-differences rule in tests).
# Go is required too (it builds the test control plane) but is not installed here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v make >/dev/null || missing+=(make)
command -v lua5.4 >/dev/null || missing+=(lua5.4)
command -v promtool >/dev/null || missing+=(prometheus)
command -v jq >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "Go >= 1.24 is required to build the test control plane" >&2; exit 1; }
