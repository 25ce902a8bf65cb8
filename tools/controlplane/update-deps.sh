#!/usr/bin/env bash
# Regenerates go.mod/go.sum for a Kubernetes release: requires k8s.io/kubernetes
# at $1 and restates upstream's staging `replace` block against the published
# staging modules (Go ignores replace directives of dependencies, so every
# k8s.io/<x> v0.0.0 requirement must be mapped to k8s.io/<x> v0.<minor>.<patch>).
# Usage: tools/controlplane/update-deps.sh v1.34.4
set -euo pipefail
cd "$(dirname "$0")"
version=${1:?usage: update-deps.sh vMAJOR.MINOR.PATCH}
staging=v0.${version#v1.}
upstream_mod=$(go mod download -json "k8s.io/kubernetes@${version}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$upstream_mod" ] || { echo "could not download k8s.io/kubernetes@${version}" >&2; exit 1; }

cat > go.mod <<MOD
// Test tooling only: builds a real control plane from upstream Go modules.
// Regenerate with ./update-deps.sh; do not edit the replace block by hand.
module analysis.dev/tools/controlplane

go $(sed -n 's/^go //p' "$upstream_mod")
MOD
for m in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$upstream_mod"); do
  go mod edit -replace="${m}=${m}@${staging}"
done
go mod edit -require="k8s.io/kubernetes@${version}"
etcd=$(sed -n 's#^\s*go.etcd.io/etcd/server/v3 \(v[0-9.]*\).*#\1#p' "$upstream_mod")
for tool in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  go get -tool "k8s.io/kubernetes/cmd/${tool}@${version}"
done
go get -tool "go.etcd.io/etcd/server/v3@${etcd}"
go mod tidy
echo "pinned k8s.io/kubernetes ${version}, etcd server ${etcd}"
