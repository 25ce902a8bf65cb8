"""A fan-out and judge pipeline run by real worker processes matches what the offline seed predicts.

The prediction is the ``simulate`` fixture: the offline provider's answers (a
function of seed, stage, item and round) fed through the routing rules. The run must record exactly the predicted outcome for every attempt,
no more and no fewer, so a routing bug, a lost item or a duplicate fails it.
"""

from typing import Any

import pytest

from analysis_core import keys, queue
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED, REJECTION_RATE = 1, 0.5  # a seed whose answers include rejections and an exhausted item


def pipeline(on_exhausted: str, rejection_rate: float = REJECTION_RATE) -> dict[str, Any]:
    return {
        "items": ["semiconductors", "software"],
        "providers": {"local": {"type": "offline", "offline": {"seed": SEED, "rejectionRate": rejection_rate}}},
        "stages": [
            {
                "name": "rank",
                "provider": "local",
                "prompt": "Rank stocks in {{ item }}",
                "output": "json",
                "fanOut": {"path": "$.stocks", "key": "ticker", "sortBy": "score", "max": 3},
            },
            {"name": "analyze", "provider": "local", "prompt": "Analyze {{ item }}: {{ input }} {{ feedback }}"},
            {
                "name": "review",
                "type": "judge",
                "provider": "local",
                "reviews": "analyze",
                "maxRejections": 2,
                "onExhausted": on_exhausted,
            },
            {"name": "report", "provider": "local", "prompt": "Report on {{ input }}"},
        ],
    }


@pytest.mark.parametrize("on_exhausted", ["AcceptLast", "Fail"])
@pytest.mark.timeout(120)
async def test_the_run_records_exactly_the_predicted_outcomes(
    on_exhausted: str, workers: Any, redis: queue.Redis, simulate: Any, assert_recorded: Any
) -> None:
    batch = workers.batch(pipeline(on_exhausted))
    prediction = simulate(batch.plan, batch.items)
    expected, exhausted = prediction.outcomes, prediction.counters.get("exhausted", 0)
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
            if not (await consumer.stage_counts(redis, batch.uid, stage.name)).drained:
                return None
        return dict(raw)

    recorded = await workers.eventually(finished, 60, "every predicted attempt recorded")
    assert_recorded(recorded, expected)
    rank = await consumer.stage_counts(redis, batch.uid, "rank")
    assert rank.counters["children"] == sum(1 for k in expected if k.split("/")[1] == "analyze" and k.endswith("/0/1"))
    review = await consumer.stage_counts(redis, batch.uid, "review")
    sent_back = sum(1 for k, v in expected.items() if k.split("/")[1] == "review" and v == "rejected")
    # Every rejection is counted, the last one of an exhausted item too.
    assert review.counters["rejected"] == sent_back + exhausted
    assert review.counters["exhausted"] == exhausted
    assert review.counters["rejected_round_0"] > 0


@pytest.mark.parametrize(("on_exhausted", "last_status"), [("Fail", "failed"), ("AcceptLast", "succeeded")])
@pytest.mark.timeout(120)
async def test_a_judge_that_always_rejects_ends_every_item_by_on_exhausted(
    on_exhausted: str, last_status: str, workers: Any, redis: queue.Redis, simulate: Any, assert_recorded: Any
) -> None:
    batch = workers.batch(pipeline(on_exhausted, rejection_rate=1.0))
    prediction = simulate(batch.plan, batch.items)
    expected, exhausted = prediction.outcomes, prediction.counters.get("exhausted", 0)
    children = [k for k in expected if k.split("/")[1] == "analyze" and k.endswith("/0/1")]
    assert exhausted == len(children)  # every child runs out of rejections
    await batch.seed()
    for stage in batch.plan.stages:
        workers.start(batch, stage.name)

    async def settled() -> bool:
        review = await consumer.stage_counts(redis, batch.uid, "review")
        return review.counters.get("exhausted", 0) == exhausted and all(
            [(await consumer.stage_counts(redis, batch.uid, s.name)).drained for s in batch.plan.stages]
        )

    await workers.eventually(settled, 60, "every item exhausted")
    raw = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
    assert_recorded(raw, expected)
    finals = [k for k, v in expected.items() if k.split("/")[1] == "review" and k.endswith("/2/1")]
    assert len(finals) == len(children)
    assert {expected[k] for k in finals} == {last_status}
    report = await consumer.stage_counts(redis, batch.uid, "report")
    assert report.counters.get("succeeded", 0) == (len(children) if on_exhausted == "AcceptLast" else 0)
