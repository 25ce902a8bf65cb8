"""Benchmark: the codebase's footprint and the two costs a client switch may move.

Writes ``bench/results/footprint-<label>.json`` (``--label before`` / ``after``
around a restructuring, issue 12):

- the source: lines (non-blank, non-comment-only) and modules per package, and
  the repeated-code pairs the ``duplicates`` tool finds in ``operator/src`` and
  ``worker-image/src`` (when the tool is on PATH);
- the ``kubectl analysis`` plugin's start: the median wall time of
  ``kubectl-analysis --help`` (the import cost alone) and of
  ``kubectl analysis status <batch> --once`` against a running control plane (import,
  one ``kubectl get``, rendering);
- the operator's memory: ``analysis-operator -A`` against the same control
  plane and its Redis, reconciling ``--batches`` small offline batches (their
  Jobs are made; no node runs their pods), sampled until every batch has a
  status and then for ``--settle`` seconds: resident memory at the end and its
  peak (VmHWM).

No node is started, so it may run beside anything but another node's tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
PACKAGES = {
    "analysis_core": REPO / "operator/src/analysis_core",
    "analysis_operator": REPO / "operator/src/analysis_operator",
    "analysis_devcluster": REPO / "operator/src/analysis_devcluster",
    "analysis_worker": REPO / "worker-image/src/analysis_worker",
}


def source_stats() -> dict[str, Any]:
    packages = {}
    for name, root in PACKAGES.items():
        files = sorted(root.rglob("*.py"))
        lines = sum(
            1
            for f in files
            for line in f.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")
        )
        packages[name] = {"modules": len(files), "lines": lines}
    out: dict[str, Any] = {"packages": packages}
    if shutil.which("duplicates"):
        pairs = {}
        for tree in ("operator/src", "worker-image/src"):
            run = subprocess.run(
                ["duplicates", "--repo", str(REPO / tree), "--seconds", "120"],
                capture_output=True,
                text=True,
                check=False,
            )
            first = run.stdout.splitlines()[0] if run.stdout else ""
            pairs[tree] = int(first.split()[0]) if first[:1].isdigit() else 0
        out["duplicate_pairs"] = pairs
    return out


def timed(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4), "runs": runs}


def memory(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields.get("VmRSS", 0.0), "peak_mib": fields.get("VmHWM", 0.0)}


def batch(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "items": [f"item-{i}" for i in range(20)],
            "providers": {"local": {"type": "offline", "offline": {"seed": 1}}},
            "stages": [{"name": "summarize", "provider": "local", "prompt": "Summarize {{ item }}"}],
        },
    }


def measure(dev: cluster.DevCluster, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(dev.kubeconfig), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    dev.install_crds(REPO / "crds")
    manifests = [batch(f"bench-{i}") for i in range(args.batches)]
    dev.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    log = (work / "operator.log").open("wb")
    operator = subprocess.Popen(
        [
            str(BIN / "analysis-operator"),
            "--all-namespaces",
            f"--liveness=http://127.0.0.1:{processes.free_port()}/healthz",
        ],
        env={
            **env,
            "ANALYSIS_OPERATOR_REDIS_URL": dev.redis_url,
            "ANALYSIS_OPERATOR_METRICS_PORT": str(processes.free_port()),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def all_reconciled() -> bool:
            got = json.loads(dev.kubectl("get", "analysisbatches", "-o", "json").stdout)
            return all((item.get("status") or {}).get("phase") for item in got["items"])

        started = time.monotonic()
        while not all_reconciled():
            if operator.poll() is not None or time.monotonic() - started > 120:
                raise SystemExit(f"the operator did not reconcile every batch; its log: {work / 'operator.log'}")
            time.sleep(0.5)
        reconciled_s = time.monotonic() - started
        time.sleep(args.settle)
        operator_memory = {**memory(operator.pid), "reconciled_s": round(reconciled_s, 2), "batches": args.batches}
        plugin = {
            "help": timed([str(BIN / "kubectl-analysis"), "--help"], env, args.runs),
            "status": timed(
                [str(BIN / "kubectl-analysis"), "status", "bench-0", "-n", "default", "--once"], env, args.runs
            ),
        }
    finally:
        os.killpg(operator.pid, signal.SIGTERM)
        operator.wait(30)
        log.close()
    return {"operator": operator_memory, "plugin_start": plugin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="now", help="names the result file: footprint-<label>.json")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to let the operator run once reconciled")
    parser.add_argument("--runs", type=int, default=15, help="plugin invocations per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp, cluster.DevCluster(Path(tmp) / "dev") as dev:
        measured = measure(dev, Path(tmp), args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    result = {
        "benchmark": "source footprint, kubectl-analysis start, operator memory",
        "label": args.label,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "source": source_stats(),
        **measured,
    }
    out = RESULTS / f"footprint-{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("operator", "plugin_start")}))


if __name__ == "__main__":
    main()
