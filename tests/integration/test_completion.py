"""Sealing from atomic snapshots: Job-mode workers of every stage exit cleanly, in order, with nothing lost."""

import asyncio
from typing import Any

import pytest

from analysis_core import queue
from analysis_operator import completion, producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(120)
async def test_job_workers_exit_once_sealed_and_the_batch_completes(workers: Any, redis: queue.Redis) -> None:
    items = [f"I{i:02d}" for i in range(30)]
    batch = workers.batch(
        {
            "items": items,
            "providers": {
                "local": {"type": "offline", "offline": {"seed": 3, "latencyMilliseconds": 20, "rejectionRate": 0.5}}
            },
            "stages": [
                {"name": "draft", "provider": "local", "prompt": "{{ item }} {{ feedback }}"},
                {
                    "name": "review",
                    "type": "judge",
                    "provider": "local",
                    "reviews": "draft",
                    "maxRejections": 2,
                    "onExhausted": "AcceptLast",
                },
                {"name": "report", "provider": "local", "prompt": "{{ input }}"},
            ],
        }
    )
    stages = [s.name for s in batch.plan.stages]
    running = [workers.start(batch, stage, ANALYSIS_MODE="job") for stage in stages]
    await batch.seed()
    seal_order: list[str] = []
    while True:  # the operator's part
        snap = await producer.snapshot(redis, batch.uid, stages)
        for stage in completion.sealable(batch.plan, snap):
            await producer.seal(redis, batch.uid, stage)
            seal_order.append(stage)
        if completion.state(batch.plan, snap, max_failed_items=0).phase is completion.Phase.COMPLETE:
            break
        await asyncio.sleep(0.05)
    assert seal_order == ["draft", "review", "report"]
    for worker in running:
        assert await asyncio.to_thread(worker.process.wait, 20) == 0
    final = await producer.snapshot(redis, batch.uid, stages)
    assert final.stages["report"].counters["succeeded"] == len(items)
    assert final.stages["review"].counters.get("rejected", 0) > 0  # the loop really looped before sealing
