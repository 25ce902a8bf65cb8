"""Benchmark: how fast the dev cluster starts and stops, and what it costs in memory.

Starts and stops a private ``DevCluster`` N times (binaries already built, so
this is the warm start the issue targets at under 15 s) and writes
``bench/results/devcluster_start.json``: per run, the seconds to ready, the
seconds at which each component was ready, the seconds to stop, and the
resident memory of each component once ready.

Run with ``make bench`` (or ``.venv/bin/python bench/devcluster_start.py --runs 5``).
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from analysis_devcluster import cluster

RESULTS = Path(__file__).resolve().parent / "results" / "devcluster_start.json"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


@dataclasses.dataclass
class Run:
    ready_seconds: float
    component_ready_at_seconds: dict[str, float]
    stop_seconds: float
    rss_mib: dict[str, float]


def one_run(root: Path, index: int) -> Run:
    dev = cluster.DevCluster(root / f"run-{index}")
    dev.start()
    try:
        memory = {name: rss_mib(pid) for name, pid in dev.pids.items()}
    finally:
        stop_started = time.monotonic()
        dev.stop()
        stop_seconds = time.monotonic() - stop_started
    return Run(
        ready_seconds=round(dev.ready_seconds or 0.0, 3),
        component_ready_at_seconds=dev.timings,
        stop_seconds=round(stop_seconds, 3),
        rss_mib=memory,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-devcluster-") as tmp:
        runs = [one_run(Path(tmp), i) for i in range(args.runs)]
    ready = [run.ready_seconds for run in runs]
    total_rss = [sum(run.rss_mib.values()) for run in runs]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    result = {
        "benchmark": "devcluster warm start to ready (etcd, kube-apiserver, kube-controller-manager, redis-server)",
        "target": "warm start to ready under 15 s",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": [dataclasses.asdict(run) for run in runs],
        "ready_seconds": {"min": min(ready), "median": statistics.median(ready), "max": max(ready)},
        "total_rss_mib_median": round(statistics.median(total_rss), 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("ready_seconds", "total_rss_mib_median")}))


if __name__ == "__main__":
    main()
