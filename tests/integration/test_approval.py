"""Approval gates: items wait until approvals name them, and approvals added later reach them at once."""

from typing import Any

import pytest

from analysis_core import plan, queue
from analysis_operator import completion, producer
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(120)
async def test_items_wait_at_the_gate_until_approved(workers: Any, redis: queue.Redis) -> None:
    items = ["NVDA", "AMD", "TSM", "INTC"]
    batch = workers.batch(
        {
            "items": items,
            "providers": {"local": {"type": "offline"}},
            "stages": [
                {"name": "draft", "provider": "local", "prompt": "{{ item }}"},
                {"name": "sign-off", "type": "approval"},
                {"name": "publish", "provider": "local", "prompt": "{{ input }}"},
            ],
            "approvals": [{"stage": "sign-off", "items": ["AMD"]}],
        }
    )
    assert batch.plan.approvals == {"sign-off": ["AMD"]}
    await batch.seed()
    for stage in ("draft", "publish"):
        workers.start(batch, stage)
    stages = [s.name for s in batch.plan.stages]

    async def waiting() -> int:
        return (await producer.snapshot(redis, batch.uid, stages)).stages["sign-off"].ready

    await workers.eventually(lambda: _equals(waiting, len(items)), 20, "every item waiting at the gate")
    # The operator releases what the plan's approvals name; the rest keeps waiting.
    assert await producer.release(redis, batch.uid, "sign-off", "publish", batch.plan.approvals["sign-off"]) == 1
    assert await producer.release(redis, batch.uid, "sign-off", "publish", ["AMD"]) == 0  # idempotent

    async def published() -> int:
        return (await consumer.stage_counts(redis, batch.uid, "publish")).counters.get("succeeded", 0)

    await workers.eventually(lambda: _equals(published, 1), 20, "AMD published")
    snap = await producer.snapshot(redis, batch.uid, stages)
    assert snap.stages["sign-off"].ready == 3
    # What status shows of the gate: the items still waiting, oldest first, bounded.
    waiting_now = await producer.held_items(redis, batch.uid, "sign-off", 10)
    assert sorted(waiting_now) == ["INTC", "NVDA", "TSM"]
    assert len(await producer.held_items(redis, batch.uid, "sign-off", 2)) == 2
    assert completion.state(batch.plan, snap, 0).phase is completion.Phase.RUNNING
    # An approval of the whole stage, added later (no restart), releases everyone still waiting.
    later = plan.Plan.model_validate({**batch.plan.model_dump(), "approvals": {"sign-off": None}})
    assert await producer.release(redis, batch.uid, "sign-off", "publish", later.approvals["sign-off"]) == 3
    await workers.eventually(lambda: _equals(published, len(items)), 20, "everything published")
    gate = (await consumer.stage_counts(redis, batch.uid, "sign-off")).counters
    assert gate == {"succeeded": 4, "approved": 4}
    assert await producer.held_items(redis, batch.uid, "sign-off", 10) == []


async def _equals(count: Any, n: int) -> bool:
    return bool(await count() == n)
