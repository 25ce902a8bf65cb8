"""The plugin's writes as patches (pure): approvals merged, stages checked, suspend, retry tokens, GitOps owners."""

from datetime import UTC, datetime
from typing import Any

import pytest

from analysis_operator.plugin import control

pytestmark = pytest.mark.unit


def batch(approvals: list[dict[str, Any]] | None = None, **metadata: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "stages": [
            {"name": "research", "type": "generate"},
            {"name": "plan-ok", "type": "approval"},
            {"name": "final-ok", "type": "approval"},
            {"name": "review", "type": "judge"},
        ],
    }
    if approvals is not None:
        spec["approvals"] = approvals
    return {"metadata": {"name": "semis", "resourceVersion": "41", **metadata}, "spec": spec}


def holding(the_batch: dict[str, Any], stage: str, listed: list[str], pending: int | None = None) -> dict[str, Any]:
    """``the_batch`` with a status whose ``stage`` holds ``pending`` items, ``listed`` named."""
    row = {"name": stage, "pending": len(listed) if pending is None else pending, "heldItems": listed}
    return {**the_batch, "status": {"stages": [row]}}


def test_items_parse_from_a_comma_list_trimmed_and_without_repeats() -> None:
    assert control.parse_items("NVDA, AMD,,NVDA ,tech/semis/TSM") == ["NVDA", "AMD", "tech/semis/TSM"]
    with pytest.raises(control.Refused, match="lists no item"):
        control.parse_items(" , ")


def test_a_new_stage_is_added_for_all_items_or_for_the_listed_ones() -> None:
    assert control.merged_approvals([], "plan-ok", None) == [{"stage": "plan-ok"}]
    kept = [{"stage": "final-ok", "items": ["A"]}]
    assert control.merged_approvals(kept, "plan-ok", ["B", "C"]) == [
        {"stage": "final-ok", "items": ["A"]},
        {"stage": "plan-ok", "items": ["B", "C"]},
    ]


def test_listed_items_join_those_already_approved() -> None:
    existing = [{"stage": "plan-ok", "items": ["A", "B"]}]
    assert control.merged_approvals(existing, "plan-ok", ["B", "C"]) == [{"stage": "plan-ok", "items": ["A", "B", "C"]}]
    assert control.merged_approvals(existing, "plan-ok", ["A"]) is None  # nothing new
    assert existing == [{"stage": "plan-ok", "items": ["A", "B"]}]  # the input is left alone


def test_a_stage_open_for_all_items_stays_so_and_approving_all_replaces_a_list() -> None:
    assert control.merged_approvals([{"stage": "plan-ok"}], "plan-ok", ["A"]) is None
    assert control.merged_approvals([{"stage": "plan-ok"}], "plan-ok", None) is None
    assert control.merged_approvals([{"stage": "plan-ok", "items": ["A"]}], "plan-ok", None) == [{"stage": "plan-ok"}]


def test_the_approve_patch_carries_the_version_it_was_computed_from() -> None:
    patch = control.approve_patch(holding(batch([{"stage": "final-ok"}]), "plan-ok", ["A"]), "plan-ok", ["A"])
    assert patch == {
        "metadata": {"resourceVersion": "41"},
        "spec": {"approvals": [{"stage": "final-ok"}, {"stage": "plan-ok", "items": ["A"]}]},
    }
    assert control.approve_patch(batch([{"stage": "plan-ok"}]), "plan-ok", None) is None


def test_listed_items_must_be_waiting_at_the_stage_and_those_that_are_not_are_named() -> None:
    waiting = holding(batch(), "plan-ok", ["A", "B"])
    assert control.approve_patch(waiting, "plan-ok", ["B"]) is not None
    with pytest.raises(control.Refused) as refused:
        control.approve_patch(waiting, "plan-ok", ["B", "Z", "Y"])
    assert str(refused.value) == (
        'not waiting at stage "plan-ok" of analysisbatch "semis": Z, Y (waiting: A, B); '
        "to approve items before they arrive, list them in spec.approvals"
    )
    with pytest.raises(control.Refused, match=r"semis\": A \(waiting: none\)"):
        control.approve_patch(batch(), "plan-ok", ["A"])  # no status yet: nothing waits
    # Approving the whole stage needs nothing to wait; items the spec already releases are not checked again.
    assert control.approve_patch(batch(), "plan-ok", None) is not None
    assert control.approve_patch(batch([{"stage": "plan-ok", "items": ["A"]}]), "plan-ok", ["A"]) is None


def test_an_item_beyond_a_cut_short_list_is_returned_for_a_warning_not_refused() -> None:
    cut = holding(batch(), "plan-ok", ["A", "B"], pending=120)
    assert control.held_at(cut, "plan-ok") == (["A", "B"], False)
    assert control.check_waiting(cut, "plan-ok", ["B", "Q"]) == ["Q"]
    assert control.approve_patch(cut, "plan-ok", ["Q"]) is not None


def test_only_an_approval_stage_can_be_approved() -> None:
    with pytest.raises(control.Refused) as refused:
        control.approve_patch(batch(), "review", None)
    assert str(refused.value) == (
        'stage "review" of analysisbatch "semis" is of type judge, not approval '
        "(its approval stages: plan-ok, final-ok)"
    )
    with pytest.raises(control.Refused, match='has no stage "nope" \\(stages: research, plan-ok, final-ok, review\\)'):
        control.approve_patch(batch(), "nope", None)
    untyped = {"metadata": {"name": "x"}, "spec": {"stages": [{"name": "only"}]}}  # type defaults to generate
    with pytest.raises(control.Refused, match="of type generate, not approval \\(it has no approval stage\\)"):
        control.approve_patch(untyped, "only", None)


def test_what_a_stage_releases_reads_back_from_the_spec() -> None:
    approvals = [{"stage": "plan-ok"}, {"stage": "final-ok", "items": ["A"]}]
    assert control.approved(batch(approvals), "plan-ok") is None
    assert control.approved(batch(approvals), "final-ok") == ["A"]
    assert control.approved(batch(), "plan-ok") == []


def test_suspend_and_resume_patch_only_what_changes() -> None:
    running = batch()
    assert control.suspend_patch(running, True) == {"metadata": {"resourceVersion": "41"}, "spec": {"suspend": True}}
    assert control.suspend_patch(running, False) is None
    running["spec"]["suspend"] = True
    assert control.suspend_patch(running, True) is None
    assert control.suspend_patch(running, False) == {"metadata": {"resourceVersion": "41"}, "spec": {"suspend": False}}


def test_retry_tokens_are_fresh_and_go_into_the_annotation_the_operator_reads() -> None:
    now = datetime(2026, 11, 22, 12, 0, 5, tzinfo=UTC)
    assert control.fresh_token(now, "abc123") == "20261122T120005Z-abc123"
    assert control.fresh_token(now) != control.fresh_token(now)
    assert control.retry_patch("t1") == {"metadata": {"annotations": {"analysis.dev/retry-failed": "t1"}}}


def test_gitops_owners_show_in_tracking_marks_or_in_who_manages_the_spec() -> None:
    assert control.gitops_owner(batch()) is None
    assert control.gitops_owner(batch(annotations={"argocd.argoproj.io/tracking-id": "app:x/y"})) == "Argo CD"
    assert control.gitops_owner(batch(labels={"kustomize.toolkit.fluxcd.io/name": "apps"})) == "Flux"
    applied = [{"manager": "argocd-controller", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
    assert control.gitops_owner(batch(managedFields=applied)) == "Argo CD"
    # A manager that owns only metadata does not undo a spec change; kubectl users are no GitOps.
    labels_only = [
        {"manager": "kustomize-controller", "fieldsV1": {"f:metadata": {}}},
        {"manager": "kubectl-client-side-apply", "fieldsV1": {"f:spec": {}}},
    ]
    assert control.gitops_owner(batch(managedFields=labels_only)) is None
