"""The plugin's pure text: kubectl-style durations, bars, columns, and the get/list table."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analysis_operator.plugin import render

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def batch(name: str = "semis-q3", namespace: str = "research", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": stamp(200), "generation": 1},
        "spec": {
            "stages": [
                {"name": "analyze", "type": "generate"},
                {"name": "gate", "type": "approval"},
                {"name": "review", "type": "judge"},
            ]
        },
        "status": status,
    }


RUNNING = {
    "phase": "Running",
    "currentStage": "gate",
    "progress": "2/5",
    "retries": 3,
    "message": "2/5 items done",
    "items": {"total": 5, "done": 2, "succeeded": 1, "failed": 1, "deadLettered": 0},
    "stages": [{"name": "analyze", "workers": 2}, {"name": "gate", "workers": 0}, {"name": "review", "workers": 1}],
    "judge": {"approved": 1, "rejected": 1, "summary": "1✓ 1✗"},
    "usage": {"tokensSummary": "48k", "costSummary": "$0.61"},
    "startTime": stamp(150),
}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (192, "3m12s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600 + 5 * 60, "3h5m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (2 * 86400 + 3600, "2d1h"),
        (30 * 86400, "30d"),
        (800 * 86400, "2y70d"),
        (3000 * 86400, "8y"),
    ],
)
def test_durations_read_like_kubectl_ages(seconds: float, shown: str) -> None:
    assert render.human_duration(seconds) == shown


def test_a_bar_fills_with_the_share_done_and_is_full_only_when_all_is_done() -> None:
    assert render.bar(0, 10, 10) == "[░░░░░░░░░░]"
    assert render.bar(5, 10, 10) == "[█████░░░░░]"
    assert render.bar(999, 1000, 10) == "[█████████░]"  # 99.9% is not done
    assert render.bar(10, 10, 10) == "[██████████]"
    assert render.bar(0, 0, 4) == "[░░░░]"  # nothing reached the stage yet
    assert render.bar(1, 4, 4, unicode=False) == "[#---]"
    assert (render.percent(999, 1000), render.percent(1000, 1000), render.percent(0, 0)) == (99, 100, 0)


def test_columns_align_like_kubectl_get_and_leave_the_last_one_ragged() -> None:
    lines = render.columns([["NAME", "PHASE", "MESSAGE"], ["a-long-name", "Running", "x"], ["b", "Failed", "why"]])
    assert lines == [
        "NAME          PHASE     MESSAGE",
        "a-long-name   Running   x",
        "b             Failed    why",
    ]
    assert render.clip("abcdef", 4) == "abc…"
    assert render.clip("abc", 4) == "abc"


def test_the_table_shows_what_kubectl_get_does_and_more() -> None:
    text = render.table([batch(**RUNNING)], NOW)
    header, row = (line.split("   ") for line in text.splitlines())
    cells = dict(zip([h.strip() for h in header if h], [c.strip() for c in row if c], strict=True))
    assert cells == {
        "NAME": "semis-q3",
        "PHASE": "Running",
        "STAGE": "gate",
        "STAGES": "1/3",
        "PROGRESS": "2/5 (40%)",
        "FAILED": "1",
        "RETRIES": "3",
        "JUDGE": "1✓ 1✗",
        "TOKENS": "48k",
        "COST": "$0.61",
        "DURATION": "2m30s",
        "AGE": "3m20s",
    }


def test_wide_adds_workers_and_the_message_and_all_namespaces_adds_the_namespace() -> None:
    text = render.table([batch(**RUNNING)], NOW, wide=True, namespace=True)
    header, row = text.splitlines()
    assert header.split() == ["NAMESPACE", *render.COLUMNS, *render.WIDE_COLUMNS]
    assert row.startswith("research    semis-q3")
    assert row.split()[-4:] == ["3", "2/5", "items", "done"]  # 2 + 0 + 1 workers, then the message


def test_stages_done_counts_the_stages_before_the_earliest_with_work() -> None:
    assert render.stages_done(batch()) == "0/3"  # not seeded: no counts yet
    assert render.stages_done(batch(**RUNNING)) == "1/3"
    finished = {**RUNNING, "currentStage": None, "phase": "Complete"}
    assert render.stages_done(batch(**finished)) == "3/3"


def test_a_finished_batch_shows_how_long_it_ran_and_a_fresh_one_shows_blanks() -> None:
    done = {**RUNNING, "phase": "Complete", "completionTime": stamp(60)}
    assert render.table_row(batch(**done), NOW)[render.COLUMNS.index("DURATION")] == "90s"
    fresh = render.table_row(batch(), NOW)
    assert fresh[:5] == ["semis-q3", "Pending", "-", "0/3", "-"]
    assert fresh[render.COLUMNS.index("DURATION")] == "-"


def test_the_table_is_sorted_by_namespace_then_name_and_empty_without_batches() -> None:
    text = render.table([batch("b", "ns2"), batch("z", "ns1"), batch("a", "ns2")], NOW, namespace=True)
    assert [line.split()[:2] for line in text.splitlines()[1:]] == [["ns1", "z"], ["ns2", "a"], ["ns2", "b"]]
    assert render.table([], NOW) == ""


def test_timestamps_parse_as_the_api_server_writes_them() -> None:
    assert render.parse_time("2026-11-22T12:00:00Z") == NOW
    assert render.parse_time("yesterday") is None
    assert render.parse_time(None) is None
