"""The reconciler's pure parts: reading children off index bodies, and naming what pods and providers complain about."""

import dataclasses
import datetime
from typing import Any

import pytest

from analysis_core import plan, pricing, queue
from analysis_core.api import v1alpha1, wellknown
from analysis_operator import accounts, producer, reconciler

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


def test_a_pod_summary_names_its_owner_and_whether_it_started() -> None:
    owned = reconciler.pod_summary(
        pod("ContainerCreating", "", ownerReferences=[{"kind": "Job", "name": "b-s-1a2b3c"}])
    )
    assert (owned.owner, owned.started, owned.live) == ("b-s-1a2b3c", False, True)
    running = reconciler.pod_summary({**pod("", ""), "status": {"phase": "Running"}})
    assert (running.owner, running.started) == ("", True)


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


def _snapshot(quota: dict[str, queue.QuotaPause], *, running: int = 1) -> producer.Snapshot:
    counts = queue.StageCounts(ready=0, running=running, retrying=0, counters={})
    return producer.Snapshot({"analyze": counts}, frozenset(), True, quota=quota)


def test_a_stage_paused_for_quota_stalls_the_batch_naming_the_provider_and_its_words() -> None:
    words = "Your credit balance is too low to access the Anthropic API."
    pause = queue.QuotaPause(message=words, model=None, since_ms=1_700_000_000_000, backoff_ms=40_000, probes=3)
    (problem,) = reconciler.quota_problems(PLAN, _snapshot({"analyze": pause}))
    assert (problem.reason, problem.stalled) == (wellknown.Reason.PROVIDER_QUOTA_EXHAUSTED, True)
    assert problem.message.startswith(
        "spec.providers.claude (anthropic, model m) refuses calls for quota or billing since 2023-11-14T22:13:20Z: "
    )
    assert words in problem.message
    assert "Stage analyze is paused and probes the provider every 40s" in problem.message
    # A refusal of one model says so.
    scoped = dataclasses.replace(pause, model="m")
    (problem,) = reconciler.quota_problems(PLAN, _snapshot({"analyze": scoped}))
    assert "refuses access to model m since" in problem.message
    # Gone with the pause, and once nothing in the stage waits any more.
    assert reconciler.quota_problems(PLAN, _snapshot({})) == []
    assert reconciler.quota_problems(PLAN, _snapshot({"analyze": pause}, running=0)) == []


def test_an_account_another_install_holds_stalls_the_batch_naming_the_field_and_the_install() -> None:
    account = v1alpha1.AnalysisProviderSpec.model_validate(
        {"type": "openai", "limits": {"requestsPerMinute": 60}, "namespaces": [{"name": "*"}]}
    )
    on_account = plan.compile_plan(
        "uid",
        v1alpha1.AnalysisBatchSpec.model_validate(
            {
                "items": ["A"],
                "providers": {
                    "shared": {
                        "providerRef": {"name": "team-gpt"},
                        "model": "m",
                        "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
                    }
                },
                "stages": [{"name": "analyze", "provider": "shared", "prompt": "{{ item }}"}],
            }
        ),
        accounts={"team-gpt": account},
    )
    registry = accounts.Registry()
    assert reconciler.account_held_elsewhere_problems(on_account, registry) == []
    registry.elsewhere["team-gpt"] = "analysis-team-b"
    (problem,) = reconciler.account_held_elsewhere_problems(on_account, registry)
    assert (problem.reason, problem.stalled) == (wellknown.Reason.PROVIDER_SERVED_ELSEWHERE, True)
    assert problem.message.startswith(
        "spec.providers.shared.providerRef: AnalysisProvider team-gpt is held by the operator install in "
        "analysis-team-b"
    )
    # Inline providers are this install's own.
    assert reconciler.account_held_elsewhere_problems(PLAN, registry) == []


@pytest.mark.parametrize(
    ("status", "held_by"),
    [
        ({}, None),  # never claimed
        ({"servedBy": "analysis-a", "renewTime": "2026-11-22T12:00:00Z"}, "analysis-a"),
        ({"servedBy": "analysis-a", "renewTime": "2026-11-22T11:59:46Z"}, "analysis-a"),  # 14 s: within the lease
        ({"servedBy": "analysis-a", "renewTime": "2026-11-22T11:59:40Z"}, None),  # 20 s: lapsed
        ({"servedBy": "analysis-a"}, None),  # never renewed
        ({"servedBy": "analysis-b", "renewTime": "2026-11-22T12:00:00Z"}, None),  # this install's own
    ],
)
def test_an_account_is_held_elsewhere_while_another_install_renews_its_claim(
    status: dict[str, str], held_by: str | None
) -> None:
    now_ms = 1_795_348_800_000  # 2026-11-22T12:00:00Z
    assert accounts.held_elsewhere(status, "analysis-b", now_ms) == held_by


@pytest.mark.parametrize(
    ("message", "reason", "starts"),
    [
        (
            'MountVolume.SetUp failed for volume "api-key" : secret "llm-keys" not found',
            "SecretNotFound",
            "spec.providers.summarizer.apiKeySecretRef: ",
        ),
        (
            'MountVolume.SetUp failed for volume "api-key" : references non-existent secret key: openai',
            "SecretKeyNotFound",
            "stage summarize: ",
        ),
        (
            'MountVolume.SetUp failed for volume "redis-auth" : secret "ticker-summary-redis" not found',
            "SecretNotFound",
            "stage summarize: ",
        ),
    ],
)
def test_a_failed_mount_names_the_missing_secret_and_the_field_behind_it(
    message: str, reason: str, starts: str
) -> None:
    problem = reconciler.mount_problem(message, {"llm-keys": "spec.providers.summarizer.apiKeySecretRef"}, "summarize")
    assert problem is not None
    assert problem.reason == reason
    assert problem.message == starts + message
    assert problem.stalled


def test_other_failed_mounts_are_not_a_missing_secret() -> None:
    assert reconciler.mount_problem('MountVolume.SetUp failed for volume "tmp" : no space left', {}, "s") is None


def test_a_pod_creating_its_containers_says_since_when() -> None:
    body = {
        "metadata": {"name": "p", "labels": {}, "creationTimestamp": "2026-12-06T18:00:00Z"},
        "status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
    }
    pod = reconciler.pod_summary(body)  # type: ignore[arg-type]
    assert pod.creating_since == datetime.datetime(2026, 12, 6, 18, 0, tzinfo=datetime.UTC).timestamp()
    assert pod.waiting_reason == ""  # creating is not a problem by itself
    body["status"]["containerStatuses"] = [{"state": {"running": {}}}]
    assert reconciler.pod_summary(body).creating_since is None  # type: ignore[arg-type]
