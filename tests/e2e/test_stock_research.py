"""examples/stock-research.yaml, run by real workers, yields exactly what the offline seed predicts.

Every construct is on the path: fan-out (research -> sub-sectors), an approval
gate the example opens itself, fan-in (rank collects every sub-sector), a
sorted, capped fan-out (the top 5), a judge loop with rejections, and a JSON
report checked against its schema. The test plays the operator's part:
release approvals, collect, seal from atomic snapshots, until the batch is
Complete. The prediction is the ``simulate`` fixture: the same routing rules
over the offline provider's answers, which depend only on seed, stage, item
and round. It runs twice, the second time with the analyze and review stages
in ``mode: Batch`` (the offline provider's simulated provider batches): the
same results, and those two stages cost half.
"""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_core import keys, queue, wire
from analysis_core.api import v1alpha1
from analysis_worker import consumer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stock-research.yaml"
BATCHED = ("analyze", "review")  # the stages the batch-mode run sends through the provider's batch API


def example(mode: str) -> dict[str, Any]:
    """The example's spec, its analyze and review stages in ``mode`` (the demo's latency only slows tests down)."""
    spec = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["spec"]
    for provider in spec["providers"].values():
        options = provider.setdefault("offline", {})
        options["latencyMilliseconds"] = 0
        options["batchTurnaroundSeconds"] = 1
    for stage in spec["stages"]:
        if stage["name"] in BATCHED:
            stage["mode"] = mode
            if mode == "Batch":
                stage["batch"] = {"maxItems": 100, "maxWaitSeconds": 1}
            else:
                stage.pop("batch", None)
    return spec


async def _run(
    mode: str, workers: Any, redis: queue.Redis, simulate: Any, assert_recorded: Any, operate: Any
) -> dict[str, queue.StageCounts]:
    batch = workers.batch(example(mode))
    the_plan = batch.plan
    expected = simulate(the_plan, batch.items).outcomes
    # The seed exercises the judge loop.
    assert any(v == "rejected" for key, v in expected.items() if key.split("/")[1] == "review")
    for stage in the_plan.stages:
        if stage.type is not v1alpha1.StageType.APPROVAL:
            workers.start(batch, stage.name, ANALYSIS_MODE="job")
    await batch.seed()
    await operate(redis, batch)
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
    workers.started.clear()
    return {s.name: await consumer.stage_counts(redis, batch.uid, s.name) for s in the_plan.stages}


@pytest.mark.timeout(240)
async def test_stock_research_runs_to_the_predicted_results_in_both_modes_and_batch_costs_half(
    workers: Any, redis: queue.Redis, simulate: Any, assert_recorded: Any, operate: Any
) -> None:
    realtime = await _run("Realtime", workers, redis, simulate, assert_recorded, operate)
    batched = await _run("Batch", workers, redis, simulate, assert_recorded, operate)
    for name, counts in batched.items():
        now, before = counts.counters, realtime[name].counters
        if name not in BATCHED:  # the realtime stages cost the same in both runs
            assert now.get(wire.USAGE_COST_NUSD, 0) == before.get(wire.USAGE_COST_NUSD, 0), name
            continue
        # The same answers to the same prompts: the same tokens, each at the batch price, half the realtime one.
        assert now[wire.USAGE_INPUT_TOKENS] == before[wire.USAGE_INPUT_TOKENS] > 0
        assert now[wire.USAGE_OUTPUT_TOKENS] == before[wire.USAGE_OUTPUT_TOKENS] > 0
        calls = now.get(wire.COUNT_SUCCEEDED, 0) + now.get(wire.COUNT_REJECTED, 0)
        # A call's cost is truncated to a nano-dollar on its own: the halves may differ by one per call.
        assert before[wire.USAGE_COST_NUSD] > 0
        assert abs(2 * now[wire.USAGE_COST_NUSD] - before[wire.USAGE_COST_NUSD]) <= 2 * calls, name
        assert now[wire.COUNT_PROVIDER_BATCHES] == now[wire.COUNT_PROVIDER_BATCHES_ENDED] >= 1
        assert wire.COUNT_PROVIDER_BATCHES not in before
