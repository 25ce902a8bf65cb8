#!/usr/bin/env bash
# Builds SeaweedFS's `weed` from its Go module (github.com/seaweedfs/seaweedfs
# at the version pinned below) into .devcluster/bin/weed at the repository
# root: the S3-compatible object store the tests write results to (test
# tooling only, like tools/controlplane).
#
# Why not `go install module@version`: SeaweedFS's go.mod carries replace
# directives, which `go install` refuses for a module that is not the main
# one. So the module's source (from the module proxy, verified against
# go.sum's checksum database like any download) is copied and built as the
# main module, with exactly the dependency versions its own go.sum pins.
#
# Idempotent and cached (tools/lib/stamped.sh): the stamp covers this script
# and the Go version; the cache is $SEAWEEDFS_CACHE, default
# ~/.cache/analysis-operator/seaweedfs. A cold build takes 4-5 minutes on two
# cores; the binary is about 230 MB.
set -euo pipefail
SEAWEEDFS_VERSION=v0.0.0-20261109003541-7506e5f91cd6
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${ANALYSIS_DEVCLUSTER_BIN:-$root/.devcluster/bin}
cache=${SEAWEEDFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/analysis-operator/seaweedfs}
module=github.com/seaweedfs/seaweedfs

# shellcheck source=../lib/stamped.sh
. "$here/../lib/stamped.sh"
gov=$(stamped_require_go "seaweedfs/build.sh (seaweedfs $SEAWEEDFS_VERSION)" 26)
stamp=$(cat "$here/build.sh" <(echo "$gov") | sha256sum | cut -d' ' -f1)
stamped_init seaweedfs "$out" "$cache" "$stamp" weed
stamped_ready && exit 0
mkdir -p "$out"

log="$(dirname "$out")/logs/seaweedfs-build.log"
mkdir -p "$(dirname "$log")"
info=$(go mod download -json "$module@$SEAWEEDFS_VERSION" 2>>"$log")
dir=$(echo "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -1)
[ -d "$dir/weed" ] || { echo "seaweedfs/build.sh: no weed/ in the downloaded module ($dir)" >&2; exit 1; }

echo "building seaweedfs $SEAWEEDFS_VERSION with $gov into $out (a cold build takes several minutes; log: $log)"
tmp=$(mktemp -d "$out/.seaweedfs-build.XXXXXX")
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
start=$(date +%s)
# The module cache is read-only; build a writable copy of it as the main module.
cp -r "$dir" "$tmp/src"
chmod -R u+w "$tmp/src"
(cd "$tmp/src" && GOFLAGS=-mod=mod CGO_ENABLED=0 stamped_logged "$log" go build -trimpath -ldflags "-s -w" -o "$tmp/weed" ./weed)
mv -f "$tmp/weed" "$out/weed"
stamped_save
echo "built in $(( $(date +%s) - start ))s: $("$out/weed" version 2>/dev/null | head -1)"
