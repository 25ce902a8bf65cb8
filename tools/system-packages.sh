#!/usr/bin/env bash
# Install the system packages the project needs and the machine lacks.
#
#   tools/system-packages.sh        everything `make test` needs
#   tools/system-packages.sh demo   only what `make demo` needs
#
# The demo needs redis-server (it starts its own on a free port), make and
# the node: containerd, runc, the CNI plugins, iptables, iproute2 and
# conntrack (kube-proxy), buildah, debootstrap and gcc (the images: a Debian
# base, a static pause binary). The tests also need lua5.4 (runs the Argo CD health check), jq (runs the
# Argo CD ignore-differences rule) and promtool (checks the metrics' names and
# format). promtool is taken from Debian's prometheus package without
# installing that package: installing it would also set up a Prometheus server
# as a system service, with a dozen JavaScript packages for its web UI. Only
# the promtool binary is extracted, into /usr/local/bin.
# Go is required too (it builds the test control plane) but is not installed here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
mode=${1:-test}
case $mode in demo | test) ;; *) echo "usage: $0 [demo|test]" >&2; exit 2 ;; esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=""
# apt's own output goes to a log; the terminal gets one line per step (and the log's tail on failure).
log="$(cd "$(dirname "$0")/.." && pwd)/.devcluster/logs/system-packages.log"
mkdir -p "$(dirname "$log")"
logged() {
  "$@" >> "$log" 2>&1 || { code=$?; echo "failed (exit $code): $*; the last lines of $log:" >&2; tail -n 30 "$log" >&2; exit "$code"; }
}
apt_update() { [ -n "$updated" ] || { logged $sudo apt-get update -qq; updated=1; }; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v make >/dev/null || missing+=(make)
# The node's runtime and network, and what builds its images (command -> Debian package).
for pair in containerd:containerd runc:runc iptables:iptables ip:iproute2 conntrack:conntrack \
            buildah:buildah debootstrap:debootstrap gcc:gcc; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
[ -x /usr/lib/cni/bridge ] || [ -x /opt/cni/bin/bridge ] || missing+=(containernetworking-plugins)
if [ "$mode" = test ]; then
  command -v lua5.4 >/dev/null || missing+=(lua5.4)
  command -v jq >/dev/null || missing+=(jq)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} with apt-get (log: $log)"
  apt_update
  logged $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$mode" = test ] && ! command -v promtool >/dev/null; then
  echo "installing promtool from Debian's prometheus package (the binary only)"
  apt_update
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # As root, apt-get would hand the download to its _apt user, who may not write here.
  sandbox=()
  [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
  (cd "$tmp" && logged apt-get download -qq "${sandbox[@]}" prometheus)
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -O ./usr/bin/promtool > "$tmp/promtool"
  $sudo install -m 0755 "$tmp/promtool" /usr/local/bin/promtool
  promtool --version | head -n 1
fi

command -v go >/dev/null || { echo "Go >= 1.26 is required to build the test cluster (Kubernetes, CoreDNS and helm from their Go modules)" >&2; exit 1; }
