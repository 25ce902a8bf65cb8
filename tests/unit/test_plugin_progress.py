"""``kubectl analysis status`` (pure parts): rates over observations, when following ends, the snapshot's lines."""

import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analysis_core.api import wellknown
from analysis_operator import status
from analysis_operator.plugin import cli, progress

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason or kind, "message": message}


def batch(
    done: int = 2,
    total: int = 5,
    *,
    analyze: tuple[int, int, int] = (2, 1, 1),  # succeeded, pending, running
    conditions: list[dict[str, Any]] | None = None,
    generation: int = 1,
    observed: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    succeeded, pending, running = analyze
    status = {
        "observedGeneration": observed,
        "phase": "Running",
        "startTime": stamp(120),
        "retries": 1,
        "items": {"total": total, "done": done, "succeeded": done, "failed": 0, "deadLettered": 0},
        "stages": [
            {"name": "analyze", "succeeded": succeeded, "pending": pending, "running": running, "workers": 2},
            {"name": "review", "succeeded": done, "failed": 0, "pending": 0, "running": 0, "workers": 1},
        ],
        "judge": {"approved": 2, "rejected": 1, "exhausted": 0, "summary": "2✓ 1✗"},
        "usage": {"inputTokens": 30000, "outputTokens": 18000, "totalTokens": 48000, "costSummary": "$0.61"},
        "conditions": conditions if conditions is not None else [condition("Complete", False)],
        "message": f"{done}/{total} items done; working on analyze",
        **extra,
    }
    return {
        "metadata": {
            "name": "semis-q3",
            "namespace": "research",
            "generation": generation,
            "creationTimestamp": stamp(130),
            "resourceVersion": "7",
        },
        "spec": {"stages": [{"name": "analyze"}, {"name": "review", "type": "judge"}]},
        "status": status,
    }


# ---------------------------------------------------------------- rates


def test_rates_need_two_observations_and_then_count_items_per_minute() -> None:
    rates = progress.Rates()
    rates.observe(100.0, batch(done=2, analyze=(2, 1, 1)))
    assert rates.per_minute() is None
    rates.observe(100.5, batch(done=3, analyze=(3, 1, 1)))
    assert rates.per_minute() is None  # half a second says nothing
    rates.observe(130.0, batch(done=4, analyze=(5, 0, 1)))
    assert rates.per_minute() == pytest.approx(4.0)  # 2 items in 30 s
    assert rates.per_minute("analyze") == pytest.approx(6.0)  # 3 in 30 s
    assert rates.per_minute("review") == pytest.approx(4.0)
    assert rates.per_minute("no-such-stage") is None


def test_rates_forget_observations_older_than_the_window() -> None:
    rates = progress.Rates(window_s=60)
    rates.observe(0.0, batch(done=0))
    rates.observe(30.0, batch(done=30))  # a burst, long ago
    rates.observe(100.0, batch(done=31))
    rates.observe(120.0, batch(done=32))
    # Only the last minute counts: 1 item from t=100 to t=120, not the burst.
    assert rates.per_minute() == pytest.approx(3.0)


def test_a_retry_failed_that_lowers_done_restarts_the_window_instead_of_a_negative_rate() -> None:
    rates = progress.Rates()
    rates.observe(0.0, batch(done=5, total=5))
    rates.observe(10.0, batch(done=3, total=5))  # two failed items are back in the pipeline
    assert rates.per_minute() is None
    rates.observe(40.0, batch(done=4, total=5))
    assert rates.per_minute() == pytest.approx(2.0)


def test_the_average_rate_runs_from_the_start_to_completion_or_now() -> None:
    running = batch(done=6)["status"]
    assert progress.average_per_minute(running, NOW) == pytest.approx(3.0)  # 6 items in 2 minutes
    finished = {**running, "completionTime": stamp(60)}
    assert progress.average_per_minute(finished, NOW) == pytest.approx(6.0)  # 6 items in the minute it ran
    assert progress.average_per_minute({}, NOW) is None
    assert [progress.rate_text(r) for r in (None, 2.345, 1234.5)] == ["-", "2.3/min", "1234/min"]


# ---------------------------------------------------------------- when following ends


def test_following_ends_on_complete_or_failed_for_the_current_generation_only() -> None:
    assert progress.outcome(batch()) is None
    assert progress.outcome(batch(conditions=[condition("Complete", True)])) == "Complete"
    failed = [condition("Complete", False), condition("Failed", True, "TooManyFailedItems")]
    assert progress.outcome(batch(conditions=failed)) == "Failed"
    # The spec changed after it completed (an approval added, say): that Complete is about an older spec.
    stale = batch(conditions=[condition("Complete", True)], generation=2, observed=1)
    assert progress.outcome(stale) is None


def test_after_retry_failed_a_failed_batch_is_followed_until_the_operator_acted_on_the_new_token() -> None:
    failed = batch(conditions=[condition("Failed", True)], retriedFailed="first")
    failed["metadata"]["annotations"] = {wellknown.ANNOTATION_RETRY_FAILED: "second"}
    assert progress.outcome(failed) is None
    failed["status"]["retriedFailed"] = "second"
    assert progress.outcome(failed) == "Failed"


# ---------------------------------------------------------------- the snapshot


def test_a_snapshot_shows_bars_counts_rates_judge_tokens_and_cost() -> None:
    rates = progress.Rates()
    rates.observe(0.0, batch(done=1, analyze=(1, 2, 1)))
    rates.observe(60.0, batch(done=2, analyze=(2, 1, 1)))
    lines = progress.snapshot(batch(done=2), rates, NOW)
    assert lines[0].split("   ") == ["analysisbatch research/semis-q3", "Running", "age 2m10s", "running 2m"]
    assert lines[1].split("   ") == [
        "items",
        "[████████████░░░░░░░░░░░░░░░░░░]",
        "2/5 (40%)",
        "2 succeeded, 0 failed",
        "rate 1.0/min",
    ]
    header, analyze, review = (line.split() for line in lines[2:5])
    assert header == [
        "STAGE",
        "TYPE",
        "PROGRESS",
        "DONE",
        "PENDING",
        "RUNNING",
        "RETRYING",
        "FAILED",
        "WORKERS",
        "RATE",
    ]
    # analyze: 2 done of 4 that reached it (1 pending, 1 running).
    assert analyze == [
        "analyze",
        "generate",
        "[██████████░░░░░░░░░░]",
        "50%",
        "2/4",
        "1",
        "1",
        "0",
        "0",
        "2",
        "1.0/min",
    ]
    assert review[:5] == ["review", "judge", "[████████████████████]", "100%", "2/2"]
    assert lines[5].split("   ") == [
        "retries 1",
        "judge 2 approved, 1 rejected (sent back for another round), 0 exhausted",
        "tokens 48k (30k in, 18k out)",
        "cost $0.61",
    ]
    assert lines[6] == "message: 2/5 items done; working on analyze"
    assert len(lines) == 7


def test_one_observation_shows_the_average_rate_and_no_stage_rates() -> None:
    lines = progress.snapshot(batch(done=6), progress.Rates(), NOW)
    assert lines[1].endswith("avg 3.0/min")
    assert lines[3].split()[-1] == "-"


def test_the_conditions_that_matter_are_shown_once_each_with_reason_and_message() -> None:
    why = "1 items failed (maxFailedItems 0); BAD: Unknown: stand-in server_error"
    conditions = [
        condition("Ready", False, "Failed", why),
        condition("Stalled", True, "Failed", why),
        condition("Complete", False),
        condition("Failed", True, "TooManyFailedItems", why),
        condition("BudgetExceeded", True, "BudgetExceeded", "maxTokens 1000 reached"),
        condition("Suspended", False, "NotSuspended"),
    ]
    shown = batch(conditions=conditions, message=why, phase="Failed")
    lines = progress.snapshot(shown, progress.Rates(), NOW)
    assert lines[-2:] == [
        f"Failed: TooManyFailedItems: {why}",  # Stalled says the same, and the headline too: once is enough
        "BudgetExceeded: maxTokens 1000 reached",
    ]


def test_the_items_an_approval_stage_holds_are_listed_and_a_cut_short_list_says_how_many_more() -> None:
    held = batch(phase="WaitingForApproval")
    held["status"]["stages"] = [
        {"name": "draft", "succeeded": 3},
        {"name": "gate", "pending": 3, "heldItems": ["A", "B", "C"]},
        {"name": "final-ok", "pending": 60, "heldItems": [f"I{i}" for i in range(50)]},
    ]
    lines = progress.snapshot(held, progress.Rates(), NOW)
    assert "waiting at gate: A, B, C" in lines
    assert f"waiting at final-ok: {', '.join(f'I{i}' for i in range(50))} (and 10 more)" in lines


def test_a_snapshot_says_when_the_status_lags_the_spec_or_a_retry_request() -> None:
    lagging = batch(generation=3, observed=2)
    lagging["metadata"]["annotations"] = {wellknown.ANNOTATION_RETRY_FAILED: "t2"}
    lines = progress.snapshot(lagging, progress.Rates(), NOW)
    assert lines[-2].startswith("note: this status is for generation 2; the spec is at 3")
    assert lines[-1] == "note: retry-failed t2 requested; the operator has not acted on it yet"


def test_a_batch_the_operator_has_not_seen_yet_still_renders() -> None:
    fresh = {
        "metadata": {"name": "new", "namespace": "ns", "creationTimestamp": stamp(2)},
        "spec": {"stages": [{"name": "analyze"}]},
    }
    lines = progress.snapshot(fresh, progress.Rates(), NOW, unicode=False)
    assert lines[0].split("   ") == ["analysisbatch ns/new", "Pending", "age 2s"]
    assert lines[1].split("   ")[1:3] == ["[------------------------------]", "0/0 (0%)"]
    assert lines[3].split()[:5] == ["analyze", "generate", "[--------------------]", "0%", "0/0"]
    assert lines[-1] == "note: the operator has not reported on this batch yet"
    assert progress.outcome(fresh) is None


def test_the_plugin_loads_neither_kopf_the_worker_the_models_nor_redis() -> None:
    """What every call pays for at start, ``results`` included (import-linter checks the imports; this, what loads)."""
    heavy = ("kopf", "aiohttp", "analysis_worker", "pydantic", "redis", "analysis_core.plan", "prometheus_client")
    probe = f"import sys, analysis_operator.plugin; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("tokens", [0, 999, 1000, 4149, 9999, 10_000, 48_000, 999_499, 999_999, 1_000_000, 12_345_678])
def test_tokens_read_as_the_status_summarizes_them(tokens: int) -> None:
    assert progress.tokens_text(tokens) == status.tokens_summary(tokens)


def test_on_a_terminal_each_frame_replaces_the_last_and_fits_the_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "12")
    out = io.StringIO()
    drawn = cli._draw(out, ["short", "a line longer than twelve"], 0)
    assert (drawn, out.getvalue()) == (2, "short\na line lon…\n")
    out.truncate(0)
    out.seek(0)
    assert cli._draw(out, ["one line now"], drawn) == 1
    assert out.getvalue() == "\x1b[2A\r\x1b[Jone line n…\n"  # up two lines, clear to the end, draw
    monkeypatch.setenv("LINES", "4")
    out = io.StringIO()
    assert cli._draw(out, ["1", "2", "3", "4", "5"], 0) == 3  # a frame taller than the terminal is cut
    assert out.getvalue() == "1\n2\n…\n"


def test_a_batch_mode_stage_shows_its_provider_batches() -> None:
    running = batch(phase="Running")
    running["status"]["stages"] = [
        {"name": "draft", "succeeded": 3},
        {"name": "analyze", "running": 40, "providerBatches": {"submitted": 4, "inProgress": 1, "ended": 3}},
    ]
    lines = progress.snapshot(running, progress.Rates(), NOW)
    assert "provider batches of analyze: 4 submitted, 1 in progress, 3 ended" in lines
    assert not any(line.startswith("provider batches of draft") for line in lines)
