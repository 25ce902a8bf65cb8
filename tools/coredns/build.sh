#!/usr/bin/env bash
# Builds the dev cluster's DNS server, CoreDNS, from its Go module pinned in
# go.mod/go.sum, with only the plugins main.go imports (test tooling only,
# like tools/controlplane), into .devcluster/bin/coredns.
#
# A module of its own rather than a tool of tools/controlplane: CoreDNS pins
# its own client-go, which must not move the control plane's Kubernetes
# versions. Idempotent and cached (tools/lib/stamped.sh): the stamp covers
# go.mod, go.sum, main.go, this script and the Go version; the cache is
# $COREDNS_CACHE, default ~/.cache/analysis-operator/coredns.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${ANALYSIS_DEVCLUSTER_BIN:-$root/.devcluster/bin}
cache=${COREDNS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/analysis-operator/coredns}
# shellcheck source=../lib/stamped.sh
. "$here/../lib/stamped.sh"

gov=$(stamped_require_go "coredns/build.sh" 26)
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$here/build.sh" <(echo "$gov") | sha256sum | cut -d' ' -f1)
stamped_init coredns "$out" "$cache" "$stamp" coredns
stamped_ready && exit 0

cd "$here"
log="$(dirname "$out")/logs/coredns-build.log"
mkdir -p "$(dirname "$log")"
version=$(go list -m -f '{{.Version}}' github.com/coredns/coredns 2>>"$log")
echo "building coredns $version with $gov into $out (log: $log)"
mkdir -p "$out"
tmp=$(mktemp -d "$out/.coredns-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
# GitCommit is what `coredns -version` prints after the version; the module has no commit, so the tag.
CGO_ENABLED=0 stamped_logged "$log" go build -trimpath \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" -o "$tmp/coredns" .
mv -f "$tmp/coredns" "$out/coredns"
stamped_save
echo "built in $(( $(date +%s) - start ))s: $("$out/coredns" -version | head -1)"
