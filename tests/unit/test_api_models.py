"""The v1alpha1 models read every example, apply the documented defaults, and refuse unknown fields."""

from pathlib import Path

import pydantic
import pytest
import yaml

from analysis_core import api
from analysis_core.api import v1alpha1

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_parses(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if doc["kind"] == api.PROVIDER_KIND:
        account = v1alpha1.AnalysisProvider.model_validate(doc)
        assert account.spec.namespaces
        return
    batch = v1alpha1.AnalysisBatch.model_validate(doc)
    assert batch.kind == api.KIND
    assert batch.spec.stages
    # The inline providers run without keys; one on a shared account (providerRef) needs the account's API.
    inline = {p.type for p in batch.spec.providers.values() if p.provider_ref is None}
    assert inline <= {v1alpha1.ProviderType.OFFLINE}


def test_there_are_examples_to_test() -> None:
    assert {p.stem for p in EXAMPLES} >= {
        "ticker-summary",
        "stock-research",
        "provider-account",
        "team-batch-on-account",
    }


def test_stock_research_exercises_every_construct() -> None:
    batch = v1alpha1.AnalysisBatch.model_validate(
        yaml.safe_load((EXAMPLES[0].parent / "stock-research.yaml").read_text(encoding="utf-8"))
    )
    stages = {s.name: s for s in batch.spec.stages}
    assert stages["research"].fan_out is not None
    assert stages["research"].output is v1alpha1.OutputFormat.JSON
    assert stages["plan-ok"].type is v1alpha1.StageType.APPROVAL
    assert batch.spec.approvals is not None
    assert batch.spec.approvals[0].stage == "plan-ok"
    rank = stages["rank"]
    assert rank.collect
    assert rank.fan_out is not None
    assert (rank.fan_out.sort_by, rank.fan_out.max) == ("score", 5)
    review = stages["review"]
    assert (review.type, review.reviews, review.max_rejections) == (v1alpha1.StageType.JUDGE, "analyze", 3)
    assert stages["report"].output is v1alpha1.OutputFormat.JSON
    assert stages["report"].json_schema is not None


def test_defaults_match_what_the_schema_documents() -> None:
    stage = v1alpha1.Stage.model_validate({"name": "analyze", "provider": "p", "prompt": "x"})
    assert stage.type is v1alpha1.StageType.GENERATE
    assert stage.output is v1alpha1.OutputFormat.TEXT
    assert (stage.concurrency, stage.timeout_seconds, stage.executor) == (4, 300, v1alpha1.Executor.JOB)
    assert stage.retry.max_attempts == 3
    assert (stage.retry.backoff.initial_seconds, stage.retry.backoff.factor) == (2, 2)
    assert stage.max_rejections is None  # judge-only; the plan compiler applies 3
    assert stage.calls_per_pod is None  # the operator's setting (builders.calls_per_pod)


def test_unknown_fields_and_mutation_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="concurency"):
        v1alpha1.Stage.model_validate({"name": "a", "provider": "p", "prompt": "x", "concurency": 3})
    stage = v1alpha1.Stage.model_validate({"name": "a", "provider": "p", "prompt": "x"})
    with pytest.raises(pydantic.ValidationError):
        stage.concurrency = 9  # type: ignore[misc]


def test_status_reads_what_a_newer_operator_may_write() -> None:
    status = v1alpha1.AnalysisBatchStatus.model_validate(
        {
            "phase": "Running",
            "progress": "2/3",
            "somethingNew": {"x": 1},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Running",
                    "message": "",
                    "lastTransitionTime": "2026-11-22T10:00:00Z",
                }
            ],
        }
    )
    assert status.phase is v1alpha1.Phase.RUNNING
    assert status.conditions is not None
    assert status.conditions[0].status is v1alpha1.ConditionStatus.FALSE
