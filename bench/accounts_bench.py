"""Benchmark: a shared provider account (AnalysisProvider): fair shares over time, utilization, small behind big.

One run, one private ``redis-server`` (AOF on, as in production), one
stand-in provider server (``analysis_devcluster.standin.StandIn``, in this
process) answering the real ``openai`` SDK of real ``analysis-worker``
processes, and the operator's allocator (``analysis_operator.accounts.Allocator``)
ticking in this process as the AnalysisProvider's daemon runs it (the
``Allocating`` harness of ``tests/integration/test_accounts.py``). Every
batch has one stage calling the account through ``providerRef``; each batch's
worker process has the concurrency given below. Everything is counted at the
stand-in, where each call is recorded on arrival:

1. fairness: three namespaces on one account, wanting 8, 2 and 1 times the
   account's per-tick grant (worker concurrency 16, 4 and 2 at 2 calls per
   tick), all saturated; calls per namespace per window of the account's
   length, with equal weights (goal: each 1/3 within 10 %) and with weights
   2:1:1 (goal: 50/25/25 within 10 %), and the most calls in any window
   against the limit (goal: no window over);
2. utilization of the account's limit in the equal-weights run, in steady
   state (after the first lookback): calls per window / the limit (goal:
   >= 95 %, no window over). The allocator checks its log over the window
   plus the allowance's lifetime (0.3 s) plus the guard (2 % of the window,
   at least 0.25 s), so W / (W + 0.3 s + guard) is the most it can use:
   96.6 % at W = 20 s, 94.8 % at W = 10 s;
3. small behind big: a 2,000-item batch saturating the account, then a
   20-item batch in another namespace (its worker already idle on its queue):
   its time from seeding to its last item done, against its fair-share time,
   20 calls at half the account's rate (goal: <= 2x);
4. ten batches in one namespace against one batch in another: the split
   (goal 50/50 within 10 %).

Prints a table and writes ``bench/results/accounts.json``. Run with ``make
bench-accounts`` (or ``.venv/bin/python bench/accounts_bench.py``; ``--quick``
is a smoke test with short windows, ``--help`` lists the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.exceptions

from analysis_core import env, keys, plan, queue, wire
from analysis_core.api import v1alpha1
from analysis_devcluster import cluster, processes, standin
from analysis_operator import accounts, builders, producer, reconciler
from analysis_worker import consumer
from queue_bench import Processes  # bench/, on sys.path as this script's folder

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "accounts.json"
WORKER = Path(sys.executable).parent / "analysis-worker"
API_KEY = "sk-bench-accounts-5e21c7"
STAGE = "analyze"
POLL_S = 0.01  # how often a completion is polled
RUN_TIMEOUT_S = 120.0
TOLERANCE = 0.10  # a share's goal: within 10 % of its target (relative)
# Far above any run's calls: the stand-in's successes advertise this quota counting down, and a worker told
# "0 remaining" pauses the whole account for the advertised reset.
ADVERTISED_REQUESTS = 10**9


# ---------------------------------------------------------------- the allocator, as the operator's daemon runs it


class Allocating:
    """The operator's allocator for one account, ticking in the background (as ``tests/integration/test_accounts.py``).

    Besides granting, it records at every tick which namespaces had calls waiting: a namespace with none at a
    tick was not saturated then, and the scheduler (work conserving) gave its share to the others.
    """

    def __init__(self, redis: queue.Redis, name: str, spec: v1alpha1.AnalysisProviderSpec) -> None:
        self.name = name
        self.registry = accounts.Registry()
        self.allocator = accounts.Allocator(name, spec, redis, self.registry, probe_s=0.2)
        self._stop = asyncio.Event()
        self.ticks = 0
        self.waiting_ticks: dict[str, int] = {}  # namespace -> ticks at which it had calls waiting
        self.tick_s: list[float] = []  # how long each tick took

    def use(self, batch: Batch) -> None:
        members = reconciler.account_members(builders.Batch(batch.prefix, batch.namespace, batch.uid), batch.plan)
        self.registry.use(batch.uid, members)

    async def run(self) -> None:
        while not self._stop.is_set():
            busy = True
            started = time.perf_counter()
            try:
                busy = await self.allocator.tick()
            except queue.UNAVAILABLE as exc:
                logging.getLogger(__name__).warning(f"a grant failed: {exc}")
            if busy:
                self.tick_s.append(time.perf_counter() - started)
                view = self.registry.views.get(self.name)
                if view is not None:
                    self.ticks += 1
                    for ns in view.namespaces:
                        self.waiting_ticks[ns.name] = self.waiting_ticks.get(ns.name, 0) + (ns.waiting > 0)
            await asyncio.sleep(accounts.TICK_S if busy else accounts.IDLE_TICK_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Allocating]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self._stop.set()
            await task

    def saturation(self) -> dict[str, float]:
        """Per namespace: the fraction of ticks at which it had calls waiting."""
        return {ns: round(n / max(1, self.ticks), 4) for ns, n in sorted(self.waiting_ticks.items())}

    def tick_stats(self) -> dict[str, float]:
        ms = [t * 1000 for t in self.tick_s] or [0.0]
        return {
            "ticks": len(self.tick_s),
            "mean_ms": round(statistics.fmean(ms), 2),
            "max_ms": round(max(ms), 2),
        }


# ---------------------------------------------------------------- the bench


@dataclasses.dataclass(frozen=True)
class Batch:
    uid: str
    plan: plan.Plan
    plan_path: Path
    items: list[str]
    namespace: str
    prefix: str
    concurrency: int


@dataclasses.dataclass(frozen=True)
class Settings:
    rate_per_s: int  # the account's requests per second (its limit over its window)
    fair_window_s: int  # equal weights (also the utilization run)
    fair_windows: int  # windows measured after the first lookback
    weighted_window_s: int  # weights 2:1:1
    weighted_windows: int
    small_window_s: int  # small behind big
    big_items: int
    small_items: int
    many_window_s: int  # ten batches against one
    many_windows: int


def lookback_s(window_s: float) -> float:
    """The span the allocator checks its log over: window + allowance lifetime + guard (as ``Allocator``)."""
    guard = max(window_s * accounts.GUARD_FRACTION, accounts.GUARD_MIN_S)
    return window_s + accounts.ALLOWANCE_LIFETIME_S + guard


@dataclasses.dataclass
class Scenario:
    """One account and its batches; their workers start, all scenarios' at once, before anything is measured."""

    name: str  # also the account's name: every scenario has an account of its own
    window_s: int
    weights: dict[str, int]
    batches: list[Batch]
    spec: v1alpha1.AnalysisProviderSpec
    procs: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)

    @property
    def prefixes(self) -> list[str]:
        return [b.prefix for b in self.batches]


class Bench:
    def __init__(self, settings: Settings, tmp: Path, stand_in: standin.StandIn) -> None:
        self.settings = settings
        self.tmp = tmp
        self.stand_in = stand_in
        self.procs = Processes(tmp)
        self.redis_url = ""
        self._client: queue.Redis | None = None
        self._pods = 0

    @property
    def client(self) -> queue.Redis:
        assert self._client is not None, "start_redis first"
        return self._client

    # ---- redis

    async def start_redis(self) -> str:
        data = self.tmp / "redis"
        data.mkdir()
        port = processes.free_port()
        server = self.procs.spawn(
            cluster.redis_argv(port, data), {"PATH": os.environ.get("PATH", "/usr/bin")}, "redis.log"
        )
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self._client = queue.connect(self.redis_url)
        deadline = time.monotonic() + 10
        while True:
            self.procs.check_alive([server])
            try:
                if await self.client.ping():
                    break
            except (OSError, redis.exceptions.ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 10 s")
            await asyncio.sleep(0.05)
        info = await self.client.info("server")
        return str(info["redis_version"])

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def wait_until(
        self, check: Callable[[], Awaitable[bool]], what: str, procs: list[Any], timeout_s: float = RUN_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not await check():
            self.procs.check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not {what} within {timeout_s:g} s (logs in {self.tmp})")
            await asyncio.sleep(POLL_S)

    # ---- accounts, batches, workers

    def scenario(
        self, name: str, window_s: int, weights: dict[str, int], batches: dict[str, list[tuple[str, int, int]]]
    ) -> Scenario:
        """An account ``name`` limited to ``rate_per_s`` over ``window_s``, and its batches (prefix, items,
        concurrency) per namespace, compiled as the operator compiles them (``providerRef``)."""
        per_window = self.settings.rate_per_s * window_s
        spec = v1alpha1.AnalysisProviderSpec.model_validate(
            {
                "type": "openai",
                "baseURL": self.stand_in.base_url("openai"),
                "limits": {"requestsPerMinute": per_window * 60 // window_s, "windowSeconds": window_s},
                "namespaces": [{"name": ns, "weight": w} for ns, w in weights.items()],
            }
        )
        compiled = []
        for namespace, group in batches.items():
            for prefix, n, concurrency in group:
                items = [f"{prefix}-{i}" for i in range(n)]
                raw = self.stand_in.batch_spec("openai", items, concurrency=concurrency)
                provider = raw["providers"]["llm"]
                del provider["type"], provider["baseURL"]
                provider["providerRef"] = {"name": name}
                parsed = v1alpha1.AnalysisBatchSpec.model_validate(raw)
                uid = str(uuid.uuid4())
                the_plan = plan.compile_plan(uid, parsed, accounts={name: spec})
                path = self.tmp / f"plan-{uid}.json"
                path.write_text(the_plan.dumps(), encoding="utf-8")
                compiled.append(Batch(uid, the_plan, path, items, namespace, prefix, concurrency))
        return Scenario(name, window_s, weights, compiled, spec)

    def start_worker(self, batch: Batch) -> tuple[subprocess.Popen[bytes], str]:
        """One ``analysis-worker`` for the batch's stage with its concurrency, as ``tests/conftest.py`` runs them."""
        pod = f"{batch.prefix}-{self._pods}"
        self._pods += 1
        passed = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
        environ = {
            "PATH": "/usr/bin",
            **passed,
            env.REDIS_URL: self.redis_url,
            env.BATCH_UID: batch.uid,
            env.STAGE: STAGE,
            env.PLAN_PATH: str(batch.plan_path),
            env.POD_NAME: pod,
            env.MODE: "deployment",
            env.LOG_FORMAT: "json",
            env.GRACE_SECONDS: "1",  # calls waiting for the account when stopped are handed back after 1 s
            env.HEALTH_TTL_SECONDS: "2",
            env.METRICS_PORT: "0",
            env.API_KEY: API_KEY,
            env.CONCURRENCY: str(batch.concurrency),
        }
        return self.procs.spawn([str(WORKER)], environ, f"{pod}.log"), pod

    async def start_all(self, scenarios: list[Scenario]) -> float:
        """Every scenario's workers, started together and idle on their empty queues; the seconds that took.

        Started before anything is measured, so no measurement shares the machine with workers importing
        their modules; a scenario's workers are stopped once it is measured.
        """
        started = time.perf_counter()
        names = []
        for scenario in scenarios:
            for batch in scenario.batches:
                process, pod = self.start_worker(batch)
                scenario.procs.append(process)
                names.append(keys.BatchKeys(batch.uid).health(STAGE, pod))
        every = [p for s in scenarios for p in s.procs]

        async def all_beat() -> bool:
            return int(await self.client.exists(*names)) == len(names)

        await self.wait_until(all_beat, "every worker's first heartbeat", every, timeout_s=120)
        return time.perf_counter() - started

    async def seed(self, batch: Batch) -> None:
        await producer.seed(self.client, batch.uid, [STAGE], batch.items)

    def calls(self, prefixes: list[str]) -> list[tuple[float, str]]:
        """(arrival time, prefix) of each call at the stand-in, in order; every one answered ok with the key."""
        out = []
        for call in self.stand_in.requests():
            prefix = call["prompt"].removeprefix("Analyze ").rsplit("-", 1)[0]
            if prefix not in prefixes:
                raise RuntimeError(f"a call of no batch of this run: {call['prompt']!r}")
            if not call["key_matched"] or call["kind"] not in ("ok", None):
                raise RuntimeError(f"a call not answered ok: {call}")
            out.append((float(call["time"]), prefix))
        return out

    async def call_delays(self, batches: list[Batch], window_s: int) -> dict[str, Any]:
        """From spending the allowance to arriving at the stand-in, per call: the outcome's ``called_ms`` (taken just
        after the spend) to the stand-in's arrival time. The allocator's guard (max(2 % of W, 0.25 s)) assumes
        this stays below it; a worker's first call through the SDK is the slow one."""
        called: dict[str, int] = {}
        for b in batches:
            k = keys.BatchKeys(b.uid)
            outcomes = await self.client.hgetall(k.outcomes)
            for item in b.items:
                raw = outcomes.get(k.idem(STAGE, item, 0, 1))
                if raw is not None:
                    called[item] = int(json.loads(raw)[wire.OUTCOME_CALLED_MS])
        delays = [
            call["time"] * 1000 - called[item]
            for call in self.stand_in.requests()
            if (item := call["prompt"].removeprefix("Analyze ")) in called
        ]
        if len(delays) < 2:
            return {"calls": len(delays)}
        return {
            "calls": len(delays),
            "p50_ms": round(statistics.median(delays), 1),
            "p99_ms": round(statistics.quantiles(delays, n=100, method="inclusive")[98], 1),
            "max_ms": round(max(delays), 1),
            # Later than the allowance's lifetime plus the guard: such a call may push a window over the limit.
            "later_than_lifetime_and_guard": sum(1 for d in delays if d > (lookback_s(window_s) - window_s) * 1000),
        }

    async def stop(self, scenario: Scenario) -> None:
        """Stop the scenario's workers (in a thread: the allocator keeps granting, so calls in flight finish)."""
        await asyncio.to_thread(self.procs.stop, scenario.procs)

    # ---- 1, 2 and 4: saturated namespaces

    async def saturated(self, scenario: Scenario, windows: int, *, after_lookback: bool) -> dict[str, Any]:
        """Every batch seeded with more than it can finish, then the allocator started: all begin together.

        Runs from the first call for one lookback (if ``after_lookback``: the steady state starts there) plus
        ``windows`` windows, then stops the workers and the allocator.
        """
        self.stand_in.reset()
        window_s = scenario.window_s
        await asyncio.gather(*(self.seed(b) for b in scenario.batches))
        allocating = Allocating(self.client, scenario.name, scenario.spec)
        for b in scenario.batches:
            allocating.use(b)
        steady_from_s = lookback_s(window_s) if after_lookback else 0.0
        run_s = steady_from_s + windows * window_s
        try:
            async with allocating.running():

                async def first_call() -> bool:
                    return bool(self.stand_in.requests())

                await self.wait_until(first_call, "a first call at the stand-in", scenario.procs, timeout_s=30)
                first = min(c["time"] for c in self.stand_in.requests())
                while time.time() < first + run_s + 0.05:
                    self.procs.check_alive(scenario.procs)
                    await asyncio.sleep(min(0.5, max(0.0, first + run_s + 0.05 - time.time())))
                stop = time.time()
                await self.stop(scenario)
        finally:
            self.procs.stop(scenario.procs)
        calls = self.calls(scenario.prefixes)
        ns_of = {b.prefix: b.namespace for b in scenario.batches}
        per_batch = {p: sum(1 for _, q in calls if q == p) for p in scenario.prefixes}
        exhausted = [b.prefix for b in scenario.batches if per_batch[b.prefix] >= len(b.items)]
        if exhausted:
            raise RuntimeError(f"batches {exhausted} ran out of items: raise --big-items")
        total_w = sum(scenario.weights.values())
        target = {ns: w / total_w for ns, w in scenario.weights.items()}
        limit = self.settings.rate_per_s * window_s
        groups: dict[str, list[dict[str, int | str]]] = {}
        for b in scenario.batches:
            groups.setdefault(b.namespace, []).append({"prefix": b.prefix, "concurrency": b.concurrency})
        result: dict[str, Any] = {
            "window_s": window_s,
            "requests_per_window": limit,
            "lookback_s": round(lookback_s(window_s), 3),
            "weights": scenario.weights,
            "batches": groups,
            "run_s": round(stop - first, 2),
            "calls": len(calls),
            "saturated_ticks": allocating.saturation(),
            "allocator_ticks": allocating.tick_stats(),
            "spend_to_provider": await self.call_delays(scenario.batches, window_s),
            **shares_over_time([(t, ns_of[p]) for t, p in calls], target, first, stop, window_s),
            **windows_at_limit([t for t, _ in calls], limit, window_s),
        }
        if after_lookback:
            result["utilization"] = utilization([t for t, _ in calls], first, stop, limit, window_s)
        return result

    # ---- 3: small behind big

    async def small_behind_big(self, scenario: Scenario) -> dict[str, Any]:
        s = self.settings
        self.stand_in.reset()
        window_s = scenario.window_s
        big, small = scenario.batches
        allocating = Allocating(self.client, scenario.name, scenario.spec)
        allocating.use(big)
        allocating.use(small)
        await self.seed(big)
        try:
            async with allocating.running():

                async def log_full() -> bool:
                    # The big batch alone for more than one lookback: the account's log is full, the steady state.
                    times = [c["time"] for c in self.stand_in.requests()]
                    return bool(times) and time.time() - times[0] > lookback_s(window_s) + 1.0

                await self.wait_until(log_full, "the big batch saturating the account", scenario.procs, timeout_s=60)
                seeded = time.time()
                started = time.perf_counter()
                await self.seed(small)

                async def small_done() -> bool:
                    counts = await consumer.stage_counts(self.client, small.uid, STAGE)
                    return counts.counters.get(wire.COUNT_SUCCEEDED, 0) >= len(small.items)

                await self.wait_until(small_done, "the small batch done", scenario.procs, timeout_s=60)
                done_s = time.perf_counter() - started
                counts = await consumer.stage_counts(self.client, big.uid, STAGE)
                big_done = counts.counters.get(wire.COUNT_SUCCEEDED, 0)
                await self.stop(scenario)
        finally:
            self.procs.stop(scenario.procs)
        calls = self.calls(scenario.prefixes)
        small_times = [t for t, p in calls if p == small.prefix]
        first, last = small_times[0], small_times[-1]
        during = [p for t, p in calls if first <= t <= last]
        rate = s.rate_per_s  # the account's nominal rate, limit / window
        fair_s = len(small.items) / (rate / 2)
        effective_rate = rate * window_s / lookback_s(window_s)
        return {
            "window_s": window_s,
            "requests_per_window": rate * window_s,
            "big_items": len(big.items),
            "small_items": len(small.items),
            "concurrency": {"big": big.concurrency, "small": small.concurrency},
            "big_calls_before_small": sum(1 for t, p in calls if p == big.prefix and t < seeded),
            "big_items_done_when_small_was": big_done,
            "completion_s": round(done_s, 3),
            "fair_share_s": round(fair_s, 3),
            "ratio_to_fair_share": round(done_s / fair_s, 3),
            "fair_share_s_at_effective_rate": round(len(small.items) / (effective_rate / 2), 3),
            "first_call_after_s": round(first - seeded, 3),
            "first_to_last_call_s": round(last - first, 3),
            "small_share_while_it_ran": round(during.count(small.prefix) / len(during), 4),
            "calls_while_it_ran": len(during),
            "saturated_ticks": allocating.saturation(),
            "allocator_ticks": allocating.tick_stats(),
            "spend_to_provider": await self.call_delays(scenario.batches, window_s),
            **windows_at_limit([t for t, _ in calls], rate * window_s, window_s),
        }


# ---------------------------------------------------------------- analysis


def shares_over_time(
    calls: list[tuple[float, str]], target: dict[str, float], first: float, stop: float, window_s: float
) -> dict[str, Any]:
    """Calls per namespace in each whole window [first + kW, first + (k+1)W) before ``stop``, their shares, and the
    largest relative deviation from each namespace's target share, per window and over all of them."""
    count = int((stop - first) // window_s)
    per_window: list[dict[str, Any]] = []
    deviations: list[float] = []
    for k in range(count):
        lo, hi = first + k * window_s, first + (k + 1) * window_s
        n = {ns: sum(1 for t, q in calls if q == ns and lo <= t < hi) for ns in target}
        total = sum(n.values())
        shares = {ns: round(n[ns] / total, 4) if total else 0.0 for ns in target}
        deviation = max(abs(shares[ns] - target[ns]) / target[ns] for ns in target)
        deviations.append(round(deviation, 4))
        per_window.append({"calls": n, "share": shares, "max_deviation": deviations[-1]})
    counted = [(t, q) for t, q in calls if first <= t < first + count * window_s]
    overall_n = {ns: sum(1 for _, q in counted if q == ns) for ns in target}
    total = sum(overall_n.values())
    overall = {ns: round(overall_n[ns] / total, 4) for ns in target}
    overall_dev = max(abs(overall[ns] - target[ns]) / target[ns] for ns in target)
    worst = max(deviations, default=0.0)
    return {
        "target_share": {ns: round(v, 4) for ns, v in target.items()},
        "windows": per_window,
        "overall_calls": overall_n,
        "overall_share": overall,
        "overall_max_deviation": round(overall_dev, 4),
        "worst_window_max_deviation": worst,
        "windows_within_tolerance": sum(1 for d in deviations if d <= TOLERANCE),
    }


def windows_at_limit(times: list[float], limit: int, window_s: float) -> dict[str, Any]:
    """The most calls in any window [t, t + W) (the fullest always starts at a call), and how many such windows
    (one starting at each call) held more than ``limit``."""
    times = sorted(times)
    over = fullest = 0
    end = 0
    for i, t in enumerate(times):
        while end < len(times) and times[end] < t + window_s:
            end += 1
        fullest = max(fullest, end - i)
        over += end - i > limit
    return {"max_calls_in_any_window": fullest, "windows_over_limit": over}


def utilization(times: list[float], first: float, stop: float, limit: int, window_s: float) -> dict[str, Any]:
    """The steady state, from one lookback after the first call until the stop:

    - ``windows``: calls at the stand-in in [t, t + W) for window starts t every 0.1 s from the steady state's
      start until the last window that ends by the stop (min, mean, max), and each over the limit;
    - ``utilization``: the mean of those, calls per window / the limit;
    - ``rate_utilization``: all the calls made in the steady state over what the limit allows in that time (limit / W
      per second); it depends on where the run stops in the allocator's cycle (a burst when the oldest grants
      leave its log, then pacing, then a pause until they leave again), so it may exceed ``theoretical_max``;
    - ``theoretical_max``: W / lookback, the most the allocator's log allows (a grant stays in it for a lookback).
    """
    times = sorted(times)
    steady_from = first + lookback_s(window_s)
    steady = [t for t in times if steady_from <= t < stop]
    counts = []
    start = steady_from
    while start + window_s <= stop:
        counts.append(sum(1 for t in steady if start <= t < start + window_s))
        start += 0.1
    return {
        "steady_from_s": round(lookback_s(window_s), 3),
        "steady_s": round(stop - steady_from, 2),
        "steady_calls": len(steady),
        "utilization": round(statistics.fmean(counts) / limit, 4) if counts else 0.0,
        "rate_utilization": round(len(steady) / ((stop - steady_from) * limit / window_s), 4),
        "windows": {
            "starts": len(counts),
            "min": min(counts, default=0),
            "mean": round(statistics.fmean(counts), 2) if counts else 0,
            "max": max(counts, default=0),
            "min_utilization": round(min(counts, default=0) / limit, 4),
            "mean_utilization": round(statistics.fmean(counts) / limit, 4) if counts else 0,
        },
        "theoretical_max": round(window_s / lookback_s(window_s), 4),
    }


# ---------------------------------------------------------------- main


def three(prefix: str, items: int) -> dict[str, list[tuple[str, int, int]]]:
    """Three namespaces wanting 8, 2 and 1 times the account's per-tick grant (2 calls at 20/s): worker concurrency
    16, 4 and 2, each more than its share."""
    return {
        "team-a": [(f"{prefix}a", items, 16)],
        "team-b": [(f"{prefix}b", items, 4)],
        "team-c": [(f"{prefix}c", items, 2)],
    }


async def measure(settings: Settings, tmp: Path) -> dict[str, Any]:
    s = settings
    with standin.StandIn(api_key=API_KEY, advertised_requests=ADVERTISED_REQUESTS) as stand_in:
        bench = Bench(settings, tmp, stand_in)
        try:
            redis_version = await bench.start_redis()
            load_before = os.getloadavg()
            equal = bench.scenario(
                "equal", s.fair_window_s, {"team-a": 1, "team-b": 1, "team-c": 1}, three("e", s.big_items)
            )
            weighted = bench.scenario(
                "weighted", s.weighted_window_s, {"team-a": 2, "team-b": 1, "team-c": 1}, three("w", s.big_items)
            )
            small = bench.scenario(
                "small-behind-big",
                s.small_window_s,
                {"big": 1, "small": 1},
                {"big": [("big", s.big_items, 16)], "small": [("small", s.small_items, 4)]},
            )
            many = bench.scenario(
                "ten-vs-one",
                s.many_window_s,
                {"many": 1, "one": 1},
                {"many": [(f"m{i}", s.big_items, 2) for i in range(10)], "one": [("o", s.big_items, 4)]},
            )
            started_s = await bench.start_all([equal, weighted, small, many])
            print(f"  {len(bench.procs.running) - 1} workers up and idle in {started_s:.1f} s", flush=True)
            results = {}
            for key, scenario, run in (
                ("equal", equal, lambda sc: bench.saturated(sc, s.fair_windows, after_lookback=True)),
                ("weighted", weighted, lambda sc: bench.saturated(sc, s.weighted_windows, after_lookback=True)),
                ("small_behind_big", small, bench.small_behind_big),
                ("ten_vs_one", many, lambda sc: bench.saturated(sc, s.many_windows, after_lookback=False)),
            ):
                began = time.perf_counter()
                results[key] = await run(scenario)
                line = brief(results[key]) if "overall_share" in results[key] else results[key]
                print(f"  {key} ({time.perf_counter() - began:.0f} s): {json.dumps(line)}", flush=True)
            return {
                "redis": redis_version,
                "workers_started_s": round(started_s, 1),
                "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
                **results,
            }
        finally:
            bench.procs.kill_all()
            await bench.close()


def brief(run: dict[str, Any]) -> dict[str, Any]:
    keys_ = ("overall_share", "worst_window_max_deviation", "max_calls_in_any_window", "windows_over_limit")
    out = {k: run[k] for k in keys_}
    if "utilization" in run:
        out["utilization"] = run["utilization"]["utilization"]
    return out


def summarize(settings: Settings, measured: dict[str, Any]) -> dict[str, Any]:
    equal, weighted, small, many = (
        measured["equal"],
        measured["weighted"],
        measured["small_behind_big"],
        measured["ten_vs_one"],
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False, cwd=ROOT)
    fair_runs = (equal, weighted, many)
    return {
        "benchmark": "provider accounts: fair shares over time, utilization of the limit, small batch behind big",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit + ("-dirty" if dirty.stdout.strip() else ""),
        "cpu_count": os.cpu_count(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "redis_server": measured["redis"],
            "load_average_1m": measured["load_average_1m"],
        },
        "settings": {
            **dataclasses.asdict(settings),
            "provider": "the stand-in (analysis_devcluster.standin) through the openai SDK, one process per batch",
            "allocator": (
                f"analysis_operator.accounts.Allocator in the benchmark's process, ticking every {accounts.TICK_S} s"
            ),
            "redis": "one private redis-server, --appendonly yes --save ''",
        },
        "targets": {
            "share_deviation": f"<= {TOLERANCE:.0%} of the target share, per window and overall",
            "windows_over_limit": "0",
            "utilization": ">= 0.95 (at most W / (W + 0.3 s + max(0.02 W, 0.25 s)) by design)",
            "small_behind_big_ratio": "<= 2",
        },
        "met": {
            "equal_shares_overall": equal["overall_max_deviation"] <= TOLERANCE,
            "equal_shares_every_window": equal["worst_window_max_deviation"] <= TOLERANCE,
            "weighted_shares_overall": weighted["overall_max_deviation"] <= TOLERANCE,
            "weighted_shares_every_window": weighted["worst_window_max_deviation"] <= TOLERANCE,
            "ten_vs_one_shares_overall": many["overall_max_deviation"] <= TOLERANCE,
            "ten_vs_one_shares_every_window": many["worst_window_max_deviation"] <= TOLERANCE,
            "windows_over_limit": all(r["windows_over_limit"] == 0 for r in (*fair_runs, small)),
            "utilization": equal["utilization"]["utilization"] >= 0.95,
            "small_behind_big": small["ratio_to_fair_share"] <= 2,
        },
        "utilization": equal["utilization"]["utilization"],
        "utilization_note": (
            "equal-weights run, from one lookback after the first call to the stop: calls at the stand-in per window"
            " of the account's length (windows starting every 0.1 s, mean) over the limit. The allocator counts a"
            " grant in its log until it is a lookback old (the window + the allowance's lifetime 0.3 s + the guard"
            " max(2 % of W, 0.25 s)), so W / lookback is the most it can use (utilization.theoretical_max)"
        ),
        "windows_over_limit": sum(r["windows_over_limit"] for r in (*fair_runs, small)),
        "small_behind_big_ratio": small["ratio_to_fair_share"],
        "equal": equal,
        "weighted": weighted,
        "small_behind_big": small,
        "ten_vs_one": many,
    }


def table(result: dict[str, Any]) -> str:
    rows = []
    for key, title in (
        ("equal", "equal weights"),
        ("weighted", "weights 2:1:1"),
        ("ten_vs_one", "ten batches (many) vs one (one)"),
    ):
        run = result[key]
        nss = list(run["target_share"])
        rows.append(
            f"{title}: {run['requests_per_window']} requests / {run['window_s']} s,"
            f" batches {', '.join(f'{ns} ' + '+'.join(str(b['concurrency']) for b in bs) for ns, bs in run['batches'].items())}"
            f" (worker concurrency)"
        )
        rows.append(f"  {'window':<10}" + "".join(f"{ns:>16}" for ns in nss) + f"{'max dev':>10}")
        for k, w in enumerate(run["windows"]):
            cells = "".join(f"{w['calls'][ns]:>7} {w['share'][ns]:>7.1%} " for ns in nss)
            rows.append(f"  {k + 1:<10}" + cells + f"{w['max_deviation']:>9.1%}")
        cells = "".join(f"{run['overall_calls'][ns]:>7} {run['overall_share'][ns]:>7.1%} " for ns in nss)
        rows.append(f"  {'overall':<10}" + cells + f"{run['overall_max_deviation']:>9.1%}")
        rows.append(f"  {'target':<10}" + "".join(f"{run['target_share'][ns]:>16.1%}" for ns in nss))
        saturated = ", ".join(f"{ns} {v:.0%}" for ns, v in run["saturated_ticks"].items())
        delay, ticks = run["spend_to_provider"], run["allocator_ticks"]
        rows.append(
            f"  most calls in any {run['window_s']} s window: {run['max_calls_in_any_window']} (limit"
            f" {run['requests_per_window']}), windows over: {run['windows_over_limit']};"
            f" ticks with calls waiting: {saturated}"
        )
        rows.append(
            f"  spend to stand-in: p50 {delay['p50_ms']:.0f} ms, p99 {delay['p99_ms']:.0f} ms, max {delay['max_ms']:.0f} ms"
            f" ({delay['later_than_lifetime_and_guard']} later than lifetime + guard,"
            f" {(run['lookback_s'] - run['window_s']) * 1000:.0f} ms); allocator tick mean {ticks['mean_ms']:.1f} ms,"
            f" max {ticks['max_ms']:.0f} ms"
        )
        if "utilization" in run:
            u = run["utilization"]
            wc = u["windows"]
            rows.append(
                f"  utilization after {u['steady_from_s']:g} s: {u['utilization']:.1%} of the limit per"
                f" {run['window_s']} s window (mean of windows starting every 0.1 s; min {wc['min_utilization']:.1%},"
                f" max {wc['max'] / run['requests_per_window']:.1%}; all steady calls / steady time"
                f" {u['rate_utilization']:.1%}); in the long run at most {u['theoretical_max']:.1%}: the allocator keeps each"
                f" grant in its log for W + 0.3 s + max(2% W, 0.25 s) = {run['lookback_s']:g} s"
            )
        rows.append("")
    small = result["small_behind_big"]
    rows.append(
        f"small behind big: {small['small_items']} items behind {small['big_items']}"
        f" ({small['requests_per_window']} requests / {small['window_s']} s): done in {small['completion_s']:.2f} s"
        f" from seeding, fair share {small['fair_share_s']:.2f} s -> {small['ratio_to_fair_share']:.2f}x;"
        f" first call after {small['first_call_after_s']:.2f} s, share while it ran"
        f" {small['small_share_while_it_ran']:.0%}"
    )
    met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["met"].items())
    rows += ["", f"targets met: {met}"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=20, help="the account's requests per second")
    parser.add_argument("--fair-window", type=int, default=20, help="seconds; equal weights and utilization")
    parser.add_argument("--fair-windows", type=int, default=5, help="windows measured after the first lookback")
    parser.add_argument("--weighted-window", type=int, default=10, help="seconds; weights 2:1:1")
    parser.add_argument("--weighted-windows", type=int, default=4)
    parser.add_argument("--small-window", type=int, default=5, help="seconds; small behind big")
    parser.add_argument("--big-items", type=int, default=2000)
    parser.add_argument("--small-items", type=int, default=20)
    parser.add_argument("--many-window", type=int, default=5, help="seconds; ten batches vs one")
    parser.add_argument("--many-windows", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smoke test: short windows (under a minute)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = Settings(
        rate_per_s=args.rate,
        fair_window_s=args.fair_window,
        fair_windows=args.fair_windows,
        weighted_window_s=args.weighted_window,
        weighted_windows=args.weighted_windows,
        small_window_s=args.small_window,
        big_items=args.big_items,
        small_items=args.small_items,
        many_window_s=args.many_window,
        many_windows=args.many_windows,
    )
    if args.quick:
        settings = dataclasses.replace(
            settings,
            fair_window_s=3,
            fair_windows=2,
            weighted_window_s=3,
            weighted_windows=1,
            small_window_s=2,
            many_window_s=3,
            many_windows=1,
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench-accounts-"))
    try:
        measured = asyncio.run(measure(settings, tmp))
    except BaseException:
        print(f"failed; logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    result = summarize(settings, measured)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(result))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
