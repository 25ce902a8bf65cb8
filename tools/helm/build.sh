#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3 at the version pinned below)
# into .devcluster/bin/helm at the repository root, next to the control-plane
# tools, for the chart's tests (test tooling only, like tools/controlplane).
#
# Why a pinned `go install` rather than a module of its own: helm's go.mod has
# no replace directives, so `go install module@version` builds it with exactly
# the dependency versions helm's own go.sum verifies, and keeping helm out of
# tools/controlplane/go.mod leaves the control plane's Kubernetes versions alone.
#
# Idempotent and cached (tools/lib/stamped.sh): the stamp covers this script
# and the Go version; the cache is $HELM_CACHE, default
# ~/.cache/analysis-operator/helm.
#
# The ldflags are those of helm's Makefile: the release version and commit,
# and the Kubernetes version that `helm template` and `helm lint` assume when
# no cluster is asked (client-go's minor, major + 1, as helm computes it).
set -euo pipefail
HELM_VERSION=v3.22.0
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${ANALYSIS_DEVCLUSTER_BIN:-$root/.devcluster/bin}
cache=${HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/analysis-operator/helm}
module=helm.sh/helm/v3

# shellcheck source=../lib/stamped.sh
. "$here/../lib/stamped.sh"
gov=$(stamped_require_go "helm/build.sh (helm $HELM_VERSION)" 26)
stamp=$(cat "$here/build.sh" <(echo "$gov") | sha256sum | cut -d' ' -f1)
stamped_init helm "$out" "$cache" "$stamp" helm
stamped_ready && exit 0
mkdir -p "$out"

# The module's go.mod (for client-go's version) and its commit, from the module proxy.
log="$(dirname "$out")/logs/helm-build.log"
mkdir -p "$(dirname "$log")"
info=$(go mod download -json "$module@$HELM_VERSION" 2>>"$log")
field() { echo "$info" | sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -1; }
gomod=$(field GoMod)
commit=$(field Hash)
client_go=$(sed -n 's/^[[:space:]]*k8s\.io\/client-go \(v[0-9.]*\).*/\1/p' "$gomod" | head -1)
[ -n "$client_go" ] || { echo "helm/build.sh: no k8s.io/client-go in $gomod" >&2; exit 1; }
kmajor=$(( $(echo "${client_go#v}" | cut -d. -f1) + 1 ))
kminor=$(echo "$client_go" | cut -d. -f2)
ldflags="-s -w -X $module/internal/version.version=$HELM_VERSION"
ldflags+=" -X $module/internal/version.gitCommit=$commit -X $module/internal/version.gitTreeState=clean"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X $module/$pkg.k8sVersionMajor=$kmajor -X $module/$pkg.k8sVersionMinor=$kminor"
done

echo "building helm $HELM_VERSION (Kubernetes $kmajor.$kminor) with $gov into $out (a cold build takes a few minutes; log: $log)"
tmp=$(mktemp -d "$out/.helm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
GOBIN="$tmp" CGO_ENABLED=0 stamped_logged "$log" go install -trimpath -ldflags "$ldflags" "$module/cmd/helm@$HELM_VERSION"
mv -f "$tmp/helm" "$out/helm"
stamped_save
echo "built in $(( $(date +%s) - start ))s: $("$out/helm" version --short)"
