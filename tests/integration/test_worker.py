"""Real ``analysis-worker`` processes on a real Redis: crashes, shutdown, Job mode and health.

The offline provider stands in for an LLM here (deterministic, with a
configured latency), so these tests exercise the queue and the loop, not an
SDK; ``test_worker_providers.py`` does the SDK paths.
"""

import asyncio
import json
import random
import signal
import subprocess
from collections import Counter
from typing import Any

import pytest

from analysis_core import keys, queue, wire
from analysis_operator import producer
from analysis_worker import consumer

pytestmark = pytest.mark.integration


def two_stage_spec(items: list[str], latency_ms: int, concurrency: int = 4) -> dict[str, Any]:
    return {
        "items": items,
        "providers": {"local": {"type": "offline", "offline": {"seed": 1, "latencyMilliseconds": latency_ms}}},
        "stages": [
            {"name": "draft", "provider": "local", "prompt": "Draft on {{ item }}", "concurrency": concurrency},
            {"name": "polish", "provider": "local", "prompt": "Polish {{ input }}", "concurrency": concurrency},
        ],
    }


async def outcomes(redis: queue.Redis, uid: str) -> dict[str, dict[str, Any]]:
    raw = await redis.hgetall(keys.BatchKeys(uid).outcomes)
    return {key: json.loads(value) for key, value in raw.items()}


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_mid_item_loses_nothing_and_writes_nothing_twice(workers: Any, redis: queue.Redis) -> None:
    items = [f"T{i:03d}" for i in range(300)]
    batch = workers.batch(two_stage_spec(items, latency_ms=25), lease_s=1.0, max_deliveries=100)
    await batch.seed()
    pool = {stage: [workers.start(batch, stage) for _ in range(2)] for stage in ("draft", "polish")}
    rng = random.Random(7)
    kills = 0

    async def finished() -> bool:
        counts = await consumer.stage_counts(redis, batch.uid, "polish")
        return counts.counters.get("succeeded", 0) == len(items) and counts.drained

    async def holding(worker: Any) -> bool:
        """Whether the worker holds an item now: only such a kill tests redelivery (a starting one holds none)."""
        stream = keys.BatchKeys(batch.uid).stream(worker.stage)
        return bool(await redis.xpending_range(stream, keys.GROUP, min="-", max="+", count=1, consumername=worker.pod))

    while not await finished():
        await asyncio.sleep(0.3)
        if kills < 12:
            stage = rng.choice(("draft", "polish"))
            busy = [i for i, w in enumerate(pool[stage]) if await holding(w)]
            if not busy:
                continue
            victim = pool[stage].pop(rng.choice(busy))
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            kills += 1
            # Half the replacements reuse the pod name (a container restart), half are new pods.
            pool[stage].append(workers.start(batch, stage, pod=victim.pod if kills % 2 else None))
        elif kills == 12:
            await workers.eventually(finished, 60, "finished after the last kill")
    draft = await consumer.stage_counts(redis, batch.uid, "draft")
    polish = await consumer.stage_counts(redis, batch.uid, "polish")
    # Nothing lost: every item passed both stages, nothing failed or was dead-lettered, nothing is left.
    assert draft.counters["succeeded"] == polish.counters["succeeded"] == len(items)
    for counts in (draft, polish):
        assert counts.drained
        assert counts.counters.get("failed", 0) == counts.counters.get("dead_lettered", 0) == 0
    # The kills really hit items in flight: some were redelivered after their lease expired.
    assert draft.counters.get("redelivered", 0) + polish.counters.get("redelivered", 0) > 0
    # Nothing written twice: one outcome per stage and item; the draft's spent once its item ended (the polish
    # succeeded), the polish's whole, with its result, the only one left.
    raw = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
    per_item = Counter((keys.parse_idem(k).stage, keys.parse_idem(k).item) for k in raw)
    assert set(per_item.values()) == {1}
    assert len(per_item) == 2 * len(items)
    by_stage = {
        stage: {v for k, v in raw.items() if keys.parse_idem(k).stage == stage} for stage in ("draft", "polish")
    }
    assert by_stage["draft"] == {wire.OUTCOME_SPENT}
    assert {json.loads(v)["status"] for v in by_stage["polish"]} == {"succeeded"}
    assert await redis.hlen(keys.BatchKeys(batch.uid).results) == len(items)


@pytest.mark.slow
async def test_sigterm_hands_back_work_it_cannot_finish_in_the_grace_period(workers: Any, redis: queue.Redis) -> None:
    batch = workers.batch(two_stage_spec(["A", "B", "C"], latency_ms=30_000, concurrency=3), lease_s=60.0)
    await batch.seed()
    worker = workers.start(batch, "draft", ANALYSIS_GRACE_SECONDS="0.5")

    async def all_running() -> bool:
        return (await consumer.stage_counts(redis, batch.uid, "draft")).running == 3

    await workers.eventually(all_running, 15, "claimed")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=10) == 0
    counts = await consumer.stage_counts(redis, batch.uid, "draft")
    # Back in the stream at once, not after the 60 s lease.
    assert (counts.ready, counts.running) == (3, 0)
    assert await outcomes(redis, batch.uid) == {}
    assert any(line["msg"] == "handed back unfinished items" and line["count"] == 3 for line in worker.lines())


@pytest.mark.slow
async def test_sigterm_lets_work_in_flight_finish_within_the_grace_period(workers: Any, redis: queue.Redis) -> None:
    batch = workers.batch(two_stage_spec(["A", "B"], latency_ms=1500, concurrency=2), lease_s=60.0)
    await batch.seed()
    worker = workers.start(batch, "draft", ANALYSIS_GRACE_SECONDS="20")

    async def all_running() -> bool:
        return (await consumer.stage_counts(redis, batch.uid, "draft")).running == 2

    await workers.eventually(all_running, 15, "claimed")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=20) == 0
    counts = await consumer.stage_counts(redis, batch.uid, "draft")
    assert counts.counters["succeeded"] == 2
    assert counts.drained


async def test_a_worker_refuses_a_batch_in_a_newer_redis_layout(workers: Any, redis: queue.Redis) -> None:
    batch = workers.batch(two_stage_spec(["A"], latency_ms=0))
    await batch.seed()
    await redis.set(keys.BatchKeys(batch.uid).seeded, keys.LAYOUT_VERSION + 1)  # as a later release would seed it
    worker = workers.start(batch, "draft")
    assert worker.process.wait(timeout=20) == 2
    said = [line["msg"] for line in worker.lines() if line.get("level") == "error"]
    assert any(f"layout version {keys.LAYOUT_VERSION + 1}, newer than this worker's" in m for m in said), said
    assert (await consumer.stage_counts(redis, batch.uid, "draft")).ready == 1  # nothing claimed


async def test_job_mode_exits_once_the_stage_is_sealed_and_drained(workers: Any, redis: queue.Redis) -> None:
    items = ["NVDA", "AMD", "TSM", "INTC", "ARM"]
    batch = workers.batch(two_stage_spec(items, latency_ms=10))
    await batch.seed()
    worker = workers.start(batch, "draft", ANALYSIS_MODE="job")

    async def drafted() -> bool:
        return (await consumer.stage_counts(redis, batch.uid, "draft")).counters.get("succeeded", 0) == len(items)

    await workers.eventually(drafted, 15, "drafted")
    assert worker.process.poll() is None  # not sealed yet: more work could still come
    await producer.seal(redis, batch.uid, "draft")
    assert worker.process.wait(timeout=10) == 0
    assert any(line["msg"] == "stage sealed and drained" for line in worker.lines())


@pytest.mark.timeout(120)
async def test_a_busy_worker_stops_claiming_when_suspended_and_goes_on_when_resumed(
    workers: Any, redis: queue.Redis
) -> None:
    items = [f"S{i:02d}" for i in range(60)]
    spec = two_stage_spec(items, latency_ms=30, concurrency=3)
    spec["stages"] = spec["stages"][:1]  # one stage: its successes claim their successors as they complete
    batch = workers.batch(spec)
    await batch.seed()
    worker = workers.start(batch, "draft")

    async def counts() -> queue.StageCounts:
        return await consumer.stage_counts(redis, batch.uid, "draft")

    async def under_way() -> bool:
        return (await counts()).counters.get("succeeded", 0) >= 6

    await workers.eventually(under_way, 30, "six items done")
    await producer.suspend(redis, batch.uid, "spec.suspend")
    at_suspend = (await counts()).counters["succeeded"]

    async def idle() -> bool:
        return (await counts()).running == 0

    await workers.eventually(idle, 15, "the items in flight done")
    await asyncio.sleep(1.0)  # time enough for many claims, were any made
    stopped = await counts()
    # Only what was in flight when the flag went up finished: at most the concurrency.
    assert at_suspend <= stopped.counters["succeeded"] <= at_suspend + 3
    assert stopped.ready == len(items) - stopped.counters["succeeded"]
    assert stopped.running == 0
    await producer.resume(redis, batch.uid)

    async def all_done() -> bool:
        return (await counts()).counters.get("succeeded", 0) == len(items)

    await workers.eventually(all_done, 30, "every item done after the resume")
    assert worker.process.poll() is None
    assert any(line["msg"] == "suspended: no new claims" for line in worker.lines())


async def test_health_check_follows_the_heartbeat(workers: Any, redis: queue.Redis) -> None:
    batch = workers.batch(two_stage_spec(["A"], latency_ms=0))
    worker = workers.start(batch, "draft", pod="probe-me")
    env = workers.env(batch, "draft", "probe-me")

    check = [str(worker.process.args[0]), "--check"]

    async def probe() -> int:
        done = await asyncio.to_thread(subprocess.run, check, env=env, capture_output=True, timeout=30, check=False)
        return done.returncode

    async def probe_ok() -> bool:
        return await probe() == 0

    await workers.eventually(probe_ok, 15, "healthy")
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait()

    async def probe_fails() -> bool:
        return await probe() == 1

    await workers.eventually(probe_fails, 10, "unhealthy once the heartbeat expired")


def test_logs_are_json_with_batch_stage_and_item_first(workers: Any) -> None:
    batch = workers.batch(two_stage_spec(["NVDA"], latency_ms=0))
    asyncio.run(batch.seed())
    worker = workers.start(batch, "draft", ANALYSIS_MODE="job")
    asyncio.run(_seal(workers.redis_url, batch.uid, "draft"))
    assert worker.process.wait(timeout=20) == 0
    lines = worker.lines()
    assert lines
    for line in lines:
        assert list(line)[:3] == ["batch", "stage", "item"]
        assert line["batch"] == batch.uid
        assert line["stage"] == "draft"
    assert any(line["item"] == "NVDA" and line["msg"] == "succeeded" for line in lines)


async def _seal(url: str, uid: str, stage: str) -> None:
    client = queue.connect(url)
    try:
        await producer.seal(client, uid, stage)
    finally:
        await client.aclose()
