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
# Idempotent and cached like tools/controlplane/build.sh: a stamp over this
# script and the Go version is kept next to the binary; when it matches the
# script returns at once. The built binary is also kept per stamp in a cache
# outside the checkout ($HELM_CACHE, default ~/.cache/analysis-operator/helm;
# not the control plane's cache directory, which keeps only its own stamp), so
# a fresh clone on the same machine (CI) copies it instead of building.
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

command -v go >/dev/null || { echo "helm/build.sh: go is not on PATH (helm $HELM_VERSION needs Go >= 1.26)" >&2; exit 1; }
gov=$(go env GOVERSION)
minor=$(echo "$gov" | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -z "$minor" ] || [ "$minor" -lt 26 ]; then
  echo "helm/build.sh: $gov is too old; helm $HELM_VERSION needs Go >= 1.26" >&2
  exit 1
fi

stamp=$(cat "$here/build.sh" <(echo "$gov") | sha256sum | cut -d' ' -f1)
if [ -f "$out/.helm.stamp" ] && [ "$(cat "$out/.helm.stamp")" = "$stamp" ] && [ -x "$out/helm" ]; then
  echo "helm up to date in $out"
  exit 0
fi
mkdir -p "$out"
if [ -x "$cache/$stamp/helm" ]; then
  cp -f "$cache/$stamp/helm" "$out/helm"
  echo "$stamp" > "$out/.helm.stamp"
  echo "helm copied from the build cache $cache/$stamp"
  exit 0
fi

# The module's go.mod (for client-go's version) and its commit, from the module proxy.
info=$(go mod download -json "$module@$HELM_VERSION")
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

echo "building helm $HELM_VERSION (Kubernetes $kmajor.$kminor) with $gov into $out (a cold build takes a few minutes)"
tmp=$(mktemp -d "$out/.helm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" "$module/cmd/helm@$HELM_VERSION"
mv -f "$tmp/helm" "$out/helm"
echo "$stamp" > "$out/.helm.stamp"
# Keep one cached build per stamp; older ones are dropped.
mkdir -p "$cache" && rm -rf "${cache:?}"/.tmp.* && tmpc=$(mktemp -d "$cache/.tmp.XXXXXX")
cp "$out/helm" "$tmpc/helm"
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$(basename "$tmpc")" -exec rm -rf {} +
mv "$tmpc" "$cache/$stamp"
echo "built in $(( $(date +%s) - start ))s: $("$out/helm" version --short)"
