"""``make demo``: the stock-research example on a fresh dev cluster with a real node, from apply to results.

It starts a private dev cluster with its node (state in
``.devcluster/demo``, wiped at every start, so running it twice works),
installs the chart as a platform team would (``helm install --wait``: the
CRD, the operator pod from the ``analysis-operator`` image and the bundled
Redis from the ``analysis-redis`` image, on a local volume), applies
``examples/stock-research.yaml`` (offline provider: no key, no network),
prints ``kubectl get analysisbatches`` whenever the batch's row changes,
waits with ``kubectl wait --for=condition=Complete``, prints the results
with ``kubectl analysis results``, keeps the operator's log (``kubectl
logs``) in ``.devcluster/demo/operator.log``, and stops everything. Exit 0
means the batch completed.

It also measures what a user feels: the wall time, and the time from
``kubectl apply`` to the first item claimed by a worker pod (read from the
bundled Redis, at its pod's address, every few milliseconds, so the figure is
not rounded to a status write); ``.devcluster/demo/timings.json`` keeps them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import analysis_core
from analysis_devcluster import binaries, cluster, images

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = REPO_ROOT / "examples" / "stock-research.yaml"
CHART = REPO_ROOT / "charts" / "analysis-operator"
BATCH = "stock-research"
NAMESPACE = "demo"
RELEASE, SYSTEM = "analysis-operator", "analysis-system"


def _say(text: str) -> None:
    print(f"==> {text}", flush=True)


class _FirstClaim(threading.Thread):
    """Polls Redis until a worker claims the batch's first item; records when."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.redis_url = redis_url
        self.uid: str | None = None
        self.at: float | None = None
        self._stop = threading.Event()

    def run(self) -> None:
        client = cluster.redis_client(self.redis_url, timeout=2.0)
        try:
            while not self._stop.is_set() and self.at is None:
                if self.uid is not None:
                    stream = "{" + self.uid + "}:stream:research"
                    try:
                        groups = client.xinfo_groups(stream)
                    except Exception:  # noqa: BLE001 (not created yet)
                        groups = []
                    if any(int(g.get("entries-read") or 0) > 0 for g in groups):
                        self.at = time.monotonic()
                        return
                time.sleep(0.005)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()


def run(home: Path, timeout_s: float) -> int:
    started = time.monotonic()
    state = home / "demo"
    venv_bin = Path(sys.executable).parent
    # kubectl finds the ``kubectl-analysis`` plugin on PATH.
    os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}"
    _say("starting the control plane and the node (kubelet, containerd, kube-proxy, CoreDNS)")
    dev = cluster.DevCluster(state / "cluster", node=True)
    try:
        dev.start()
        _say(f"cluster ready in {time.monotonic() - started:.1f}s; helm install {RELEASE} (operator and Redis pods)")
        helm = _helm(dev, state)
        helm(
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            SYSTEM,
            "--create-namespace",
            "--wait",
            "--timeout=180s",
            f"--set=redis.bundled.image.repository={images.REDIS.repository}",
            f"--set=redis.bundled.image.tag={analysis_core.__version__}",
        )
        print(dev.kubectl("get", "pods", "-n", SYSTEM, "-o", "wide").stdout.rstrip(), flush=True)
        dev.kubectl("create", "namespace", NAMESPACE)
        dev.kubectl("wait", "--for", "create", "--timeout=30s", "-n", NAMESPACE, "serviceaccount/default", timeout=45)
        probe = _FirstClaim(_bundled_redis_url(dev))
        probe.start()
        _say(f"kubectl apply -n {NAMESPACE} -f {EXAMPLE.relative_to(REPO_ROOT)}")
        applied = time.monotonic()
        print(dev.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE)).stdout.rstrip(), flush=True)
        created = time.monotonic()  # kubectl itself takes a while (discovery): the batch exists from here
        uid = dev.kubectl("get", "-n", NAMESPACE, "analysisbatch", BATCH, "-o", "jsonpath={.metadata.uid}").stdout
        probe.uid = uid
        ok = _watch(dev, timeout_s)
        probe.stop()
        log = state / "operator.log"
        log.write_text(dev.kubectl("logs", "-n", SYSTEM, f"deployment/{RELEASE}", "--tail=-1", check=False).stdout)
        if not ok:
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
            return 1
        _say(f"kubectl analysis results {BATCH} -o table")
        shown = subprocess.run(
            ["kubectl-analysis", "results", BATCH, "-n", NAMESPACE, "-o", "table"],
            env={**os.environ, "KUBECTL": str(binaries.find("kubectl")), "KUBECONFIG": str(dev.kubeconfig)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print(shown.stdout.rstrip() or shown.stderr.rstrip(), flush=True)
        total = time.monotonic() - started
        claim = None if probe.at is None else probe.at - applied
        after_create = None if probe.at is None else probe.at - created
        if claim is None or after_create is None:
            claim_text = "not seen"
        else:
            claim_text = f"{claim * 1000:.0f} ms ({after_create * 1000:.0f} ms after kubectl apply returned)"
        _say(f"Complete. Wall time {total:.1f}s; from kubectl apply to the first item claimed: {claim_text}")
        timings = {"wall_s": total, "apply_to_first_claim_s": claim, "created_to_first_claim_s": after_create}
        rounded = {name: None if value is None else round(value, 3) for name, value in timings.items()}
        (state / "timings.json").write_text(json.dumps(rounded) + "\n")
        return 0 if shown.returncode == 0 else 1
    finally:
        dev.stop()


def _helm(dev: cluster.DevCluster, state: Path) -> Callable[..., None]:
    """``helm`` against the cluster, with its caches under ``state``; its output goes to the terminal."""
    env = {**os.environ, "KUBECONFIG": str(dev.kubeconfig)}
    for name in ("CACHE", "CONFIG", "DATA"):
        env[f"HELM_{name}_HOME"] = str(state / "helm" / name.lower())

    def helm(*args: str) -> None:
        subprocess.run([str(binaries.find("helm")), *args], env=env, check=True, timeout=300)

    return helm


def _bundled_redis_url(dev: cluster.DevCluster) -> str:
    """The bundled Redis at its pod's address (this host is on the pod bridge), with the chart's password."""
    pod = f"{RELEASE}-redis-0"
    address = dev.kubectl("get", "pod", pod, "-n", SYSTEM, "-o", "jsonpath={.status.podIP}").stdout
    secret = dev.kubectl("get", "secret", f"{RELEASE}-redis", "-n", SYSTEM, "-o", "jsonpath={.data.password}").stdout
    password = urllib.parse.quote(base64.b64decode(secret).decode(), safe="")
    return f"redis://:{password}@{address}:6379/0"


def cells(table: list[str]) -> list[list[str]]:
    """The cells of ``kubectl get``'s table, cut at the header's column starts (a cell may hold spaces: "4✓ 1✗")."""
    starts = [match.start() for match in re.finditer(r"\S+", table[0])]
    ends = [*starts[1:], None]
    return [[line[start:end].strip() for start, end in zip(starts, ends, strict=True)] for line in table]


def aligned(row: list[str], widths: list[int]) -> str:
    """A row in fixed columns, so that successive rows line up as one table."""
    return "".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip()


def _watch(dev: cluster.DevCluster, timeout_s: float) -> bool:
    """Print the batch's row whenever it changes, until Complete or Failed (that row included); True when Complete.

    ``kubectl get`` sizes its columns for the rows of each call, so rows
    printed one call at a time would shift; they are realigned to fixed widths.
    """
    deadline = time.monotonic() + timeout_s
    last: list[str] = []
    widths: list[int] = []
    while time.monotonic() < deadline:
        table = dev.kubectl("get", "-n", NAMESPACE, "analysisbatches", check=False).stdout.splitlines()
        if len(table) == 2:
            header, row = cells(table)
            if not widths:
                widths = [max(len(name) + 3, len(cell) + 3, 10) for name, cell in zip(header, row, strict=True)]
                print(aligned(header, widths), flush=True)
            if row[:-1] != last[:-1]:  # the AGE column changes every second
                print(aligned(row, widths), flush=True)
                last = row
            phase = row[header.index("PHASE")]
            if phase in ("Complete", "Failed"):
                waited = dev.kubectl(
                    "wait",
                    "-n",
                    NAMESPACE,
                    "--for=condition=Complete",
                    f"analysisbatch/{BATCH}",
                    "--timeout=10s",
                    check=False,
                )
                print(waited.stdout.rstrip() or waited.stderr.rstrip(), flush=True)
                return waited.returncode == 0
        time.sleep(0.5)
    _say(f"not Complete within {timeout_s:.0f}s")
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis_devcluster.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=REPO_ROOT / ".devcluster", help="where the demo keeps its state")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for Complete")
    args = parser.parse_args(argv)
    return run(args.home, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
