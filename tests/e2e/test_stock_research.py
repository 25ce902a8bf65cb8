"""examples/stock-research.yaml, run by real workers, yields exactly what the offline seed predicts.

Every construct is on the path: fan-out (research -> sub-sectors), an approval
gate the example opens itself, fan-in (rank collects every sub-sector), a
sorted, capped fan-out (the top 5), a judge loop with rejections, and a JSON
report checked against its schema. The test plays the operator's part:
release approvals, collect, seal from atomic snapshots, until the batch is
Complete. The prediction is the ``simulate`` fixture: the same routing rules
over the offline provider's answers, which depend only on seed, stage, item
and round.
"""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_core import keys, queue
from analysis_core.api import v1alpha1
from analysis_operator import completion, producer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stock-research.yaml"


@pytest.mark.timeout(180)
async def test_stock_research_runs_to_the_predicted_results(
    workers: Any, redis: queue.Redis, simulate: Any, assert_recorded: Any
) -> None:
    spec = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["spec"]
    for provider in spec["providers"].values():  # the demo's latency only slows the test down
        provider.setdefault("offline", {})["latencyMilliseconds"] = 0
    batch = workers.batch(spec)
    the_plan = batch.plan
    expected = simulate(the_plan, batch.items).outcomes
    names = [s.name for s in the_plan.stages]
    # The seed exercises the judge loop.
    assert any(v == "rejected" for key, v in expected.items() if key.split("/")[1] == "review")
    for stage in the_plan.stages:
        if stage.type is not v1alpha1.StageType.APPROVAL:
            workers.start(batch, stage.name, ANALYSIS_MODE="job")
    await batch.seed()
    while True:  # the operator's part
        snap = await producer.snapshot(redis, batch.uid, names)
        for gate, approved in the_plan.approvals.items():
            after = the_plan.stage(gate).next
            gather = after is not None and the_plan.stage(after).collect
            await producer.release(redis, batch.uid, gate, after, approved, gather=gather)
        for stage in completion.collectable(the_plan, snap):
            await producer.collect(redis, batch.uid, stage)
        for stage in completion.sealable(the_plan, snap):
            await producer.seal(redis, batch.uid, stage)
        state = completion.state(the_plan, snap, max_failed_items=1)
        assert state.phase is not completion.Phase.FAILED, state.reason
        if state.phase is completion.Phase.COMPLETE:
            break
        await asyncio.sleep(0.05)
    assert_recorded(await redis.hgetall(keys.BatchKeys(batch.uid).outcomes), expected)
    for worker in workers.started:
        assert await asyncio.to_thread(worker.process.wait, 30) == 0
    # The top 5, each with a report that matches the example's schema.
    reports = [key for key, status in expected.items() if key.split("/")[1] == "report" and status == "succeeded"]
    assert len(reports) == 5
    for key in reports:
        report = json.loads(await redis.hget(keys.BatchKeys(batch.uid).results, key) or "")
        assert set(report) >= {"ticker", "thesis", "risks", "rating"}
        assert report["rating"] in ("buy", "hold", "sell")
