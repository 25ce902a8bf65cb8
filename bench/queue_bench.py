"""Benchmark: the stage queue against arq and BullMQ, pickup latency, and the rate limiter's utilization.

One run, one private ``redis-server`` (AOF on, as in production) shared by
everything measured, real worker processes, the zero-latency offline provider:

1. throughput through one stage with 1 and 4 ``analysis-worker`` processes,
   and with as many arq 0.28 worker processes running a no-op job
   (``bench/arq_baseline.py``, from arq's own venv ``.venv-arq``), the same
   concurrency per process (each worker's ``ANALYSIS_CONCURRENCY`` = arq's
   ``max_jobs``; the stage's ``concurrency``, the cap of all its workers
   together, is that times the most processes, so it never binds).
   Ours runs two ways: "idle workers" (workers up and idle, then the items are
   seeded; timed from seeding) and "backlog first" (items seeded, then the
   workers started; timed from their start), which is how arq runs (its jobs
   are enqueued first, then its workers started). The ratios compare
   backlog-first with backlog-first. arq runs with its defaults (the
   headline) and again with ``poll_delay`` 10 ms (``arq_poll_10ms``): by
   default an arq worker reads at most 100 jobs per 0.5 s poll, which caps it
   near 200 jobs/s per process whatever the job costs. BullMQ (Node, pinned by
   ``bench/bullmq/package-lock.json``, driven by ``bench/bullmq/baseline.mjs``)
   runs the same shape: jobs added first with ``addBulk``, then as many worker
   processes with the same ``concurrency``, a no-op processor,
   ``removeOnComplete``;
2. pickup latency: single items enqueued (raw XADD) with random 20-100 ms
   gaps to idle workers; pickup = the outcome's ``claimed_ms`` minus the
   enqueue time taken just before the XADD. BullMQ's the same way: one
   ``Queue.add`` per gap to idle workers, pickup = the processor's start
   minus the time read just before the add;
3. the limiter: a backlog against 4 workers, a 50 ms provider and a limit of
   R requests per window W; utilization and windows over the limit from the
   outcomes' ``called_ms``.

Prints a table and writes ``bench/results/queue.json``. Run with ``make
bench`` (or ``.venv/bin/python bench/queue_bench.py``; ``--quick`` is a smoke
test with small numbers, ``--help`` lists the knobs). Not named
``bench/queue.py``: ``python bench/<script>.py`` puts ``bench/`` first on
``sys.path``, where a ``queue.py`` shadows the standard library's ``queue``
(which redis-py and asyncio import) and breaks every script there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.exceptions

from analysis_core import env, keys, plan, queue
from analysis_core.api import v1alpha1
from analysis_devcluster import cluster
from analysis_operator import producer
from analysis_worker import consumer, ratelimit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "queue.json"
WORKER = Path(sys.executable).parent / "analysis-worker"
SOURCES = ("operator/src", "worker-image/src")  # the packages the workers import, from this checkout
ARQ_VENV = ROOT / ".venv-arq"
BULLMQ_DIR = ROOT / "bench" / "bullmq"  # `make bench-bullmq` installs its node_modules (npm ci)
BULLMQ_SCRIPT = BULLMQ_DIR / "baseline.mjs"
STAGE = "work"
POLL_S = 0.01  # how often completion is polled
LONG_FACTOR = 5  # a long run's items, in items of a run
RUN_TIMEOUT_S = 180.0
# Throughput configurations, run interleaved: ours backlog first, ours with idle workers, arq, arq polling faster,
# BullMQ.
SYSTEMS = ("ours", "ours_idle_workers", "arq", "arq_poll_10ms", "bullmq")
LONG = ("ours", "bullmq")  # the systems of the long runs


# ---------------------------------------------------------------- processes


class Processes:
    """Every process this benchmark starts, each in its own process group, logging to a file."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[subprocess.Popen[bytes]] = []
        self.log_of: dict[int, Path] = {}

    def spawn(self, argv: list[str], environ: dict[str, str], log_name: str, cwd: Path | None = None) -> Any:
        log = self.logs / log_name
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, env=environ, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.running.append(process)
        self.log_of[process.pid] = log
        return process

    def check_alive(self, processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is not None:
                tail = self.log_of[process.pid].read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail}")

    @staticmethod
    def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)

    def stop(self, processes: list[subprocess.Popen[bytes]], grace_s: float = 8.0) -> None:
        """SIGTERM the groups, SIGKILL whatever is left after ``grace_s``; reap them all."""
        for process in processes:
            self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(process, signal.SIGKILL)
                process.wait()
            # A group may outlive its leader (it should not here); make sure it does not.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            if process in self.running:
                self.running.remove(process)

    def kill_all(self) -> None:
        for process in list(self.running):
            self._signal(process, signal.SIGKILL)
            process.wait()
        self.running.clear()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], p: int) -> float:
    """The p-th percentile (inclusive method, interpolated)."""
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# ---------------------------------------------------------------- the bench


@dataclasses.dataclass(frozen=True)
class Settings:
    concurrency: int
    items: dict[int, int]  # workers -> items per throughput run
    long_items: dict[int, int]  # workers -> items per long run (ours and BullMQ only)
    runs: int
    pickup_samples: int
    limiter_requests: int
    limiter_window_s: float
    limiter_windows: float
    seed: int


@dataclasses.dataclass
class Timed:
    seconds: float  # from seeding (idle workers) or from the workers' start (backlog first) to the last completion
    first_done_s: float  # from the same start to the first completion observed
    items: int

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds

    @property
    def after_first_per_s(self) -> float:
        """Throughput once items flow: excludes process start-up (and the first claim)."""
        return self.items / max(1e-9, self.seconds - self.first_done_s)


class Bench:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.procs = Processes(tmp)
        self.redis_url = ""
        self._client: queue.Redis | None = None
        self._pods = 0
        self.node = shutil.which("node") or "node"
        self.bullmq_keys: dict[str, str] = {}  # BullMQ's key names, from `baseline.mjs info`

    @property
    def client(self) -> queue.Redis:
        assert self._client is not None
        return self._client

    # ---- redis

    async def start_redis(self) -> str:
        data = self.tmp / "redis"
        data.mkdir()
        port = free_port()
        argv = cluster.redis_argv(port, data)
        server = self.procs.spawn(argv, {"PATH": os.environ.get("PATH", "/usr/bin")}, "redis.log")
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
        self, check: Callable[[], Awaitable[bool]], what: str, processes: list[Any], timeout_s: float = RUN_TIMEOUT_S
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not await check():
            self.procs.check_alive(processes)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not {what} within {timeout_s:g} s (logs in {self.tmp})")
            await asyncio.sleep(POLL_S)

    async def timed_until_done(
        self, started: float, count_done: Callable[[], Awaitable[int]], n: int, procs: Any
    ) -> Timed:
        """Poll ``count_done`` every POLL_S from ``started`` (perf_counter) until it reaches ``n``."""
        first: float | None = None
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            done = await count_done()
            now = time.perf_counter()
            if done > 0 and first is None:
                first = now - started
            if done >= n:
                return Timed(now - started, first or 0.0, n)
            self.procs.check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done}/{n} done after {RUN_TIMEOUT_S:g} s (logs in {self.tmp})")
            await asyncio.sleep(POLL_S)

    # ---- our workers

    def write_plan(self, *, latency_ms: int, rate_limit: plan.RateLimitPlan | None = None) -> tuple[str, Path]:
        spec = v1alpha1.AnalysisBatchSpec.model_validate(
            {
                "items": ["placeholder"],  # the benchmark seeds its own items
                "providers": {"local": {"type": "offline", "offline": {"latencyMilliseconds": latency_ms}}},
                "stages": [
                    {
                        "name": STAGE,
                        "provider": "local",
                        "prompt": "Analyse {{ item }}",
                        # The stage's cap holds for all its workers together; each process runs concurrency
                        # calls (ANALYSIS_CONCURRENCY below), as arq's max_jobs and BullMQ's concurrency do.
                        "concurrency": self.settings.concurrency * max(self.settings.items),
                    }
                ],
            }
        )
        uid = str(uuid.uuid4())
        compiled = plan.compile_plan(uid, spec)
        if rate_limit is not None:
            stages = [compiled.stages[0].model_copy(update={"rate_limit": rate_limit})]
            compiled = compiled.model_copy(update={"stages": stages})
        path = self.tmp / f"plan-{uid}.json"
        path.write_text(compiled.dumps(), encoding="utf-8")
        return uid, path

    def start_workers(self, uid: str, plan_path: Path, count: int) -> tuple[list[Any], list[str]]:
        processes, pods = [], []
        for _ in range(count):
            pod = f"bench-{self._pods}"
            self._pods += 1
            environ = {
                "PATH": os.environ.get("PATH", "/usr/bin"),
                # This checkout's packages, ahead of whatever the venv's editable install points at.
                "PYTHONPATH": os.pathsep.join(str(ROOT / src) for src in SOURCES),
                env.REDIS_URL: self.redis_url,
                env.BATCH_UID: uid,
                env.STAGE: STAGE,
                env.PLAN_PATH: str(plan_path),
                env.POD_NAME: pod,
                env.MODE: "deployment",
                env.LOG_FORMAT: "json",
                env.GRACE_SECONDS: "5",
                env.CONCURRENCY: str(self.settings.concurrency),
            }
            processes.append(self.procs.spawn([str(WORKER)], environ, f"{pod}.log"))
            pods.append(pod)
        return processes, pods

    async def wait_healthy(self, uid: str, pods: list[str], processes: list[Any]) -> None:
        names = [keys.BatchKeys(uid).health(STAGE, pod) for pod in pods]

        async def all_beat() -> bool:
            return int(await self.client.exists(*names)) == len(names)

        await self.wait_until(all_beat, "every worker's first heartbeat", processes, timeout_s=60)

    async def succeeded(self, uid: str) -> int:
        return (await consumer.stage_counts(self.client, uid, STAGE)).counters.get("succeeded", 0)

    async def ours(self, workers: int, n: int, *, backlog_first: bool) -> Timed:
        uid, plan_path = self.write_plan(latency_ms=0)
        items = [f"I{i:06d}" for i in range(n)]
        processes: list[Any] = []
        try:
            if backlog_first:
                await producer.seed(self.client, uid, [STAGE], items)
                started = time.perf_counter()
                processes, _ = self.start_workers(uid, plan_path, workers)
            else:
                processes, pods = self.start_workers(uid, plan_path, workers)
                await self.wait_healthy(uid, pods, processes)
                started = time.perf_counter()
                await producer.seed(self.client, uid, [STAGE], items)
            timed = await self.timed_until_done(started, lambda: self.succeeded(uid), n, processes)
        finally:
            self.procs.stop(processes)
        counts = await consumer.stage_counts(self.client, uid, STAGE)
        if counts.counters.get("succeeded") != n or counts.counters.get("failed", 0) or not counts.drained:
            raise RuntimeError(f"ours, {workers} workers: unexpected end state {counts}")
        await self.client.flushall()
        return timed

    # ---- arq

    def arq_environ(self, poll_delay_s: float | None = None) -> dict[str, str]:
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin"),
            "PYTHONPATH": str(ROOT),
            "BENCH_ARQ_REDIS_URL": self.redis_url,
            "BENCH_ARQ_MAX_JOBS": str(self.settings.concurrency),
        }
        if poll_delay_s is not None:
            environ["BENCH_ARQ_POLL_DELAY"] = str(poll_delay_s)
        return environ

    async def arq_python(self, *args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            str(ARQ_VENV / "bin" / "python"),
            *args,
            cwd=ROOT,
            env=self.arq_environ(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=RUN_TIMEOUT_S)
        if process.returncode != 0:
            raise RuntimeError(f"arq venv python {args} failed: {err.decode(errors='replace')[-2000:]}")
        return out.decode().strip()

    async def arq(self, workers: int, n: int, poll_delay_s: float | None = None) -> Timed:
        """arq's throughput: ``n`` jobs enqueued, then ``workers`` processes started; ``poll_delay_s`` None: arq's."""
        await self.client.flushall()
        script = str(ROOT / "bench" / "arq_baseline.py")
        queued = int(await self.arq_python(script, "enqueue", self.redis_url, str(n)))
        if queued != n:
            raise RuntimeError(f"arq: {queued} jobs queued, expected {n}")

        async def done() -> int:
            # A job leaves arq's queue (a sorted set) in the same MULTI that stores its result.
            return n - int(await self.client.zcard("arq:queue"))

        processes: list[Any] = []
        try:
            started = time.perf_counter()
            for _ in range(workers):
                argv = [str(ARQ_VENV / "bin" / "arq"), "bench.arq_baseline.WorkerSettings"]
                environ = self.arq_environ(poll_delay_s)
                processes.append(self.procs.spawn(argv, environ, f"arq-{self._pods}.log", cwd=ROOT))
                self._pods += 1
            timed = await self.timed_until_done(started, done, n, processes)
        finally:
            self.procs.stop(processes)
        results = 0
        async for _key in self.client.scan_iter(match="arq:result:*", count=1000):
            results += 1
        if results != n:
            raise RuntimeError(f"arq, {workers} workers: {results} results stored, expected {n}")
        await self.client.flushall()
        return timed

    # ---- BullMQ

    def bullmq_environ(self, *, log_starts: bool = False) -> dict[str, str]:
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin"),
            "BENCH_BULLMQ_CONCURRENCY": str(self.settings.concurrency),
        }
        if log_starts:
            environ["BENCH_BULLMQ_LOG_STARTS"] = "1"
        return environ

    async def bullmq_node(self, *args: str, stdin: bytes | None = None) -> Any:
        """Run ``baseline.mjs`` with ``args`` to its end; its output is one JSON value."""
        process = await asyncio.create_subprocess_exec(
            self.node,
            str(BULLMQ_SCRIPT),
            *args,
            cwd=BULLMQ_DIR,
            env=self.bullmq_environ(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout=RUN_TIMEOUT_S)
        if process.returncode != 0:
            raise RuntimeError(f"baseline.mjs {args} failed: {err.decode(errors='replace')[-2000:]}")
        return json.loads(out)

    def start_bullmq_workers(self, count: int, *, log_starts: bool = False) -> list[Any]:
        processes = []
        for _ in range(count):
            argv = [self.node, str(BULLMQ_SCRIPT), "worker", self.redis_url]
            environ = self.bullmq_environ(log_starts=log_starts)
            processes.append(self.procs.spawn(argv, environ, f"bullmq-{self._pods}.log", cwd=BULLMQ_DIR))
            self._pods += 1
        return processes

    async def bullmq_pending(self) -> int:
        """Jobs waiting or active. One MULTI, so a job moving from wait to active is counted exactly once."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.llen(self.bullmq_keys["wait"])
            pipe.llen(self.bullmq_keys["active"])
            waiting, active = await pipe.execute()
        return int(waiting) + int(active)

    async def bullmq_check_end(self, n: int, processes: list[Any], what: str) -> None:
        """Every one of ``n`` jobs added, finished and removed, none failed: nothing but the queue's own keys left."""
        created = int(await self.client.get(self.bullmq_keys["id"]) or 0)
        prefix = self.bullmq_keys["prefix"]
        jobs_left = 0
        async for key in self.client.scan_iter(match=f"{prefix}*", count=1000):
            jobs_left += key[len(prefix) :][:1].isdigit()  # bull:bench:<id>, bull:bench:<id>:lock
        # removeOnFail leaves no trace of a failure in Redis; the workers log each one.
        failures = [
            line
            for process in processes
            for line in self.procs.log_of[process.pid].read_text(errors="replace").splitlines()
            if line.startswith(("failed ", "error "))
        ]
        if created != n or jobs_left or failures or await self.bullmq_pending():
            raise RuntimeError(
                f"bullmq, {what}: {created} jobs added (expected {n}), {jobs_left} job keys left,"
                f" failures {failures[:5]} (logs in {self.tmp})"
            )

    async def bullmq(self, workers: int, n: int) -> Timed:
        """BullMQ's throughput: ``n`` jobs added, then ``workers`` processes started; timed until none waits or runs."""
        await self.client.flushall()
        queued = int(await self.bullmq_node("enqueue", self.redis_url, str(n)))
        if queued != n:
            raise RuntimeError(f"bullmq: {queued} jobs waiting, expected {n}")

        async def done() -> int:
            # A job leaves the active list in the script that finishes it (and, with removeOnComplete, deletes it).
            return n - await self.bullmq_pending()

        processes: list[Any] = []
        try:
            started = time.perf_counter()
            processes = self.start_bullmq_workers(workers)
            timed = await self.timed_until_done(started, done, n, processes)
        finally:
            self.procs.stop(processes)
        await self.bullmq_check_end(n, processes, f"{workers} workers")
        await self.client.flushall()
        return timed

    async def bullmq_pickup(self, workers: int, samples: int, rng: random.Random) -> dict[str, Any]:
        """BullMQ's pickup, as ``pickup``: one job per random 20-100 ms gap to idle workers; the gaps come from ``rng``."""
        await self.client.flushall()
        processes = self.start_bullmq_workers(workers, log_starts=True)
        try:

            async def all_idle() -> bool:
                # An idle BullMQ worker blocks in BZPOPMIN on the queue's marker; each has one blocking connection.
                return sum(c["cmd"] == "bzpopmin" for c in await self.client.client_list()) >= workers

            await self.wait_until(all_idle, "every BullMQ worker blocked waiting for jobs", processes, timeout_s=60)
            gaps_ms = [round(rng.uniform(0.02, 0.1) * 1000, 1) for _ in range(samples)]
            sent = await self.bullmq_node("pickup", self.redis_url, stdin=json.dumps(gaps_ms).encode())

            async def all_done() -> bool:
                return await self.bullmq_pending() == 0

            await self.wait_until(all_done, "every BullMQ pickup sample done", processes, timeout_s=60)
        finally:
            self.procs.stop(processes)
        await self.bullmq_check_end(samples, processes, f"pickup, {workers} workers")
        started: dict[str, int] = {}
        for process in processes:
            for line in self.procs.log_of[process.pid].read_text(errors="replace").splitlines():
                if line.startswith("start "):
                    _, job_id, ms = line.split()
                    started[job_id] = int(ms)
        if set(started) != set(sent):
            raise RuntimeError(f"bullmq pickup: {len(started)} starts logged for {len(sent)} jobs (logs in {self.tmp})")
        await self.client.flushall()
        return latency_stats(workers, [float(started[job_id] - ms) for job_id, ms in sent.items()])

    # ---- pickup latency

    async def pickup(self, workers: int, samples: int, rng: random.Random) -> dict[str, Any]:
        uid, plan_path = self.write_plan(latency_ms=0)
        k = keys.BatchKeys(uid)
        processes, pods = self.start_workers(uid, plan_path, workers)
        sent: dict[str, int] = {}
        try:
            # The workers create the stage's group before their first heartbeat.
            await self.wait_healthy(uid, pods, processes)
            for i in range(samples):
                await asyncio.sleep(rng.uniform(0.02, 0.1))
                item = f"P{i:05d}"
                fields = queue.Message(item).fields()
                mapping: dict[Any, Any] = dict(zip(fields[::2], fields[1::2], strict=True))
                sent[item] = int(time.time() * 1000)  # truncated like the worker's claimed_ms
                await self.client.xadd(k.stream(STAGE), mapping)

            async def all_done() -> bool:
                return await self.succeeded(uid) >= samples

            await self.wait_until(all_done, "every pickup sample done", processes, timeout_s=60)
        finally:
            self.procs.stop(processes)
        outcomes = await self.client.hgetall(k.outcomes)
        latencies = []
        for item, enqueued_ms in sent.items():
            outcome = json.loads(outcomes[k.idem(STAGE, item, 0, 1)])
            latencies.append(float(outcome["claimed_ms"] - enqueued_ms))
        await self.client.flushall()
        return latency_stats(workers, latencies)

    # ---- limiter

    async def limiter(self, workers: int = 4, latency_ms: int = 50) -> dict[str, Any]:
        s = self.settings
        requests, window_ms = s.limiter_requests, int(s.limiter_window_s * 1000)
        duration_s = s.limiter_windows * s.limiter_window_s
        backlog = int(requests * (s.limiter_windows + 2)) + 100  # more than the run can finish
        uid, plan_path = self.write_plan(
            latency_ms=latency_ms,
            rate_limit=plan.RateLimitPlan(requests_per_minute=requests, window_s=s.limiter_window_s),
        )
        processes, pods = self.start_workers(uid, plan_path, workers)
        try:
            await self.wait_healthy(uid, pods, processes)
            await producer.seed(self.client, uid, [STAGE], [f"L{i:06d}" for i in range(backlog)])
            await asyncio.sleep(duration_s)
            stop_ms = int(time.time() * 1000)
        finally:
            # SIGTERM: calls in flight finish and are recorded; calls granted while draining count too.
            self.procs.stop(processes)
        outcomes = [json.loads(v) for v in (await self.client.hgetall(keys.BatchKeys(uid).outcomes)).values()]
        counts = await consumer.stage_counts(self.client, uid, STAGE)
        await self.client.flushall()
        if any(o["status"] != "succeeded" for o in outcomes) or counts.counters.get("failed", 0):
            raise RuntimeError(f"limiter run: not every call succeeded ({counts})")
        calls = sorted(int(o["called_ms"]) for o in outcomes)
        return {
            "workers": workers,
            "provider_latency_ms": latency_ms,
            "requests_per_window": requests,
            "window_s": s.limiter_window_s,
            "run_s": duration_s,
            "backlog": backlog,
            **limiter_stats(calls, stop_ms, requests, window_ms),
        }


def limiter_stats(calls: list[int], stop_ms: int, requests: int, window_ms: int) -> dict[str, Any]:
    """Utilization and windows over the limit of the call times ``calls`` (sorted, ms).

    - windows over limit: windows [t, t + W) starting at each call t (the
      fullest window of length W always starts at a call) holding more than
      R calls;
    - utilization: the steady call rate relative to R / W. Steady calls are
      those from one window after the first call until the run stopped;
      rate = (k - 1) intervals / (last - first steady call);
    - window counts: calls in [t, t + W) for each steady t whose window ends
      before the run stopped (min, mean, max), relative to R.
    """
    over = fullest = 0
    window_counts: list[int] = []
    steady_from = calls[0] + window_ms
    end = 0
    for i, t in enumerate(calls):
        while end < len(calls) and calls[end] < t + window_ms:
            end += 1
        fullest = max(fullest, end - i)
        if end - i > requests:
            over += 1
        if steady_from <= t and t + window_ms <= stop_ms:
            window_counts.append(end - i)
    steady = [t for t in calls if steady_from <= t < stop_ms]
    rate_per_window = (len(steady) - 1) * window_ms / (steady[-1] - steady[0])
    guard_s = max(window_ms / 1000 * ratelimit.GUARD_FRACTION, ratelimit.GUARD_MIN_S)
    limiter_window_ms = math.ceil(1000 * (window_ms / 1000 + guard_s))
    spacing_ms = limiter_window_ms // requests
    return {
        "calls": len(calls),
        "steady_calls": len(steady),
        "utilization": round(rate_per_window / requests, 4),
        "windows_over_limit": over,
        "max_calls_in_any_window": fullest,
        "window_counts": {
            "windows": len(window_counts),
            "min": min(window_counts, default=0),
            "mean": round(statistics.fmean(window_counts), 2) if window_counts else 0,
            "max": max(window_counts, default=0),
        },
        "guard_ms": round(guard_s * 1000),
        "pacing_ms": spacing_ms,
        "theoretical_max_utilization": round(min(window_ms / (spacing_ms * requests), 1.0), 4),
    }


def latency_stats(workers: int, latencies: list[float]) -> dict[str, Any]:
    """Percentiles of pickup latencies (ms) measured with ``workers`` idle workers."""
    return {
        "workers": workers,
        "samples": len(latencies),
        "gap_ms": [20, 100],
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
        "mean": round(statistics.fmean(latencies), 2),
    }


# ---------------------------------------------------------------- main


async def measure(settings: Settings, tmp: Path) -> dict[str, Any]:
    bench = Bench(settings, tmp)
    try:
        redis_version = await bench.start_redis()
        arq_version = await bench.arq_python("-c", "import arq.version; print(arq.version.VERSION)")
        bullmq_info = await bench.bullmq_node("info")
        bench.bullmq_keys = bullmq_info["keys"]
        runs: dict[str, dict[str, list[Timed]]] = {system: {f"{w}w": [] for w in settings.items} for system in SYSTEMS}
        # Interleaved, so drift (other load, AOF growth) hits every system alike.
        for run in range(settings.runs):
            for workers, n in settings.items.items():
                for system in runs:
                    if system == "arq":
                        timed = await bench.arq(workers, n)
                    elif system == "arq_poll_10ms":
                        timed = await bench.arq(workers, n, poll_delay_s=0.01)
                    elif system == "bullmq":
                        timed = await bench.bullmq(workers, n)
                    else:
                        timed = await bench.ours(workers, n, backlog_first=system == "ours")
                    runs[system][f"{workers}w"].append(timed)
                    print(
                        f"  run {run + 1}/{settings.runs} {system:<18} {workers}w: {timed.items_per_s:7.0f} items/s"
                        f" ({n} in {timed.seconds:.2f} s, first done at {timed.first_done_s:.2f} s)",
                        flush=True,
                    )
        # Long runs, ours and BullMQ only: start-up weighs little, and Node's JIT has warmed up (BullMQ gets faster
        # the longer it runs; arq's rate is its poll's, whatever the length).
        long_runs: dict[str, dict[str, list[Timed]]] = {s: {f"{w}w": [] for w in settings.long_items} for s in LONG}
        for run in range(settings.runs):
            for workers, n in settings.long_items.items():
                for system in LONG:
                    if system == "bullmq":
                        timed = await bench.bullmq(workers, n)
                    else:
                        timed = await bench.ours(workers, n, backlog_first=True)
                    long_runs[system][f"{workers}w"].append(timed)
                    print(
                        f"  long run {run + 1}/{settings.runs} {system:<7} {workers}w: {timed.items_per_s:7.0f} items/s"
                        f" ({n} in {timed.seconds:.2f} s, first done at {timed.first_done_s:.2f} s)",
                        flush=True,
                    )
        # One idle worker is the headline; four (half the samples) show that more consumers do not slow pickup.
        # Each system draws its gaps from its own generator with the same seed: both see the same gaps.
        samples = {1: settings.pickup_samples, 4: max(10, settings.pickup_samples // 2)}
        rng = random.Random(settings.seed)
        pickup = {f"{w}w": await bench.pickup(w, n, rng) for w, n in samples.items()}
        print(f"  pickup: {json.dumps(pickup)}", flush=True)
        rng = random.Random(settings.seed)
        pickup_bullmq = {f"{w}w": await bench.bullmq_pickup(w, n, rng) for w, n in samples.items()}
        print(f"  pickup bullmq: {json.dumps(pickup_bullmq)}", flush=True)
        limiter = await bench.limiter()
        print(f"  limiter: {json.dumps(limiter)}", flush=True)
    finally:
        await bench.close()
        bench.procs.kill_all()
    return {
        "redis": redis_version,
        "arq": arq_version,
        "bullmq": bullmq_info,
        "runs": runs,
        "long_runs": long_runs,
        "pickup": pickup,
        "pickup_bullmq": pickup_bullmq,
        "limiter": limiter,
    }


def medians(runs: dict[str, dict[str, list[Timed]]], rate: Callable[[Timed], float]) -> dict[str, dict[str, float]]:
    """system -> workers -> the median of ``rate`` over the runs."""
    return {
        system: {w: round(statistics.median(rate(t) for t in timed), 1) for w, timed in by_workers.items()}
        for system, by_workers in runs.items()
    }


def summarize(settings: Settings, measured: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, dict[str, list[Timed]]] = measured["runs"]
    median = medians(runs, lambda t: t.items_per_s)
    median_after_first = medians(runs, lambda t: t.after_first_per_s)
    ratio = {w: round(median["ours"][w] / median["arq"][w], 3) for w in median["arq"]}
    ratio_tuned = {w: round(median["ours"][w] / median["arq_poll_10ms"][w], 3) for w in median["arq"]}
    ratio_bullmq = {w: round(median["ours"][w] / median["bullmq"][w], 3) for w in median["arq"]}
    long_runs: dict[str, dict[str, list[Timed]]] = measured["long_runs"]
    long_median = medians(long_runs, lambda t: t.items_per_s)
    long_after_first = medians(long_runs, lambda t: t.after_first_per_s)
    long_ratio = {w: round(long_median["ours"][w] / long_median["bullmq"][w], 3) for w in long_median["ours"]}
    pickup, pickup_bullmq, limiter = measured["pickup"], measured["pickup_bullmq"], measured["limiter"]
    bullmq = measured["bullmq"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=False, cwd=ROOT)
    return {
        "benchmark": "stage queue: throughput vs arq and BullMQ, pickup latency, limiter utilization",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit + ("-dirty" if dirty.stdout.strip() else ""),
        "cpu_count": os.cpu_count(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "redis_server": measured["redis"],
            "arq": measured["arq"],
            "bullmq": bullmq["bullmq"],
            "ioredis": bullmq["ioredis"],
            "node": bullmq["node"],
        },
        "settings": {
            "concurrency_per_process": settings.concurrency,
            "items_per_run": {f"{w}w": n for w, n in settings.items.items()},
            "items_per_long_run": {f"{w}w": n for w, n in settings.long_items.items()},
            "runs_per_configuration": settings.runs,
            "provider": "offline, latencyMilliseconds 0",
            "redis": "one private redis-server, --appendonly yes --save ''",
            "arq": "0.28 defaults (poll_delay 0.5 s, keep_result 3600 s), max_jobs = concurrency",
            "arq_poll_10ms": "the same with poll_delay 0.01 s",
            "bullmq": (
                f"BullMQ {bullmq['bullmq']} (ioredis {bullmq['ioredis']}, Node {bullmq['node']}) defaults,"
                " Worker concurrency = concurrency, no-op processor, jobs added with addBulk,"
                " removeOnComplete and removeOnFail"
            ),
        },
        "targets": {
            "throughput_ratio_vs_arq_4w": ">= 1.0 (goal 1.5)",
            "throughput_ratio_vs_bullmq_1w": ">= 1.0",
            "throughput_ratio_vs_bullmq_4w": ">= 1.0",
            "throughput_ratio_vs_bullmq_long_runs": ">= 1.0 at 1 and 4 workers",
            "pickup_ms_p99": "< 50",
            "limiter_utilization": ">= 0.95",
            "limiter_windows_over_limit": "0",
        },
        "met": {
            "throughput_vs_arq": ratio["4w"] >= 1.0,
            "throughput_goal_1_5x": ratio["4w"] >= 1.5,
            "throughput_vs_bullmq_1w": ratio_bullmq["1w"] >= 1.0,
            "throughput_vs_bullmq_4w": ratio_bullmq["4w"] >= 1.0,
            "throughput_vs_bullmq_long_1w": long_ratio["1w"] >= 1.0,
            "throughput_vs_bullmq_long_4w": long_ratio["4w"] >= 1.0,
            "pickup_p99": pickup["1w"]["p99"] < 50,
            "limiter_utilization": limiter["utilization"] >= 0.95,
            "limiter_windows_over_limit": limiter["windows_over_limit"] == 0,
        },
        "items_per_s": median,
        "items_per_s_note": (
            "median of the runs; 'ours', 'arq' and 'bullmq': items seeded/enqueued first, timed from starting the"
            " worker processes to the last completion; 'arq_poll_10ms': arq with poll_delay 0.01 s, otherwise the"
            " same; 'ours_idle_workers': workers up and idle, timed from seeding"
        ),
        "items_per_s_after_first_completion": median_after_first,
        "throughput_ratio_vs_arq_4w": ratio["4w"],
        "throughput_ratio_vs_arq_1w": ratio["1w"],
        "throughput_ratio_vs_arq_poll_10ms_4w": ratio_tuned["4w"],
        "throughput_ratio_vs_arq_poll_10ms_1w": ratio_tuned["1w"],
        "throughput_ratio_vs_bullmq_4w": ratio_bullmq["4w"],
        "throughput_ratio_vs_bullmq_1w": ratio_bullmq["1w"],
        "long_runs": {
            "note": (
                "ours and BullMQ only, the items of a run times LONG_FACTOR, backlog first, median of the runs:"
                " start-up weighs less and Node's JIT has warmed up"
            ),
            "items_per_s": long_median,
            "items_per_s_after_first_completion": long_after_first,
            "throughput_ratio_vs_bullmq": long_ratio,
            "runs": {
                system: {w: [dataclasses.asdict(t) for t in timed] for w, timed in by_workers.items()}
                for system, by_workers in long_runs.items()
            },
        },
        "pickup_ms_p50": pickup["1w"]["p50"],
        "pickup_ms_p99": pickup["1w"]["p99"],
        "pickup": pickup,
        "pickup_bullmq_ms_p50": pickup_bullmq["1w"]["p50"],
        "pickup_bullmq_ms_p99": pickup_bullmq["1w"]["p99"],
        "pickup_bullmq": pickup_bullmq,
        "limiter_utilization": limiter["utilization"],
        "limiter_windows_over_limit": limiter["windows_over_limit"],
        "limiter": limiter,
        "runs": {
            system: {w: [dataclasses.asdict(t) for t in timed] for w, timed in by_workers.items()}
            for system, by_workers in runs.items()
        },
    }


def table(result: dict[str, Any]) -> str:
    rate, limiter = result["items_per_s"], result["limiter"]
    bullmq = f"BullMQ {result['machine']['bullmq']}"
    ws = list(rate["arq"])
    label_width = 42
    title = f"items/s, median of {result['settings']['runs_per_configuration']} runs"
    rows = [f"{title:<{label_width}}" + "".join(f"{w:>10}" for w in ws)]
    for system, label in (
        ("ours", "ours, backlog first"),
        ("arq", "arq 0.28 (defaults), backlog first"),
        ("arq_poll_10ms", "arq 0.28 poll_delay 10 ms, backlog first"),
        ("bullmq", f"{bullmq}, backlog first"),
        ("ours_idle_workers", "ours, idle workers"),
    ):
        rows.append(f"{label:<{label_width}}" + "".join(f"{rate[system][w]:>10.0f}" for w in ws))
    for key, label in (
        ("arq_", "ratio ours / arq"),
        ("arq_poll_10ms_", "ratio ours / arq poll_delay 10 ms"),
        ("bullmq_", f"ratio ours / {bullmq}"),
    ):
        ratios = "".join(f"{result[f'throughput_ratio_vs_{key}{w}']:>9.2f}x" for w in ws)
        rows.append(f"{label:<{label_width}}" + ratios)
    long = result["long_runs"]
    items = result["settings"]["items_per_long_run"]
    rows += ["", f"{'long runs, items/s':<{label_width}}" + "".join(f"{w:>10}" for w in ws)]
    rows.append(f"{'items':<{label_width}}" + "".join(f"{items[w]:>10}" for w in ws))
    for system, label in (("ours", "ours, backlog first"), ("bullmq", f"{bullmq}, backlog first")):
        rows.append(f"{label:<{label_width}}" + "".join(f"{long['items_per_s'][system][w]:>10.0f}" for w in ws))
    ratios = "".join(f"{long['throughput_ratio_vs_bullmq'][w]:>9.2f}x" for w in ws)
    rows.append(f"{f'ratio ours / {bullmq}':<{label_width}}" + ratios)
    rows += ["", f"{'pickup latency, ms':<{label_width}}" + "".join(f"{q:>8}" for q in ("p50", "p90", "p99", "max"))]
    for system, pickup in (("ours", result["pickup"]), (bullmq, result["pickup_bullmq"])):
        for w, p in pickup.items():
            label = f"{system}, {w[:-1]} idle worker{'s' if w != '1w' else ''}, {p['samples']} items"
            rows.append(f"{label:<{label_width}}" + "".join(f"{p[q]:>8.1f}" for q in ("p50", "p90", "p99", "max")))
    limits = (
        f"limiter, {limiter['requests_per_window']} requests / {limiter['window_s']:g} s, {limiter['workers']} workers,"
        f" {limiter['provider_latency_ms']} ms provider: utilization {result['limiter_utilization']:.1%}"
        f" (at most {limiter['theoretical_max_utilization']:.1%} by design),"
        f" windows over limit {result['limiter_windows_over_limit']}"
    )
    met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["met"].items())
    rows += ["", limits, f"targets met: {met}"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--concurrency", type=int, default=10, help="our stage concurrency = arq's max_jobs = BullMQ's concurrency"
    )
    parser.add_argument("--items-1w", type=int, default=4000)
    parser.add_argument("--items-4w", type=int, default=8000)
    parser.add_argument("--pickup-samples", type=int, default=300)
    parser.add_argument("--limiter-requests", type=int, default=50)
    parser.add_argument("--limiter-window", type=float, default=10.0, help="seconds")
    parser.add_argument("--limiter-windows", type=float, default=3.5, help="how long the limiter run lasts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke test: small numbers, one run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (ARQ_VENV / "bin" / "arq").exists():
        raise SystemExit(f"{ARQ_VENV} is missing: run `make .venv-arq`")
    if not (BULLMQ_DIR / "node_modules" / "bullmq").exists() or not shutil.which("node"):
        raise SystemExit(f"BullMQ is missing: install Node 20 and run `make bench-bullmq` ({BULLMQ_DIR})")
    settings = Settings(
        concurrency=args.concurrency,
        items={1: args.items_1w, 4: args.items_4w},
        long_items={1: args.items_1w * LONG_FACTOR, 4: args.items_4w * LONG_FACTOR},
        runs=args.runs,
        pickup_samples=args.pickup_samples,
        limiter_requests=args.limiter_requests,
        limiter_window_s=args.limiter_window,
        limiter_windows=args.limiter_windows,
        seed=args.seed,
    )
    if args.quick:
        settings = dataclasses.replace(
            settings,
            items={1: 500, 4: 1000},
            long_items={1: 1000, 4: 2000},
            runs=1,
            pickup_samples=50,
            limiter_window_s=3.0,
            limiter_windows=3.5,
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench-queue-"))
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
