"""The dev cluster itself: real components, controllers that run, Redis, and no orphans.

Most tests use the session cluster from ``tests/conftest.py``; the lifecycle
tests start clusters of their own in temporary directories, because stopping
or killing the shared one would break every later test.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from analysis_devcluster import cluster, processes

pytestmark = pytest.mark.integration

KUBERNETES_VERSION = "v1.34.4"


def _eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} within {timeout:.0f}s")
        time.sleep(0.2)


def _items(dev: cluster.DevCluster, kind: str, namespace: str) -> list[dict[str, object]]:
    listed = json.loads(dev.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)
    items: list[dict[str, object]] = listed["items"]
    return items


def _all_gone(pids: dict[str, int], ports: dict[str, int]) -> bool:
    return not any(processes.pid_alive(pid) for pid in pids.values()) and not any(
        processes.port_open(port) for port in ports.values()
    )


def test_apiserver_reports_the_pinned_version(devcluster: cluster.DevCluster) -> None:
    version = json.loads(devcluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION


def test_configmap_round_trip(devcluster: cluster.DevCluster, namespace: str) -> None:
    devcluster.kubectl("create", "configmap", "greeting", "-n", namespace, "--from-literal=hello=world")
    configmap = json.loads(devcluster.kubectl("get", "configmap", "greeting", "-n", namespace, "-o", "json").stdout)
    assert configmap["data"] == {"hello": "world"}


@pytest.mark.slow
def test_controller_manager_runs_deployment_controllers(devcluster: cluster.DevCluster, namespace: str) -> None:
    devcluster.kubectl("create", "deployment", "web", "-n", namespace, "--image=busybox", "--replicas=2")
    _eventually(lambda: len(_items(devcluster, "replicasets", namespace)) == 1, 30, "a ReplicaSet")
    _eventually(lambda: len(_items(devcluster, "pods", namespace)) == 2, 30, "two Pods")
    # No node and no scheduler: the Pods exist but never leave Pending.
    phases = {pod["status"]["phase"] for pod in _items(devcluster, "pods", namespace)}  # type: ignore[index]
    assert phases == {"Pending"}


def test_redis_answers_and_appends(redis_client: redis.Redis) -> None:
    assert redis_client.ping()
    setting = {
        (key.decode() if isinstance(key, bytes) else key): (value.decode() if isinstance(value, bytes) else value)
        for key, value in redis_client.config_get("appendonly").items()
    }
    assert setting == {"appendonly": "yes"}


def test_env_file_and_kubeconfig(devcluster: cluster.DevCluster) -> None:
    lines = devcluster.env_file.read_text().splitlines()
    assert lines == [f"KUBECONFIG={devcluster.kubeconfig}", f"REDIS_URL={devcluster.redis_url}"]
    assert devcluster.kubeconfig.stat().st_mode & 0o777 == 0o600
    context = devcluster.kubectl("config", "current-context").stdout.strip()
    assert context == cluster.CONTEXT_NAME


def test_install_crds_establishes_a_crd(devcluster: cluster.DevCluster, tmp_path: Path) -> None:
    # A throwaway CRD, so this test does not depend on the repository's own.
    (tmp_path / "widgets.yaml").write_text(
        textwrap.dedent(
            """\
            apiVersion: apiextensions.k8s.io/v1
            kind: CustomResourceDefinition
            metadata: {name: widgets.devcluster.test}
            spec:
              group: devcluster.test
              names: {kind: Widget, plural: widgets, singular: widget}
              scope: Namespaced
              versions:
                - name: v1
                  served: true
                  storage: true
                  schema:
                    openAPIV3Schema:
                      type: object
                      x-kubernetes-preserve-unknown-fields: true
            """
        )
    )
    devcluster.install_crds(tmp_path)
    assert devcluster.kubectl("get", "widgets", "-A").returncode == 0
    devcluster.kubectl("delete", "crd", "widgets.devcluster.test", "--wait=false")


@pytest.mark.slow
def test_stop_leaves_no_process_and_no_listener(tmp_path: Path) -> None:
    dev = cluster.DevCluster(tmp_path / "state")
    with dev:
        pids = dev.pids
        assert dev.ports is not None
        ports = dataclasses.asdict(dev.ports)
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "redis-server"}
        assert all(processes.pid_alive(pid) for pid in pids.values())
    # stop() has waited for every component, so this must hold at once.
    assert _all_gone(pids, ports), (pids, ports)


_SPAWNER = """\
import dataclasses, json, sys, time
from pathlib import Path
from analysis_devcluster import cluster
dev = cluster.DevCluster(Path(sys.argv[1])).start()
print("READY", json.dumps({"pids": dev.pids, "ports": dataclasses.asdict(dev.ports)}), flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_components_die_with_a_killed_spawner(tmp_path: Path) -> None:
    log = tmp_path / "spawner.log"
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-c", _SPAWNER, str(tmp_path / "state")], stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as spawner,
    ):
        assert spawner.stdout is not None
        line = spawner.stdout.readline()
        assert line.startswith("READY "), f"spawner failed: {line!r}\n{log.read_text()[-3000:]}"
        started = json.loads(line.removeprefix("READY "))
        # SIGKILL: no atexit, no finally, no stop(); only PR_SET_PDEATHSIG is left to clean up.
        os.kill(spawner.pid, signal.SIGKILL)
        spawner.wait()
    _eventually(lambda: _all_gone(started["pids"], started["ports"]), 5, "all components gone")


@pytest.mark.slow
def test_cli_up_status_down(tmp_path: Path) -> None:
    home = tmp_path / "home"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "analysis_devcluster", "--home", str(home), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=50, check=False)

    # Without the node: the supervisor's life cycle is the point here (test_node_lifecycle starts nodes).
    up = cli("up", "--no-node")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert cli("up", "--no-node").stdout.startswith("already running")
        status = cli("status")
        assert status.returncode == 0
        assert f"KUBECONFIG={home / 'kubeconfig'}" in status.stdout
        env = dict(line.split("=", 1) for line in (home / "env").read_text().splitlines())
        assert set(env) == {"KUBECONFIG", "REDIS_URL"}
        info = json.loads((home / "supervisor.json").read_text())
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert cli("status").returncode == 3
    assert not (home / "kubeconfig").exists()
    assert not processes.pid_alive(info["pid"])
    assert _all_gone(info["pids"], info["ports"])
