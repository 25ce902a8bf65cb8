"""``mode: Batch`` stages end to end: real worker processes, real Redis, the real SDKs against the stand-in's batch APIs.

A batch-mode stage's worker gathers its items into provider batches, submits
them, polls them and records each result as a realtime call's would be
recorded: the same outcomes, routes, judge rounds and fan-outs, at the batch
price. The offline provider simulates provider batches, so a whole judge
pipeline can be compared against what its seed predicts, mode by mode.
"""

import json
import os
import signal
from decimal import Decimal
from typing import Any

import pytest

from analysis_core import keys, pricing, queue, wire
from analysis_devcluster import standin
from analysis_worker import consumer
from analysis_worker.providers import batches

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-batch-mode-72c1"
NANO = Decimal(10) ** 9
SEED, REJECTION_RATE = 1, 0.5  # as test_pipeline's: answers with rejections and an exhausted item
MODEL = "claude-sonnet-4-5"  # an offline provider named after a priced model: its calls cost what that model's would


def pipeline(mode: str) -> dict[str, Any]:
    """test_pipeline's fan-out and judge pipeline, its analyze and review stages in ``mode``."""
    batch = {"mode": mode, "batch": {"maxItems": 4, "maxWaitSeconds": 1}} if mode == "Batch" else {}
    return {
        "items": ["semiconductors", "software"],
        "providers": {
            "local": {
                "type": "offline",
                "model": MODEL,
                "offline": {"seed": SEED, "rejectionRate": REJECTION_RATE, "batchTurnaroundSeconds": 1},
            }
        },
        "stages": [
            {
                "name": "rank",
                "provider": "local",
                "prompt": "Rank stocks in {{ item }}",
                "output": "json",
                "fanOut": {"path": "$.stocks", "key": "ticker", "sortBy": "score", "max": 3},
            },
            {
                "name": "analyze",
                "provider": "local",
                "prompt": "Analyze {{ item }}: {{ input }} {{ feedback }}",
                **batch,
            },
            {
                "name": "review",
                "type": "judge",
                "provider": "local",
                "reviews": "analyze",
                "maxRejections": 2,
                "onExhausted": "AcceptLast",
                **batch,
            },
            {"name": "report", "provider": "local", "prompt": "Report on {{ input }}"},
        ],
    }


async def _run(workers: Any, redis: queue.Redis, simulate: Any, assert_recorded: Any, mode: str) -> dict[str, Any]:
    batch = workers.batch(pipeline(mode))
    expected = simulate(batch.plan, batch.items).outcomes
    await batch.seed()
    for stage in batch.plan.stages:
        workers.start(batch, stage.name)

    async def finished() -> dict[str, str] | None:
        raw = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
        if len(raw) < len(expected):
            return None
        for stage in batch.plan.stages:
            if not (await consumer.stage_counts(redis, batch.uid, stage.name)).drained:
                return None
        return dict(raw)

    recorded = await workers.eventually(finished, 90, f"every predicted attempt recorded in {mode} mode")
    assert_recorded(recorded, expected)
    return {s.name: await consumer.stage_counts(redis, batch.uid, s.name) for s in batch.plan.stages}


@pytest.mark.timeout(240)
async def test_batch_mode_records_what_realtime_does_at_half_the_price(
    workers: Any, redis: queue.Redis, simulate: Any, assert_recorded: Any
) -> None:
    realtime = await _run(workers, redis, simulate, assert_recorded, "Realtime")
    batched = await _run(workers, redis, simulate, assert_recorded, "Batch")
    table = pricing.PriceTable.default()
    for stage in ("analyze", "review"):
        now, before = batched[stage].counters, realtime[stage].counters
        # The same answers to the same prompts: the same tokens, each call at the batch price.
        assert now[wire.USAGE_INPUT_TOKENS] == before[wire.USAGE_INPUT_TOKENS] > 0
        assert now[wire.USAGE_OUTPUT_TOKENS] == before[wire.USAGE_OUTPUT_TOKENS] > 0
        calls = now[wire.COUNT_SUCCEEDED] + now.get(wire.COUNT_REJECTED, 0)
        # Each call's cost is truncated to a nano-dollar on its own: halves may differ by one per call.
        assert abs(2 * now[wire.USAGE_COST_NUSD] - before[wire.USAGE_COST_NUSD]) <= 2 * calls, stage
        assert now[wire.COUNT_PROVIDER_BATCHES] == now[wire.COUNT_PROVIDER_BATCHES_ENDED] >= 2  # one per judge round
        assert wire.COUNT_PROVIDER_BATCHES not in before
    for stage in ("rank", "report"):  # the realtime stages cost the same in both runs
        assert batched[stage].counters[wire.USAGE_COST_NUSD] == realtime[stage].counters[wire.USAGE_COST_NUSD]
    assert table.price(MODEL) is not None


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.timeout(120)
async def test_a_stage_runs_through_the_providers_batch_api(
    api: str, batch_stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    items = [f"B{n:03d}" for n in range(25)]
    model = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1"}[api]
    spec = batch_stand_in.batch_spec(
        api,
        items,
        model=model,
        mode="Batch",
        batch={"maxItems": 10, "maxWaitSeconds": 1},
        retry={"maxAttempts": 3, "backoff": {"initialSeconds": 0.2}},
    )
    # One request errors (retried in a later provider batch), one expires (retried too).
    batch_stand_in.set_plan([{"kind": "server_error", "match": "B003"}, {"kind": "expired", "match": "B007"}])
    batch = workers.batch(spec)
    await batch.seed()
    worker = workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    async def done() -> queue.StageCounts | None:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        return counts if counts.counters.get(wire.COUNT_SUCCEEDED, 0) == len(items) and counts.drained else None

    counts = await workers.eventually(done, 60, "every item analyzed")
    assert counts.counters[wire.COUNT_RETRIES] == 2
    submitted = batch_stand_in.batch_submissions()
    # Each attempt's request went to the provider once: 25 first attempts, and the 2 retried ones once more.
    assert len(submitted) == len(items) + 2
    assert set(submitted.values()) == {1}
    made = counts.counters[wire.COUNT_PROVIDER_BATCHES]
    # 25 items at most 10 a batch: 3 batches, and up to two more for the retries (which may join the third).
    assert 3 <= made <= 5
    assert counts.counters[wire.COUNT_PROVIDER_BATCHES_ENDED] == made
    # What the provider kept of them (prompts and answers) is deleted once collected.
    if api == "openai":
        held, deleted = batch_stand_in.files()
        assert held == []
        assert len(deleted) >= 2 * made  # each batch's input and output file, and the error file of two
        assert len(batch_stand_in.provider_batches()) == made  # OpenAI keeps the batch itself (without its files)
    else:
        assert batch_stand_in.provider_batches() == []  # a deleted message batch is gone with its results
    # The usage recorded is the stand-in's answers', at the price table's batch prices: half the realtime ones.
    usage = {k: int(v) for k, v in (await redis.hgetall(keys.BatchKeys(batch.uid).usage)).items()}
    tokens = pricing.Tokens(usage[wire.USAGE_INPUT_TOKENS], usage[wire.USAGE_OUTPUT_TOKENS])
    table = pricing.PriceTable.default()
    calls = len(items) + 2
    assert abs(usage[wire.USAGE_COST_NUSD] - int(table.cost_of(model, tokens, batch=True) * NANO)) <= calls
    assert abs(2 * usage[wire.USAGE_COST_NUSD] - int(table.cost_of(model, tokens) * NANO)) <= 2 * calls
    records = await redis.hlen(keys.BatchKeys(batch.uid).provider_batches("analyze"))
    assert records == 0
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=15) == 0


HOLDS = {
    "before": {"kind": "batch_create_hang", "delay_s": 6},  # killed inside a create that creates nothing
    "after": {"kind": "batch_created_hang", "delay_s": 6},  # killed after the batch exists, before its id is kept
    "submitted": {"kind": "batch_slow", "delay_s": 3},  # killed while the recorded batch runs
}


@pytest.mark.parametrize(
    ("api", "where"),
    [
        ("anthropic", "before"),
        ("anthropic", "after"),
        ("anthropic", "submitted"),
        ("openai", "after"),
        ("openai", "submitted"),
    ],
)
@pytest.mark.timeout(90)
async def test_a_worker_killed_while_submitting_never_records_a_result_twice(
    api: str, where: str, batch_stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    items = [f"K{n:02d}" for n in range(12)]
    spec = batch_stand_in.batch_spec(api, items, mode="Batch", batch={"maxItems": 100, "maxWaitSeconds": 1})
    batch_stand_in.set_plan([HOLDS[where]])
    batch = workers.batch(spec)
    await batch.seed()
    first = workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)
    records = keys.BatchKeys(batch.uid).provider_batches("analyze")

    async def at_the_step() -> bool:
        if where != "submitted":
            return batch_stand_in.held_creates() == 1
        return any(json.loads(raw)[wire.PB_ID] for raw in await redis.hvals(records))

    await workers.eventually(at_the_step, 20, f"the worker {where} its provider batch is created")
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait()
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    async def done() -> queue.StageCounts | None:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        return counts if counts.counters.get(wire.COUNT_SUCCEEDED, 0) >= len(items) and counts.drained else None

    counts = await workers.eventually(done, 45, "every item analyzed after the restart")
    # Each item's attempt was recorded once, by its first attempt: nothing ran as a retry or a duplicate.
    assert counts.counters[wire.COUNT_SUCCEEDED] == len(items)
    outcomes = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
    assert sorted(outcomes) == sorted(keys.BatchKeys(batch.uid).idem("analyze", item, 0, 1) for item in items)
    submitted = batch_stand_in.batch_submissions()
    ids = {batches.custom_id(key) for key in outcomes}
    assert set(submitted) == ids
    if (api, where) == ("anthropic", "after"):
        # Anthropic keeps nothing to find a batch by: the one created before the kill is orphaned (its results
        # are never read) and the items go again in one more batch. At most one duplicate batch, no result twice.
        assert set(submitted.values()) == {2}
    else:
        # The batch was never created, or its id was recorded (or OpenAI found it by its tag): adopted, not resent.
        assert set(submitted.values()) == {1}

    async def forgotten() -> bool:  # the record goes once the provider's copy is deleted, after the last result
        return await redis.hlen(records) == 0

    await workers.eventually(forgotten, 10, "the provider batch's record removed")
