#!/usr/bin/env bash
# Benchmark: a cold build of the test cluster's Kubernetes components (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet,
# kube-proxy) with an empty Go build cache, into a
# temporary directory. The module cache is kept: downloading modules measures
# the network, not the build. Writes bench/results/controlplane_build.json with
# the wall time, the largest process's peak RSS (GNU time) and the machine's
# peak used memory sampled every second (all build processes together).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=${1:-$here/results/controlplane_build.json}
work=$(mktemp -d /tmp/bench-controlplane.XXXXXX)
trap 'kill "$sampler" 2>/dev/null || true; rm -rf "$work"' EXIT

used_kib() { awk '/MemTotal/ {t=$2} /MemAvailable/ {a=$2} END {print t-a}' /proc/meminfo; }
baseline=$(used_kib)
( peak=0; while sleep 1; do u=$(used_kib); [ "$u" -gt "$peak" ] && peak=$u && echo "$peak" > "$work/peak"; done ) &
sampler=$!

start=$(date +%s)
GOCACHE="$work/gocache" ANALYSIS_DEVCLUSTER_BIN="$work/bin" CONTROLPLANE_CACHE="$work/cache" \
  /usr/bin/time -v -o "$work/time.txt" "$root/tools/controlplane/build.sh" > "$work/build.log" 2>&1
wall=$(( $(date +%s) - start ))
kill "$sampler" 2>/dev/null || true
max_rss_kib=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time.txt")
peak_kib=$(cat "$work/peak" 2>/dev/null || echo "$baseline")
mkdir -p "$(dirname "$out")"
cat > "$out" <<JSON
{
  "benchmark": "cold build of the test control plane (empty GOCACHE, module cache kept)",
  "when": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$(git -C "$root" rev-parse --short HEAD)",
  "go": "$(go env GOVERSION)",
  "kubernetes": "$(cd "$root/tools/controlplane" && go list -m -f '{{.Version}}' k8s.io/kubernetes)",
  "etcd": "$(cd "$root/tools/controlplane" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)",
  "cpus": $(nproc),
  "wall_seconds": $wall,
  "largest_process_peak_rss_mib": $(( max_rss_kib / 1024 )),
  "machine_peak_used_mib_above_baseline": $(( (peak_kib - baseline) / 1024 )),
  "binaries_mib": {$(cd "$work/bin" && for f in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do printf '"%s": %s, ' "$f" $(( $(stat -c %s "$f") / 1048576 )); done | sed 's/, $//')}
}
JSON
cat "$out"
