"""The reconciler's pure parts: reading children off index bodies, and naming what pods complain about."""

from typing import Any

import pytest

from analysis_core import plan, pricing
from analysis_core.api import v1alpha1, wellknown
from analysis_operator import reconciler

pytestmark = pytest.mark.unit

PLAN = plan.compile_plan(
    "uid",
    v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["A"],
            "providers": {
                "claude": {
                    "type": "anthropic",
                    "model": "m",
                    "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"},
                }
            },
            "stages": [{"name": "analyze", "provider": "claude", "prompt": "{{ item }}"}],
        }
    ),
)


def pod(reason: str, message: str, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p-1", "labels": {wellknown.LABEL_STAGE: "analyze"}, **meta},
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": reason, "message": message}}}],
        },
    }


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('secret "llm-keys" not found', "SecretNotFound"),
        ("couldn't find key anthropic in Secret research/llm-keys", "SecretKeyNotFound"),
    ],
)
def test_a_missing_secret_is_named_by_the_provider_field(message: str, reason: str) -> None:
    children = reconciler.Children(pods=[reconciler.pod_summary(pod("CreateContainerConfigError", message))])
    [problem] = reconciler.pod_problems(PLAN, children)
    assert problem.reason == reason
    assert problem.message.startswith("spec.providers.claude.apiKeySecretRef: ")
    assert message in problem.message
    assert problem.stalled


def test_an_image_without_a_local_equivalent_is_reported_once() -> None:
    pods = [reconciler.pod_summary(pod("ImageNotLocal", "no local image x")) for _ in range(3)]
    [problem] = reconciler.pod_problems(PLAN, reconciler.Children(pods=pods))
    assert problem.reason == "WorkerImageUnavailable"


def test_deleting_pods_and_healthy_pods_report_nothing() -> None:
    deleting = reconciler.pod_summary(pod("CreateContainerConfigError", "x", deletionTimestamp="2026-01-01T00:00:00Z"))
    creating = reconciler.pod_summary(pod("ContainerCreating", ""))
    assert reconciler.pod_problems(PLAN, reconciler.Children(pods=[deleting, creating])) == []
    assert not deleting.live
    assert creating.live


def test_workload_summaries() -> None:
    job = {
        "kind": "Job",
        "metadata": {
            "name": "b-analyze-abc123",
            "labels": {wellknown.LABEL_STAGE: "analyze"},
            "annotations": {reconciler.ANNOTATION_SPEC_HASH: "h1"},
        },
        "spec": {"parallelism": 3},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    summary = reconciler.workload_summary(job)
    assert (summary.stage, summary.size, summary.spec_hash, summary.complete) == ("analyze", 3, "h1", True)
    job["status"] = {
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ]
    }
    assert reconciler.workload_summary(job).failed.startswith("BackoffLimitExceeded")
    deployment = {"kind": "Deployment", "metadata": {"name": "b-analyze"}, "spec": {"replicas": 0}}
    assert reconciler.workload_summary(deployment).size == 0


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("[NVDA, AMD]", ["NVDA", "AMD"]),
        ('["NVDA", "AMD"]', ["NVDA", "AMD"]),
        ("NVDA\n\n# note\nAMD\n", ["NVDA", "AMD"]),
    ],
)
def test_items_from_a_configmap_in_any_of_three_forms(text: str, items: list[str]) -> None:
    ref = v1alpha1.ConfigMapKeyRef(name="tickers", key="list")
    problems: list[Any] = []
    assert reconciler.parse_items(text, ref, problems) == items
    assert problems == []


def test_bad_item_lists_name_the_configmap() -> None:
    ref = v1alpha1.ConfigMapKeyRef(name="tickers", key="list")
    for text, reason in (("", "NoItems"), ("A\nA", "DuplicateItems"), ("a/b", "InvalidItems")):
        problems: list[Any] = []
        reconciler.parse_items(text, ref, problems)
        assert [p.reason for p in problems] == [reason]
        assert "spec.itemsFrom.configMapKeyRef (ConfigMap tickers, key list)" in problems[0].message


def _budgeted(budget: dict[str, Any], **models: str) -> plan.Plan:
    key = {"name": "k", "key": "k"}
    providers = {
        name: {"type": "offline"}
        if model == "offline"
        else {"type": "anthropic", "model": model, "apiKeySecretRef": key}
        for name, model in models.items()
    }
    stages = [{"name": f"s-{name}", "provider": name, "prompt": "{{ item }}"} for name in models]
    spec = {"items": ["A"], "providers": providers, "stages": stages, "budget": budget}
    return plan.compile_plan("uid", v1alpha1.AnalysisBatchSpec.model_validate(spec))


def test_a_cost_budget_over_a_model_without_a_price_is_a_problem_naming_the_field_never_a_silent_zero() -> None:
    prices = pricing.PriceTable.default()
    unpriced = _budgeted({"maxCostUSD": 5}, known="claude-sonnet-4-5", house="acme-llm-7", local="offline")
    (problem,) = reconciler.unpriced_budget(unpriced, prices)
    assert (problem.reason, problem.stalled) == (wellknown.Reason.UNPRICED_MODEL, True)
    assert problem.message.startswith("spec.providers.house.model: acme-llm-7: no price in the operator's price table")
    assert "spec.budget.maxCostUSD" in problem.message
    assert "spec.providers.known" not in problem.message
    # A token budget, or no budget, needs no price; an operator's table that prices the model clears it.
    assert reconciler.unpriced_budget(_budgeted({"maxTokens": 10_000}, house="acme-llm-7"), prices) == []
    table = pricing.PriceTable.from_text("models:\n  acme-llm: {input: 1, output: 2}\n", "test")
    assert reconciler.unpriced_budget(unpriced, table) == []
