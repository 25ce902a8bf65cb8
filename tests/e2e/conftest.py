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
``operator.metrics_url``. It logs in as a ServiceAccount bound to the
ClusterRole the chart renders by default (:func:`chart_identity`), so every
e2e test runs it with exactly the chart's rights; at the end of the session
the apiserver's audit log must show it used each of them and was refused
nothing (least privilege, both ways).

The operator's install has a results store: ``results_store``, a real
SeaweedFS on the bridge's gateway, bucket ``RESULTS_BUCKET`` under prefix
``RESULTS_PREFIX``, so batches write their results there unless they ask
for ConfigMaps (``spec.results.sink``). Users read them with a key of their
own that may only read that prefix (``Batches.reader_env``), as a platform
team would hand one out.

``batches`` applies manifests into the test's namespace and reads them back:
``apply``, ``wait`` (``kubectl wait``, as a user would), ``get``,
``conditions``, ``children``, ``redis_keys`` and ``stored`` (the objects of
the namespace's batches in the store).
"""

import base64
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
from analysis_core import keys, tenancy
from analysis_devcluster import binaries, cluster, processes, s3server
from analysis_operator import objectstore

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
WORKER_IMAGE = f"analysis-worker:{analysis_core.__version__}"
WORKER_MEMORY_LIMIT = "192Mi"
CHART = REPO_ROOT / "charts" / "analysis-operator"
RESULTS_BUCKET, RESULTS_PREFIX = "results", "e2e"
# Ended items that may wait for the results store before claims pause: low, so an outage test reaches it.
RESULTS_MAX_PENDING = 12
# The session operator's identity: a ServiceAccount of a namespace of its own, with the chart's ClusterRole under
# another name (the helm tests install the chart's own).
IDENTITY_NAMESPACE, IDENTITY_NAME, IDENTITY_ROLE = "analysis-e2e", "analysis-operator", "analysis-e2e-operator"
# test_helm_install's operator: the chart's own ServiceAccount, holding the same default ClusterRole while its
# cluster-wide release is installed, and the one of the tier that runs against a Redis with a password (so the one
# that writes batches' Secrets).
INSTALLED_IDENTITY = "system:serviceaccount:analysis-system:analysis-operator"
# Rights the chart grants that no request shows in the audit log, and why.
UNSEEN = {
    # Checked by the OwnerReferencesPermissionEnforcement admission plugin when a child names its batch with
    # blockOwnerDeletion, where that plugin is on: an authorization check, never a request of the operator's.
    ("analysis.dev", "analysisbatches/finalizers", "update"): "checked by an admission plugin, not requested",
}


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

    def __init__(self, dev: cluster.DevCluster, log: Path, kubeconfig: Path, store: s3server.SeaweedFS) -> None:
        self.dev = dev
        self.store = store
        self.kubeconfig = kubeconfig  # the operator's own identity (chart_identity), not the admin's
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
            "KUBECONFIG": str(self.kubeconfig),
            "ANALYSIS_OPERATOR_REDIS_URL": self.dev.redis_url,
            "ANALYSIS_OPERATOR_WORKER_IMAGE": WORKER_IMAGE,
            # Enforced by the node's cgroups: a worker needs about 80 MB; test_node OOM-kills one on purpose.
            "ANALYSIS_OPERATOR_WORKER_MEMORY_LIMIT": WORKER_MEMORY_LIMIT,
            "ANALYSIS_OPERATOR_RESULTS_INTERVAL": "1",
            "ANALYSIS_OPERATOR_METRICS_PORT": str(self.metrics_port),
            # A provider account refused for quota is probed after 1 s, then 2, 4...: tests need not wait 5.
            "ANALYSIS_OPERATOR_QUOTA_PROBE_SECONDS": "1",
            **self.store.operator_env(RESULTS_BUCKET, RESULTS_PREFIX),
            "ANALYSIS_OPERATOR_RESULTS_MAX_PENDING": str(RESULTS_MAX_PENDING),
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


def chart_identity(dev: cluster.DevCluster, directory: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A kubeconfig of a ServiceAccount holding the chart's default ClusterRole, and that role's rules.

    ``helm template`` renders the chart's RBAC with its default values (every namespace watched); the
    ClusterRole and its binding are applied under :data:`IDENTITY_ROLE`, bound to the ServiceAccount
    :data:`IDENTITY_NAME` of :data:`IDENTITY_NAMESPACE`, whose token (``kubectl create token``) the
    kubeconfig holds.
    """
    helm = [str(binaries.find("helm")), "template", IDENTITY_NAME, str(CHART), "-n", IDENTITY_NAMESPACE]
    rendered = subprocess.run(
        [*helm, "--show-only", "templates/rbac.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    (role,) = [doc for doc in docs if doc["kind"] == "ClusterRole"]
    (binding,) = [doc for doc in docs if doc["kind"] == "ClusterRoleBinding"]
    role["metadata"] = binding["metadata"] = {"name": IDENTITY_ROLE}
    binding["roleRef"]["name"] = IDENTITY_ROLE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": IDENTITY_NAME, "namespace": IDENTITY_NAMESPACE}]
    dev.kubectl("create", "namespace", IDENTITY_NAMESPACE)
    dev.kubectl("create", "serviceaccount", IDENTITY_NAME, "-n", IDENTITY_NAMESPACE)
    dev.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([role, binding]))
    kubeconfig = dev.kubeconfig_as(IDENTITY_NAMESPACE, IDENTITY_NAME, directory / "operator-kubeconfig", "24h")
    return kubeconfig, list(role["rules"])


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every right in ``rules`` (which name no wildcards)."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def used(events: list[dict[str, Any]]) -> tuple[set[tuple[str, str, str]], list[str]]:
    """(API group, resource, verb) of the requests in ``events`` that were answered, and those refused (403).

    A server-side apply is a patch, authorized as create too when it makes the object (answered 201 Created).
    """
    done, refused = set(), []
    for event in events:
        ref = event.get("objectRef") or {}
        if "resource" not in ref:
            continue  # discovery: /api, /apis, /version
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        code = (event.get("responseStatus") or {}).get("code", 0)
        if code == 403:
            refused.append(f"{event['verb']} {resource} {event.get('requestURI', '')}")
            continue
        done.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and code == 201:
            done.add((ref.get("apiGroup", ""), resource, "create"))
    return done, refused


def every_module_ran(session: pytest.Session) -> bool:
    """Whether the session ran tests of every e2e module (the whole tier, as ``make test`` runs it)."""
    ran = {Path(str(item.fspath)).name for item in session.items}
    return {path.name for path in Path(__file__).parent.glob("test_*.py")} <= ran


@pytest.fixture(scope="session")
def results_store(
    node_cluster: cluster.DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[s3server.SeaweedFS]:
    """The install's results store: SeaweedFS on the bridge's gateway, where pods reach it too."""
    store = s3server.SeaweedFS(
        tmp_path_factory.mktemp("results-store"),
        host=node_cluster.host,
        buckets=(RESULTS_BUCKET,),
        readers=[(RESULTS_BUCKET, RESULTS_PREFIX)],
    )
    with store:
        yield store


@pytest.fixture(scope="session")
def operator(
    node_cluster: cluster.DevCluster,
    results_store: s3server.SeaweedFS,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Operator]:
    directory = tmp_path_factory.mktemp("operator")
    kubeconfig, rules = chart_identity(node_cluster, directory)
    running = Operator(node_cluster, directory / "operator.log", kubeconfig, results_store)
    running.start()
    try:
        yield running
    finally:
        running.stop()
    # Least privilege, both ways: everything the operator asked for in the tier was granted, and (when the whole
    # tier ran) every right of the chart's ClusterRole was used by an operator holding it, or UNSEEN says why not.
    events = node_cluster.audited(f"system:serviceaccount:{IDENTITY_NAMESPACE}:{IDENTITY_NAME}")
    done, refused = used(events)
    assert refused == [], f"the chart's ClusterRole refused the operator: {sorted(set(refused))[:20]}"
    if every_module_ran(request.session):
        assert events, f"the apiserver recorded no request of the operator in {node_cluster.audit_log}"
        installed, _ = used(node_cluster.audited(INSTALLED_IDENTITY))
        unused = granted(rules) - done - installed - set(UNSEEN)
        assert not unused, (
            f"rights of the chart's ClusterRole no operator of the tier used (cut them, or say why in UNSEEN): {unused}"
        )


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

    def reader_env(self) -> dict[str, str]:
        """A user's environment for reading results: the read-only key of the results prefix, and no endpoint
        (``kubectl analysis results`` takes it from the batch's status)."""
        access, secret = self.operator.store.reader(RESULTS_BUCKET, RESULTS_PREFIX)
        return {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}

    def stored(self) -> dict[str, str]:
        """Every object under the namespace's folder of the results store, key -> text (the operator's key)."""
        store = objectstore.open_store(self.store_settings())
        folder = f"{RESULTS_PREFIX}/{self.namespace}/"

        return {key: (store.get_blocking(key) or b"").decode() for key, _ in store.list_blocking(folder)}

    def store_settings(self) -> objectstore.Settings:
        return objectstore.Settings(
            bucket=RESULTS_BUCKET,
            endpoint=self.operator.store.endpoint,
            prefix=RESULTS_PREFIX,
            credentials_dir=str(self.operator.store.credentials_dir),
        )

    def everything_readable(self, uid: str | None = None) -> dict[str, str]:
        """Where a secret must never be, by what it is: every object of the namespace but its Secrets (as JSON and
        as ``kubectl describe`` shows it), its Events, the logs of every pod in it, the operator's log, and every
        value of the Redis keys of batch ``uid`` (None: of every batch in the namespace)."""
        out: dict[str, str] = {}
        if uid is None:
            listed = json.loads(self.kubectl("get", "analysisbatches", "-o", "json").stdout)["items"]
            for batch in listed:
                out.update(self.everything_readable(batch["metadata"]["uid"]))
            if listed:
                return out
        kinds = "analysisbatches,jobs,deployments,pods,configmaps,serviceaccounts,events"
        out["objects"] = self.kubectl("get", kinds, "-o", "json").stdout
        out["describe"] = self.kubectl("describe", kinds.replace(",events", "")).stdout
        out["providers"] = self.dev.kubectl("get", "analysisproviders", "-o", "json", check=False).stdout
        pods = json.loads(self.kubectl("get", "pods", "-o", "json").stdout)["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            out[f"log of {name}"] = self.kubectl("logs", name, "--all-containers", check=False).stdout
        out["operator log"] = self.operator.log.read_text(encoding="utf-8", errors="replace")
        for key, text in self.stored().items():
            out[f"results object {key}"] = text
        client = self.redis()
        try:
            for key in client.scan_iter(match=keys.BatchKeys(uid).pattern, count=1000) if uid else ():
                out[f"redis {key}"] = repr(_redis_value(client, str(key)))
        finally:
            client.close()
        return out

    def secrets(self) -> set[str]:
        """The values of the namespace's Secrets: what tests gave their batches (API keys) and what the operator
        wrote for them (a batch's Redis password), but user names."""
        listed = json.loads(self.kubectl("get", "secrets", "-o", "json").stdout)["items"]
        return {
            base64.b64decode(value).decode(errors="replace")
            for secret in listed
            for key, value in (secret.get("data") or {}).items()
            if key != tenancy.SECRET_USERNAME
        } - {""}

    def leaks(self) -> list[str]:
        """Where a value of the namespace's Secrets shows in what :meth:`everything_readable` reads."""
        secrets = self.secrets()
        if not secrets:
            return []
        return [where for where, text in self.everything_readable().items() if any(s in text for s in secrets)]


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
        used = Batches(node_cluster, name, operator)
        yield used
        # What every test leaves behind: none of its Secrets' values anywhere a team or the operator can read.
        leaks = used.leaks()
        assert leaks == [], f"a value of a Secret of {name} is readable in: {leaks}"
    finally:
        node_cluster.kubectl("delete", "analysisbatches", "--all", "-n", name, "--wait=false", check=False)
        node_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
