#!/usr/bin/env bash
# Builds kstatus, a tiny command around status.Compute of the real kstatus
# library (sigs.k8s.io/cli-utils/pkg/kstatus/status: what Flux's
# kustomize-controller, kpt and cli-utils' appliers use to judge a resource),
# from the module pinned in go.mod/go.sum, into .devcluster/bin/kstatus next to
# the control-plane tools (test tooling only, like tools/controlplane).
#
# A module of its own, like tools/coredns: cli-utils pins its own Kubernetes
# modules, which must not move the control plane's. go.mod holds k8s.io/api
# and k8s.io/apimachinery at the control plane's version. Idempotent and
# cached (tools/lib/stamped.sh): the stamp covers go.mod, go.sum, main.go,
# this script and the Go version; the cache is $KSTATUS_CACHE, default
# ~/.cache/analysis-operator/kstatus.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${ANALYSIS_DEVCLUSTER_BIN:-$root/.devcluster/bin}
cache=${KSTATUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/analysis-operator/kstatus}
# shellcheck source=../lib/stamped.sh
. "$here/../lib/stamped.sh"

gov=$(stamped_require_go "kstatus/build.sh" 24)
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/build.sh" <(echo "$gov") | sha256sum | cut -d' ' -f1)
stamped_init kstatus "$out" "$cache" "$stamp" kstatus
stamped_ready && exit 0

cd "$here"
log="$(dirname "$out")/logs/kstatus-build.log"
mkdir -p "$(dirname "$log")"
version=$(go list -m -f '{{.Version}}' sigs.k8s.io/cli-utils 2>>"$log")
echo "building kstatus (sigs.k8s.io/cli-utils $version) with $gov into $out (log: $log)"
mkdir -p "$out"
tmp=$(mktemp -d "$out/.kstatus-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
CGO_ENABLED=0 stamped_logged "$log" go build -trimpath -ldflags "-s -w" -o "$tmp/kstatus" .
mv -f "$tmp/kstatus" "$out/kstatus"
stamped_save
echo "built in $(( $(date +%s) - start ))s: $out/kstatus"
