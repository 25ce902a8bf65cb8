"""A stage's concurrency is the calls of all its workers together, and a retired worker claims nothing.

Worker processes each run several calls (``ANALYSIS_CONCURRENCY``, the
operator's calls per pod), more between them than the stage's concurrency:
the stand-in, which counts the requests it holds at once, never sees more
than the stage's concurrency, and sees exactly that many at the peak.
Retiring (``producer.retire``, what the operator does before it deletes an
idle pod to scale a Job in) takes only a worker that holds nothing, and a
retired worker claims nothing more while the others carry on.
"""

from typing import Any

import pytest

from analysis_core import env, keys, queue, wire
from analysis_devcluster import standin
from analysis_operator import producer
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-concurrency-3b9f"  # what the stand-in (tests/integration/conftest.py) wants


async def succeeded(redis: queue.Redis, uid: str, n: int) -> bool:
    counts = await consumer.stage_counts(redis, uid, "analyze")
    return counts.counters.get(wire.COUNT_SUCCEEDED, 0) == n and counts.drained


@pytest.mark.timeout(120)
async def test_workers_together_hold_the_stages_concurrency_and_no_more(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    concurrency, processes, calls_each = 10, 3, 4  # 3 x 4 = 12 calls the processes could run
    stand_in.set_plan([{"kind": "ok", "delay_s": 1.5, "times": 1000}])
    items = [f"C{i:02d}" for i in range(30)]
    batch = workers.batch(stand_in.batch_spec("openai", items, concurrency=concurrency))
    for _ in range(processes):
        workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY, **{env.CONCURRENCY: str(calls_each)})
    await batch.seed()
    await workers.eventually(lambda: succeeded(redis, batch.uid, len(items)), 90, "every item done")
    assert stand_in.concurrency()["peak"] == concurrency
    calls = [call["prompt"] for call in stand_in.requests()]
    assert sorted(calls) == sorted(f"Analyze {item}" for item in items)  # each once
    # Every process took part: the cap is the stage's, not a share fixed per process.
    claimed = {w.pod: sum(1 for line in w.lines() if line.get("msg") == wire.STATUS_SUCCEEDED) for w in workers.started}
    assert all(claimed.values()), claimed


@pytest.mark.timeout(120)
async def test_only_an_idle_worker_is_retired_and_a_retired_one_claims_nothing_more(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    stand_in.set_plan([{"kind": "ok", "delay_s": 3, "match": "SLOW"}])
    batch = workers.batch(stand_in.batch_spec("openai", ["SLOW"], concurrency=4))
    busy = workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY, **{env.CONCURRENCY: "2"})
    await batch.seed()

    async def holding() -> bool:
        snapshot = await producer.snapshot(redis, batch.uid, ["analyze"])
        return snapshot.held["analyze"].get(busy.pod, 0) == 1

    await workers.eventually(holding, 30, "the worker holds SLOW")
    idle = workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY, **{env.CONCURRENCY: "2"})
    # A worker that holds an item is not retired; one that holds nothing (or never claimed) is.
    assert await producer.retire(redis, batch.uid, "analyze", [busy.pod, idle.pod]) == [idle.pod]
    assert await producer.retire(redis, batch.uid, "analyze", [idle.pod]) == [idle.pod]  # again: still retired
    snapshot = await producer.snapshot(redis, batch.uid, ["analyze"])
    assert snapshot.retired["analyze"] == frozenset({idle.pod})
    # New work goes to the worker that was not retired, once its call is done.
    fields = queue.Message(item="LATER").fields()
    await redis.xadd(keys.BatchKeys(batch.uid).stream("analyze"), dict(zip(fields[::2], fields[1::2], strict=True)))
    await workers.eventually(lambda: succeeded(redis, batch.uid, 2), 60, "SLOW and LATER done")
    done_by = {line["item"]: w.pod for w in workers.started for line in w.lines() if line.get("msg") == "succeeded"}
    assert done_by == {"SLOW": busy.pod, "LATER": busy.pod}
    assert any(line.get("msg") == "retired by the operator: no new claims" for line in idle.lines())
