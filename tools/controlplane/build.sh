#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl) from the upstream Go modules pinned in go.mod/go.sum, into
# .devcluster/bin/ at the repository root.
#
# Idempotent: a stamp over go.mod, go.sum, this script and the Go version is
# kept next to the binaries; when it matches and every binary is present the
# script returns at once. Built binaries are also kept per stamp in a cache
# outside the checkout ($CONTROLPLANE_CACHE, default ~/.cache/analysis-operator/
# controlplane), so a fresh clone on the same machine (CI) copies them instead
# of building. Otherwise it runs one `go build` for all four tools, which
# reuses GOMODCACHE and GOCACHE. Static binaries (CGO_ENABLED=0) with the real
# version stamped in, as upstream's hack/lib/version.sh does.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${ANALYSIS_DEVCLUSTER_BIN:-$root/.devcluster/bin}
cache=${CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/analysis-operator/controlplane}
tools=(etcd kube-apiserver kube-controller-manager kubectl)

have_all() { local t; for t in "${tools[@]}"; do [ -x "$1/$t" ] || return 1; done; }

command -v go >/dev/null || { echo "build.sh: go is not on PATH (Go >= 1.24 is needed)" >&2; exit 1; }
gov=$(go env GOVERSION)
minor=$(echo "$gov" | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -z "$minor" ] || [ "$minor" -lt 24 ]; then
  echo "build.sh: $gov is too old; the pinned Kubernetes needs Go >= 1.24" >&2
  exit 1
fi

stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" <(echo "$gov") | sha256sum | cut -d' ' -f1)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ] && have_all "$out"; then
  echo "control plane up to date in $out"
  exit 0
fi
if have_all "$cache/$stamp"; then
  mkdir -p "$out"
  for t in "${tools[@]}"; do cp -f "$cache/$stamp/$t" "$out/$t"; done
  echo "$stamp" > "$out/.stamp"
  echo "control plane copied from the build cache $cache/$stamp"
  exit 0
fi

cd "$here"
k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
major=${k8s_version#v}; major=${major%%.*}
kminor=$(echo "$k8s_version" | cut -d. -f2)
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$kminor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_version}"

echo "building kubernetes $k8s_version and etcd $etcd_version with $gov into $out (a cold build takes a while)"
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  go.etcd.io/etcd/server/v3 \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
# go names the binary of a .../server/v3 main package "server".
mv "$tmp/server" "$tmp/etcd"
for t in "${tools[@]}"; do mv -f "$tmp/$t" "$out/$t"; done
echo "$stamp" > "$out/.stamp"
# Keep one cached build per stamp; older ones are dropped.
mkdir -p "$cache" && rm -rf "${cache:?}"/.tmp.* && tmpc=$(mktemp -d "$cache/.tmp.XXXXXX")
for t in "${tools[@]}"; do cp "$out/$t" "$tmpc/$t"; done
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$(basename "$tmpc")" -exec rm -rf {} +
mv "$tmpc" "$cache/$stamp"
echo "built in $(( $(date +%s) - start ))s: $(cd "$out" && ls "${tools[@]}" | tr '\n' ' ')"
