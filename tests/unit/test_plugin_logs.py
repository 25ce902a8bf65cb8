"""``kubectl analysis logs`` (pure parts): which pods, in which order, behind which prefix."""

from typing import Any

import pytest

from analysis_operator.plugin import logs

pytestmark = pytest.mark.unit

UID = "0b9c6c1e-5d7a-4c1b-9a3e-1f2d3c4b5a69"


def pod(
    name: str,
    stage: str,
    created: str,
    *,
    state: str = "running",
    containers: tuple[str, ...] = ("worker",),
    restarts: int = 0,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "labels": {"analysis.dev/batch-uid": UID, "analysis.dev/stage": stage},
        },
        "spec": {"containers": [{"name": c} for c in containers]},
        "status": {
            "containerStatuses": [{"name": c, "state": {state: {}}, "restartCount": restarts} for c in containers]
        },
    }


def test_the_selector_picks_the_batch_by_uid_and_optionally_one_stage() -> None:
    assert logs.selector(UID) == f"analysis.dev/batch-uid={UID}"
    assert logs.selector(UID, "analyze") == f"analysis.dev/batch-uid={UID},analysis.dev/stage=analyze"


def test_streams_come_in_stage_order_then_by_age_each_prefixed_with_stage_and_pod() -> None:
    pods = [
        pod("b-report-1", "report", "2026-01-01T00:00:09Z"),
        pod("b-analyze-2", "analyze", "2026-01-01T00:00:05Z"),
        pod("b-analyze-1", "analyze", "2026-01-01T00:00:03Z", state="terminated", restarts=1),
        pod("b-analyze-3", "analyze", "2026-01-01T00:00:07Z", state="waiting"),
    ]
    found = logs.streams(pods, ["analyze", "review", "report"])
    assert [(s.pod, s.prefix, s.started, s.restarts) for s in found] == [
        ("b-analyze-1", "[analyze b-analyze-1]", True, 1),
        ("b-analyze-2", "[analyze b-analyze-2]", True, 0),
        ("b-analyze-3", "[analyze b-analyze-3]", False, 0),  # not started: nothing to read yet
        ("b-report-1", "[report b-report-1]", True, 0),
    ]
    assert {s.container for s in found} == {"worker"}


def test_a_pod_with_several_containers_names_the_container_too() -> None:
    found = logs.streams([pod("p", "analyze", "t", containers=("worker", "sidecar"))], ["analyze"])
    assert [(s.container, s.prefix) for s in found] == [
        ("worker", "[analyze p/worker]"),
        ("sidecar", "[analyze p/sidecar]"),
    ]


def test_a_pod_without_status_is_not_started_and_unknown_stages_go_last() -> None:
    bare = {
        "metadata": {"name": "p", "labels": {"analysis.dev/stage": "mystery"}},
        "spec": {"containers": [{"name": "worker"}]},
    }
    found = logs.streams([bare, pod("q", "analyze", "t")], ["analyze"])
    assert [(s.pod, s.started) for s in found] == [("q", True), ("p", False)]


def test_every_line_gets_the_prefix_and_ends_with_a_newline() -> None:
    assert logs.prefixed("[a p]", '{"event": "claimed"}\n{"event": "done"}') == (
        '[a p] {"event": "claimed"}\n[a p] {"event": "done"}\n'
    )
    assert logs.prefixed("[a p]", "") == ""
