"""The dev cluster's local node: pods bound, run as real processes, reported and stopped like a kubelet would.

These tests start a dev cluster of their own with ``node=True`` (the session
cluster of ``tests/conftest.py`` has no node, so its Pods stay Pending), and
teach the node one extra image: ``python`` runs this interpreter. Pods print
what they see (environment, argv, files) to stdout, which the node appends to
the container's log file; the tests read that file and the pod's status.
``kubectl logs`` goes the real way: kubectl, the apiserver's ``pods/log``,
then the node's kubelet endpoint.
"""

import datetime
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from http.client import HTTPSConnection
from pathlib import Path
from typing import Any

import pytest

from analysis_devcluster import binaries, cluster, node, podspec, processes

pytestmark = pytest.mark.integration

Obj = dict[str, Any]
PYTHON_IMAGE = "docker.io/library/python:3.12-slim"


class Api:
    """Just enough of a client to poll objects quickly (kubectl costs ~100 ms a call)."""

    def __init__(self, dev: cluster.DevCluster) -> None:
        pki = dev.state_dir / "pki"
        self.context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.context.load_cert_chain(pki / "admin.crt", pki / "admin.key")
        assert dev.ports is not None
        self.port = dev.ports.apiserver

    def request(self, method: str, path: str, body: Obj | None = None) -> tuple[int, Obj]:
        connection = HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        try:
            headers = {"Content-Type": "application/json"}
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def create(self, namespace: str, resource: str, obj: Obj, group: str = "api/v1") -> Obj:
        status, answer = self.request("POST", f"/{group}/namespaces/{namespace}/{resource}", obj)
        assert status == 201, answer
        return answer

    def pod(self, namespace: str, name: str) -> Obj | None:
        status, answer = self.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        return answer if status == 200 else None

    def pods(self, namespace: str) -> list[Obj]:
        items: list[Obj] = self.request("GET", f"/api/v1/namespaces/{namespace}/pods")[1]["items"]
        return items


eventually = processes.eventually


def python_pod(name: str, code: str, **spec: Any) -> Obj:
    """A pod whose one container runs ``python -c code`` (through the node's ``python`` image entry)."""
    container = {"name": "main", "image": PYTHON_IMAGE, "args": ["-c", code], **spec.pop("container", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **spec.pop("metadata", {})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def phase(api: Api, namespace: str, name: str, *phases: str) -> Obj | None:
    pod = api.pod(namespace, name)
    return pod if pod is not None and pod.get("status", {}).get("phase") in phases else None


def log_lines(dev: cluster.DevCluster, namespace: str, pod: str) -> list[str]:
    try:
        return dev.pod_log(namespace, pod).read_text().splitlines()
    except FileNotFoundError:
        return []


def printed(dev: cluster.DevCluster, namespace: str, pod: str, prefix: str) -> str | None:
    """The rest of the first log line that starts with ``prefix``, if any yet."""
    return next((line[len(prefix) :] for line in log_lines(dev, namespace, pod) if line.startswith(prefix)), None)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.DevCluster]:
    with cluster.DevCluster(
        tmp_path_factory.mktemp("nodecluster"), node=True, node_images={"python": [sys.executable]}
    ) as started:
        yield started


@pytest.fixture(scope="module")
def api(dev: cluster.DevCluster) -> Api:
    return Api(dev)


@pytest.fixture
def ns(dev: cluster.DevCluster, api: Api) -> Iterator[str]:
    name = f"node-{uuid.uuid4().hex[:8]}"
    dev.kubectl("create", "namespace", name)
    try:
        eventually(
            lambda: api.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
            30,
            "the default ServiceAccount",
        )
        yield name
    finally:
        dev.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def test_the_node_is_ready_and_pods_start_fast(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    nodes = json.loads(dev.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert cluster.NODE_NAME == node.DEFAULT_NAME
    assert [n["metadata"]["name"] for n in nodes] == [cluster.NODE_NAME]
    ready = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}["Ready"]
    assert ready == "True"
    # The process prints when it started; Python's own start-up is part of the figure.
    api.create(
        ns, "pods", python_pod("quick", "import time; print('at', time.time())", automountServiceAccountToken=False)
    )
    created = time.time()
    started = float(eventually(lambda: printed(dev, ns, "quick", "at "), 10, "the process started"))
    assert started - created < 1.0, f"{started - created:.3f}s from creation to the process's first line"
    pod = eventually(lambda: phase(api, ns, "quick", "Succeeded"), 10, "Succeeded")
    assert pod["spec"]["nodeName"] == cluster.NODE_NAME
    assert pod["status"]["podIP"] == pod["status"]["hostIP"] == "127.0.0.1"


ENV_DUMP = "import json, os, sys; print('DUMP ' + json.dumps({'env': dict(os.environ), 'argv': sys.argv[1:]}))"


def test_env_from_values_secrets_configmaps_and_the_downward_api(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    api.create(ns, "secrets", {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}})
    api.create(ns, "configmaps", {"metadata": {"name": "settings"}, "data": {"color": "blue", "size": "large"}})
    env = [
        {"name": "PLAIN", "value": "hello"},
        {"name": "EXPANDED", "value": "$(PLAIN)-world"},
        {"name": "ESCAPED", "value": "$$(PLAIN)"},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "FROM_CONFIGMAP", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
        {"name": "ABSENT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}}},
        *(
            {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
            for name, path in [
                ("POD_NAME", "metadata.name"),
                ("POD_NAMESPACE", "metadata.namespace"),
                ("POD_UID", "metadata.uid"),
                ("POD_APP", "metadata.labels['app']"),
                ("POD_NOTE", "metadata.annotations['note']"),
                ("NODE_NAME", "spec.nodeName"),
                ("SA_NAME", "spec.serviceAccountName"),
                ("POD_IP", "status.podIP"),
                ("HOST_IP", "status.hostIP"),
            ]
        ),
        {"name": "MEMORY_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
    ]
    container = {
        "args": ["-c", ENV_DUMP, "$(PLAIN)"],
        "env": env,
        "envFrom": [{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
        "resources": {"limits": {"memory": "64Mi"}},
    }
    pod = python_pod("env", "", container=container, metadata={"labels": {"app": "demo"}, "annotations": {"note": "n"}})
    uid = api.create(ns, "pods", pod)["metadata"]["uid"]
    eventually(lambda: phase(api, ns, "env", "Succeeded"), 15, "Succeeded")
    dump = json.loads(printed(dev, ns, "env", "DUMP ") or "{}")
    seen = dump["env"]
    assert dump["argv"] == ["hello"]
    assert seen.pop("PATH").split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert Path(seen.pop("HOME")).is_relative_to(dev.node_state_dir)
    # The pod has the default service-account token: a kubeconfig for it (tested below).
    assert Path(seen.pop("KUBECONFIG")).is_relative_to(dev.node_state_dir)
    port = str(dev.ports.apiserver)  # type: ignore[union-attr]
    # Exactly what the spec gives, the kubernetes Service's variables, and nothing of this test runner's environment.
    assert seen == {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://127.0.0.1:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port,
        f"KUBERNETES_PORT_{port}_TCP_ADDR": "127.0.0.1",
        "LANG": "C.UTF-8",
        "PLAIN": "hello",
        "EXPANDED": "hello-world",
        "ESCAPED": "$(PLAIN)",
        "FROM_SECRET": "s3cret",
        "FROM_CONFIGMAP": "blue",
        "POD_NAME": "env",
        "POD_NAMESPACE": ns,
        "POD_UID": uid,
        "POD_APP": "demo",
        "POD_NOTE": "n",
        "NODE_NAME": cluster.NODE_NAME,
        "SA_NAME": "default",
        "POD_IP": "127.0.0.1",
        "HOST_IP": "127.0.0.1",
        "MEMORY_MI": "64",
        "CFG_color": "blue",
        "CFG_size": "large",
    }


def test_exit_codes_decide_the_phase(api: Api, ns: str) -> None:
    api.create(ns, "pods", python_pod("ok", "raise SystemExit(0)"))
    api.create(ns, "pods", python_pod("bad", "raise SystemExit(3)"))
    ok = eventually(lambda: phase(api, ns, "ok", "Succeeded", "Failed"), 15, "ok finished")
    bad = eventually(lambda: phase(api, ns, "bad", "Succeeded", "Failed"), 15, "bad finished")
    assert ok["status"]["phase"] == "Succeeded"
    assert ok["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert bad["status"]["phase"] == "Failed"
    terminated = bad["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (3, "Error")
    conditions = {c["type"]: c for c in bad["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["PodScheduled"]["status"] == "True"


TRAPS_SIGTERM = """
import signal, sys, time
def stop(signum, frame):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("waiting", flush=True)
time.sleep(600)
"""

IGNORES_SIGTERM = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("pid", os.getpid(), flush=True)
time.sleep(600)
"""


def test_deletion_sends_sigterm_then_removes_the_pod(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    api.create(ns, "pods", python_pod("polite", TRAPS_SIGTERM))
    eventually(lambda: "waiting" in log_lines(dev, ns, "polite"), 10, "the handler installed")
    running = eventually(lambda: phase(api, ns, "polite", "Running"), 5, "Running")
    status = running["status"]["containerStatuses"][0]
    assert status["ready"] is True
    assert "running" in status["state"]
    dev.kubectl("delete", "pod", "polite", "-n", ns, "--wait=false")
    eventually(lambda: api.pod(ns, "polite") is None, 5, "the pod gone")
    assert "got SIGTERM" in log_lines(dev, ns, "polite")


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    dev: cluster.DevCluster, api: Api, ns: str
) -> None:
    api.create(ns, "pods", python_pod("stubborn", IGNORES_SIGTERM, terminationGracePeriodSeconds=1))
    pid = int(eventually(lambda: printed(dev, ns, "stubborn", "pid "), 10, "the process started"))
    deleted = time.monotonic()
    dev.kubectl("delete", "pod", "stubborn", "-n", ns, "--wait=false")
    eventually(lambda: api.pod(ns, "stubborn") is None, 6, "the pod gone")
    assert time.monotonic() - deleted >= 1.0, "the pod went before its grace period was over"
    assert not processes.pid_alive(pid)


def test_an_unknown_image_waits_with_a_clear_reason(api: Api, ns: str) -> None:
    api.create(
        ns, "pods", {"metadata": {"name": "busy"}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
    )

    def waiting() -> Obj | None:
        pod = api.pod(ns, "busy") or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting") if pod["status"]["phase"] == "Pending" else None

    state = eventually(lambda: (waiting() or {}).get("reason") == "ImageNotLocal" and waiting(), 5, "ImageNotLocal")
    assert "busybox" in state["message"]
    assert "analysis-worker" in state["message"]


def test_a_missing_secret_blocks_the_container_until_it_appears(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "late", "key": "key"}}}]
    api.create(ns, "pods", python_pod("patient", ENV_DUMP, container={"env": env}))

    def waiting() -> Obj:
        pod = api.pod(ns, "patient") or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        state: Obj = statuses[0].get("state", {}).get("waiting") or {}
        return state

    eventually(lambda: waiting().get("reason") == "CreateContainerConfigError", 5, "CreateContainerConfigError")
    assert waiting()["message"] == 'secret "late" not found'
    assert api.pod(ns, "patient")["status"]["phase"] == "Pending"  # type: ignore[index]
    api.create(ns, "secrets", {"metadata": {"name": "late"}, "stringData": {"key": "finally"}})
    eventually(lambda: phase(api, ns, "patient", "Succeeded"), 10, "Succeeded once the Secret exists")
    assert json.loads(printed(dev, ns, "patient", "DUMP ") or "{}")["env"]["KEY"] == "finally"


READS_THE_PLAN = """
import os, sys
print("PLAN " + open(os.environ["PLAN_PATH"]).read())
print("ARG " + open(sys.argv[1]).read())
print("TMPDIR " + os.environ["TMPDIR"])
print("CWD " + os.getcwd())
"""


def test_configmap_volume_files_are_reached_through_translated_paths(
    dev: cluster.DevCluster, api: Api, ns: str
) -> None:
    api.create(ns, "configmaps", {"metadata": {"name": "plan"}, "data": {"plan.json": '{"stages": []}', "other": "x"}})
    container = {
        "args": ["-c", READS_THE_PLAN, "/etc/analysis/plan.json"],
        "env": [{"name": "PLAN_PATH", "value": "/etc/analysis/plan.json"}],
        "workingDir": "/tmp/work",
        "volumeMounts": [
            {"name": "plan", "mountPath": "/etc/analysis", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes = [
        {"name": "plan", "configMap": {"name": "plan", "items": [{"key": "plan.json", "path": "plan.json"}]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    api.create(ns, "pods", python_pod("reader", "", container=container, volumes=volumes))
    finished = eventually(lambda: phase(api, ns, "reader", "Succeeded", "Failed"), 15, "finished")
    # Everything the node knew, should this ever fail again (it once did, in a full CI run only).
    seen = f"status: {finished.get('status')}\nlog: {log_lines(dev, ns, 'reader')}"
    assert finished["status"]["phase"] == "Succeeded", seen
    assert printed(dev, ns, "reader", "PLAN ") == '{"stages": []}', seen
    assert printed(dev, ns, "reader", "ARG ") == '{"stages": []}'
    tmpdir = Path(printed(dev, ns, "reader", "TMPDIR ") or "/")
    assert tmpdir.name == "tmp"
    assert tmpdir.is_relative_to(dev.node_state_dir)
    assert printed(dev, ns, "reader", "CWD ") == str(tmpdir / "work")
    # items: only the listed key is projected.
    assert sorted(p.name for p in (tmpdir.parent / "plan").iterdir()) == ["plan.json"]


def test_restart_policy_always_restarts_with_a_back_off(api: Api, ns: str) -> None:
    api.create(ns, "pods", python_pod("crashy", "raise SystemExit(1)", restartPolicy="Always"))

    def restarted() -> Obj | None:
        statuses = (api.pod(ns, "crashy") or {}).get("status", {}).get("containerStatuses") or [{}]
        return statuses[0] if statuses[0].get("restartCount", 0) >= 1 and statuses[0]["lastState"] else None

    status = eventually(restarted, 10, "restarted once")
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert api.pod(ns, "crashy")["status"]["phase"] == "Running"  # type: ignore[index]


SETS_READY_LATER = """
import pathlib, sys, time
print("flag", pathlib.Path(sys.argv[1]).read_text(), flush=True)
time.sleep(0.5)
pathlib.Path(sys.argv[2]).touch()
time.sleep(600)
"""


def test_init_containers_run_first_and_an_exec_readiness_probe_gates_ready(
    dev: cluster.DevCluster, api: Api, ns: str
) -> None:
    mounts = [{"name": "shared", "mountPath": "/shared"}]
    init = {
        "name": "init",
        "image": PYTHON_IMAGE,
        "args": ["-c", "import sys; open(sys.argv[1], 'w').write('set by init')", "/shared/flag"],
        "volumeMounts": mounts,
    }
    container = {
        "args": ["-c", SETS_READY_LATER, "/shared/flag", "/shared/ready"],
        "volumeMounts": mounts,
        "readinessProbe": {"exec": {"command": ["test", "-f", "/shared/ready"]}, "periodSeconds": 1},
    }
    pod = python_pod(
        "gated", "", container=container, initContainers=[init], volumes=[{"name": "shared", "emptyDir": {}}]
    )
    api.create(ns, "pods", pod)
    running = eventually(lambda: phase(api, ns, "gated", "Running"), 10, "Running")
    assert running["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"

    def ready() -> bool:
        conditions = (api.pod(ns, "gated") or {}).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    assert not ready()
    eventually(ready, 5, "Ready once the probe passes")
    assert "flag set by init" in dev.pod_log(ns, "gated", "main").read_text().splitlines()


def test_translation_rules() -> None:
    assert podspec.image_repository("ghcr.io/acme/analysis-worker:1.2@sha256:0123") == "analysis-worker"
    assert podspec.image_repository("localhost:5000/python") == "python"
    variables = {"A": "x"}
    assert podspec.expand("$(A)-$(B)-$$(A)-$$-$", variables) == "x-$(B)-$(A)-$-$"
    pairs = podspec.mounts(
        {"volumeMounts": [{"name": "v", "mountPath": "/etc/a"}, {"name": "w", "mountPath": "/etc/a/b"}]},
        {"v": Path("/l/v"), "w": Path("/l/w")},
    )
    assert podspec.translate("/etc/a/b/c", pairs) == "/l/w/c"
    assert podspec.translate("/etc/a/x", pairs) == "/l/v/x"
    assert podspec.translate("/etc/a", pairs) == "/l/v"
    assert podspec.translate("/etc/ab", pairs) == "/etc/ab"
    assert podspec.translate("--plan=/etc/a/x", pairs) == "--plan=/etc/a/x"


def test_a_job_with_two_completions_completes(api: Api, ns: str) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "pair"},
        "spec": {
            "parallelism": 2,
            "completions": 2,
            "backoffLimit": 0,
            "template": {"spec": python_pod("", "import time; time.sleep(0.2); print('done')")["spec"]},
        },
    }
    api.create(ns, "jobs", job, group="apis/batch/v1")

    def complete() -> bool:
        status = api.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/pair")[1].get("status", {})
        return status.get("succeeded") == 2 and any(
            c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", [])
        )

    eventually(complete, 20, "the Job Complete")
    assert sorted(p["status"]["phase"] for p in api.pods(ns)) == ["Succeeded", "Succeeded"]


def test_a_deployment_scaled_to_zero_stops_its_processes(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    template = python_pod("", "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)")
    template["spec"]["restartPolicy"] = "Always"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "idle"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "idle"}},
            "template": {"metadata": {"labels": {"app": "idle"}}, "spec": template["spec"]},
        },
    }
    api.create(ns, "deployments", deployment, group="apis/apps/v1")

    def pids() -> list[int]:
        names = [p["metadata"]["name"] for p in api.pods(ns) if p.get("status", {}).get("phase") == "Running"]
        found = [printed(dev, ns, name, "pid ") for name in names]
        return [int(pid) for pid in found if pid] if len(names) == 2 else []

    running = eventually(lambda: len(pids()) == 2 and pids(), 20, "two replicas running")
    assert all(processes.pid_alive(pid) for pid in running)
    dev.kubectl("scale", "deployment", "idle", "-n", ns, "--replicas=0")
    eventually(lambda: not api.pods(ns), 10, "the pods gone")
    assert not any(processes.pid_alive(pid) for pid in running)


def test_killing_the_node_kills_its_pod_processes(dev: cluster.DevCluster, api: Api, ns: str, tmp_path: Path) -> None:
    # A second node of our own, so that killing it leaves the module's node alone; the pod names it
    # in spec.nodeName, so no node has to bind it.
    name = "doomed-node"
    argv = [sys.executable, "-m", "analysis_devcluster.node", f"--kubeconfig={dev.kubeconfig}"]
    second = processes.spawn("node", [*argv, f"--state-dir={tmp_path}", f"--name={name}"], tmp_path / "node.log")
    try:
        eventually(lambda: api.request("GET", f"/api/v1/nodes/{name}")[0] == 200, 10, "the second node registered")
        # $$$$: Kubernetes expands $$ in a command to $, so the shell sees $$ (its own pid).
        shell = {"command": ["sh", "-c", "sleep 600 & echo child $!; echo main $$$$; wait"]}
        api.create(ns, "pods", python_pod("orphan", "", container=shell, nodeName=name))

        def pids() -> list[int]:
            try:
                lines = node.find_pod_log(tmp_path, ns, "orphan").read_text().split()
            except FileNotFoundError:
                return []
            return [int(word) for word in lines if word.isdigit()]

        started = eventually(lambda: len(pids()) == 2 and pids(), 10, "the pod's processes started")
        assert all(processes.pid_alive(pid) for pid in started)
        os.kill(second.pid, signal.SIGKILL)
        second.process.wait()
        eventually(lambda: not any(processes.pid_alive(pid) for pid in started), 5, "the pod's processes gone")
    finally:
        second.stop(0)
        dev.kubectl("delete", "pod", "orphan", "-n", ns, "--force", "--grace-period=0", "--ignore-not-found")
        dev.kubectl("delete", "node", name, "--ignore-not-found")


# ------------------------------------------------------------------ kubectl logs, through the apiserver

TALKER = """
import os, sys, time
print("line 0")
print("line 1")
print("line 2", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
print("line 3")
sys.stdout.write("no newline at the end")
"""
STAMPED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9})Z (.*)$")


def kubectl_argv(dev: cluster.DevCluster, *args: str) -> list[str]:
    return [str(binaries.find("kubectl")), "--kubeconfig", str(dev.kubeconfig), *args]


def stamped_ns(line: str) -> tuple[int, str]:
    """The kubelet's ``--timestamps`` prefix (RFC 3339, nine fraction digits, UTC) as unix ns, and the rest."""
    match = STAMPED.match(line)
    assert match, f"no fixed-width RFC 3339 timestamp in {line!r}"
    seconds = datetime.datetime.fromisoformat(match.group(1)).replace(tzinfo=datetime.UTC).timestamp()
    return int(seconds) * 10**9 + int(match.group(2)), match.group(3)


def logs_of(dev: cluster.DevCluster, ns: str, pod: str) -> Callable[..., str]:
    """``kubectl logs`` of one pod, with extra arguments."""

    def logs(*args: str) -> str:
        return dev.kubectl("logs", "-n", ns, pod, *args).stdout

    return logs


def test_kubectl_logs_follows_a_running_container_until_it_ends(
    dev: cluster.DevCluster, api: Api, ns: str, tmp_path: Path
) -> None:
    container = {"args": ["-c", TALKER, "/signal/go"], "volumeMounts": [{"name": "signal", "mountPath": "/signal"}]}
    volumes = [{"name": "signal", "hostPath": {"path": str(tmp_path)}}]
    api.create(ns, "pods", python_pod("talker", "", container=container, volumes=volumes))
    eventually(lambda: "line 2" in log_lines(dev, ns, "talker"), 15, "the first lines written")
    assert dev.kubectl("logs", "-n", ns, "talker").stdout == "line 0\nline 1\nline 2\n"
    assert dev.kubectl("logs", "-n", ns, "talker", "--tail=1").stdout == "line 2\n"

    follower = subprocess.Popen(kubectl_argv(dev, "logs", "-f", "-n", ns, "talker"), stdout=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        assert [follower.stdout.readline() for _ in range(3)] == ["line 0\n", "line 1\n", "line 2\n"]
        assert follower.poll() is None, "kubectl logs -f ended while the container runs"
        released_ns = time.time_ns()
        (tmp_path / "go").touch()
        rest, _ = follower.communicate(timeout=30)
    finally:
        follower.kill()
    # It ends by itself once the container has, with the unfinished last line too.
    assert (follower.returncode, rest) == (0, "line 3\nno newline at the end")

    eventually(lambda: phase(api, ns, "talker", "Succeeded"), 15, "Succeeded")
    logs = logs_of(dev, ns, "talker")
    assert logs() == "line 0\nline 1\nline 2\nline 3\nno newline at the end"
    assert logs("--tail=2") == "line 3\nno newline at the end"
    assert logs("--tail=0") == ""
    assert logs("--limit-bytes=10") == "line 0\nlin"
    assert logs("--since=1h") == logs()
    future = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert logs(f"--since-time={future}") == ""

    stamped = [stamped_ns(line) for line in logs("--timestamps").split("\n")]
    assert [text for _, text in stamped] == ["line 0", "line 1", "line 2", "line 3", "no newline at the end"]
    times = [arrived for arrived, _ in stamped]
    assert times == sorted(times)
    # When each line arrived: the first three before the test let the process go on, the rest after.
    assert times[2] < released_ns <= times[3]
    # The prefix counts towards limitBytes, as the kubelet counts it.
    assert logs("--timestamps", "--limit-bytes=31") == logs("--timestamps")[:31]


COUNTS_ITS_RUNS = """
import os, sys, time
runs = sys.argv[1]
before = len(open(runs).read()) if os.path.exists(runs) else 0
open(runs, "a").write("x")
print(f"run {before + 1}", flush=True)
if before == 0:
    sys.exit(1)
time.sleep(600)
"""


def test_kubectl_logs_previous_gives_the_run_before_a_restart(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    container = {
        "args": ["-c", COUNTS_ITS_RUNS, "/state/runs"],
        "volumeMounts": [{"name": "state", "mountPath": "/state"}],
    }
    pod = python_pod(
        "twice", "", container=container, restartPolicy="OnFailure", volumes=[{"name": "state", "emptyDir": {}}]
    )
    api.create(ns, "pods", pod)
    logs = logs_of(dev, ns, "twice")
    eventually(lambda: log_lines(dev, ns, "twice") == ["run 1", "run 2"], 20, "restarted and running again")
    eventually(lambda: phase(api, ns, "twice", "Running"), 5, "Running")
    assert logs() == "run 2\n"
    assert logs("--previous") == "run 1\n"
    assert logs("--previous", "--timestamps").endswith(" run 1\n")

    # A container that never restarted has no previous log: the kubelet's answer, through the apiserver.
    api.create(ns, "pods", python_pod("once", "print('only run')"))
    eventually(lambda: phase(api, ns, "once", "Succeeded"), 15, "once Succeeded")
    refused = dev.kubectl("logs", "-n", ns, "once", "--previous", check=False)
    assert refused.returncode != 0
    assert 'previous terminated container "main" in pod "once" not found' in refused.stderr


def test_kubectl_logs_by_label_selector_with_prefixes(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    for name in ("chatty-a", "chatty-b"):
        pod = python_pod(
            name,
            "import os; print('hello from', os.environ['POD_NAME'])",
            container={"env": env},
            metadata={"labels": {"app": "chatty"}},
        )
        api.create(ns, "pods", pod)
    for name in ("chatty-a", "chatty-b"):
        eventually(lambda name=name: phase(api, ns, name, "Succeeded"), 15, f"{name} Succeeded")
    out = dev.kubectl("logs", "-n", ns, "-l", "app=chatty", "--prefix").stdout
    assert sorted(out.splitlines()) == [
        "[pod/chatty-a/main] hello from chatty-a",
        "[pod/chatty-b/main] hello from chatty-b",
    ]


def test_the_kubelet_endpoint_answers_as_a_kubelet_does(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    status = api.request("GET", f"/api/v1/nodes/{cluster.NODE_NAME}")[1]["status"]
    port = status["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    assert port > 0
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    api.create(ns, "pods", python_pod("said", "print('something')"))
    eventually(lambda: phase(api, ns, "said", "Succeeded"), 15, "Succeeded")

    pki = dev.state_dir / "pki"
    # The node's serving certificate is the cluster CA's, for 127.0.0.1; the apiserver checks it.
    anonymous = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    apiserver = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    apiserver.load_cert_chain(pki / "apiserver-kubelet-client.crt", pki / "apiserver-kubelet-client.key")

    def get(path: str, context: ssl.SSLContext = apiserver) -> tuple[int, str]:
        connection = HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    assert get(f"/containerLogs/{ns}/said/main") == (200, "something\n")
    assert get(f"/containerLogs/{ns}/said/main", anonymous) == (401, "Unauthorized")
    assert get(f"/containerLogs/{ns}/nobody/main") == (404, 'pod "nobody" does not exist')
    assert get(f"/containerLogs/{ns}/said/other") == (404, 'container "other" not found in pod "said"')
    assert get(f"/containerLogs/{ns}/said/main?tailLines=-1")[0] == 422
    assert get(f"/containerLogs/{ns}/said/main?tailLines=x")[0] == 400

    # A container that never started: the kubelet's 400, which kubectl shows as the apiserver's BadRequest.
    api.create(ns, "pods", {"metadata": {"name": "idle"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})

    def refused() -> str:
        answer = dev.kubectl("logs", "-n", ns, "idle", check=False)
        return answer.stderr if "ImageNotLocal" in answer.stderr else ""

    message = eventually(refused, 10, "kubectl logs refused")
    assert "BadRequest" in message
    assert 'container "c" in pod "idle" is waiting to start: ImageNotLocal' in message


# ------------------------------------------------------------------ in-cluster credentials

ASKS_WHO_IT_IS = """
import json, os, subprocess, sys, urllib.request
import kopf
from analysis_operator import kube

def kubectl(*args):
    done = subprocess.run([sys.argv[1], *args], capture_output=True, text=True)
    return {"code": done.returncode, "out": done.stdout.strip(), "err": done.stderr.strip()}

# The way the operator logs in: the service account's fixed path first, then KUBECONFIG.
info = kube.login(kopf.OperatorSettings())
review = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode()
request = urllib.request.Request(
    info.server + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=review,
    headers={**info.as_http_headers(), "Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(request, context=info.as_ssl_context()) as answer:
    kopf_user = json.load(answer)["status"]["userInfo"]["username"]
print("SEEN " + json.dumps({
    "kubeconfig": os.environ.get("KUBECONFIG"),
    "kopf": kopf_user,
    "namespace": info.default_namespace,
    "whoami": kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"),
    "allowed": kubectl("get", "configmap", "kube-root-ca.crt", "-o", "name"),
    "denied": kubectl("get", "secrets"),
}), flush=True)
"""


def test_a_pod_reaches_the_api_as_its_service_account(dev: cluster.DevCluster, api: Api, ns: str) -> None:
    dev.kubectl("create", "serviceaccount", "reader", "-n", ns)
    dev.kubectl("create", "role", "reader", "-n", ns, "--verb=get,list", "--resource=configmaps")
    dev.kubectl("create", "rolebinding", "reader", "-n", ns, "--role=reader", f"--serviceaccount={ns}:reader")
    container = {"args": ["-c", ASKS_WHO_IT_IS, str(binaries.find("kubectl"))]}
    api.create(ns, "pods", python_pod("asker", "", container=container, serviceAccountName="reader"))
    finished = eventually(lambda: phase(api, ns, "asker", "Succeeded", "Failed"), 30, "finished")
    logged = dev.kubectl("logs", "-n", ns, "asker").stdout
    assert finished["status"]["phase"] == "Succeeded", logged
    seen = json.loads(next(line[5:] for line in logged.splitlines() if line.startswith("SEEN ")))

    identity = f"system:serviceaccount:{ns}:reader"
    assert seen["kopf"] == identity
    assert seen["namespace"] == ns
    assert seen["whoami"] == {"code": 0, "out": identity, "err": ""}
    assert seen["allowed"] == {"code": 0, "out": "configmap/kube-root-ca.crt", "err": ""}
    assert seen["denied"]["code"] != 0
    assert f'User "{identity}" cannot list resource "secrets"' in seen["denied"]["err"]
    # The kubeconfig holds the token: the pod's own, readable by nobody else, never printed.
    kubeconfig = Path(seen["kubeconfig"])
    assert kubeconfig.is_relative_to(dev.node_state_dir)
    assert kubeconfig.stat().st_mode & 0o077 == 0
    token = json.loads(kubeconfig.read_text())["users"][0]["user"]["token"]
    assert token
    assert token not in logged

    # Without a token, no kubeconfig; a KUBECONFIG of the spec's own is left alone.
    api.create(ns, "pods", python_pod("tokenless", ENV_DUMP, automountServiceAccountToken=False))
    own = {"env": [{"name": "KUBECONFIG", "value": "/etc/mine"}]}
    api.create(ns, "pods", python_pod("own", ENV_DUMP, container=own))
    for name in ("tokenless", "own"):
        eventually(lambda name=name: phase(api, ns, name, "Succeeded"), 15, f"{name} Succeeded")
    tokenless = json.loads(printed(dev, ns, "tokenless", "DUMP ") or "{}")["env"]
    assert "KUBECONFIG" not in tokenless
    assert tokenless["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert json.loads(printed(dev, ns, "own", "DUMP ") or "{}")["env"]["KUBECONFIG"] == "/etc/mine"
