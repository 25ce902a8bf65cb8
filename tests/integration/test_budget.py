"""Budgets: past the batch's token budget workers stop claiming, finish what is in flight, and raise a flag."""

import asyncio
from typing import Any

import pytest

from analysis_core import queue
from analysis_operator import producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(120)
async def test_a_token_budget_stops_new_claims(workers: Any, redis: queue.Redis) -> None:
    items = [f"B{i:02d}" for i in range(40)]
    batch = workers.batch(
        {
            "items": items,
            "providers": {"local": {"type": "offline", "offline": {"latencyMilliseconds": 40}}},
            "stages": [
                {"name": "only", "provider": "local", "prompt": "Analyze {{ item }} in depth", "concurrency": 2}
            ],
            "budget": {"maxTokens": 400},
        }
    )
    assert batch.plan.budget is not None
    await batch.seed()
    worker = workers.start(batch, "only")

    async def flagged() -> dict[str, str] | None:
        snap = await producer.snapshot(redis, batch.uid, ["only"])
        return snap.flags or None

    flags = await workers.eventually(flagged, 30, "the budget flag raised")
    assert "budget.maxTokens is 400" in flags["budget_exceeded"]
    await asyncio.sleep(1.0)  # items in flight finish
    before = await producer.snapshot(redis, batch.uid, ["only"])
    await asyncio.sleep(1.5)
    after = await producer.snapshot(redis, batch.uid, ["only"])
    done = after.stages["only"].counters["succeeded"]
    assert done == before.stages["only"].counters["succeeded"]  # no new claims
    assert 0 < done < len(items)
    assert after.stages["only"].ready == len(items) - done  # the rest waits, nothing lost
    used = after.usage["input_tokens"] + after.usage["output_tokens"]
    per_item = used / done
    # Past the budget only what was already in flight (at most the concurrency) went on.
    assert used < 400 + 2 * per_item + per_item
    assert worker.process.poll() is None  # it waits for the operator; it does not exit


@pytest.mark.timeout(120)
async def test_a_cost_budget_stops_new_claims(workers: Any, redis: queue.Redis, tmp_path: Any) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  priced-offline: {input: 1000, output: 1000}\n", encoding="utf-8")
    items = [f"C{i:02d}" for i in range(40)]
    batch = workers.batch(
        {
            "items": items,
            "providers": {
                "local": {"type": "offline", "model": "priced-offline", "offline": {"latencyMilliseconds": 40}}
            },
            "stages": [
                {"name": "only", "provider": "local", "prompt": "Analyze {{ item }} in depth", "concurrency": 2}
            ],
            "budget": {"maxCostUSD": 0.5},
        }
    )
    await batch.seed()
    workers.start(batch, "only", ANALYSIS_PRICES_PATH=str(prices))

    async def flagged() -> dict[str, str] | None:
        return (await producer.snapshot(redis, batch.uid, ["only"])).flags or None

    flags = await workers.eventually(flagged, 30, "the budget flag raised")
    assert "budget.maxCostUSD is $0.5000" in flags["budget_exceeded"]
    await asyncio.sleep(1.0)
    snap = await producer.snapshot(redis, batch.uid, ["only"])
    assert 0 < snap.stages["only"].counters["succeeded"] < len(items)
    assert snap.usage["cost_nusd"] >= 0.5e9
