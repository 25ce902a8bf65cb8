"""The dev cluster's node as a machine-wide thing: one at a time, nothing left behind, crashes swept up.

These tests start nodes of their own (not the e2e tier's session node: only
one node runs per machine, and ``testpaths`` runs this tier first). A node
touches the host (a bridge, routes, iptables rules, mounts, network
namespaces, cgroups, containerd's state, shims and containers), so each test
checks the host itself, not the cluster's view of it.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from analysis_devcluster import cluster, node, podnet, processes

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

PAUSED = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "sleeper", "namespace": "default"},
    "spec": {
        "terminationGracePeriodSeconds": 30,
        "containers": [
            {
                "name": "main",
                "image": "analysis-worker:0.1.0",
                "command": ["python3", "-c", "import time; time.sleep(3600)"],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            }
        ],
    },
}


def traces() -> dict[str, object]:
    """Everything of a node that could outlive it on this host; empty values mean none."""
    iptables = "".join(
        subprocess.run([command, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
        for command in ("iptables", "ip6tables")
        for table in ("filter", "nat", "mangle")
    )
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    return {
        "processes": sorted(node._our_processes()),
        "mounts": podnet.mounts_under(node.RUN_DIR) + podnet.mounts_under(node.VAR_DIR),
        "directories": [str(d) for d in (node.RUN_DIR, node.VAR_DIR) if d.exists()],
        "bridge": [link["ifname"] for link in links if link["ifname"] == podnet.BRIDGE],
        "routes": sorted(podnet.blackholes()),
        "iptables": [line for line in iptables.splitlines() if "KUBE-" in line or podnet.GUARD_CHAIN in line],
        "cgroups": [str(root) for root in node._cgroup_roots() if root.exists()],
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
    }


CLEAN = {
    "processes": [],
    "mounts": [],
    "directories": [],
    "bridge": [],
    "routes": [],
    "iptables": [],
    "cgroups": [],
    "netns": [],
}


def run_a_pod(dev: cluster.DevCluster) -> None:
    dev.kubectl("apply", "-f", "-", input=yaml.safe_dump(PAUSED))
    dev.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s", timeout=120)


@pytest.fixture
def clean_host() -> Iterator[None]:
    assert traces() == CLEAN, "a node's traces were on this host before the test"
    yield
    assert traces() == CLEAN


def test_a_node_runs_pods_and_leaves_nothing_behind(tmp_path: Path, clean_host: None) -> None:
    with cluster.DevCluster(tmp_path / "state", node=True) as dev:
        during = traces()
        assert {str(dev.ranges.pods), str(dev.ranges.services)} <= set(during["routes"])  # type: ignore[arg-type]
        assert during["bridge"] == [podnet.BRIDGE]
        run_a_pod(dev)
        during = traces()
        assert during["processes"]
        assert during["mounts"]
        assert during["cgroups"]
        # One node per machine: a second one is refused before it touches anything.
        with pytest.raises(node.NodeBusy, match="already runs on this machine"):
            cluster.DevCluster(tmp_path / "second", node=True).start()
        assert traces()["bridge"] == [podnet.BRIDGE]
        assert dev.kubectl("get", "pod", "sleeper").returncode == 0
    # The clean_host fixture checks that stop() left nothing: processes, mounts, bridge, routes, rules, state.


_CRASHER = textwrap.dedent("""\
    import sys, time
    from pathlib import Path
    from analysis_devcluster import cluster
    sys.path.insert(0, sys.argv[2])
    from test_node_lifecycle import run_a_pod
    dev = cluster.DevCluster(Path(sys.argv[1]), node=True).start()
    run_a_pod(dev)
    print("READY", flush=True)
    time.sleep(600)
""")


def test_a_crashed_node_is_swept_up_by_the_next_start(tmp_path: Path, clean_host: None) -> None:
    log = tmp_path / "crasher.log"
    argv = [sys.executable, "-c", _CRASHER, str(tmp_path / "crashed"), str(Path(__file__).parent)]
    with log.open("w") as stderr, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, text=True) as crasher:
        assert crasher.stdout is not None
        line = crasher.stdout.readline()
        assert line.startswith("READY"), f"the crasher failed: {line!r}\n{log.read_text()[-3000:]}"
        # SIGKILL: the components die with it (PR_SET_PDEATHSIG), but the shims and containers do not.
        os.kill(crasher.pid, signal.SIGKILL)
        crasher.wait()
    assert processes.eventually(lambda: traces()["processes"], 10, "the pod's processes still there")
    assert traces()["routes"]
    assert traces()["mounts"]
    with cluster.DevCluster(tmp_path / "next", node=True) as dev:
        run_a_pod(dev)
        assert dev.kubectl("get", "nodes", "-o", "name").stdout.split() == [f"node/{dev.node_name}"]


def test_ranges_that_overlap_a_route_of_the_host_are_refused(
    tmp_path: Path, clean_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A route of the host's own into what would be the pod range (a VPN's, say).
    subprocess.run(["ip", "route", "add", "10.211.0.0/16", "dev", "lo"], check=True)
    try:
        monkeypatch.setenv(podnet.POD_CIDR_ENV, "10.211.5.0/24")
        with pytest.raises(podnet.NetworkError, match=r"overlaps the host's route to 10\.211\.0\.0/16"):
            cluster.DevCluster(tmp_path / "state", node=True).start()
    finally:
        subprocess.run(["ip", "route", "del", "10.211.0.0/16", "dev", "lo"], check=False)
