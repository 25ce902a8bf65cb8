"""Benchmark: batches at scale on the real node, with the offline provider.

Writes ``bench/results/scale.json``. One dev cluster with its node (``maxPods``
raised to ``--max-pods``), the operator as a process on this host logging in
as a ServiceAccount (so the apiserver's audit log counts its requests), and
the install's results store (SeaweedFS) as the e2e tier has it. Scenarios
(``--scenario``, each may be given more than once, sizes from the options):

* ``one``: one batch of ``--items`` (10,000) items from a ConfigMap
  (``itemsFrom``), one stage, ``--latency-ms`` (200) per call, concurrency
  ``--concurrency`` (200). The ideal makespan is items x latency /
  concurrency (10 s); reported: from the first claim to the last success
  (``makespan_s``, its ``ratio``, goal <= 1.2), from ``kubectl apply`` to
  the ``Complete`` condition, the operator's peak RSS, its requests to the
  apiserver per second, Redis's used memory at the end and the batch's keys
  (``MEMORY USAGE``).
* ``many``: ``--batches`` (100) batches of ``--batch-items`` (1,000) items
  applied at once, concurrency ``--batch-concurrency`` (10) each (ideal 20 s):
  time to all Complete over the ideal, the operator's peak RSS (goal
  < 250 MB), status writes per batch per minute (goal <= 30, from the audit
  log), and starvation: the slowest batch's completion over the fastest's.
* ``deep``: one 5-stage batch of ``--deep-items`` (2,000) items with a
  fan-out (3 children each) and a judge loop: Redis's used memory before,
  at its peak and after completion, and the batch's own keys (``MEMORY
  USAGE``, sampled every 0.5 s) per ended item, at the peak, after, and
  after less the answers the items ended with (the goal: <= 1 KB).

* ``batchmode``: provider batch APIs. One batch of ``--items`` (10,000)
  items from a ConfigMap, one stage in ``mode: Batch`` on the stand-in's
  Anthropic batch API (``maxItems`` ``--provider-batch-items``, 2,500), whose
  batches take ``--turnaround-s`` (30) from submission to results: the time
  from ``kubectl apply`` to ``Complete`` against that simulated processing
  time, and the provider batches made. Then examples/stock-research.yaml
  as it is and with its analyze and review stages in ``mode: Batch``
  (offline provider, simulated batches of 5 s): each run's apply to
  Complete and ``status.usage.costUSD``, and those two stages' cost.

Needs root (the node) and the node images. Run
``.venv/bin/python bench/scale_batches.py --scenario one --scenario deep``;
``--items 1000 --items 3000`` (repeatable sizes) finds where a curve bends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

import analysis_core
from analysis_core import keys, queue, wire
from analysis_devcluster import cluster, node, processes, s3server, standin
from analysis_worker import consumer

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "scale.json"
BIN = Path(sys.executable).parent
MB = 1_000_000
IDENTITY_NS, IDENTITY = "bench-scale", "analysis-operator"
USER = f"system:serviceaccount:{IDENTITY_NS}:{IDENTITY}"


# ---------------------------------------------------------------- the operator


class Operator:
    def __init__(self, dev: cluster.DevCluster, store: s3server.SeaweedFS, workdir: Path) -> None:
        self.dev = dev
        self.log = workdir / "operator.log"
        dev.kubectl("create", "namespace", IDENTITY_NS)
        dev.kubectl("-n", IDENTITY_NS, "create", "serviceaccount", IDENTITY)
        dev.kubectl(
            "create", "clusterrolebinding", "bench-scale-operator", "--clusterrole=cluster-admin",
            f"--serviceaccount={IDENTITY_NS}:{IDENTITY}",
        )  # fmt: skip
        kubeconfig = dev.kubeconfig_as(IDENTITY_NS, IDENTITY, workdir / "operator.kubeconfig", "12h")
        env = {
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "KUBECONFIG": str(kubeconfig),
            "ANALYSIS_OPERATOR_REDIS_URL": dev.redis_url,
            "ANALYSIS_OPERATOR_WORKER_IMAGE": f"analysis-worker:{analysis_core.__version__}",
            "ANALYSIS_OPERATOR_METRICS_PORT": "0",
            **store.operator_env("results", "bench"),
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(BIN / "analysis-operator"), "--all-namespaces"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.peak_rss = 0

    def sample(self) -> None:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)

    def hwm(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def audited(dev: cluster.DevCluster, since: float) -> list[dict[str, Any]]:
    """The operator's requests since ``since`` (epoch seconds), from the apiserver's audit log."""
    out = []
    for event in dev.audited(USER):
        stamp = event.get("requestReceivedTimestamp") or event.get("stageTimestamp") or ""
        try:
            when = time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        except ValueError:
            continue
        if when >= since and event.get("stage") == "ResponseComplete":
            out.append(event)
    return out


# ---------------------------------------------------------------- helpers


def offline(latency_ms: int, **more: Any) -> dict[str, Any]:
    return {"type": "offline", "offline": {"seed": 7, "latencyMilliseconds": latency_ms, **more}}


def namespace(dev: cluster.DevCluster) -> str:
    name = f"scale-{uuid.uuid4().hex[:6]}"
    dev.kubectl("create", "namespace", name)
    dev.kubectl("wait", "--for", "create", "--timeout=30s", "-n", name, "serviceaccount/default", timeout=45)
    return name


def apply(dev: cluster.DevCluster, ns: str, manifest: dict[str, Any]) -> str:
    dev.kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump(manifest))
    got = dev.kubectl("-n", ns, "get", "analysisbatch", manifest["metadata"]["name"], "-o", "json")
    return str(json.loads(got.stdout)["metadata"]["uid"])


def conditions(dev: cluster.DevCluster, ns: str) -> dict[str, dict[str, str]]:
    """Batch name -> condition type -> status, for every batch of ``ns`` (one list call)."""
    listed = json.loads(dev.kubectl("-n", ns, "get", "analysisbatches", "-o", "json").stdout)["items"]
    return {
        b["metadata"]["name"]: {c["type"]: c["status"] for c in (b.get("status") or {}).get("conditions") or []}
        for b in listed
    }


async def redis_memory(client: queue.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def keys_memory(client: queue.Redis, uid: str) -> int:
    total = 0
    async for key in client.scan_iter(match=keys.BatchKeys(uid).pattern, count=1000):
        total += int(await client.memory_usage(key, samples=0) or 0)
    return total


async def first_claim_ms(client: queue.Redis, uid: str) -> int | None:
    """The earliest claim among the batch's ended items (their outcomes keep OUTCOME_CLAIMED_MS)."""
    finals = await client.lrange(keys.BatchKeys(uid).finals, 0, 200)
    said = await client.hmget(keys.BatchKeys(uid).outcomes, finals) if finals else []
    stamps = [json.loads(s).get(wire.OUTCOME_CLAIMED_MS) for s in said if s and s != wire.OUTCOME_SPENT]
    stamps = [int(s) for s in stamps if s]
    return min(stamps) if stamps else None


# ---------------------------------------------------------------- scenarios


def one(dev: cluster.DevCluster, op: Operator, items: int, args: argparse.Namespace) -> dict[str, Any]:
    ns = namespace(dev)
    names = "\n".join(f"T{i:06d}" for i in range(items)) + "\n"
    dev.kubectl("-n", ns, "create", "configmap", "items", "--from-file=items.txt=/dev/stdin", input=names)
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": "big"},
        "spec": {
            "itemsFrom": {"configMapKeyRef": {"name": "items", "key": "items.txt"}},
            "providers": {"p": offline(args.latency_ms)},
            "stages": [{"name": "only", "provider": "p", "prompt": "{{ item }}", "concurrency": args.concurrency}],
        },
    }
    loop = asyncio.new_event_loop()
    client = queue.connect(dev.redis_url)
    try:
        memory_before = loop.run_until_complete(redis_memory(client))
        since = time.time()
        applied = time.monotonic()
        uid = apply(dev, ns, manifest)
        done_at = None
        next_print = 0.0
        while True:
            op.sample()
            counts = loop.run_until_complete(consumer.stage_counts(client, uid, "only"))
            done = counts.counters.get(wire.COUNT_SUCCEEDED, 0)
            now = time.monotonic()
            if done >= items and done_at is None:
                done_at, done_wall = now, time.time()
            if done_at is not None and conditions(dev, ns).get("big", {}).get("Complete") == "True":
                complete_at = now
                break
            if now - applied > args.timeout:
                raise SystemExit(f"one: {done}/{items} after {args.timeout} s; operator log {op.log}")
            if now >= next_print:
                next_print = now + 5
                print(f"one {items}: {now - applied:6.1f}s {done}/{items}", file=sys.stderr, flush=True)
            time.sleep(0.05)
        first = loop.run_until_complete(first_claim_ms(client, uid)) or 0
        memory_after = loop.run_until_complete(redis_memory(client))
        batch_keys = loop.run_until_complete(keys_memory(client, uid))
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    requests = audited(dev, since)
    elapsed = max(1.0, complete_at - applied)
    ideal = items * args.latency_ms / 1000 / args.concurrency
    makespan = done_wall - first / 1000
    dev.kubectl("delete", "namespace", ns, "--wait=false")
    return {
        "items": items,
        "ideal_s": ideal,
        "makespan_s": round(makespan, 2),
        "ratio": round(makespan / ideal, 3),
        "apply_to_complete_s": round(complete_at - applied, 2),
        "operator_peak_rss_mb": round(op.peak_rss / MB, 1),
        "apiserver_requests": len(requests),
        "apiserver_requests_per_s": round(len(requests) / elapsed, 2),
        "requests_by_verb": dict(Counter(f"{e['verb']} {e['objectRef'].get('resource')}" for e in requests)),
        "redis_used_memory_before_mb": round(memory_before / MB, 2),
        "redis_used_memory_after_mb": round(memory_after / MB, 2),
        "batch_keys_bytes": batch_keys,
        "batch_keys_bytes_per_item": round(batch_keys / items, 1),
    }


def _until_complete(dev: cluster.DevCluster, ns: str, name: str, timeout_s: float, what: str) -> float:
    """Seconds from now until ``name`` is Complete (polled every 0.25 s)."""
    started = time.monotonic()
    while conditions(dev, ns).get(name, {}).get("Complete") != "True":
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"{what}: not Complete after {timeout_s} s")
        time.sleep(0.25)
    return time.monotonic() - started


def batchmode(dev: cluster.DevCluster, op: Operator, items: int, args: argparse.Namespace) -> dict[str, Any]:
    ns = namespace(dev)
    names = "\n".join(f"T{i:06d}" for i in range(items)) + "\n"
    dev.kubectl("-n", ns, "create", "configmap", "items", "--from-file=items.txt=/dev/stdin", input=names)
    key = "sk-bench-" + uuid.uuid4().hex[:12]
    dev.kubectl("-n", ns, "create", "secret", "generic", "llm-keys", f"--from-literal=anthropic={key}")
    out: dict[str, Any] = {"items": items, "provider_batch_items": args.provider_batch_items}
    with standin.StandIn(api_key=key, host=dev.host) as server:
        server.batch_turnaround(args.turnaround_s)
        provider = {
            "type": "anthropic",
            "model": "claude-sonnet-4-5",
            "baseURL": server.anthropic_base_url,
            "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"},
        }
        stage = {
            "name": "only",
            "provider": "p",
            "prompt": "Summarize {{ item }}",
            "mode": "Batch",
            "batch": {"maxItems": args.provider_batch_items, "maxWaitSeconds": 10},
        }
        manifest = {
            "apiVersion": "analysis.dev/v1alpha1",
            "kind": "AnalysisBatch",
            "metadata": {"name": "batched"},
            "spec": {
                "itemsFrom": {"configMapKeyRef": {"name": "items", "key": "items.txt"}},
                "providers": {"p": provider},
                "stages": [stage],
            },
        }
        applied, applied_at = time.monotonic(), time.time()
        uid = apply(dev, ns, manifest)
        elapsed = (time.monotonic() - applied) + _until_complete(dev, ns, "batched", args.timeout, "batchmode")
        complete_at = time.time()
        submitted = server.batch_submissions()
        timeline = _timeline(server.batch_timeline(), applied_at, complete_at)
        loop = asyncio.new_event_loop()
        client = queue.connect(dev.redis_url)
        try:
            counts = loop.run_until_complete(consumer.stage_counts(client, uid, "only"))
        finally:
            loop.run_until_complete(client.aclose())
            loop.close()
    made = counts.counters.get(wire.COUNT_PROVIDER_BATCHES, 0)
    # The provider batches go one after another's submission, in parallel: the floor is one turnaround.
    out.update(
        {
            "turnaround_s": args.turnaround_s,
            "apply_to_complete_s": round(elapsed, 2),
            "over_turnaround_s": round(elapsed - args.turnaround_s, 2),
            "provider_batches": made,
            "provider_batches_floor": -(-items // args.provider_batch_items),
            "requests_submitted": sum(submitted.values()),
            "custom_ids_submitted_twice": sum(1 for n in submitted.values() if n > 1),
            "succeeded": counts.counters.get(wire.COUNT_SUCCEEDED, 0),
            "cost_usd": counts.counters.get(wire.USAGE_COST_NUSD, 0) / 1e9,
            "timeline_s": timeline,
        }
    )
    out["stock_research"] = {mode: _example(dev, mode, args) for mode in ("Realtime", "Batch")}
    dev.kubectl("delete", "namespace", ns, "--wait=false")
    return out


def _timeline(made: list[dict[str, Any]], applied_at: float, complete_at: float) -> dict[str, float]:
    """Where the time from apply to Complete went, from the stand-in's record of each provider batch: until the
    first was submitted (pod start, seeding, claiming, rendering, the upload), between the first and the last
    submission, the turnaround, from the last batch being due to its being answered (the worker's next look, and
    the stand-in answering every request then), and from that to Complete (recording the results, the
    operator's next look, the export)."""
    created = sorted(b["created"] for b in made)
    ended = [b for b in made if b["ended"] is not None]
    last = max(ended, key=lambda b: b["ended"])
    parts = {
        "apply_to_first_submitted": created[0] - applied_at,
        "first_to_last_submitted": created[-1] - created[0],
        "turnaround": last["ready_at"] - last["created"],
        "due_to_answered": last["ended"] - last["ready_at"],
        "answered_to_complete": complete_at - last["ended"],
    }
    return {name: round(value, 2) for name, value in parts.items()}


def _example(dev: cluster.DevCluster, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """examples/stock-research.yaml, its analyze and review stages in ``mode``: apply to Complete, and its cost."""
    ns = namespace(dev)
    manifest = yaml.safe_load((REPO / "examples" / "stock-research.yaml").read_text(encoding="utf-8"))
    for stage in manifest["spec"]["stages"]:
        if stage["name"] in ("analyze", "review"):
            stage["mode"] = mode
    applied = time.monotonic()
    uid = apply(dev, ns, manifest)
    elapsed = (time.monotonic() - applied) + _until_complete(dev, ns, "stock-research", args.timeout, mode)
    got = json.loads(dev.kubectl("-n", ns, "get", "analysisbatch", "stock-research", "-o", "json").stdout)
    loop = asyncio.new_event_loop()
    client = queue.connect(dev.redis_url)
    try:
        stages = {
            name: loop.run_until_complete(consumer.stage_counts(client, uid, name)).counters.get(
                wire.USAGE_COST_NUSD, 0
            )
            for name in ("analyze", "review")
        }
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    dev.kubectl("delete", "namespace", ns, "--wait=false")
    return {
        "apply_to_complete_s": round(elapsed, 2),
        "cost_usd": got["status"]["usage"]["costUSD"],
        "analyze_and_review_cost_usd": round(sum(stages.values()) / 1e9, 6),
        "tokens": got["status"]["usage"]["totalTokens"],
    }


def many(dev: cluster.DevCluster, op: Operator, batches: int, args: argparse.Namespace) -> dict[str, Any]:
    ns = namespace(dev)
    per = args.batch_items
    since = time.time()
    applied = time.monotonic()
    docs = [
        {
            "apiVersion": "analysis.dev/v1alpha1",
            "kind": "AnalysisBatch",
            "metadata": {"name": f"b{n:03d}"},
            "spec": {
                "items": [f"I{i:05d}" for i in range(per)],
                "providers": {"p": offline(args.latency_ms)},
                "stages": [
                    {"name": "only", "provider": "p", "prompt": "{{ item }}", "concurrency": args.batch_concurrency}
                ],
            },
        }
        for n in range(batches)
    ]
    dev.kubectl("-n", ns, "apply", "-f", "-", input=yaml.safe_dump_all(docs), timeout=300)
    finished: dict[str, float] = {}
    next_print = 0.0
    while len(finished) < batches:
        op.sample()
        now = time.monotonic()
        for name, conds in conditions(dev, ns).items():
            if conds.get("Complete") == "True" and name not in finished:
                finished[name] = now - applied
        if now - applied > args.timeout:
            raise SystemExit(f"many: {len(finished)}/{batches} complete after {args.timeout} s; log {op.log}")
        if now >= next_print:
            next_print = now + 10
            print(f"many {batches}: {now - applied:6.1f}s {len(finished)} complete", file=sys.stderr, flush=True)
        time.sleep(1.0)
    elapsed = max(finished.values())
    requests = audited(dev, since)
    status_writes = Counter(
        e["objectRef"].get("name")
        for e in requests
        if e["verb"] == "patch" and e["objectRef"].get("subresource") == "status"
        and e["objectRef"].get("resource") == "analysisbatches"
    )  # fmt: skip
    per_minute = [n / (finished[name] / 60) for name, n in status_writes.items() if name in finished]
    ideal = per * args.latency_ms / 1000 / args.batch_concurrency
    dev.kubectl("delete", "namespace", ns, "--wait=false")
    return {
        "batches": batches,
        "items_per_batch": per,
        "ideal_s": ideal,
        "all_complete_s": round(elapsed, 2),
        "ratio": round(elapsed / ideal, 3),
        "operator_peak_rss_mb": round(op.peak_rss / MB, 1),
        "apiserver_requests_per_s": round(len(requests) / elapsed, 2),
        "status_writes_per_batch_per_minute": {
            "median": round(statistics.median(per_minute), 2) if per_minute else None,
            "max": round(max(per_minute), 2) if per_minute else None,
        },
        "completion_s": {"min": round(min(finished.values()), 2), "max": round(elapsed, 2)},
        "starvation_max_over_min": round(elapsed / max(0.001, min(finished.values())), 3),
    }


def deep(dev: cluster.DevCluster, op: Operator, items: int, args: argparse.Namespace) -> dict[str, Any]:
    ns = namespace(dev)
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": "deep"},
        "spec": {
            "items": [f"S{i:05d}" for i in range(items)],
            "providers": {"p": offline(0, rejectionRate=0.3)},
            "stages": [
                {
                    "name": "rank",
                    "provider": "p",
                    "prompt": "Rank stocks in {{ item }}",
                    "output": "json",
                    "fanOut": {"path": "$.stocks", "key": "ticker", "sortBy": "score", "max": 3},
                    "concurrency": 50,
                },
                {"name": "analyze", "provider": "p", "prompt": "Analyze {{ item }}: {{ input }} {{ feedback }}",
                 "concurrency": 50},
                {"name": "review", "type": "judge", "provider": "p", "reviews": "analyze", "maxRejections": 2,
                 "onExhausted": "AcceptLast", "concurrency": 50},
                {"name": "summarize", "provider": "p", "prompt": "Summarize {{ input }}", "concurrency": 50},
                {"name": "report", "provider": "p", "prompt": "Report on {{ input }}", "concurrency": 50},
            ],
        },
    }  # fmt: skip
    loop = asyncio.new_event_loop()
    client = queue.connect(dev.redis_url)
    try:
        before = loop.run_until_complete(redis_memory(client))
        applied = time.monotonic()
        uid = apply(dev, ns, manifest)
        peak = before
        peak_keys = 0
        next_print = 0.0
        while conditions(dev, ns).get("deep", {}).get("Complete") != "True":
            op.sample()
            peak = max(peak, loop.run_until_complete(redis_memory(client)))
            peak_keys = max(peak_keys, loop.run_until_complete(keys_memory(client, uid)))
            now = time.monotonic()
            if now - applied > args.timeout:
                raise SystemExit(f"deep: not Complete after {args.timeout} s; log {op.log}")
            if now >= next_print:
                next_print = now + 10
                ended = loop.run_until_complete(client.llen(keys.BatchKeys(uid).finals))
                print(f"deep {items}: {now - applied:6.1f}s {ended} ended", file=sys.stderr, flush=True)
            time.sleep(0.5)
        after = loop.run_until_complete(redis_memory(client))
        ended = loop.run_until_complete(client.llen(keys.BatchKeys(uid).finals))
        batch_keys = loop.run_until_complete(keys_memory(client, uid))
        # What the results hash holds at the end: the answers the items ended with (everything else was spent).
        answers = sum(len(str(v).encode()) for v in loop.run_until_complete(client.hvals(keys.BatchKeys(uid).results)))
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
    dev.kubectl("delete", "namespace", ns, "--wait=false")
    return {
        "items": items,
        "ended_items": ended,
        "apply_to_complete_s": round(time.monotonic() - applied, 2),
        "redis_used_memory_mb": {
            "before": round(before / MB, 2),
            "peak": round(peak / MB, 2),
            "after": round(after / MB, 2),
        },
        "batch_keys_bytes": {"peak": peak_keys, "after": batch_keys, "answers_after": answers},
        "per_ended_item_bytes": {
            "peak": round(peak_keys / max(1, ended), 1),
            "after": round(batch_keys / max(1, ended), 1),
            "after_beyond_its_answer": round((batch_keys - answers) / max(1, ended), 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=("one", "many", "deep", "batchmode"))
    parser.add_argument("--items", type=int, action="append", help="items of the 'one' batch (repeatable)")
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--batches", type=int, action="append", help="batches at once for 'many' (repeatable)")
    parser.add_argument("--batch-items", type=int, default=1000)
    parser.add_argument("--batch-concurrency", type=int, default=10)
    parser.add_argument("--deep-items", type=int, default=2000)
    parser.add_argument("--provider-batch-items", type=int, default=2500)
    parser.add_argument("--turnaround-s", type=float, default=30)
    parser.add_argument("--max-pods", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    scenarios = args.scenario or ["one", "many", "deep", "batchmode"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ[node.MAX_PODS_ENV] = str(args.max_pods)
    out: dict[str, Any] = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
        ).stdout.strip(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {k: v for k, v in vars(args).items() if k != "scenario"},
    }
    dev = cluster.DevCluster(workdir / "cluster", node=True)
    with dev:
        dev.install_crds(REPO / "crds")
        with s3server.SeaweedFS(workdir / "store", host=dev.host, buckets=("results",)) as store:
            op = Operator(dev, store, workdir)
            try:
                processes.eventually(lambda: op.log.stat().st_size > 0, 60, "the operator's first words")
                if "one" in scenarios:
                    out["one"] = [one(dev, op, n, args) for n in (args.items or [10_000])]
                if "deep" in scenarios:
                    out["deep"] = deep(dev, op, args.deep_items, args)
                if "batchmode" in scenarios:
                    out["batchmode"] = [batchmode(dev, op, n, args) for n in (args.items or [10_000])]
                if "many" in scenarios:
                    out["many"] = [many(dev, op, n, args) for n in (args.batches or [100])]
                out["operator_rss_high_water_mb"] = round(op.hwm() / MB, 1)
            finally:
                op.stop()
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    # A run of some scenarios keeps the others' last figures, and "runs" says which commit made which.
    runs = {**previous.get("runs", {}), " ".join(scenarios): {"commit": out["commit"], "time": out["time"]}}
    merged = {**previous, **out, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
