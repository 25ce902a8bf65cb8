"""A fan-out and judge pipeline run by real worker processes matches what the offline seed predicts.

The prediction is a pure simulation of the same plan: the offline provider's
``answer`` (a function of seed, stage, item and round) fed through the routing
rules. The run must record exactly the predicted outcome for every attempt,
no more and no fewer, so a routing bug, a lost item or a duplicate fails it.
"""

from collections import deque
from typing import Any

import pytest

from analysis_core import keys, plan, queue, routing
from analysis_core.api import v1alpha1
from analysis_worker.providers import base, offline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED, REJECTION_RATE = 1, 0.5  # a seed whose answers include rejections and an exhausted item


def pipeline(on_exhausted: str, rejection_rate: float = REJECTION_RATE) -> dict[str, Any]:
    return {
        "items": ["semiconductors", "software"],
        "providers": {"local": {"type": "offline", "offline": {"seed": SEED, "rejectionRate": rejection_rate}}},
        "stages": [
            {"name": "rank", "provider": "local", "prompt": "Rank stocks in {{ item }}", "output": "json",
             "fanOut": {"path": "$.stocks", "key": "ticker", "sortBy": "score", "max": 3}},
            {"name": "analyze", "provider": "local", "prompt": "Analyze {{ item }}: {{ input }} {{ feedback }}"},
            {"name": "review", "type": "judge", "provider": "local", "reviews": "analyze", "maxRejections": 2,
             "onExhausted": on_exhausted},
            {"name": "report", "provider": "local", "prompt": "Report on {{ input }}"},
        ],
    }  # fmt: skip


def predict(
    the_plan: plan.Plan, items: list[str], rejection_rate: float = REJECTION_RATE
) -> tuple[dict[str, str], int]:
    """(idempotency key -> status, items out of rejections), from the routing rules and the offline answers."""
    outcomes: dict[str, str] = {}
    exhausted = 0
    inputs: dict[str, str] = {}
    todo = deque((the_plan.stages[0].name, queue.Message(item)) for item in items)
    while todo:
        stage_name, message = todo.popleft()
        stage = the_plan.stage(stage_name)
        kind = (
            base.OutputKind.VERDICT
            if stage.type is v1alpha1.StageType.JUDGE
            else (base.OutputKind.JSON if stage.output is v1alpha1.OutputFormat.JSON else base.OutputKind.TEXT)
        )
        fan = None if stage.fan_out is None else base.FanOutHint(stage.fan_out.path, stage.fan_out.key,
                                                                 stage.fan_out.sort_by)  # fmt: skip
        request = base.Request(
            prompt="",
            max_tokens=10,
            timeout_s=1,
            output=kind,
            item=message.item,
            stage=stage.name,
            round=message.round,
            json_schema=stage.json_schema,
            fan_out=fan,
        )
        text = offline.answer(request, seed=SEED, rejection_rate=rejection_rate)
        idem = keys.BatchKeys(the_plan.uid).idem(stage.name, message.item, message.round, message.attempt)
        routed = routing.after_success(the_plan, stage, message, idem, routing.parse_output(stage, text),
                                       reviewed_input=inputs.get(message.input, ""))  # fmt: skip
        outcomes[idem] = routed.status
        exhausted += routed.increments.get("exhausted", 0)
        inputs[idem] = message.input
        todo.extend((route.stage, route.message) for route in routed.routes)
    return outcomes, exhausted


@pytest.mark.parametrize("on_exhausted", ["AcceptLast", "Fail"])
@pytest.mark.timeout(120)
async def test_the_run_records_exactly_the_predicted_outcomes(
    on_exhausted: str, workers: Any, redis: queue.Redis
) -> None:
    batch = workers.batch(pipeline(on_exhausted))
    expected, exhausted = predict(batch.plan, batch.items)
    # The seed must exercise what this test is about: rejections, and items running out of them.
    assert "rejected" in set(expected.values())
    assert exhausted > 0
    if on_exhausted == "Fail":
        assert "failed" in set(expected.values())
    await batch.seed()
    for stage in batch.plan.stages:
        workers.start(batch, stage.name)

    async def finished() -> dict[str, str] | None:
        raw = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
        if len(raw) < len(expected):
            return None
        for stage in batch.plan.stages:
            if not (await queue.stage_counts(redis, batch.uid, stage.name)).drained:
                return None
        return {key: routing_status(value) for key, value in raw.items()}

    recorded = await workers.eventually(finished, 60, "every predicted attempt recorded")
    assert recorded == expected
    rank = await queue.stage_counts(redis, batch.uid, "rank")
    assert rank.counters["children"] == sum(1 for k in expected if k.split("/")[1] == "analyze" and k.endswith("/0/1"))
    review = await queue.stage_counts(redis, batch.uid, "review")
    sent_back = sum(1 for k, v in expected.items() if k.split("/")[1] == "review" and v == "rejected")
    # Every rejection is counted, the last one of an exhausted item too.
    assert review.counters["rejected"] == sent_back + exhausted
    assert review.counters["exhausted"] == exhausted
    assert review.counters["rejected_round_0"] > 0


def routing_status(raw: str) -> str:
    import json

    return str(json.loads(raw)["status"])


@pytest.mark.parametrize(("on_exhausted", "last_status"), [("Fail", "failed"), ("AcceptLast", "succeeded")])
@pytest.mark.timeout(120)
async def test_a_judge_that_always_rejects_ends_every_item_by_on_exhausted(
    on_exhausted: str, last_status: str, workers: Any, redis: queue.Redis
) -> None:
    batch = workers.batch(pipeline(on_exhausted, rejection_rate=1.0))
    expected, exhausted = predict(batch.plan, batch.items, rejection_rate=1.0)
    children = [k for k in expected if k.split("/")[1] == "analyze" and k.endswith("/0/1")]
    assert exhausted == len(children)  # every child runs out of rejections
    await batch.seed()
    for stage in batch.plan.stages:
        workers.start(batch, stage.name)

    async def settled() -> bool:
        review = await queue.stage_counts(redis, batch.uid, "review")
        return review.counters.get("exhausted", 0) == exhausted and all(
            [(await queue.stage_counts(redis, batch.uid, s.name)).drained for s in batch.plan.stages]
        )

    await workers.eventually(settled, 60, "every item exhausted")
    raw = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
    assert {key: routing_status(value) for key, value in raw.items()} == expected
    finals = [k for k, v in expected.items() if k.split("/")[1] == "review" and k.endswith("/2/1")]
    assert len(finals) == len(children)
    assert {expected[k] for k in finals} == {last_status}
    report = await queue.stage_counts(redis, batch.uid, "report")
    assert report.counters.get("succeeded", 0) == (len(children) if on_exhausted == "AcceptLast" else 0)
