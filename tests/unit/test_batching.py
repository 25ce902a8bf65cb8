"""The pure parts of a mode: Batch stage's worker: which requests go in the next provider batch, and the budget's room."""

import asyncio
from pathlib import Path

import pytest
import yaml

from analysis_core import plan, wire
from analysis_core.api import v1alpha1
from analysis_worker import batching
from analysis_worker.providers import base

pytestmark = pytest.mark.unit


def pending(n: int, *, size: int = 1_000, nusd: int = 10, tokens: int = 100, done: bool = False) -> batching.Pending:
    loop = asyncio.new_event_loop()
    try:
        answer: asyncio.Future[batching.Answer] = loop.create_future()
        if done:
            answer.cancel()
        request = base.Request(prompt=f"p{n}", max_tokens=10, timeout_seconds=1)
        return batching.Pending(f"c{n}", f"{n}-0", request, answer, size, nusd, tokens)
    finally:
        loop.close()


def chosen(pool: list[batching.Pending], **limits: int | bool | None) -> list[str]:
    given = {"max_items": 100, "max_bytes": 10**9, "room_nusd": None, "room_tokens": None, **limits}
    return [p.custom_id for p in batching.choose(pool, **given)]  # type: ignore[arg-type]


def test_the_oldest_requests_go_first_within_the_count_and_the_bytes() -> None:
    pool = [pending(n) for n in range(10)]
    assert chosen(pool, max_items=4) == ["c0", "c1", "c2", "c3"]
    assert chosen(pool, max_bytes=3_500) == ["c0", "c1", "c2"]
    assert chosen(pool, max_bytes=10) == ["c0"]  # one request alone larger than the limit still goes (and fails)


def test_a_request_whose_item_went_meanwhile_is_skipped() -> None:
    pool = [pending(0), pending(1, done=True), pending(2)]
    assert chosen(pool) == ["c0", "c2"]


def test_the_budget_takes_the_worst_case_of_each_request_and_one_always_goes_while_there_is_room() -> None:
    pool = [pending(n, nusd=10, tokens=100) for n in range(10)]
    assert chosen(pool, room_nusd=35) == ["c0", "c1", "c2"]
    assert chosen(pool, room_tokens=250) == ["c0", "c1"]
    assert chosen(pool, room_nusd=1) == ["c0"]  # as a realtime call may, the last one overshoots
    # ... unless batches in flight hold part of the budget: their collection gives most of it back.
    assert chosen(pool, room_nusd=1, overshoot=False) == []
    assert chosen(pool, room_nusd=25, overshoot=False) == ["c0", "c1"]


def test_the_budgets_room_is_what_is_left_after_spending_and_what_batches_in_flight_hold() -> None:
    budget = plan.BudgetPlan(max_tokens=10_000, max_cost_nusd=5_000)
    used = {wire.USAGE_INPUT_TOKENS: 3_000, wire.USAGE_OUTPUT_TOKENS: 1_000, wire.USAGE_COST_NUSD: 2_000}
    assert budget.room(used) == (3_000, 6_000)
    assert budget.room(used, held_nusd=2_500, held_tokens=5_500) == (500, 500)
    assert plan.BudgetPlan(max_tokens=10).room(used) == (None, -3_990)


def test_a_stage_is_fed_by_every_earlier_stage_and_by_the_judges_that_send_work_back_through_it() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "stock-research.yaml").read_text())
    the_plan = plan.compile_plan("uid", v1alpha1.AnalysisBatchSpec.model_validate(spec["spec"]))
    assert the_plan.feeders("research") == []
    assert the_plan.feeders("analyze") == ["research", "plan-ok", "rank", "review"]  # review sends rejections back
    assert the_plan.feeders("review") == ["research", "plan-ok", "rank", "analyze"]
    assert the_plan.feeders("report") == ["research", "plan-ok", "rank", "analyze", "review"]


def test_an_answer_that_comes_before_its_item_waits_for_it_and_is_not_overwritten() -> None:
    async def run() -> None:
        flight = batching.InFlight("tag", "batch", {"c1": "1-0", "c2": "2-0"})
        answer = (base.Completion("text", 3, 4, "m"), 1)
        flight.resolve("c1", answer)  # a taken-over batch: its item's task has not attached yet
        flight.resolve("c9", answer)  # not one of this batch's: dropped
        loop = asyncio.get_running_loop()
        request = base.Request(prompt="p", max_tokens=10, timeout_seconds=1)
        first = batching.Pending("c1", "1-0", request, loop.create_future(), 1, 1, 1)
        second = batching.Pending("c2", "2-0", request, loop.create_future(), 1, 1, 1)
        flight.attach(first)
        flight.attach(second)
        assert first.answer.result() == answer
        assert not second.answer.done()
        assert flight.early == {}

    asyncio.run(run())
