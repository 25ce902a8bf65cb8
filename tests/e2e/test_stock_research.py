"""examples/stock-research.yaml, run by real workers, yields exactly what the offline seed predicts.

Every construct is on the path: fan-out (research -> sub-sectors), an approval
gate the example opens itself, fan-in (rank collects every sub-sector), a
sorted, capped fan-out (the top 5), a judge loop with rejections, and a JSON
report checked against its schema. The test plays the operator's part:
release approvals, collect, seal from atomic snapshots, until the batch is
Complete. The prediction is a pure simulation with the same routing rules
and the offline provider's answers, which depend only on seed, stage, item
and round.
"""

import asyncio
import json
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_core import completion, keys, plan, queue, routing
from analysis_core.api import v1alpha1
from analysis_worker.providers import base, offline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stock-research.yaml"


def offline_answer(the_plan: plan.Plan, stage: plan.StagePlan, message: queue.Message) -> str:
    provider = the_plan.providers[stage.provider or ""]
    options = provider.offline or v1alpha1.OfflineOptions()
    kind = (
        base.OutputKind.VERDICT
        if stage.type is v1alpha1.StageType.JUDGE
        else (base.OutputKind.JSON if stage.output is v1alpha1.OutputFormat.JSON else base.OutputKind.TEXT)
    )
    fan = None if stage.fan_out is None else base.FanOutHint(stage.fan_out.path, stage.fan_out.key,
                                                             stage.fan_out.sort_by)  # fmt: skip
    request = base.Request(prompt="", max_tokens=1, timeout_s=1, output=kind, item=message.item, stage=stage.name,
                           round=message.round, json_schema=stage.json_schema, fan_out=fan)  # fmt: skip
    return offline.answer(request, seed=options.seed, rejection_rate=options.rejection_rate)


def predict(the_plan: plan.Plan, items: list[str]) -> dict[str, str]:
    """idempotency key -> status, running the pipeline's rules without Redis."""
    k = keys.BatchKeys(the_plan.uid)
    todo: dict[str, deque[queue.Message]] = {s.name: deque() for s in the_plan.stages}
    gathered: dict[str, dict[str, str]] = {s.name: {} for s in the_plan.stages}
    todo[the_plan.stages[0].name].extend(queue.Message(item) for item in items)
    outcomes: dict[str, str] = {}
    inputs: dict[str, str] = {}
    while True:
        busy = next((s for s in the_plan.stages if todo[s.name]), None)
        if busy is None:
            waiting = next((s for s in the_plan.stages if gathered[s.name]), None)
            if waiting is None:
                return outcomes
            todo[waiting.name].append(queue.Message(queue.collected_id(gathered[waiting.name]),
                                                    input=f"{the_plan.uid}/{waiting.name}/collected"))  # fmt: skip
            gathered[waiting.name] = {}
            continue
        message = todo[busy.name].popleft()
        idem = k.idem(busy.name, message.item, message.round, message.attempt)
        if busy.type is v1alpha1.StageType.APPROVAL:  # opened by the example's own spec.approvals
            routed = routing.Routed("succeeded", routing._onward(the_plan, busy, message), {}, {})
        else:
            output = routing.parse_output(busy, offline_answer(the_plan, busy, message))
            routed = routing.after_success(the_plan, busy, message, idem, output,
                                           reviewed_input=inputs.get(message.input, ""))  # fmt: skip
        outcomes[idem] = routed.status
        inputs[idem] = message.input
        for route in routed.routes:
            if route.gather:
                gathered[route.stage][route.message.item] = route.message.input
            else:
                todo[route.stage].append(route.message)


@pytest.mark.timeout(180)
async def test_stock_research_runs_to_the_predicted_results(workers: Any, redis: queue.Redis) -> None:
    spec = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["spec"]
    for provider in spec["providers"].values():  # the demo's latency only slows the test down
        provider.setdefault("offline", {})["latencyMilliseconds"] = 0
    batch = workers.batch(spec)
    the_plan = batch.plan
    expected = predict(the_plan, batch.items)
    names = [s.name for s in the_plan.stages]
    # The seed exercises the judge loop.
    assert any(v == "rejected" for key, v in expected.items() if key.split("/")[1] == "review")
    for stage in the_plan.stages:
        if stage.type is not v1alpha1.StageType.APPROVAL:
            workers.start(batch, stage.name, ANALYSIS_MODE="job")
    await batch.seed()
    while True:  # the operator's part
        snap = await queue.snapshot(redis, batch.uid, names)
        for gate, approved in the_plan.approvals.items():
            after = the_plan.stage(gate).next
            gather = after is not None and the_plan.stage(after).collect
            await queue.release(redis, batch.uid, gate, after, approved, gather=gather)
        for stage in completion.collectable(the_plan, snap):
            await queue.collect(redis, batch.uid, stage)
        for stage in completion.sealable(the_plan, snap):
            await queue.seal(redis, batch.uid, stage)
        state = completion.state(the_plan, snap, max_failed_items=1)
        assert state.phase is not completion.Phase.FAILED, state.reason
        if state.phase is completion.Phase.COMPLETE:
            break
        await asyncio.sleep(0.05)
    recorded = {key: json.loads(value)["status"] for key, value in
                (await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)).items()}  # fmt: skip
    assert recorded == expected
    for worker in workers.started:
        assert await asyncio.to_thread(worker.process.wait, 30) == 0
    # The top 5, each with a report that matches the example's schema.
    reports = [key for key, status in expected.items() if key.split("/")[1] == "report" and status == "succeeded"]
    assert len(reports) == 5
    for key in reports:
        report = json.loads(await redis.hget(keys.BatchKeys(batch.uid).results, key) or "")
        assert set(report) >= {"ticker", "thesis", "risks", "rating"}
        assert report["rating"] in ("buy", "hold", "sell")
