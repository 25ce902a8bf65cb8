"""Sealing and batch state, decided from a snapshot (pure)."""

from typing import Any

import pytest

from analysis_core import plan, queue
from analysis_core.api import v1alpha1
from analysis_operator import completion, producer

pytestmark = pytest.mark.unit


def compiled(*stages: dict[str, Any]) -> plan.Plan:
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {"items": ["A"], "providers": {"m": {"type": "offline"}}, "stages": list(stages)}
    )
    return plan.compile_plan("uid", spec)


def gen(name: str) -> dict[str, Any]:
    return {"name": name, "provider": "m", "prompt": "x"}


PLAN = compiled(
    gen("research"),
    gen("draft"),
    gen("polish"),
    {"name": "review", "type": "judge", "provider": "m", "reviews": "draft"},
    gen("report"),
)
IDLE = queue.StageCounts(0, 0, 0, {})
BUSY = queue.StageCounts(1, 0, 0, {})


def snap(
    sealed: set[str], busy: set[str] = frozenset(), seeded: bool = True, **counters: dict[str, int]
) -> producer.Snapshot:
    stages = {s.name: (BUSY if s.name in busy else IDLE) for s in PLAN.stages}
    for name, values in counters.items():
        stages[name] = queue.StageCounts(0, 0, 0, values)
    return producer.Snapshot(stages, frozenset(sealed), seeded)


def test_a_judge_loop_is_one_unit() -> None:
    assert completion.units(PLAN) == [["research"], ["draft", "polish", "review"], ["report"]]


def test_nothing_is_sealed_before_the_items_are_seeded() -> None:
    assert completion.sealable(PLAN, snap(set(), seeded=False)) == []


def test_the_first_stage_is_sealed_once_seeded_and_the_next_once_it_drained() -> None:
    assert completion.sealable(PLAN, snap(set(), busy={"research"})) == ["research"]
    assert completion.sealable(PLAN, snap({"research"}, busy={"research"})) == []
    # research drained: the loop unit may be sealed only when all of it is drained too.
    assert completion.sealable(PLAN, snap({"research"}, busy={"polish"})) == []
    assert completion.sealable(PLAN, snap({"research"})) == ["draft", "polish", "review", "report"]


def test_work_anywhere_upstream_holds_the_rest_open() -> None:
    assert completion.sealable(PLAN, snap({"research", "draft", "polish", "review"}, busy={"review"})) == []


def test_a_stage_may_be_fed_while_an_earlier_unit_or_its_own_loop_has_work() -> None:
    # The first stage: only what was seeded, nothing more comes.
    assert not completion.may_be_fed(PLAN, snap(set(), busy={"research"}), "research")
    # research still open or at work: the loop after it may get more.
    assert completion.may_be_fed(PLAN, snap(set()), "draft")
    assert completion.may_be_fed(PLAN, snap({"research"}, busy={"research"}), "draft")
    # research sealed and drained: draft gets more only from its loop (a rejection, polish's output back).
    assert not completion.may_be_fed(PLAN, snap({"research"}, busy={"draft"}), "draft")
    assert completion.may_be_fed(PLAN, snap({"research"}, busy={"review"}), "draft")
    assert completion.may_be_fed(PLAN, snap({"research"}, busy={"polish"}), "review")
    # report, after the loop: fed while anything of the loop runs.
    assert completion.may_be_fed(PLAN, snap({"research", "draft", "polish", "review"}, busy={"review"}), "report")
    assert not completion.may_be_fed(PLAN, snap({"research", "draft", "polish", "review"}), "report")


def test_state_follows_seals_drains_and_the_failure_policy() -> None:
    everything = {s.name for s in PLAN.stages}
    assert completion.state(PLAN, snap(everything - {"report"}), 0).phase is completion.Phase.RUNNING
    done = completion.state(PLAN, snap(everything, report={"succeeded": 4}, draft={"failed": 1}), 1)
    assert (done.phase, done.finished_items, done.failed_items) == (completion.Phase.COMPLETE, 4, 1)
    failed = completion.state(PLAN, snap(set(), busy={"draft"}, draft={"failed": 1, "dead_lettered": 1}), 1)
    assert failed.phase is completion.Phase.FAILED
    assert "2 items failed, more than failurePolicy.maxFailedItems (1)" in failed.reason


def test_a_collect_stage_is_collected_once_upstream_is_done_and_sealed_after() -> None:
    p = compiled(gen("research"), {**gen("rank"), "collect": True}, gen("report"))
    base = {s.name: IDLE for s in p.stages}
    gathering = producer.Snapshot({**base, "rank": queue.StageCounts(0, 0, 0, {}, gathered=3)}, frozenset(), True)
    assert completion.collectable(p, gathering) == []  # research is not sealed yet
    assert completion.sealable(p, gathering) == ["research"]
    upstream_sealed = producer.Snapshot(gathering.stages, frozenset({"research"}), True)
    assert completion.collectable(p, upstream_sealed) == ["rank"]
    assert completion.sealable(p, upstream_sealed) == []  # not before its items are combined
    collected = producer.Snapshot(base, frozenset({"research"}), True)
    assert completion.sealable(p, collected) == ["rank", "report"]


def test_the_collected_item_is_named_after_the_common_parent() -> None:
    assert producer.collected_id(["semis/AI chips", "semis/memory"]) == "semis"
    assert producer.collected_id(["NVDA", "AMD"]) == "all"
    assert producer.collected_id(["semis/a", "software/b"]) == "all"
