"""The real node's pod network on this host: a bridge, blackhole routes, the CNI configuration, and their removal.

Called by :mod:`analysis_devcluster.node` before containerd starts and after
it stops. Pods get addresses from the pod range on the bridge ``devcluster0``
(the CNI ``bridge`` plugin with ``host-local`` addresses); the bridge holds
the range's first address, the gateway, which is how pods reach this host:
the apiserver, Redis, CoreDNS and the tests' stand-in servers listen there.

Network safety, which is the point of most of this module: the pod and
Service ranges are private addresses, and nothing addressed to them may ever
leave the machine. So

* the host gets ``blackhole`` routes for both whole ranges while the cluster
  runs (for the pod range, the bridge's connected route has a lower metric and
  wins while the bridge is up);
* pods get no default route, only the pod range (on the bridge) and the
  Service range (through the gateway, where kube-proxy rewrites it), and the
  bridge plugin masquerades nothing (``ipMasq: false``);
* an iptables chain drops anything forwarded from the bridge to any other
  interface.

:func:`check_free` refuses ranges that overlap a route the host already has
(other than a default route), rather than shadowing it. :func:`teardown`
removes everything :func:`setup` made, and is safe to run on leftovers of a
run that crashed. It deliberately does not enforce NetworkPolicy: the bridge
plugin has no policy engine.
"""

import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

BRIDGE = "devcluster0"
CNI_NETWORK = "devcluster"
# The iptables chain (filter table) that keeps pod traffic on the bridge.
GUARD_CHAIN = "DEVCLUSTER-GUARD"
POD_CIDR_ENV = "ANALYSIS_DEVCLUSTER_POD_CIDR"
SERVICE_CIDR_ENV = "ANALYSIS_DEVCLUSTER_SERVICE_CIDR"
# kind's ranges, narrowed: a /24 each is plenty for one node.
DEFAULT_POD_CIDR = "10.244.0.0/24"
DEFAULT_SERVICE_CIDR = "10.96.0.0/24"
# The pod range's blackhole has the same prefix as the bridge's connected route (metric 0), which wins while
# the bridge is up; a metric is what lets the two coexist.
BLACKHOLE_METRIC = "4000"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
_SYSCTLS = {
    # Pod -> Service -> pod on the same bridge is routed through the host.
    "net/ipv4/ip_forward": "1",
    # Bridged frames pass iptables, so kube-proxy's NAT applies between pods on one bridge.
    "net/bridge/bridge-nf-call-iptables": "1",
}


class NetworkError(RuntimeError):
    """The pod network cannot be set up here; the message says why and what to change."""


@dataclasses.dataclass(frozen=True)
class Ranges:
    """The pod and Service ranges of the node, and the addresses derived from them."""

    pods: ipaddress.IPv4Network
    services: ipaddress.IPv4Network

    @classmethod
    def from_env(cls) -> "Ranges":
        """The ranges from ``ANALYSIS_DEVCLUSTER_POD_CIDR``/``..._SERVICE_CIDR``, or the defaults."""
        pods = os.environ.get(POD_CIDR_ENV) or DEFAULT_POD_CIDR
        services = os.environ.get(SERVICE_CIDR_ENV) or DEFAULT_SERVICE_CIDR
        try:
            parsed = cls(ipaddress.IPv4Network(pods), ipaddress.IPv4Network(services))
        except ValueError as error:
            raise NetworkError(f"{POD_CIDR_ENV}/{SERVICE_CIDR_ENV}: {error}") from error
        for name, network in ((POD_CIDR_ENV, parsed.pods), (SERVICE_CIDR_ENV, parsed.services)):
            if not network.is_private or network.prefixlen > 28:
                raise NetworkError(f"{name}={network}: a private IPv4 range of at least 16 addresses is needed")
        if parsed.pods.overlaps(parsed.services):
            raise NetworkError(f"the pod range {parsed.pods} overlaps the Service range {parsed.services}")
        return parsed

    @property
    def gateway(self) -> str:
        """The bridge's address: the host as pods see it."""
        return str(self.pods.network_address + 1)

    @property
    def kubernetes_service_ip(self) -> str:
        """The ClusterIP the apiserver gives the ``kubernetes`` Service: the range's first address."""
        return str(self.services.network_address + 1)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()}")
    return result


def host_routes() -> list[dict[str, str]]:
    """The host's IPv4 routes of the main table, as ``ip -j route`` gives them."""
    routes: list[dict[str, str]] = json.loads(_run("ip", "-j", "-4", "route", "show", "table", "main").stdout or "[]")
    return routes


def check_free(ranges: Ranges) -> None:
    """Refuse ranges that overlap a route of the host's (see :func:`overlap`)."""
    problem = overlap(ranges, host_routes())
    if problem is not None:
        raise NetworkError(problem)


def overlap(ranges: Ranges, routes: list[dict[str, str]]) -> str | None:
    """Why ``ranges`` may not be used beside ``routes`` (``ip -j route`` rows), or None.

    A default route does not count (shadowing it for private ranges is the
    point), nor do our own bridge's route and our own blackholes, which a
    crashed run may have left and :func:`teardown` removes.
    """
    for route in routes:
        destination = route.get("dst", "")
        if destination in ("default", "") or route.get("dev") == BRIDGE:
            continue
        if route.get("type") == "blackhole" and destination in (str(ranges.pods), str(ranges.services)):
            continue
        network = ipaddress.IPv4Network(destination if "/" in destination else f"{destination}/32", strict=False)
        for name, env, mine in (("pod", POD_CIDR_ENV, ranges.pods), ("Service", SERVICE_CIDR_ENV, ranges.services)):
            if network.overlaps(mine):
                return (
                    f"the {name} range {mine} overlaps the host's route to {destination} "
                    f"(dev {route.get('dev', '?')}); choose another range with {env}"
                )
    return None


def cni_config(ranges: Ranges, data_dir: Path) -> dict[str, object]:
    """The CNI network list for containerd: bridge + host-local addresses, loopback; no default route, no NAT."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(data_dir),
                    "ranges": [[{"subnet": str(ranges.pods), "gateway": ranges.gateway}]],
                    # The pod range is on the link; Services are reached through the host, nothing else at all.
                    "routes": [{"dst": str(ranges.services), "gw": ranges.gateway}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def cni_bin_dir() -> Path:
    """Where the CNI plugins are (Debian's containernetworking-plugins puts them in /usr/lib/cni)."""
    for directory in CNI_BIN_DIRS:
        if (Path(directory) / "bridge").is_file():
            return Path(directory)
    raise NetworkError(
        f"the CNI plugins are not in {' or '.join(CNI_BIN_DIRS)}: "
        "run `tools/system-packages.sh` (Debian package containernetworking-plugins)"
    )


def write_cni_config(ranges: Ranges, conf_dir: Path, data_dir: Path) -> Path:
    """Write the network list into ``conf_dir`` (containerd's CRI reads the first file there)."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / f"10-{CNI_NETWORK}.conflist"
    path.write_text(json.dumps(cni_config(ranges, data_dir), indent=2) + "\n", encoding="utf-8")
    return path


def setup(ranges: Ranges) -> None:
    """Make the bridge with the gateway address, the blackhole routes, the forwarding guard and the sysctls.

    On a host already swept of a node's traces (``node.sweep``, which calls :func:`teardown`).
    """
    check_free(ranges)
    _run("ip", "link", "add", "name", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{ranges.gateway}/{ranges.pods.prefixlen}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    for network in (ranges.pods, ranges.services):
        _run("ip", "route", "add", "blackhole", str(network), "metric", BLACKHOLE_METRIC)
    _run("iptables", "-w", "-N", GUARD_CHAIN)
    # Pods talk to each other (bridge to bridge) and to the host (INPUT); forwarding anywhere else is dropped.
    _run("iptables", "-w", "-A", GUARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
    _run("iptables", "-w", "-A", GUARD_CHAIN, "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP")
    _run("iptables", "-w", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)
    for key, value in _SYSCTLS.items():
        path = Path("/proc/sys", key)
        if not path.exists():
            hint = " (run `modprobe br_netfilter`)" if key.startswith("net/bridge/") else ""
            raise NetworkError(f"{path} does not exist on this host{hint}")
        path.write_text(value)


def teardown(ranges: Ranges) -> None:
    """Remove the bridge, the blackhole routes and the guard chain; each may already be gone."""
    _run("ip", "link", "delete", BRIDGE, check=False)
    for network in (ranges.pods, ranges.services):
        _run("ip", "route", "del", "blackhole", str(network), "metric", BLACKHOLE_METRIC, check=False)
    while _run("iptables", "-w", "-D", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode == 0:
        pass
    _run("iptables", "-w", "-F", GUARD_CHAIN, check=False)
    _run("iptables", "-w", "-X", GUARD_CHAIN, check=False)


# The chains a kubelet makes for itself, in the tables it makes them in; kube-proxy's own go with `kube-proxy --cleanup`.
KUBELET_CHAINS = {
    "filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY"),
    "nat": ("KUBE-KUBELET-CANARY",),
    "mangle": ("KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"),
}


def remove_kubelet_chains() -> None:
    """Remove the kubelet's iptables chains (IPv4 and IPv6) and the rules that jump to them; absent ones are skipped."""
    for command in ("iptables", "ip6tables"):
        for table, chains in KUBELET_CHAINS.items():
            for chain in chains:
                if _run(command, "-w", "-t", table, "-L", chain, "-n", check=False).returncode != 0:
                    continue
                rules = _run(command, "-w", "-t", table, "-S", check=False).stdout.splitlines()
                for rule in rules:
                    words = rule.split()
                    if rule.startswith("-A ") and words[-2:] == ["-j", chain]:
                        _run(command, "-w", "-t", table, "-D", *words[1:], check=False)
                _run(command, "-w", "-t", table, "-F", chain, check=False)
                _run(command, "-w", "-t", table, "-X", chain, check=False)


def blackholes() -> set[str]:
    """The destinations of the host's blackhole routes (for the test that they exist while the cluster runs)."""
    return {route["dst"] for route in host_routes() if route.get("type") == "blackhole"}


def remove_tree(path: Path) -> None:
    """``rm -rf`` that first unmounts whatever is mounted below ``path`` (deepest first)."""
    for mountpoint in mounts_under(path):
        _run("umount", "-l", mountpoint, check=False)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].replace("\\040", " ")
        if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
            found.append(mountpoint)
    return sorted(found, key=len, reverse=True)
