#!/usr/bin/env bash
# Install the system packages the project needs and the machine lacks:
# redis-server (tests and the demo start their own on free ports) and make.
# Go is required too (it builds the test control plane) but is not installed here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v make >/dev/null || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
command -v go >/dev/null || { echo "Go >= 1.24 is required to build the test control plane" >&2; exit 1; }
