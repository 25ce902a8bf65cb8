"""Benchmark: pods that carry many calls, on the real node: makespan against the ideal, memory per call in flight.

Writes ``bench/results/pods.json``. One dev cluster with its node, the
operator as a process on this host (as the e2e tests run it, with the
chart's worker memory limit), and the provider stand-in answering every call
after ``--latency-ms`` (500 ms). Each run applies a fresh batch in a fresh
namespace: ``--items`` (2,000) items through one stage at ``--concurrency``
(100), with the operator's default calls per pod (16), so ceil(100 / 16) = 7
worker pods (a Job).

* **Makespan.** The ideal is items x latency / concurrency (10 s), what a
  stage that always has exactly ``concurrency`` calls out would take. Two
  clocks: ``calls_s``, from the first call's arrival at the stand-in to the
  last answer (what the stage's sizing and the stage-wide cap decide), and
  ``apply_to_done_s``, from ``kubectl apply`` to the last item succeeded in
  Redis (adds seeding, the operator's first step, and 7 pods' start on this
  machine; ``apply_to_complete_condition_s`` adds the export and the status
  write). ``ratio`` divides each by the ideal; the goal is <= 1.15 for
  ``calls_s``, over the median of the runs. ``ramp_s`` splits ``calls_s``:
  from the first call to the first moment ``concurrency`` calls were out
  (pods still starting), then ``steady_ratio``, the rest against its ideal. The machine's load average is
  recorded with each run: the cluster, the workers and the stand-in share
  its cores with whatever else runs. The stand-in's peak of requests in flight is recorded too
  (it must be the concurrency, never more).
* **Memory per call in flight.** Every second while the batch runs, each
  running worker pod's memory is read from its cgroup (cgroup v1
  ``memory.stat`` ``total_rss``, the anonymous memory, and
  ``memory.usage_in_bytes``; v2 ``anon`` and ``memory.current``), with the
  items it holds from Redis (the stage's PEL by consumer, the pod's name).
  Per call = the pod's memory / its calls in flight, over the samples of pods
  holding their full 16. The goal is <= 5 MB (10^6 bytes).
* **Worker CPU.** The CPU time of the worker pods (cgroup ``cpuacct``), per
  item: with the cluster, the stand-in and anything else on the same cores,
  it says how much of the makespan the workers' own work can explain.

Needs root (the node) and the node images (``make node-images``). Run
``.venv/bin/python bench/pods_bench.py [--runs 2]``.
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

import analysis_core
from analysis_core import queue, wire
from analysis_core.api import v1alpha1
from analysis_devcluster import cluster, node, processes, standin
from analysis_operator import producer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "pods.json"
BIN = Path(sys.executable).parent
API_KEY = "sk-bench-pods"
MB = 1_000_000


def start_operator(dev: cluster.DevCluster, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                str(BIN / "analysis-operator"),
                "--all-namespaces",
                f"--liveness=http://127.0.0.1:{processes.free_port()}/healthz",
            ],
            env={
                # This checkout's operator, also when it runs against another checkout's virtualenv.
                **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
                "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}",
                "HOME": os.environ.get("HOME", "/tmp"),
                "KUBECONFIG": str(dev.kubeconfig),
                "ANALYSIS_OPERATOR_REDIS_URL": dev.redis_url,
                "ANALYSIS_OPERATOR_WORKER_IMAGE": f"analysis-worker:{analysis_core.__version__}",
                "ANALYSIS_OPERATOR_METRICS_PORT": str(processes.free_port()),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def pod_cgroup(uid: str, hierarchy: str = "memory") -> Path | None:
    """The pod's cgroup directory (the kubelet's cgroupfs driver names it ``pod<uid>``) in ``hierarchy`` (v1)."""
    root = node.CGROUP_FS / (hierarchy if node.cgroup_version() == 1 else "") / node.CGROUP_ROOT
    for found in root.rglob(f"pod{uid}"):
        if found.is_dir():
            return found
    return None


def pod_memory(uid: str) -> dict[str, int] | None:
    """``rss`` (anonymous memory) and ``usage`` (all charged memory, page cache included) of the pod, in bytes."""
    where = pod_cgroup(uid)
    if where is None:
        return None
    try:
        stat = dict(line.split() for line in (where / "memory.stat").read_text().splitlines())
        if node.cgroup_version() == 1:
            return {"rss": int(stat["total_rss"]), "usage": int((where / "memory.usage_in_bytes").read_text())}
        return {"rss": int(stat["anon"]), "usage": int((where / "memory.current").read_text())}
    except (OSError, KeyError, ValueError):
        return None


def pod_cpu_s(uid: str) -> float | None:
    """CPU time the pod has used so far, in seconds (cgroup v1 ``cpuacct.usage``, v2 ``cpu.stat`` usage_usec)."""
    where = pod_cgroup(uid, "cpuacct")
    if where is None:
        return None
    try:
        if node.cgroup_version() == 1:
            return int((where / "cpuacct.usage").read_text()) / 1e9
        stat = dict(line.split() for line in (where / "cpu.stat").read_text().splitlines())
        return int(stat["usage_usec"]) / 1e6
    except (OSError, KeyError, ValueError):
        return None


def ramp(arrivals: list[float], latency_s: float, concurrency: int) -> dict[str, Any]:
    """When the stage first had ``concurrency`` calls out, and how it did from then on.

    A call is out from its arrival at the stand-in for ``latency_s``: the
    calls out at an arrival are the arrivals in the ``latency_s`` before it.
    Before that moment pods are still starting (the ramp); after it, the
    stage's own pace shows: ``steady_ratio`` is the time from then to the
    last answer over the ideal time of the calls made from then on.
    """
    times = sorted(arrivals)
    start = 0
    for index, t in enumerate(times):
        while times[start] <= t - latency_s:
            start += 1
        if index - start + 1 >= concurrency:
            full_at, after = t, len(times) - (index - concurrency + 1)
            span_s = times[-1] + latency_s - times[index - concurrency + 1]
            ideal_s = after * latency_s / concurrency
            return {
                "ramp_s": round(full_at - times[0], 2),
                "steady_calls": after,
                "steady_s": round(span_s, 2),
                "steady_ratio": round(span_s / ideal_s, 3),
            }
    return {"ramp_s": None}


def kubectl_json(dev: cluster.DevCluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(dev.kubectl(*args, "-o", "json").stdout))


async def stage_state(client: queue.Redis, uid: str) -> tuple[int, dict[str, int]]:
    """Items succeeded so far, and the items each worker pod holds (the stage's PEL by consumer)."""
    snapshot = await producer.snapshot(client, uid, ["analyze"])
    return snapshot.stages["analyze"].counters.get(wire.COUNT_SUCCEEDED, 0), snapshot.held.get("analyze", {})


def one_run(dev: cluster.DevCluster, server: standin.StandIn, args: argparse.Namespace) -> dict[str, Any]:
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    dev.kubectl("create", "namespace", namespace)
    dev.kubectl("wait", "--for", "create", "--timeout=30s", "-n", namespace, "serviceaccount/default", timeout=45)
    dev.kubectl("-n", namespace, "create", "secret", "generic", "llm-keys", f"--from-literal=openai={API_KEY}")
    server.reset()  # forgets the plan too
    server.set_plan([{"kind": "ok", "delay_s": args.latency_ms / 1000, "times": 10**7}])
    items = [f"I{i:05d}" for i in range(args.items)]
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": "makespan"},
        "spec": server.batch_spec("openai", items, concurrency=args.concurrency),
    }
    load_before = os.getloadavg()
    applied = time.monotonic()
    dev.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(manifest))
    uid = kubectl_json(dev, "-n", namespace, "get", "analysisbatch", "makespan")["metadata"]["uid"]
    samples: list[dict[str, Any]] = []
    cpu: dict[str, float] = {}  # pod -> the most CPU seconds seen (read every second; its last second may be missed)
    most_pods = 0
    pods: list[dict[str, Any]] = []
    next_listing = next_sample = 0.0
    # Light polling, since the machine is the cluster: Redis for progress and who holds what (one connection),
    # the API for the pods every few seconds, the cgroups every second.
    loop = asyncio.new_event_loop()
    client = queue.connect(dev.redis_url)
    try:
        while True:
            done, held = loop.run_until_complete(stage_state(client, uid))
            now = time.monotonic()
            if done == args.items:
                finished = now
                break
            if now - applied > args.timeout:
                listed = dev.kubectl("-n", namespace, "get", "pods,jobs", "-o", "wide", check=False).stdout
                raise SystemExit(f"{done}/{args.items} done after {args.timeout} s\n{listed}")
            if now >= next_listing:
                next_listing = now + 3.0
                listed_pods = kubectl_json(dev, "-n", namespace, "get", "pods", "-l", f"analysis.dev/batch-uid={uid}")
                pods = [p for p in listed_pods["items"] if p["status"].get("phase") == "Running"]
                most_pods = max(most_pods, len(pods))
                print(f"{now - applied:6.1f}s {done}/{args.items} done, {len(pods)} pods", file=sys.stderr, flush=True)
            if now >= next_sample:
                next_sample = now + 1.0
                for pod in pods:
                    cpu_s = pod_cpu_s(pod["metadata"]["uid"])
                    if cpu_s is not None:
                        cpu[pod["metadata"]["name"]] = max(cpu.get(pod["metadata"]["name"], 0.0), cpu_s)
                    memory = pod_memory(pod["metadata"]["uid"])
                    if memory is not None:
                        name = pod["metadata"]["name"]
                        samples.append({"pod": name, "held": held.get(name, 0), **memory})
            time.sleep(0.1)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    load_after = os.getloadavg()
    dev.kubectl(
        "-n", namespace, "wait", "--for=condition=Complete", "analysisbatch/makespan", "--timeout=120s", timeout=150
    )
    complete = time.monotonic()
    calls = server.requests()
    peak = server.concurrency()["peak"]
    first, last = min(c["time"] for c in calls), max(c["time"] for c in calls)
    latency_s = args.latency_ms / 1000
    ideal_s = args.items * latency_s / args.concurrency
    calls_s = last + latency_s - first
    phases = ramp([c["time"] for c in calls], latency_s, args.concurrency)
    dev.kubectl("delete", "namespace", namespace, "--wait=false")
    return {
        "ideal_s": ideal_s,
        "calls_s": round(calls_s, 2),
        "calls_ratio": round(calls_s / ideal_s, 3),
        **phases,
        "apply_to_done_s": round(finished - applied, 2),
        "apply_to_done_ratio": round((finished - applied) / ideal_s, 3),
        "apply_to_complete_condition_s": round(complete - applied, 2),
        "calls": len(calls),
        "distinct_items_called": len({c["prompt"] for c in calls}),
        "peak_in_flight_at_stand_in": peak,
        "most_running_pods": most_pods,
        "workers_cpu_s": round(sum(cpu.values()), 2),
        "workers_cpu_ms_per_item": round(sum(cpu.values()) * 1000 / args.items, 2),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "memory_samples": samples,
    }


def per_call(samples: list[dict[str, Any]], full: int) -> dict[str, Any]:
    at_full = [s for s in samples if s["held"] == full]
    if not at_full:
        return {"samples": 0}
    rss = [s["rss"] / s["held"] / MB for s in at_full]
    usage = [s["usage"] / s["held"] / MB for s in at_full]
    return {
        "samples": len(at_full),
        "calls_in_flight": full,
        "rss_mb_per_call": {"median": round(statistics.median(rss), 2), "max": round(max(rss), 2)},
        "usage_mb_per_call": {"median": round(statistics.median(usage), 2), "max": round(max(usage), 2)},
        "pod_rss_mb": {"median": round(statistics.median(s["rss"] / MB for s in at_full), 1)},
        "pod_usage_mb": {"median": round(statistics.median(s["usage"] / MB for s in at_full), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--latency-ms", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    calls_per_pod = v1alpha1.DEFAULT_CALLS_PER_POD
    with (
        tempfile.TemporaryDirectory(prefix="bench-pods-") as tmp,
        cluster.DevCluster(Path(tmp) / "dev", node=True) as dev,
    ):
        dev.install_crds(REPO / "crds")
        operator = start_operator(dev, Path(tmp) / "operator.log")
        try:
            # A quota no run reaches: at 0 remaining, workers of a real provider's stage pause for its reset.
            with standin.StandIn(api_key=API_KEY, host=dev.host, advertised_requests=10**9) as server:
                runs = [one_run(dev, server, args) for _ in range(args.runs)]
        finally:
            os.killpg(operator.pid, signal.SIGTERM)
            operator.wait(30)
    samples = [s for run in runs for s in run.pop("memory_samples")]
    makespan = {
        key: round(statistics.median(run[key] for run in runs), 3)
        for key in (
            "calls_s",
            "calls_ratio",
            "ramp_s",
            "steady_ratio",
            "apply_to_done_s",
            "apply_to_done_ratio",
            "peak_in_flight_at_stand_in",
            "workers_cpu_ms_per_item",
        )
    }
    memory = per_call(samples, calls_per_pod)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    result = {
        "commit": commit.stdout.strip(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {
            "items": args.items,
            "concurrency": args.concurrency,
            "latency_ms": args.latency_ms,
            "calls_per_pod": calls_per_pod,
            "pods": -(-args.concurrency // calls_per_pod),
        },
        "runs": runs,
        "makespan_median": makespan,
        "memory_per_call": memory,
        "goals": {
            "makespan_calls_ratio_le_1_15": makespan["calls_ratio"] <= 1.15,
            "memory_rss_per_call_le_5_mb": bool(memory.get("samples")) and memory["rss_mb_per_call"]["median"] <= 5,
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("makespan_median", "memory_per_call", "goals")}, indent=2))


if __name__ == "__main__":
    main()
