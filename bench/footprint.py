"""Benchmark: the codebase's footprint and the two costs a client switch may move, against a baseline revision.

Writes ``bench/results/footprint.json``. Every figure is taken twice in one run,
for this checkout and for ``--baseline`` (a git revision, checked out into a
temporary worktree; default: the commit before issue 12's restructuring), so
both sides share the machine's load:

- the source: lines (non-blank, non-comment-only) and modules per package, and
  the repeated-code pairs the ``duplicates`` tool finds in ``operator/src`` and
  ``worker-image/src`` (when the tool is on PATH);
- the ``kubectl analysis`` plugin's start: the median wall time of
  ``kubectl-analysis --help`` (the import cost alone) and of
  ``kubectl analysis status <batch> --once`` against a running control plane
  (import, one ``kubectl get``, rendering); the two sides' runs alternate;
- the operator's memory: ``analysis-operator -A`` against the same control
  plane and its Redis, reconciling ``--batches`` small offline batches (their
  Jobs are made; no node runs their pods), sampled once every batch has a
  status and ``--settle`` seconds more: resident memory and its peak (VmHWM).
  The baseline's operator runs first, then this checkout's, each alone.

Both sides run from this virtualenv, each with its own sources first on
``PYTHONPATH`` (the baseline's dependencies must still be installed here).
No node is started, so it may run beside anything but another node's tests.
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from analysis_devcluster import cluster, processes

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BIN = Path(sys.executable).parent
BASELINE = "223594a"  # main before issue 12's restructuring (plugin modules, queue split, lightkube)
PACKAGES = {
    "analysis_core": "operator/src/analysis_core",
    "analysis_operator": "operator/src/analysis_operator",
    "analysis_devcluster": "operator/src/analysis_devcluster",
    "analysis_worker": "worker-image/src/analysis_worker",
}


def source_stats(root: Path) -> dict[str, Any]:
    packages = {}
    for name, path in PACKAGES.items():
        files = sorted((root / path).rglob("*.py"))
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
                ["duplicates", "--repo", str(root / tree), "--seconds", "120"],
                capture_output=True,
                text=True,
                check=False,
            )
            first = run.stdout.splitlines()[0] if run.stdout else ""
            pairs[tree] = int(first.split()[0]) if first[:1].isdigit() else 0
        out["duplicate_pairs"] = pairs
    return out


def sources_env(root: Path, env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": f"{root / 'operator/src'}{os.pathsep}{root / 'worker-image/src'}"}


def timed_pair(argv: list[str], envs: dict[str, dict[str, str]], runs: int) -> dict[str, dict[str, float]]:
    """Median and minimum wall time of ``argv`` under each env, the sides' runs alternating."""
    times: dict[str, list[float]] = {side: [] for side in envs}
    for _ in range(runs):
        for side, env in envs.items():
            started = time.perf_counter()
            subprocess.run(argv, env=env, capture_output=True, check=True)
            times[side].append(time.perf_counter() - started)
    return {
        side: {"median_s": round(statistics.median(t), 4), "min_s": round(min(t), 4), "runs": runs}
        for side, t in times.items()
    }


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


def operator_memory(
    dev: cluster.DevCluster, env: dict[str, str], log_path: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Run one operator until every batch has a status of its generation, let it settle, read its memory."""
    with log_path.open("wb") as log:
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
            started = time.monotonic()
            while not all_reconciled(dev):
                if operator.poll() is not None or time.monotonic() - started > 120:
                    raise SystemExit(f"the operator did not reconcile every batch; its log: {log_path}")
                time.sleep(0.5)
            reconciled_s = time.monotonic() - started
            time.sleep(args.settle)
            return {**memory(operator.pid), "reconciled_s": round(reconciled_s, 2), "batches": args.batches}
        finally:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(30)


def all_reconciled(dev: cluster.DevCluster) -> bool:
    """Every batch has a phase (the second operator finds them so; the settle time is what it works through)."""
    got = json.loads(dev.kubectl("get", "analysisbatches", "-o", "json").stdout)
    return all((item.get("status") or {}).get("phase") for item in got["items"])


@contextlib.contextmanager
def baseline_checkout(revision: str) -> Iterator[Path]:
    """A temporary git worktree of ``revision``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-footprint-baseline-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), revision],
            check=True,
            capture_output=True,
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


def measure(dev: cluster.DevCluster, work: Path, sides: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(dev.kubeconfig), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    envs = {side: sources_env(root, env) for side, root in sides.items()}
    dev.install_crds(REPO / "crds")
    manifests = [batch(f"bench-{i}") for i in range(args.batches)]
    dev.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    memories = {side: operator_memory(dev, envs[side], work / f"operator-{side}.log", args) for side in sides}
    plugin = {
        "help": timed_pair([str(BIN / "kubectl-analysis"), "--help"], envs, args.runs),
        "status": timed_pair(
            [str(BIN / "kubectl-analysis"), "status", "bench-0", "-n", "default", "--once"], envs, args.runs
        ),
    }
    return {
        side: {
            "operator": memories[side],
            "plugin_start": {verb: plugin[verb][side] for verb in plugin},
            "source": source_stats(root),
        }
        for side, root in sides.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision to compare with (default: {BASELINE})")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to let the operator run once reconciled")
    parser.add_argument("--runs", type=int, default=21, help="plugin invocations per side and measurement")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp,
        baseline_checkout(args.baseline) as baseline,
        cluster.DevCluster(Path(tmp) / "dev") as dev,
    ):
        measured = measure(dev, Path(tmp), {"baseline": baseline, "current": REPO}, args)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    base, now = measured["baseline"], measured["current"]
    result = {
        "benchmark": "source footprint, kubectl-analysis start, operator memory: this checkout against a baseline",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "baseline": args.baseline,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        **measured,
        "change": {
            "operator_rss_mib": round(now["operator"]["rss_mib"] - base["operator"]["rss_mib"], 1),
            "plugin_help_pct": round(
                100 * (now["plugin_start"]["help"]["median_s"] / base["plugin_start"]["help"]["median_s"] - 1), 1
            ),
            "plugin_status_pct": round(
                100 * (now["plugin_start"]["status"]["median_s"] / base["plugin_start"]["status"]["median_s"] - 1), 1
            ),
        },
    }
    out = RESULTS / "footprint.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result["change"]))


if __name__ == "__main__":
    main()
