"""The operator replicas' leader Lease (``analysis_operator.leader``) against a real kube-apiserver.

One replica holds the Lease and renews it; a standby takes it over only once
it has seen the same renewal for the Lease's whole duration (a leader that
stopped renewing), at once when the leader gave it up, and of two standbys
racing for a free Lease exactly one wins. A leader that finds the Lease in
another's hands gives up. Then the real ``analysis-operator`` command, twice:
one process leads and runs Kopf, the other stands by without any handler but
answers the liveness probe; killed, the leader is replaced by the standby,
which then runs Kopf and serves batches.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightkube
import pytest
from lightkube.resources.coordination_v1 import Lease

from analysis_devcluster import cluster, processes
from analysis_operator import kube, leader

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LEASE = "analysis-operator-leader"


@pytest.fixture
def client(devcluster: cluster.DevCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[lightkube.Client]:
    monkeypatch.setenv("KUBECONFIG", str(devcluster.kubeconfig))
    made = lightkube.Client(kube.config(), field_manager=kube.FIELD_MANAGER)
    try:
        yield made
    finally:
        made.close()


def holder(client: lightkube.Client, namespace: str) -> tuple[str, int]:
    spec = client.get(Lease, LEASE, namespace=namespace).spec
    assert spec is not None
    return spec.holderIdentity or "", spec.leaseTransitions or 0


@pytest.mark.timeout(60)
def test_a_standby_takes_over_only_once_the_leader_stopped_renewing_for_the_whole_lease(
    client: lightkube.Client, namespace: str
) -> None:
    a, b = (leader.Elector(client, namespace, LEASE, name) for name in ("a", "b"))
    assert a.try_once()
    lost: list[str] = []
    a.keep(lost.append, renew_s=0.5)
    # While a renews, b never may: each renewal restarts b's count.
    until = time.monotonic() + 3 * 0.5 + 1
    while time.monotonic() < until:
        assert not b.try_once()
        time.sleep(0.2)
    assert holder(client, namespace) == ("a", 0)
    a._stop.set()  # a stops renewing without giving the Lease up: as when its process was killed
    stopped = time.monotonic()
    b.acquire(poll_s=0.2)
    waited = time.monotonic() - stopped
    # Not before the Lease ran out on b's clock from the last renewal it saw (at most one renewal before the stop).
    assert waited >= leader.LEASE_S - 0.5, waited
    assert holder(client, namespace) == ("b", 1)
    assert lost == []
    # a, back, finds the Lease in b's hands: its renewal says it lost it, and it never writes.
    back = leader.Elector(client, namespace, LEASE, "a")
    news = threading.Event()
    back.keep(lambda why: (lost.append(why), news.set()), renew_s=0.2)
    assert news.wait(10)
    assert lost == [f"Lease {namespace}/{LEASE} is now held by b"]
    assert holder(client, namespace) == ("b", 1)


def test_a_released_lease_is_taken_at_once_and_one_of_two_racers_wins(client: lightkube.Client, namespace: str) -> None:
    a, b, c = (leader.Elector(client, namespace, LEASE, name) for name in ("a", "b", "c"))
    assert a.try_once()
    a.keep(lambda why: None)
    a.release()
    assert holder(client, namespace)[0] == ""
    # b and c both read the free Lease, then both write it: the second write names a version that is gone.
    seen = b._read()
    assert b._write(seen, taking=True) is True
    assert c._write(seen, taking=True) is False
    assert holder(client, namespace) == ("b", 1)
    assert not c.try_once()


OPERATOR = Path(sys.executable).parent / "analysis-operator"


class Replica:
    """One ``analysis-operator --namespace=NS`` process of two that elect a leader by the Lease in NS."""

    def __init__(self, dev: cluster.DevCluster, namespace: str, log: Path) -> None:
        self.log, self.port, self.metrics_port = log, processes.free_port(), processes.free_port()
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(OPERATOR), f"--namespace={namespace}", f"--liveness=http://127.0.0.1:{self.port}/healthz"],
                env={
                    "PATH": f"{OPERATOR.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}",
                    **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ},
                    "HOME": os.environ.get("HOME", "/tmp"),
                    "KUBECONFIG": str(dev.kubeconfig),
                    "ANALYSIS_OPERATOR_REDIS_URL": dev.redis_url,
                    "ANALYSIS_OPERATOR_METRICS_PORT": str(self.metrics_port),
                    "ANALYSIS_OPERATOR_STATUS_INTERVAL": "0.2",
                    "ANALYSIS_OPERATOR_NAMESPACE": namespace,
                    "ANALYSIS_OPERATOR_LEADER_LEASE": LEASE,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def liveness(self) -> str:
        """What the liveness endpoint answers; "" while nothing listens (between the standby's server and Kopf's)."""
        return self._get(f"http://127.0.0.1:{self.port}/healthz")

    def scrape(self) -> str:
        return self._get(f"http://127.0.0.1:{self.metrics_port}/metrics")

    @staticmethod
    def _get(url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            return ""

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("crds_installed")
def test_of_two_operator_processes_one_serves_and_the_standby_takes_over_when_it_is_killed(
    devcluster: cluster.DevCluster, namespace: str, tmp_path: Path
) -> None:
    first = Replica(devcluster, namespace, tmp_path / "first.log")
    replicas = [first]
    try:
        processes.eventually(lambda: "leading: holding Lease" in first.text(), 60, "the first replica leads")
        second = Replica(devcluster, namespace, tmp_path / "second.log")
        replicas.append(second)
        processes.eventually(lambda: "standing by" in second.text(), 60, "the second stands by")
        processes.eventually(lambda: second.liveness() == '{"standby": true}\n', 30, "the standby answers liveness")
        assert second.scrape() == leader.STANDBY_METRICS  # its metrics port too: a scrape target that is up
        manifest = {
            "apiVersion": "analysis.dev/v1alpha1",
            "kind": "AnalysisBatch",
            "metadata": {"name": "led", "namespace": namespace},
            "spec": {
                "items": ["A", "B"],
                "providers": {"local": {"type": "offline"}},
                "stages": [{"name": "only", "provider": "local", "prompt": "{{ item }}"}],
            },
        }
        devcluster.kubectl("create", "-f", "-", input=json.dumps(manifest))

        def batch() -> dict[str, object]:
            return dict(
                json.loads(devcluster.kubectl("get", "analysisbatch", "led", "-n", namespace, "-o", "json").stdout)
            )

        def jobs() -> list[str]:
            listed = json.loads(devcluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
            return sorted(job["metadata"]["name"] for job in listed)

        processes.eventually(lambda: (batch().get("status") or {}).get("phase") and jobs(), 60, "the leader serves")
        before = jobs()
        # Nothing but the leader election ran in the standby: no handler, no Kopf.
        assert "kopf" not in second.text().lower(), second.text()

        first.kill()
        processes.eventually(lambda: "leading: holding Lease" in second.text(), 60, "the standby takes over")
        processes.eventually(lambda: second.liveness() not in ("", '{"standby": true}\n'), 60, "Kopf answers now")
        processes.eventually(
            lambda: "analysis_operator" in second.scrape().replace(leader.STANDBY_METRICS, ""),
            30,
            "the leader's metrics",
        )
        # The new leader serves the batch: a change of its spec is seen and reported.
        devcluster.kubectl(
            "patch", "analysisbatch", "led", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}'
        )

        def suspended() -> bool:
            obj = batch()
            st = obj.get("status") or {}
            meta = obj["metadata"]
            assert isinstance(st, dict)
            assert isinstance(meta, dict)
            return st.get("observedGeneration") == meta["generation"] and st.get("phase") == "Suspended"

        processes.eventually(suspended, 60, "the new leader suspended the batch")
        assert jobs() == before  # the same children: none made twice
        # Stopped cleanly, the leader gives the Lease up at once.
        second.stop()
        assert "released Lease" in second.text()
    finally:
        for replica in replicas:
            replica.kill()
        devcluster.kubectl("delete", "analysisbatch", "led", "-n", namespace, "--wait=false", check=False)
