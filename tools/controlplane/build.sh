#!/usr/bin/env bash
# Builds the test cluster's Kubernetes components from the upstream Go modules
# pinned in go.mod/go.sum, into .devcluster/bin/ at the repository root: the
# control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl) and the node (kubelet, kube-proxy).
#
# Idempotent and cached (tools/lib/stamped.sh): the stamp covers go.mod,
# go.sum, this script and the Go version. Otherwise it runs one `go build` for
# every tool, which reuses GOMODCACHE and GOCACHE. Static binaries
# (CGO_ENABLED=0) with the real version stamped in, as upstream's
# hack/lib/version.sh does.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${ANALYSIS_DEVCLUSTER_BIN:-$root/.devcluster/bin}
cache=${CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/analysis-operator/controlplane}
tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
# shellcheck source=../lib/stamped.sh
. "$here/../lib/stamped.sh"

gov=$(stamped_require_go "controlplane/build.sh" 24)
stamp=$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" <(echo "$gov") | sha256sum | cut -d' ' -f1)
stamped_init controlplane "$out" "$cache" "$stamp" "${tools[@]}"
stamped_ready && exit 0

cd "$here"
log="$(dirname "$out")/logs/controlplane-build.log"
mkdir -p "$(dirname "$log")"
k8s_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes 2>>"$log")
etcd_version=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3 2>>"$log")
major=${k8s_version#v}; major=${major%%.*}
kminor=$(echo "$k8s_version" | cut -d. -f2)
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$kminor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done
ldflags+=" -X go.etcd.io/etcd/api/v3/version.GitSHA=${etcd_version}"

echo "building kubernetes $k8s_version and etcd $etcd_version with $gov into $out (a cold build takes a while; log: $log)"
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
CGO_ENABLED=0 stamped_logged "$log" go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
  go.etcd.io/etcd/server/v3 \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy
# go names the binary of a .../server/v3 main package "server".
mv "$tmp/server" "$tmp/etcd"
for t in "${tools[@]}"; do mv -f "$tmp/$t" "$out/$t"; done
stamped_save
echo "built in $(( $(date +%s) - start ))s: $(cd "$out" && ls "${tools[@]}" | tr '\n' ' ')"
