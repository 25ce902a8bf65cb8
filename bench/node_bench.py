"""Benchmark: the real node's images and pods: cold and warm image builds, node start, pod start latency.

Writes ``bench/results/node.json``:

* ``images.cold``: ``images.build_all()`` (the Debian base by debootstrap, the
  pause image, the operator, worker and redis images) with nothing cached: a
  fresh buildah storage (``CONTAINERS_STORAGE_CONF``), a fresh pip cache
  (buildah keeps cache mounts under ``TMPDIR``) and a fresh archive cache.
  The Go-built tools are not part of it (``make bench-build`` times those).
* ``images.warm_source_change``: the same storage after a change of one
  source file of the project (a new digest, so a real rebuild, on buildah's
  layer cache and pip's cache): what a developer waits for after an edit.
* ``images.cached``: nothing changed: the archives are found by digest.
* ``node_start``: a dev cluster with its node, from ``start()`` to ready
  (Node Ready, CoreDNS ready), split as ``DevCluster.timings`` reports it, and
  its ``stop()`` (which sweeps every trace of the node).
* ``pod_start``: create -> Running of a restricted pod of the worker image on
  the node, N pods one after the other, polled every 20 ms through the API.
* ``demo``: ``make demo`` as the README runs it (wall time of the command),
  and what it measured itself (``.devcluster/demo/timings.json``): from
  ``kubectl apply`` to the first item claimed by a worker pod.

Needs root (the node). Run with ``make bench-node`` or
``.venv/bin/python bench/node_bench.py [--skip-cold] [--pods 10]``.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from analysis_devcluster import binaries, cluster, images

RESULTS = Path(__file__).resolve().parent / "results" / "node.json"
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def timed_build_all() -> dict[str, Any]:
    started = time.monotonic()
    built = images.build_all()
    return {
        "seconds": round(time.monotonic() - started, 1),
        "each_seconds": {b.name: round(b.seconds, 1) for b in built},
        "cached": [b.name for b in built if b.cached],
    }


def image_builds(skip_cold: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    saved = {key: os.environ.get(key) for key in ("CONTAINERS_STORAGE_CONF", "TMPDIR", images.CACHE_ENV)}
    with tempfile.TemporaryDirectory(prefix="bench-images-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        if not skip_cold:
            conf = root / "storage.conf"
            conf.write_text(
                f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
            )
            (root / "tmp").mkdir()
            os.environ.update(
                {
                    "CONTAINERS_STORAGE_CONF": str(conf),
                    "TMPDIR": str(root / "tmp"),
                    images.CACHE_ENV: str(root / "archives"),
                }
            )
        try:
            if not skip_cold:
                results["cold"] = timed_build_all()
            # A change of the project's source: a new digest, so a real rebuild on the cached layers.
            source = binaries.repo_root() / "worker-image/src/analysis_worker/__init__.py"
            original = source.read_text()
            try:
                source.write_text(original + f"\n# bench {time.time()}\n")
                results["warm_source_change"] = timed_build_all()
            finally:
                source.write_text(original)
            results["warm_after_revert"] = timed_build_all()
            results["cached"] = timed_build_all()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            tempfile.tempdir = None  # it cached the cold run's TMPDIR
            if not skip_cold:
                subprocess.run(["buildah", "rm", "--all"], capture_output=True, check=False)
                for mount in sorted((root / "storage").rglob("merged"), reverse=True):
                    subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
                shutil.rmtree(root, ignore_errors=True)
    return results


def pod_start(dev: cluster.DevCluster, count: int) -> dict[str, Any]:
    dev.kubectl("create", "namespace", "bench")
    dev.kubectl("wait", "--for", "create", "--timeout=30s", "-n", "bench", "serviceaccount/default", timeout=45)
    seconds = []
    for index in range(count):
        name = f"pod-{index}"
        container = {
            "name": "main",
            "image": images.WORKER.name(),
            "securityContext": RESTRICTED,
            "command": ["python3", "-c", "import time; time.sleep(600)"],
        }
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "bench"},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [container]},
        }
        started = time.monotonic()
        dev.kubectl("create", "-f", "-", input=yaml.safe_dump(manifest))
        while True:
            phase = dev.kubectl("get", "pod", name, "-n", "bench", "-o", "jsonpath={.status.phase}").stdout
            if phase == "Running":
                break
            if time.monotonic() - started > 60:
                raise RuntimeError(f"{name} not Running within 60 s (phase {phase!r})")
            time.sleep(0.02)
        seconds.append(round(time.monotonic() - started, 3))
        dev.kubectl("delete", "pod", name, "-n", "bench", "--wait=false")
    return {
        "pods": count,
        "seconds": seconds,
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "note": "includes one `kubectl create` (about 0.1 s) and the 20 ms polling of `kubectl get`",
    }


def node_start(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        started = time.monotonic()
        dev = cluster.DevCluster(Path(tmp) / "state", node=True).start()
        ready = round(time.monotonic() - started, 2)
        try:
            pods = pod_start(dev, count)
        finally:
            stop_started = time.monotonic()
            dev.stop()
            stopped = round(time.monotonic() - stop_started, 2)
    return {"ready_seconds": ready, "timings": dev.timings, "stop_seconds": stopped, "pod_start": pods}


def demo() -> dict[str, Any]:
    root = binaries.repo_root()
    started = time.monotonic()
    subprocess.run(["make", "demo"], cwd=root, check=True, capture_output=True, timeout=900)
    wall = round(time.monotonic() - started, 1)
    measured = json.loads((root / ".devcluster" / "demo" / "timings.json").read_text())
    return {"make_demo_seconds": wall, **measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--skip-cold", action="store_true", help="no cold image build (it takes minutes)")
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    builds = image_builds(args.skip_cold)
    node = node_start(args.pods)
    demo_run = demo()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    result = {
        "benchmark": "the real node: image builds (cold, after a source change, cached), node start, pod start",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "images": builds,
        "node": node,
        "demo": demo_run,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    summary = {name: build["seconds"] for name, build in builds.items()}
    print(
        json.dumps(
            {
                "images_seconds": summary,
                "node_ready_seconds": node["ready_seconds"],
                "pod_start_median_seconds": node["pod_start"]["median"],
                "demo": demo_run,
            }
        )
    )


if __name__ == "__main__":
    main()
