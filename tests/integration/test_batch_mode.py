"""``mode: Batch`` stages end to end: real worker processes, real Redis, the real SDKs against the stand-in's batch APIs.

A batch-mode stage's worker gathers its items into provider batches, submits
them, polls them and records each result as a realtime call's would be
recorded: the same outcomes, routes, judge rounds and fan-outs, at the batch
price. The stock-research example runs once in each mode on the stand-in
(tests/e2e/test_stock_research.py runs it on the offline provider's
simulated batches); a worker is killed at each step of submitting; a
request that errors or expires is retried in a later provider batch.
"""

import asyncio
import functools
import json
import os
import signal
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_core import keys, pricing, queue, wire
from analysis_devcluster import standin
from analysis_operator import producer
from analysis_worker import consumer
from analysis_worker.providers import batches

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-batch-mode-72c1"
NANO = Decimal(10) ** 9


async def analyzed(redis: queue.Redis, uid: str, items: int) -> queue.StageCounts | None:
    """The analyze stage's counts once ``items`` items succeeded there and it drained; None before."""
    counts = await consumer.stage_counts(redis, uid, "analyze")
    return counts if counts.counters.get(wire.COUNT_SUCCEEDED, 0) == items and counts.drained else None


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stock-research.yaml"
APPROVE = json.dumps({"approved": True, "feedback": "", "score": 0.8})
REJECT = json.dumps({"approved": False, "feedback": "name the risks", "score": 0.3})
SUB_SECTORS = {"subSectors": [{"name": n, "why": "large"} for n in ("memory", "foundry", "equipment")]}
STOCKS = {
    "stocks": [{"ticker": t, "score": s, "reason": "leader"} for t, s in zip("ABCDEFG", range(9, 2, -1), strict=True)]
}
REPORT = {"ticker": "X", "thesis": "growth", "risks": ["cycles"], "rating": "hold"}


def stand_in_example(stand_in: standin.StandIn, mode: str) -> dict[str, Any]:
    """The stock-research example on the stand-in: the analyst on Anthropic, the judge on OpenAI; analyze and
    review in ``mode``."""
    spec = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["spec"]
    spec["providers"] = {
        name: {
            "type": api,
            "model": model,
            "baseURL": stand_in.base_url(api),
            "apiKeySecretRef": {"name": "llm-keys", "key": api},
        }
        for name, api, model in (("analyst", "anthropic", "claude-sonnet-4-5"), ("judge", "openai", "gpt-4.1"))
    }
    for stage in spec["stages"]:
        stage.pop("rateLimit", None)
        if stage["name"] in ("analyze", "review") and mode == "Batch":
            stage["mode"] = mode
            stage["batch"] = {"maxItems": 100, "maxWaitSeconds": 1}
    return spec


def answers() -> list[dict[str, Any]]:
    """What the stand-in answers each stage: each matched by its prompt, so the same in any order. Item C's first
    draft is rejected, every other review approves."""
    return [
        {"kind": "ok", "match": "List the main sub-sectors", "text": json.dumps(SUB_SECTORS)},
        {"kind": "ok", "match": "These sub-sectors were researched", "text": json.dumps(STOCKS)},
        {"kind": "ok", "match": "/C:\n", "text": REJECT},  # the judge's prompt: "Answer about <item>:\n"
        {"kind": "ok", "match": "Review the answer below", "text": APPROVE, "times": 20},
        {"kind": "ok", "match": "Format this analysis of", "text": json.dumps(REPORT), "times": 20},
    ]


async def _example(
    mode: str, stand_in: standin.StandIn, workers: Any, redis: queue.Redis, operate: Any
) -> tuple[dict[str, str], dict[str, str], dict[str, queue.StageCounts]]:
    stand_in.reset()
    stand_in.batch_turnaround(0.3)
    stand_in.set_plan(answers())
    batch = workers.batch(stand_in_example(stand_in, mode))
    for stage in batch.plan.stages:
        if stage.provider is not None:
            workers.start(batch, stage.name, ANALYSIS_MODE="job", ANALYSIS_API_KEY=API_KEY)
    await batch.seed()
    await operate(redis, batch)
    k = keys.BatchKeys(batch.uid)
    # Keyed without the batch's uid, so that two runs compare.
    outcomes = {
        key.split("/", 1)[1]: json.loads(v).get(wire.OUTCOME_STATUS, v) if v != wire.OUTCOME_SPENT else v
        for key, v in (await redis.hgetall(k.outcomes)).items()
    }
    results = {key.split("/", 1)[1]: v for key, v in (await redis.hgetall(k.results)).items()}
    counts = {s.name: await consumer.stage_counts(redis, batch.uid, s.name) for s in batch.plan.stages}
    workers.kill_all()
    workers.started.clear()
    return outcomes, results, counts


@pytest.mark.timeout(180)
async def test_stock_research_on_the_real_sdks_gives_the_same_results_in_batch_mode_at_half_the_price(
    server: standin.StandIn, workers: Any, redis: queue.Redis, operate: Any
) -> None:
    outcomes, results, realtime = await _example("Realtime", server, workers, redis, operate)
    assert realtime["review"].counters[wire.COUNT_REJECTED] == 1  # the judge loop ran: C went back once
    batched_outcomes, batched_results, batched = await _example("Batch", server, workers, redis, operate)
    assert batched_outcomes == outcomes
    assert batched_results == results
    for name in ("analyze", "review"):
        now, before = batched[name].counters, realtime[name].counters
        assert now[wire.USAGE_INPUT_TOKENS] == before[wire.USAGE_INPUT_TOKENS] > 0
        calls = now.get(wire.COUNT_SUCCEEDED, 0) + now.get(wire.COUNT_REJECTED, 0)
        assert abs(2 * now[wire.USAGE_COST_NUSD] - before[wire.USAGE_COST_NUSD]) <= 2 * calls, name
        assert now[wire.COUNT_PROVIDER_BATCHES] >= 2  # the rejected draft went in a later provider batch
    for name in ("research", "rank", "report"):
        assert batched[name].counters[wire.USAGE_COST_NUSD] == realtime[name].counters[wire.USAGE_COST_NUSD]


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

    done = functools.partial(analyzed, redis, batch.uid, len(items))

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
        ("openai", "before"),  # and the input file it uploaded is deleted by the next worker
        ("anthropic", "after"),
        ("openai", "after"),
        ("anthropic", "submitted"),  # adopting a batch with an id is the same for both providers
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
    if api == "openai":  # every file that held prompts or answers is deleted, one uploaded for nothing too
        held, deleted = batch_stand_in.files()
        assert held == []
        assert deleted


@pytest.mark.timeout(90)
async def test_suspend_hands_back_what_was_not_submitted_and_collects_what_was(
    batch_stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    items = [f"S{n:02d}" for n in range(20)]
    spec = batch_stand_in.batch_spec(
        "anthropic", items, mode="Batch", concurrency=2, batch={"maxItems": 10, "maxWaitSeconds": 60}
    )
    # An approval gate in front holds five items back, so more can still come: the pool waits for them.
    spec["stages"].insert(0, {"name": "gate", "type": "approval"})
    batch_stand_in.set_plan([{"kind": "batch_slow", "delay_s": 2}])
    batch = workers.batch(spec)
    await batch.seed()
    await producer.release(redis, batch.uid, "gate", "analyze", items[:15])
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)
    records = keys.BatchKeys(batch.uid).provider_batches("analyze")

    async def submitted() -> bool:
        return any(json.loads(raw)[wire.PB_ID] for raw in await redis.hvals(records))

    # Ten go at once (maxItems); the other five wait for more, up to maxWaitSeconds.
    await workers.eventually(submitted, 20, "the first provider batch submitted")
    await producer.suspend(redis, batch.uid, "spec.suspend")

    async def settled() -> queue.StageCounts | None:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        done = counts.counters.get(wire.COUNT_SUCCEEDED, 0) == 10 and counts.running == 0 and counts.ready == 5
        return counts if done and await redis.hlen(records) == 0 else None

    # The submitted batch runs to its end and is collected; the five waiting are back in the stream, unsubmitted.
    counts = await workers.eventually(settled, 20, "the submitted batch collected, the rest handed back")
    assert counts.counters[wire.COUNT_PROVIDER_BATCHES] == 1
    await asyncio.sleep(1.5)  # suspended: nothing is claimed or submitted
    assert len(batch_stand_in.batch_submissions()) == 10
    await producer.resume(redis, batch.uid)
    await producer.release(redis, batch.uid, "gate", "analyze", items[15:])  # nothing more can come now

    done = functools.partial(analyzed, redis, batch.uid, len(items))

    await workers.eventually(done, 20, "every item analyzed after the resume")
    assert set(batch_stand_in.batch_submissions().values()) == {1}


@pytest.mark.timeout(60)
async def test_deleting_the_batch_cancels_its_provider_batches(
    batch_stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    items = [f"D{n:02d}" for n in range(8)]
    spec = batch_stand_in.batch_spec("openai", items, mode="Batch", batch={"maxItems": 8, "maxWaitSeconds": 60})
    batch_stand_in.set_plan([{"kind": "batch_slow", "delay_s": 60}])
    batch = workers.batch(spec)
    await batch.seed()
    worker = workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)
    records = keys.BatchKeys(batch.uid).provider_batches("analyze")

    async def submitted() -> bool:
        return any(json.loads(raw)[wire.PB_ID] for raw in await redis.hvals(records))

    await workers.eventually(submitted, 20, "the provider batch submitted")
    await producer.deleting(redis, batch.uid)  # the operator's finalizer, before it deletes the workloads
    worker.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.process.wait, 20)
    (made,) = batch_stand_in.provider_batches()
    assert made["status"] in ("cancelling", "cancelled")
    held, deleted = batch_stand_in.files()
    assert held == []  # its input file (the prompts) is deleted too
    assert deleted
    assert await redis.hlen(records) == 0


@pytest.mark.timeout(60)
async def test_a_provider_batch_holds_its_worst_case_against_the_budget_until_it_is_collected(
    batch_stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    items = [f"M{n}" for n in range(9)]
    spec = batch_stand_in.batch_spec(
        "openai", items, model="gpt-4.1", mode="Batch", batch={"maxItems": 9, "maxWaitSeconds": 1}
    )
    # A request's worst case is its whole maxTokens (4096) of output at the batch price ($4/M): about $0.0164.
    # $0.05 has room for three at a time; each answer costs a tiny part of that, so the next three go once the
    # batch before is collected and its hold is let go.
    spec["budget"] = {"maxCostUSD": 0.05}
    batch = workers.batch(spec)
    await batch.seed()
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    done = functools.partial(analyzed, redis, batch.uid, len(items))

    await workers.eventually(done, 40, "every item analyzed within the budget")
    assert [b["requests"] for b in batch_stand_in.provider_batches()] == [3, 3, 3]
    usage = await consumer.usage(redis, batch.uid)
    assert 0 < usage[wire.USAGE_COST_NUSD] < 0.05 * 1e9
    assert not await redis.hexists(keys.BatchKeys(batch.uid).flags, wire.FLAG_BUDGET_EXCEEDED)


@pytest.mark.timeout(240)
async def test_ten_thousand_items_go_in_as_few_provider_batches_as_their_size_allows_each_request_once(
    batch_stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    items = [f"T{n:05d}" for n in range(10_000)]
    size = 2_500
    # The spec lists one item (an inline list holds at most 5,000; more come from itemsFrom); all 10,000 are seeded.
    spec = batch_stand_in.batch_spec(
        "anthropic", items[:1], mode="Batch", batch={"maxItems": size, "maxWaitSeconds": 5}
    )
    batch = workers.batch(spec)
    batch.items = items
    await batch.seed()
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    done = functools.partial(analyzed, redis, batch.uid, len(items))

    counts = await workers.eventually(done, 200, "10,000 items analyzed", interval=0.5)
    assert counts.counters[wire.COUNT_PROVIDER_BATCHES] == -(-len(items) // size)  # ceil: 4, and no retries
    submitted = batch_stand_in.batch_submissions()
    assert len(submitted) == len(items)
    assert set(submitted.values()) == {1}  # no custom_id twice


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.timeout(60)
async def test_a_batch_the_providers_full_queue_refuses_goes_again_without_using_an_attempt(
    api: str, batch_stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    items = [f"Q{n}" for n in range(6)]
    spec = batch_stand_in.batch_spec(api, items, mode="Batch", batch={"maxItems": 6, "maxWaitSeconds": 1})
    batch_stand_in.set_plan([{"kind": "batch_queue_full"}])
    batch = workers.batch(spec)
    await batch.seed()
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    done = functools.partial(analyzed, redis, batch.uid, len(items))

    counts = await workers.eventually(done, 40, "every item analyzed once the queue had room")
    assert wire.COUNT_RETRIES not in counts.counters  # the refusal used no attempt
    outcomes = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
    assert sorted(outcomes) == sorted(keys.BatchKeys(batch.uid).idem("analyze", item, 0, 1) for item in items)
    # Anthropic refuses the create (nothing was made); OpenAI makes the batch and fails it in validation.
    expected = 1 if api == "anthropic" else 2
    assert set(batch_stand_in.batch_submissions().values()) == {expected}
    if api == "openai":
        failed, collected = (b["status"] for b in batch_stand_in.provider_batches())
        assert (failed, collected) == ("failed", "completed")
        assert batch_stand_in.files()[0] == []  # the refused batch's input file is deleted too
