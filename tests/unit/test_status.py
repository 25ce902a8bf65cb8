"""A batch's status from an observation (pure): phase, counts, kstatus conditions, events."""

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analysis_core import plan, queue
from analysis_core.api import v1alpha1
from analysis_operator import completion, producer, status

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def compiled() -> plan.Plan:
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["A", "B", "C"],
            "providers": {"m": {"type": "offline"}},
            "stages": [
                {"name": "draft", "provider": "m", "prompt": "x"},
                {"name": "gate", "type": "approval"},
                {"name": "review", "type": "judge", "provider": "m", "reviews": "draft"},
            ],
        }
    )
    return plan.compile_plan("uid", spec)


PLAN = compiled()


def counts(ready: int = 0, running: int = 0, retrying: int = 0, **counters: int) -> queue.StageCounts:
    return queue.StageCounts(ready, running, retrying, dict(counters))


def snapshot(
    sealed: frozenset[str] = frozenset(), flags: dict[str, str] | None = None, **stages: queue.StageCounts
) -> producer.Snapshot:
    full = {s.name: stages.get(s.name, counts()) for s in PLAN.stages}
    usage = {"input_tokens": 40_000, "output_tokens": 8_400, "cost_nusd": 610_000_000}
    return producer.Snapshot(full, sealed, True, usage, flags or {})


def observe(snap: producer.Snapshot | None, **kw: Any) -> status.Observation:
    state = completion.state(PLAN, snap, 0) if snap is not None else None
    defaults: dict[str, Any] = {"generation": 3, "now": NOW, "plan": PLAN, "snapshot": snap, "state": state}
    return status.Observation(**{**defaults, **kw})


def conditions(st: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}


def test_a_running_batch_reads_as_reconciling_with_live_counts() -> None:
    snap = snapshot(draft=counts(1, 1, succeeded=1), review=counts(0, 0, approved=2, rejected=1, succeeded=0))
    st = status.compute(observe(snap, workers={"draft": 2}), None)
    assert st["phase"] == "Running"
    assert st["observedGeneration"] == 3
    assert st["currentStage"] == "draft"
    assert st["progress"] == "0/2"
    assert st["stages"][0] == {
        "name": "draft",
        "pending": 1,
        "running": 1,
        "succeeded": 1,
        "failed": 0,
        "retrying": 0,
        "deadLettered": 0,
        "workers": 2,
    }
    assert st["judge"]["summary"] == "2✓ 1✗"
    assert st["usage"]["tokensSummary"] == "48k"
    assert st["usage"]["costSummary"] == "$0.61"
    assert st["usage"]["costUSD"] == "0.61"
    cond = conditions(st)
    # Every condition is there from the first write.
    assert set(cond) == {str(c) for c in v1alpha1.ConditionType}
    assert cond["Reconciling"] == ("True", "Running")
    assert cond["Ready"][0] == cond["Stalled"][0] == cond["Complete"][0] == "False"
    # The status validates against the API's own model (what the CRD schema is generated from).
    v1alpha1.AnalysisBatchStatus.model_validate(st)


def test_a_complete_batch_is_ready_and_keeps_its_times() -> None:
    done = snapshot(frozenset(s.name for s in PLAN.stages), review=counts(succeeded=3, approved=3))
    first = status.compute(observe(done), None)
    assert first["phase"] == "Complete"
    assert first["percent"] == 100
    assert conditions(first)["Ready"] == ("True", "Complete")
    assert conditions(first)["Reconciling"][0] == "False"
    later = status.compute(observe(done, now=NOW + timedelta(minutes=5)), first)
    assert later["completionTime"] == first["completionTime"]
    assert later["conditions"] == first["conditions"]  # no flip, no new transition time
    assert status.essence(later) == status.essence(first)


def test_failure_stalls_the_batch() -> None:
    failed = snapshot(draft=counts(1, 0, failed=1))
    st = status.compute(observe(failed), None)
    assert st["phase"] == "Failed"
    assert conditions(st)["Stalled"] == ("True", "Failed")
    assert conditions(st)["Failed"] == ("True", "TooManyFailedItems")
    assert "failurePolicy.maxFailedItems" in st["message"]


def test_a_broken_reference_is_a_stalled_condition_naming_the_field_and_clears_when_fixed() -> None:
    problem = status.Problem(
        "ConfigMapNotFound", "spec.itemsFrom.configMapKeyRef: ConfigMap research/tickers not found"
    )
    broken = status.compute(status.Observation(generation=1, now=NOW, problems=[problem]), None)
    assert broken["phase"] == "Pending"
    assert conditions(broken)["Stalled"] == ("True", "ConfigMapNotFound")
    assert conditions(broken)["Ready"] == ("False", "ConfigMapNotFound")
    assert broken["message"] == problem.message
    assert [e.reason for e in status.events(None, broken)] == ["ConfigMapNotFound"]
    fixed = status.compute(observe(snapshot(draft=counts(3))), broken)
    assert conditions(fixed)["Stalled"] == ("False", "Progressing")
    assert [(e.type, e.reason) for e in status.events(broken, fixed)] == [("Normal", "StalledCleared")]


def test_redis_away_is_transient_and_keeps_the_last_counts_visible() -> None:
    running = status.compute(observe(snapshot(draft=counts(2))), None)
    away = status.Problem("RedisUnavailable", "Redis cannot be reached: connection refused", stalled=False)
    st = status.compute(observe(None, problems=[away]), running)
    assert conditions(st)["Stalled"][0] == "False"
    assert conditions(st)["Reconciling"] == ("True", "RedisUnavailable")
    assert conditions(st)["Ready"] == ("False", "RedisUnavailable")
    assert st["stages"] == running["stages"]
    assert st["phase"] == "Running"
    assert st["progress"] == running["progress"]


def test_suspend_budget_and_approval_each_have_their_condition() -> None:
    held = snapshot(gate=counts(2), draft=counts(succeeded=2))
    st = status.compute(observe(held, held={"gate": 2}), None)
    assert st["phase"] == "WaitingForApproval"
    assert conditions(st)["WaitingForApproval"] == ("True", "ItemsHeld")
    assert "spec.approvals" in st["message"]
    one = status.compute(observe(snapshot(gate=counts(1), draft=counts(succeeded=2)), held={"gate": 1}), None)
    assert one["message"].startswith("1 item waits at gate: approve it in spec.approvals")

    st = status.compute(observe(snapshot(draft=counts(2)), suspended=True), None)
    assert st["phase"] == "Suspended"
    assert conditions(st)["Suspended"] == ("True", "SuspendedBySpec")

    over = snapshot(flags={"budget_exceeded": "2000100 tokens used, budget.maxTokens is 2000000"}, draft=counts(2))
    st = status.compute(observe(over), None)
    assert conditions(st)["BudgetExceeded"] == ("True", "BudgetExceeded")
    assert conditions(st)["Stalled"] == ("True", "BudgetExceeded")
    events = status.events(None, st)
    assert ("Warning", "BudgetExceeded") in [(e.type, e.reason) for e in events]


def trio(st: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(status, reason) of Ready, Reconciling and Stalled: what kstatus reads."""
    cond = conditions(st)
    return cond["Ready"], cond["Reconciling"], cond["Stalled"]


HELD = snapshot(frozenset({"draft"}), gate=counts(2), draft=counts(succeeded=2))


@pytest.mark.parametrize(
    ("name", "obs", "reason"),
    [
        ("suspended while items run", observe(snapshot(draft=counts(1, 2)), suspended=True), "Suspended"),
        ("suspended before any claim", observe(snapshot(draft=counts(3)), suspended=True), "Suspended"),
        ("only approvals are left", observe(HELD, held={"gate": 2}), "WaitingForApproval"),
        ("suspended at a gate", observe(HELD, held={"gate": 2}, suspended=True), "Suspended"),
    ],
)
def test_a_settled_batch_is_ready_neither_reconciling_nor_stalled(
    name: str, obs: status.Observation, reason: str
) -> None:
    """All that the spec allows is done; the next move is a person's edit of the spec (kstatus: Current)."""
    st = status.compute(obs, None)
    assert st["phase"] == reason, name
    assert trio(st) == (("True", reason), ("False", reason), ("False", reason)), name
    messages = {c["type"]: c["message"] for c in st["conditions"]}
    assert messages["Ready"]
    assert messages["Ready"] == messages["Reconciling"]
    assert conditions(st)["Complete"][0] == "False"  # Ready is not Complete: Complete says done
    v1alpha1.AnalysisBatchStatus.model_validate(st)


def test_the_messages_of_a_settled_batch_say_what_moves_it_on() -> None:
    waiting = status.compute(observe(HELD, held={"gate": 2}), None)
    assert conditions(waiting)["WaitingForApproval"] == ("True", "ItemsHeld")
    assert {c["type"]: c["message"] for c in waiting["conditions"]}["Ready"] == (
        "2 items wait at gate: approve them in spec.approvals"
    )
    suspended = status.compute(observe(snapshot(draft=counts(2)), suspended=True), None)
    assert {c["type"]: c["message"] for c in suspended["conditions"]}["Ready"] == status.SUSPENDED_MESSAGE


def test_the_items_held_at_a_gate_are_listed_in_its_stage_and_the_first_named_in_the_message() -> None:
    ids = [f"item-{i:03d}" for i in range(status.HELD_ITEMS_SHOWN)]
    many = snapshot(gate=counts(120), draft=counts(succeeded=120))
    st = status.compute(observe(many, held={"gate": 120}, held_items={"gate": ids}), None)
    gate = next(s for s in st["stages"] if s["name"] == "gate")
    assert (gate["heldItems"], gate["pending"]) == (ids, 120)  # bounded; pending counts them all
    assert "heldItems" not in next(s for s in st["stages"] if s["name"] == "draft")
    named = ", ".join(ids[: status.HELD_ITEMS_NAMED])
    assert st["message"] == f"120 items wait at gate ({named}, …): approve them in spec.approvals"
    few = snapshot(gate=counts(2), draft=counts(succeeded=2))
    st = status.compute(observe(few, held={"gate": 2}, held_items={"gate": ["NVDA", "AMD"]}), None)
    assert st["message"] == "2 items wait at gate (NVDA, AMD): approve them in spec.approvals"
    v1alpha1.AnalysisBatchStatus.model_validate(st)  # the schema's bound holds


def test_items_held_while_another_stage_works_is_still_reconciling() -> None:
    busy = snapshot(draft=counts(1, 1, succeeded=1), gate=counts(1))
    st = status.compute(observe(busy, held={"gate": 1}), None)
    assert st["phase"] == "Running"
    assert conditions(st)["WaitingForApproval"] == ("True", "ItemsHeld")
    assert trio(st) == (("False", "Running"), ("True", "Running"), ("False", "Progressing"))


def test_a_problem_outranks_a_settled_phase() -> None:
    away = status.Problem("RedisUnavailable", "Redis cannot be reached: connection refused", stalled=False)
    for settled in (observe(snapshot(draft=counts(2)), suspended=True), observe(HELD, held={"gate": 2})):
        before = status.compute(settled, None)
        # Redis away: the operator cannot confirm the flag workers read before each claim, so it is still working.
        st = status.compute(dataclasses.replace(settled, snapshot=None, state=None, problems=[away]), before)
        assert st["phase"] == before["phase"]
        assert trio(st) == (("False", "RedisUnavailable"), ("True", "RedisUnavailable"), ("False", "Progressing"))
    over = {"budget_exceeded": "2000100 tokens used, budget.maxTokens is 2000000"}
    for settled in (
        observe(snapshot(flags=over, draft=counts(2)), suspended=True),
        observe(
            snapshot(frozenset({"draft"}), flags=over, gate=counts(2), draft=counts(succeeded=2)), held={"gate": 2}
        ),
    ):
        st = status.compute(settled, None)
        assert trio(st) == (("False", "BudgetExceeded"), ("False", "BudgetExceeded"), ("True", "BudgetExceeded"))


def test_settling_and_resuming_flip_ready_and_reconciling_without_events_of_their_own() -> None:
    running = status.compute(observe(snapshot(draft=counts(1, 1, succeeded=1), gate=counts(1)), held={"gate": 1}), None)
    waiting = status.compute(observe(HELD, held={"gate": 2}, now=NOW + timedelta(minutes=1)), running)
    assert trio(waiting)[0] == ("True", "WaitingForApproval")
    moved = {c["type"]: c["lastTransitionTime"] for c in waiting["conditions"]}
    assert moved["Ready"] == moved["Reconciling"] == "2026-11-22T12:01:00Z"
    assert moved["Stalled"] == moved["WaitingForApproval"] == "2026-11-22T12:00:00Z"
    # WaitingForApproval was already true while the draft ran: nothing new to announce.
    assert status.events(running, waiting) == []
    released = status.compute(
        observe(
            snapshot(frozenset({"draft"}), draft=counts(succeeded=2), review=counts(2)), now=NOW + timedelta(minutes=2)
        ),
        waiting,
    )
    assert trio(released) == (("False", "Running"), ("True", "Running"), ("False", "Progressing"))
    assert [(e.type, e.reason) for e in status.events(waiting, released)] == [("Normal", "WaitingForApprovalCleared")]


def test_events_fire_once_per_flip() -> None:
    running = status.compute(observe(snapshot(draft=counts(2))), None)
    assert status.events(None, running) == []  # the first visit: nothing true is news
    assert status.events(running, running) == []
    done = snapshot(frozenset(s.name for s in PLAN.stages), review=counts(succeeded=3))
    complete = status.compute(observe(done), running)
    assert [(e.type, e.reason) for e in status.events(running, complete)] == [("Normal", "Complete")]
    assert status.events(complete, complete) == []


def test_retry_failed_reopens_a_finished_batch() -> None:
    failed = status.compute(observe(snapshot(draft=counts(failed=1))), None)
    assert "completionTime" in failed
    rerun = status.compute(observe(snapshot(draft=counts(1)), retried_failed="2026-11-22T12:00"), failed)
    assert rerun["phase"] == "Running"
    assert "completionTime" not in rerun
    assert rerun["retriedFailed"] == "2026-11-22T12:00"


@pytest.mark.parametrize(
    ("nusd", "usd", "summary"),
    [
        (0, "0", "$0"),
        (610_000_000, "0.61", "$0.61"),
        (1_500_000, "0.0015", "$0.0015"),
        (12_345_000_000_000, "12345", "$12345.00"),
    ],
)
def test_money_is_exact_in_status_and_short_for_display(nusd: int, usd: str, summary: str) -> None:
    assert status.nusd_to_usd(nusd) == usd
    assert status.cost_summary(nusd) == summary


@pytest.mark.parametrize(("tokens", "text"), [(812, "812"), (4_210, "4.2k"), (48_400, "48k"), (2_300_000, "2.3M")])
def test_token_summaries(tokens: int, text: str) -> None:
    assert status.tokens_summary(tokens) == text


def test_status_never_grows_with_items() -> None:
    small = status.compute(observe(snapshot(draft=counts(3))), None)
    big_counts = dataclasses.replace(counts(300_000, 1000), counters={"succeeded": 5_000_000})
    big = status.compute(observe(snapshot(draft=big_counts)), None)
    assert abs(len(str(big)) - len(str(small))) < 100


def test_a_status_that_cannot_be_written_gives_way_to_a_small_failed_one() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    previous = {
        "phase": "Running",
        "startTime": "2026-12-06T11:00:00Z",
        "results": {"sink": "ObjectStore", "location": "s3://r/a/", "rows": 3},
        "stages": [{"name": "big"}] * 3,
        "conditions": [
            {"type": "Failed", "status": "False", "reason": "NoFailure", "lastTransitionTime": "2026-12-06T11:00:00Z"},
            {"type": "Complete", "status": "False", "reason": "Running", "lastTransitionTime": "2026-12-06T11:00:00Z"},
        ],
    }
    why = "the batch's status was refused 3 times in 31s: 422 Invalid: too big"
    out = status.unwritable(previous, 4, now, why)
    assert out["phase"] == "Failed"
    assert out["message"] == why
    assert (out["startTime"], out["results"], out["observedGeneration"]) == (
        previous["startTime"],
        previous["results"],
        4,
    )
    assert out["completionTime"] == "2026-12-06T12:00:00Z"
    assert "stages" not in out  # small on purpose: the refusal may be about its size
    conditions = {c["type"]: c for c in out["conditions"]}
    assert set(conditions) == {t.value for t in v1alpha1.ConditionType}
    assert (conditions["Failed"]["status"], conditions["Failed"]["reason"]) == ("True", "StatusWriteFailed")
    assert conditions["Failed"]["message"] == why
    assert conditions["Failed"]["lastTransitionTime"] == "2026-12-06T12:00:00Z"  # it flipped now
    assert conditions["Complete"]["lastTransitionTime"] == "2026-12-06T11:00:00Z"  # still False: kept
    assert (conditions["Stalled"]["status"], conditions["Ready"]["status"]) == ("True", "False")
    # What it writes is a valid status by the API's own model.
    v1alpha1.AnalysisBatchStatus.model_validate(out)


def test_the_prompt_cache_shows_in_usage_and_as_each_stages_hit_rate() -> None:
    cached = counts(
        1,
        0,
        succeeded=4,
        input_tokens=10_000,
        output_tokens=900,
        cache_write_tokens=1_500,
        cache_read_tokens=7_250,
    )
    usage = {"input_tokens": 10_000, "output_tokens": 900, "cache_write_tokens": 1_500, "cache_read_tokens": 7_250}
    full = {s.name: counts() for s in PLAN.stages} | {"draft": cached}
    st = status.compute(observe(producer.Snapshot(full, frozenset(), True, usage, {})), None)
    assert st["stages"][0]["cacheHitPercent"] == 72
    assert "cacheHitPercent" not in st["stages"][2]  # no cache in the review stage: nothing to say
    assert (st["usage"]["cacheWriteTokens"], st["usage"]["cacheReadTokens"]) == (1_500, 7_250)
    assert st["usage"]["totalTokens"] == 10_900  # the cached tokens are part of the input, not on top of it
    v1alpha1.AnalysisBatchStatus.model_validate(st)
    plain = status.compute(observe(snapshot()), None)
    assert "cacheReadTokens" not in plain["usage"]


def test_a_batch_mode_stage_counts_its_provider_batches() -> None:
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["A"],
            "providers": {"m": {"type": "offline"}},
            "stages": [
                {"name": "draft", "provider": "m", "prompt": "x", "mode": "Batch"},
                {"name": "fmt", "provider": "m", "prompt": "y"},
            ],
        }
    )
    the_plan = plan.compile_plan("uid", spec)
    stages = {"draft": counts(0, 30, provider_batches=4, provider_batches_ended=3), "fmt": counts()}
    snap = producer.Snapshot(stages, frozenset(), True, {}, {})
    state = completion.state(the_plan, snap, 0)
    obs = status.Observation(generation=3, now=NOW, plan=the_plan, snapshot=snap, state=state)
    st = status.compute(obs, None)
    assert st["stages"][0]["providerBatches"] == {"submitted": 4, "inProgress": 1, "ended": 3}
    assert "providerBatches" not in st["stages"][1]
    v1alpha1.AnalysisBatchStatus.model_validate(st)
