"""Benchmark: operator failover, from the active replica's end to the standby's first reconcile.

Writes ``bench/results/failover.json``. On a dev cluster without a node (its
control plane and Redis), two ``analysis-operator --all-namespaces`` processes
elect a leader by the Lease ``ANALYSIS_OPERATOR_LEADER_LEASE`` names, as the
chart's two replicas do. Each run applies a small offline batch, waits until
the leader reports it, then ends the leader and at the same moment changes
the batch's spec (``spec.suspend`` flips); the time measured is until the
batch's status shows that generation reconciled (``observedGeneration``), which
only the new leader can do:

- ``killed``: SIGKILL, as when a node dies: the standby must wait the Lease
  out (10 s from the last renewal it saw), then start Kopf (goal: < 15 s);
- ``stopped``: SIGTERM, as in a rolling update or a drain: the leader gives
  the Lease up as it exits.

The ended replica is started again (a standby now) before the next run, so
the roles alternate; ``--runs`` of each kind, medians reported, every run kept.
No node is started, so it may run beside anything but another node's tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from analysis_devcluster import cluster, processes

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BIN = Path(sys.executable).parent
NAMESPACE, LEASE = "default", "bench-operator-leader"


class Replica:
    def __init__(self, dev: cluster.DevCluster, name: str, log: Path) -> None:
        self.dev, self.name, self.log = dev, name, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.dev.kubeconfig),
            "ANALYSIS_OPERATOR_REDIS_URL": self.dev.redis_url,
            "ANALYSIS_OPERATOR_METRICS_PORT": "0",
            "ANALYSIS_OPERATOR_STATUS_INTERVAL": "0.2",
            "ANALYSIS_OPERATOR_NAMESPACE": NAMESPACE,
            "ANALYSIS_OPERATOR_LEADER_LEASE": LEASE,
        }
        liveness = f"--liveness=http://127.0.0.1:{processes.free_port()}/healthz"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(BIN / "analysis-operator"), "--all-namespaces", liveness],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def end(self, how: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, how)
            self.process.wait(60)


def holder(dev: cluster.DevCluster) -> str:
    got = dev.kubectl("get", "lease", LEASE, "-n", NAMESPACE, "-o", "json", check=False)
    return str(json.loads(got.stdout)["spec"].get("holderIdentity") or "") if got.returncode == 0 else ""


def reconciled(dev: cluster.DevCluster, name: str) -> bool:
    obj = json.loads(dev.kubectl("get", "analysisbatch", name, "-n", NAMESPACE, "-o", "json").stdout)
    return (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]


def one_run(dev: cluster.DevCluster, replicas: dict[str, Replica], how: signal.Signals, index: int) -> dict[str, Any]:
    name = f"failover-{how.name.lower()}-{index}"
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "items": ["A", "B"],
            "providers": {"local": {"type": "offline"}},
            "stages": [{"name": "only", "provider": "local", "prompt": "{{ item }}"}],
        },
    }
    dev.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    processes.eventually(lambda: reconciled(dev, name), 60, f"{name} reconciled by the leader", interval=0.1)
    leading = holder(dev)
    # Both run on this host, so their identities differ only by a random suffix: each logs its own as it leads.
    (active,) = [r for r in replicas.values() if f" as {leading}" in r.log.read_text(errors="replace")]
    started = time.monotonic()
    active.end(how)
    dev.kubectl("patch", "analysisbatch", name, "-n", NAMESPACE, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    processes.eventually(lambda: holder(dev) not in ("", leading), 60, "the standby leads", interval=0.05)
    took_lease = time.monotonic() - started
    processes.eventually(lambda: reconciled(dev, name), 60, "the new leader reconciled", interval=0.05)
    first_reconcile = time.monotonic() - started
    active.start()  # back, as a standby
    return {"how": how.name, "lease_s": round(took_lease, 2), "first_reconcile_s": round(first_reconcile, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind (killed, stopped)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp, cluster.DevCluster(Path(tmp) / "dev") as dev:
        dev.install_crds(REPO / "crds")
        replicas = {name: Replica(dev, name, Path(tmp) / f"{name}.log") for name in ("one", "two")}
        for replica in replicas.values():
            replica.start()
        runs = []
        try:
            for index in range(args.runs):
                for how in (signal.SIGKILL, signal.SIGTERM):
                    runs.append(one_run(dev, replicas, how, index))
        finally:
            for replica in replicas.values():
                replica.end(signal.SIGKILL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)

    def median(how: str, field: str) -> float:
        return round(statistics.median(r[field] for r in runs if r["how"] == how), 2)

    result = {
        "benchmark": "operator failover: the standby's first reconcile after the leader ends (two replicas, a Lease)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "killed": {
            "lease_s": median("SIGKILL", "lease_s"),
            "first_reconcile_s": median("SIGKILL", "first_reconcile_s"),
        },
        "stopped": {
            "lease_s": median("SIGTERM", "lease_s"),
            "first_reconcile_s": median("SIGTERM", "first_reconcile_s"),
        },
        "goal_killed_first_reconcile_s": 15,
        "runs": runs,
    }
    out = RESULTS / "failover.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("killed", "stopped")}))


if __name__ == "__main__":
    main()
