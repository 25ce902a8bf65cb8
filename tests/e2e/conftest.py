"""End-to-end fixtures: a cluster with a real node, and the operator as a real process.

``node_cluster`` is the session's dev cluster with its node (etcd,
kube-apiserver, kube-controller-manager, redis-server, and kubelet with
containerd, kube-proxy, kube-scheduler and CoreDNS), with the CRDs installed.
Worker pods run as containers of the ``analysis-worker:<version>`` image,
built from ``worker-image/Dockerfile`` and imported when the node starts;
they reach Redis and the stand-in servers on the pod bridge's gateway
(``node_cluster.host``). Only one node runs per machine, so every e2e module
shares this cluster. ``operator`` runs ``analysis-operator`` on this host
against it, watching every namespace; a test may ``kill()`` and ``start()``
it again. It serves its Prometheus metrics on a free port of its own, at
``operator.metrics_url``.

``batches`` applies manifests into the test's namespace and reads them back:
``apply``, ``wait`` (``kubectl wait``, as a user would), ``get``,
``conditions``, ``children`` and ``redis_keys``.
"""

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

import analysis_core
from analysis_core import keys
from analysis_devcluster import cluster, processes

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
WORKER_IMAGE = f"analysis-worker:{analysis_core.__version__}"
WORKER_MEMORY_LIMIT = "192Mi"


@pytest.fixture(scope="session")
def node_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.DevCluster]:
    # kubectl finds the kubectl-analysis plugin on PATH, as it would for a user who installed it.
    os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}"
    dev = cluster.DevCluster(tmp_path_factory.mktemp("e2e-cluster"), node=True)
    with dev:
        dev.install_crds(REPO_ROOT / "crds")
        yield dev


class Operator:
    """``analysis-operator -A`` against the cluster, logging to a file."""

    def __init__(self, dev: cluster.DevCluster, log: Path) -> None:
        self.dev = dev
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.liveness_port = processes.free_port()
        self.metrics_port = processes.free_port()

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def env(self) -> dict[str, str]:
        # PYTHONPATH passes through: a checkout run against another's virtualenv runs its own operator code.
        passed = {name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ}
        return {
            **passed,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "KUBECONFIG": str(self.dev.kubeconfig),
            "ANALYSIS_OPERATOR_REDIS_URL": self.dev.redis_url,
            "ANALYSIS_OPERATOR_WORKER_IMAGE": WORKER_IMAGE,
            # Enforced by the node's cgroups: a worker needs about 80 MB; test_node OOM-kills one on purpose.
            "ANALYSIS_OPERATOR_WORKER_MEMORY_LIMIT": WORKER_MEMORY_LIMIT,
            "ANALYSIS_OPERATOR_RESULTS_INTERVAL": "1",
            "ANALYSIS_OPERATOR_METRICS_PORT": str(self.metrics_port),
            # A provider account refused for quota is probed after 1 s, then 2, 4...: tests need not wait 5.
            "ANALYSIS_OPERATOR_QUOTA_PROBE_SECONDS": "1",
        }

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(VENV_BIN / "analysis-operator"),
                    "--all-namespaces",
                    f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz",
                ],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator(node_cluster: cluster.DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    running = Operator(node_cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    running.start()
    try:
        yield running
    finally:
        running.stop()


class Batches:
    """Apply and read AnalysisBatches in one namespace."""

    def __init__(self, dev: cluster.DevCluster, namespace: str, op: Operator) -> None:
        self.dev = dev
        self.namespace = namespace
        self.operator = op

    def kubectl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.dev.kubectl("-n", self.namespace, *args, timeout=timeout, check=check)

    def apply(self, manifest: dict[str, Any]) -> None:
        self.dev.kubectl("-n", self.namespace, "apply", "-f", "-", input=yaml.safe_dump(manifest))

    def get(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "analysisbatch", name, "-o", "json").stdout))

    def conditions(self, name: str) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in (self.get(name).get("status") or {}).get("conditions") or []}

    def wait(self, name: str, condition: str, timeout_s: float = 120) -> None:
        """``kubectl wait --for=condition=<condition>``; on failure, the batch and the operator's log."""
        result = self.kubectl(
            "wait",
            f"--for=condition={condition}",
            f"analysisbatch/{name}",
            f"--timeout={timeout_s:.0f}s",
            timeout=timeout_s + 15,
            check=False,
        )
        if result.returncode != 0:
            status = json.dumps(self.get(name).get("status"), indent=1)[-3000:]
            pods = self.kubectl("get", "pods,jobs,deployments", "-o", "wide", check=False).stdout
            pytest.fail(
                f"{name} not {condition} within {timeout_s}s: {result.stderr}\nstatus: {status}\n"
                f"{pods}\noperator log:\n{self.operator.tail()}"
            )

    def eventually(self, check: Any, within_s: float, what: str, interval: float = 0.2) -> Any:
        return processes.eventually(
            check, within_s, what, interval=interval, details=lambda: f"operator log:\n{self.operator.tail()}"
        )

    def children(self, uid: str) -> dict[str, list[str]]:
        """Names of every object labelled as the batch's, by kind."""
        out = {}
        for kind in ("jobs", "deployments", "configmaps", "serviceaccounts", "pods"):
            listed = json.loads(self.kubectl("get", kind, "-l", f"analysis.dev/batch-uid={uid}", "-o", "json").stdout)
            out[kind] = sorted(item["metadata"]["name"] for item in listed["items"])
        return out

    def redis_keys(self, uid: str) -> list[str]:
        client = cluster.redis_client(self.dev.redis_url, timeout=5.0)
        try:
            return sorted(str(k) for k in client.scan_iter(match=keys.BatchKeys(uid).pattern, count=1000))
        finally:
            client.close()

    def redis(self) -> redis.Redis:
        return cluster.redis_client(self.dev.redis_url, timeout=5.0)

    def everything_readable(self, uid: str) -> dict[str, str]:
        """Where a secret must never be, by what it is: every object of the namespace but its Secrets (as JSON and
        as ``kubectl describe`` shows it), its Events, the logs of every pod in it, the operator's log, and every
        value of the batch's Redis keys."""
        out: dict[str, str] = {}
        kinds = "analysisbatches,jobs,deployments,pods,configmaps,serviceaccounts,events"
        out["objects"] = self.kubectl("get", kinds, "-o", "json").stdout
        out["describe"] = self.kubectl("describe", kinds.replace(",events", "")).stdout
        out["providers"] = self.dev.kubectl("get", "analysisproviders", "-o", "json", check=False).stdout
        pods = json.loads(self.kubectl("get", "pods", "-o", "json").stdout)["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            out[f"log of {name}"] = self.kubectl("logs", name, "--all-containers", check=False).stdout
        out["operator log"] = self.operator.log.read_text(encoding="utf-8", errors="replace")
        client = self.redis()
        try:
            for key in client.scan_iter(match=keys.BatchKeys(uid).pattern, count=1000):
                out[f"redis {key}"] = repr(_redis_value(client, str(key)))
        finally:
            client.close()
        return out


def _redis_value(client: redis.Redis, key: str) -> Any:
    kind = client.type(key)
    read = {
        "string": client.get,
        "hash": client.hgetall,
        "set": client.smembers,
        "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
        "list": lambda k: client.lrange(k, 0, -1),
        "stream": client.xrange,
    }
    return read[str(kind)](key) if str(kind) in read else None


@pytest.fixture
def batches(node_cluster: cluster.DevCluster, operator: Operator) -> Iterator[Batches]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    node_cluster.kubectl("create", "namespace", name)
    try:
        node_cluster.kubectl(
            "wait", "--for", "create", "--timeout=30s", "-n", name, "serviceaccount/default", timeout=45
        )
        if not operator.alive():
            operator.start()
        yield Batches(node_cluster, name, operator)
    finally:
        node_cluster.kubectl("delete", "analysisbatches", "--all", "-n", name, "--wait=false", check=False)
        node_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
