"""What the real node enforces, on the project's own pods: admission, users, filesystems, memory, probes, network.

On the session's cluster (``node_cluster``): the apiserver enforces the
"restricted" Pod Security Standard in every namespace but the system ones,
and the kubelet with containerd and runc applies what a pod spec asks. So a
worker pod really runs as uid 65532 on a read-only root filesystem, a worker
that exceeds its memory limit (here while it holds the lease of an item) is
OOM-killed by the kernel and its item is redelivered and completed once, an
HTTP probe is answered by the pod or not, and a pod can reach its cluster but
nothing beyond this machine. The bridge plugin enforces no NetworkPolicy;
nothing here claims it does.
"""

import json
import subprocess
from typing import Any

import pytest
import yaml

from analysis_devcluster import cluster, podnet, standin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod(name: str, image: str, script: str, **container: Any) -> dict[str, Any]:
    """A restricted pod running ``python3 -c script`` from ``image``."""
    spec = {
        "name": "main",
        "image": image,
        "command": ["python3", "-c", script],
        "securityContext": RESTRICTED,
        **container,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [spec]},
    }


def exec_in(batches: Any, pod_name: str, script: str) -> subprocess.CompletedProcess[str]:
    return batches.kubectl("exec", pod_name, "--", "python3", "-c", script, check=False, timeout=60)


def ticker_summary(name: str, items: list[str], **stage: Any) -> dict[str, Any]:
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name},
        "spec": {
            "items": items,
            "providers": {"local": {"type": "offline", "offline": {"seed": 7, "latencyMilliseconds": 0}}},
            "stages": [{"name": "summarize", "provider": "local", "prompt": "Summarize {{ item }}", **stage}],
        },
    }
    return manifest


def test_the_restricted_standard_is_enforced_everywhere_but_the_system_namespaces(
    batches: Any, node_cluster: cluster.DevCluster
) -> None:
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {
            "containers": [{"name": "main", "image": "analysis-worker:0.1.0", "securityContext": {"privileged": True}}]
        },
    }
    refused = node_cluster.kubectl(
        "-n", batches.namespace, "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(privileged), check=False
    )
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr
    assert "privileged" in refused.stderr
    exempt = node_cluster.kubectl(
        "-n", "kube-system", "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(privileged), check=False
    )
    assert exempt.returncode == 0, exempt.stderr


@pytest.mark.timeout(240)
def test_a_worker_pod_runs_as_nonroot_on_a_read_only_root(batches: Any) -> None:
    manifest = ticker_summary("slow", ["A", "B"], executor="Deployment")
    manifest["spec"]["providers"]["local"]["offline"]["latencyMilliseconds"] = 20000
    batches.apply(manifest)
    uid = batches.get("slow")["metadata"]["uid"]

    def running_worker() -> str | None:
        pods = json.loads(batches.kubectl("get", "pods", "-l", f"analysis.dev/batch-uid={uid}", "-o", "json").stdout)
        ready = [p["metadata"]["name"] for p in pods["items"] if p["status"].get("phase") == "Running"]
        return ready[0] if ready else None

    worker = batches.eventually(running_worker, 90, "a worker pod running")
    seen = exec_in(
        batches,
        worker,
        """
import os
print(os.getuid(), os.getgid())
for path in ("/", "/opt/venv", "/etc"):
    try:
        open(os.path.join(path, "written-by-a-test"), "w")
        print(path, "writable")
    except OSError as error:
        print(path, error.strerror)
open("/tmp/scratch", "w").write("ok")  # the pod's emptyDir
print(open("/proc/self/status").read().split("Seccomp:")[1].split()[0])
print(open("/proc/self/status").read().split("NoNewPrivs:")[1].split()[0])
""",
    )
    assert seen.returncode == 0, seen.stderr
    lines = seen.stdout.splitlines()
    assert lines[0] == "65532 65532"
    assert lines[1:4] == ["/ Read-only file system", "/opt/venv Read-only file system", "/etc Read-only file system"]
    assert lines[4:] == ["2", "1"]  # seccomp filtering (RuntimeDefault) and no_new_privs
    batches.kubectl("delete", "analysisbatch", "slow", "--wait=false")


@pytest.mark.timeout(360)
def test_a_worker_over_its_memory_limit_is_oom_killed_and_its_item_completes_once(batches: Any) -> None:
    with standin.StandIn(api_key="sk-test", host=batches.dev.host) as server:
        # The answer about BIG is 256 MB: the worker that holds BIG's lease dies reading it; the next call is normal.
        # One pod at a time: with more, a scale-down as A and C finish may delete the pod holding BIG before it dies.
        server.set_plan([{"kind": "huge", "match": "BIG", "size_mb": 256, "times": 1}])
        batches.kubectl("create", "secret", "generic", "llm-keys", "--from-literal=openai=sk-test")
        manifest = ticker_summary("hungry", ["A", "BIG", "C"], timeoutSeconds=30, concurrency=1)
        manifest["spec"]["providers"] = {
            "gpt": {
                "type": "openai",
                "model": "gpt-4.1",
                "baseURL": server.openai_base_url,
                "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
            }
        }
        manifest["spec"]["stages"][0]["provider"] = "gpt"
        batches.apply(manifest)
        batches.wait("hungry", "Complete", timeout_s=300)
        calls = [call for call in server.requests() if "BIG" in call["prompt"]]
    uid = batches.get("hungry")["metadata"]["uid"]
    pods = json.loads(batches.kubectl("get", "pods", "-l", f"analysis.dev/batch-uid={uid}", "-o", "json").stdout)
    terminations = [
        (status.get("lastState") or {}).get("terminated") or (status.get("state") or {}).get("terminated")
        for p in pods["items"]
        for status in p["status"].get("containerStatuses", [])
    ]
    seen = [
        (p["metadata"]["name"], p["status"].get("phase"), p["status"].get("containerStatuses")) for p in pods["items"]
    ]
    assert "OOMKilled" in [t.get("reason") for t in terminations if t], json.dumps(seen)
    st = batches.get("hungry")["status"]
    assert st["items"]["succeeded"] == 3
    assert st["items"]["failed"] == st["items"]["deadLettered"] == 0
    assert len(calls) == 2  # the call that killed its worker, and the one after redelivery
    with batches.redis() as client:
        outcomes = [key for key in client.hkeys(f"{{{uid}}}:outcomes") if b"/BIG/" in key]
    assert len(outcomes) == 1, outcomes  # completed once


@pytest.mark.timeout(180)
def test_http_probes_are_made_by_the_kubelet(batches: Any) -> None:
    """A readiness probe over HTTP decides the pod's Ready condition, as the pod's server answers it."""
    server = (
        "import http.server, os; os.chdir('/tmp'); http.server.test(http.server.SimpleHTTPRequestHandler, port=8080)"
    )
    probe = {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
    batches.apply(pod("probed", "analysis-worker:0.1.0", server, readinessProbe=probe))

    def condition() -> str:
        got = json.loads(batches.kubectl("get", "pod", "probed", "-o", "json").stdout)
        ready = [c for c in got["status"].get("conditions", []) if c["type"] == "Ready"]
        return ready[0]["status"] if ready and got["status"].get("phase") == "Running" else ""

    assert batches.eventually(condition, 60, "running") == "False"
    events = batches.eventually(
        lambda: "HTTP probe failed with statuscode: 404" in batches.kubectl("get", "events").stdout, 30, "a 404 event"
    )
    assert events
    touched = batches.kubectl("exec", "probed", "--", "python3", "-c", "open('/tmp/ready', 'w').write('yes')")
    assert touched.returncode == 0
    batches.eventually(lambda: condition() == "True", 30, "Ready once /ready answers 200")


@pytest.mark.timeout(120)
def test_a_pod_reaches_its_cluster_and_nothing_beyond_this_machine(
    batches: Any, node_cluster: cluster.DevCluster
) -> None:
    ranges = node_cluster.ranges
    # While the cluster runs, the host blackholes the whole pod and Service ranges.
    assert {str(ranges.pods), str(ranges.services)} <= podnet.blackholes()
    script = f"""
import socket
def connect(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except OSError as error:
        return type(error).__name__ + ": " + (error.strerror or str(error))
print(connect("kubernetes.default.svc.cluster.local", 443))
print(connect({ranges.gateway!r}, {node_cluster.ports.redis if node_cluster.ports else 0}))
for address in ("192.0.2.1", "1.1.1.1", "10.11.12.13", {str(ranges.services.network_address + 200)!r}):
    print(address, connect(address, 80))
try:
    socket.getaddrinfo("example.com", 443)
    print("resolved")
except OSError as error:
    print("not resolved")
"""
    batches.apply(pod("netcheck", "analysis-worker:0.1.0", script))
    batches.eventually(
        lambda: (
            json.loads(batches.kubectl("get", "pod", "netcheck", "-o", "json").stdout)["status"].get("phase")
            in ("Succeeded", "Failed")
        ),
        60,
        "the network check done",
    )
    lines = batches.kubectl("logs", "netcheck").stdout.splitlines()
    assert lines[0] == "connected", lines  # the apiserver through the kubernetes Service and cluster DNS
    assert lines[1] == "connected", lines  # Redis on the bridge's gateway
    for line in lines[2:6]:
        assert "connected" not in line, lines  # no default route, a blackholed Service address: nothing gets out
    assert lines[6] == "not resolved", lines  # the cluster DNS knows the cluster only
