"""The operator's Prometheus endpoint while it runs real batches, checked by promtool.

A batch's series follow its status (items by stage and state, tokens, cost)
while its reconciler runs, and disappear when the reconciler ends (the batch
finished) or the batch is deleted; the batches-by-phase gauge keeps counting
finished batches until they are deleted.
"""

import shutil
import subprocess
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from analysis_core import pricing
from analysis_devcluster import standin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_KEY = "sk-test-operator-metrics"
Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    """The operator's ``/metrics``, which ``promtool check metrics`` must find nothing to say about."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (tools/system-packages.sh installs Debian's prometheus package)"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, ""), checked.stdout + checked.stderr
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def of_batch(samples: Samples, namespace: str, batch: str) -> Samples:
    return [s for s in samples if s[1].get("namespace") == namespace and s[1].get("batch") == batch]


def manifest(name: str, items: list[str], provider: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name},
        "spec": {
            "items": items,
            "providers": {"llm": provider},
            "stages": [{"name": "summarize", "provider": "llm", "prompt": "Summarize {{ item }}", "concurrency": 3}],
            **spec,
        },
    }


@pytest.mark.timeout(240)
def test_a_batch_has_series_while_it_is_reconciled_and_none_once_deleted(batches: Any, operator: Any) -> None:
    items = ["NVDA", "AMD", "TSM"]
    ns = batches.namespace
    with standin.StandIn(api_key=API_KEY, host=batches.dev.host) as server:
        batches.kubectl("create", "secret", "generic", "llm-keys", f"--from-literal=openai={API_KEY}")
        provider = {
            "type": "openai",
            "model": "gpt-4.1",
            "baseURL": server.openai_base_url,
            "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
        }
        # A TTL keeps the reconciler (and so the batch's series) alive after it completes.
        batches.apply(manifest("priced", items, provider, ttlSecondsAfterFinished=3600))
        batches.wait("priced", "Complete", timeout_s=120)
    usage = batches.get("priced")["status"]["usage"]

    def settled() -> Samples | None:
        samples = scrape(operator.metrics_url)
        done = value(samples, "analysis_operator_stage_items", namespace=ns, batch="priced", state="succeeded")
        return samples if done == len(items) else None

    samples = batches.eventually(settled, 30, "the completed status in the metrics")
    stage = {"namespace": ns, "batch": "priced", "stage": "summarize"}
    states = {
        s: value(samples, "analysis_operator_stage_items", **stage, state=s)
        for s in ("pending", "running", "retrying", "succeeded", "failed", "dead_lettered")
    }
    assert states == {"pending": 0, "running": 0, "retrying": 0, "succeeded": 3, "failed": 0, "dead_lettered": 0}
    assert any(n == "analysis_operator_stage_workers" for n, _lab, _v in of_batch(samples, ns, "priced"))
    tokens = {
        d: value(samples, "analysis_operator_batch_tokens_total", namespace=ns, batch="priced", direction=d)
        for d in ("input", "output")
    }
    assert tokens == {"input": usage["inputTokens"], "output": usage["outputTokens"]}
    assert tokens["input"] > 0
    cost = value(samples, "analysis_operator_batch_cost_dollars_total", namespace=ns, batch="priced")
    assert cost == pytest.approx(float(usage["costUSD"]))
    assert cost > 0
    phases = {lab["phase"]: v for n, lab, v in samples if n == "analysis_operator_batches" and lab["namespace"] == ns}
    assert phases["Complete"] == 1
    assert sum(phases.values()) == 1
    assert value(samples, "analysis_operator_reconcile_duration_seconds_count") > 0
    # Bounded labels: no item shows up anywhere in the exposition's labels.
    assert not [lab for _n, lab, _v in samples if set(lab.values()) & set(items)]

    batches.kubectl("delete", "analysisbatch", "priced", "--wait=true", timeout=90)

    def gone() -> Samples | None:
        after = scrape(operator.metrics_url)
        counted = [lab for n, lab, _v in after if n == "analysis_operator_batches" and lab["namespace"] == ns]
        return after if not of_batch(after, ns, "priced") and not counted else None

    batches.eventually(gone, 30, "the deleted batch's series gone")


@pytest.mark.timeout(180)
def test_a_finished_batch_leaves_only_its_phase_behind(batches: Any, operator: Any) -> None:
    ns = batches.namespace
    offline = {"type": "offline", "offline": {"seed": 2, "latencyMilliseconds": 0}}
    batches.apply(manifest("quick", ["A1", "B2"], offline))
    batches.eventually(lambda: of_batch(scrape(operator.metrics_url), ns, "quick"), 60, "the batch's series")
    batches.wait("quick", "Complete", timeout_s=120)

    def reconciler_ended() -> Samples | None:
        samples = scrape(operator.metrics_url)
        return samples if not of_batch(samples, ns, "quick") else None

    # Without a TTL the reconciler ends once the batch is complete and its workers are gone; so do its series.
    samples = batches.eventually(reconciler_ended, 60, "the finished batch's series gone")
    assert value(samples, "analysis_operator_batches", namespace=ns, phase="Complete") == 1
    assert value(samples, "analysis_operator_batches", namespace=ns, phase="Running") == 0


@pytest.mark.timeout(180)
def test_a_batch_mode_stage_on_real_pods_goes_through_the_providers_batch_api_at_the_batch_price(
    batches: Any, operator: Any
) -> None:
    items = ["NVDA", "AMD", "TSM", "ASML"]
    ns = batches.namespace
    with standin.StandIn(api_key=API_KEY, host=batches.dev.host) as server:
        server.batch_turnaround(0.5)
        batches.kubectl("create", "secret", "generic", "llm-keys", f"--from-literal=anthropic={API_KEY}")
        provider = {
            "type": "anthropic",
            "model": "claude-sonnet-4-5",
            "baseURL": server.anthropic_base_url,
            "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"},
        }
        batched = manifest("batched", items, provider, ttlSecondsAfterFinished=3600)
        batched["spec"]["stages"][0].update({"mode": "Batch", "batch": {"maxItems": 10, "maxWaitSeconds": 30}})
        batches.apply(batched)
        # Nothing more can come after the four items: they go as one provider batch at once, not 30 s later.
        batches.wait("batched", "Complete", timeout_s=90)
        submitted = server.batch_submissions()
    status = batches.get("batched")["status"]
    (stage,) = status["stages"]
    assert stage["providerBatches"] == {"submitted": 1, "inProgress": 0, "ended": 1}
    assert len(submitted) == len(items)
    assert set(submitted.values()) == {1}
    assert server.provider_batches() == []  # collected, then deleted with its results
    usage = status["usage"]
    table = pricing.PriceTable.default()
    tokens = pricing.Tokens(usage["inputTokens"], usage["outputTokens"])
    assert float(usage["costUSD"]) == pytest.approx(
        float(table.cost_of("claude-sonnet-4-5", tokens, batch=True)), abs=1e-8
    )
    assert float(usage["costUSD"]) * 2 == pytest.approx(float(table.cost_of("claude-sonnet-4-5", tokens)), abs=1e-8)

    def exported() -> Samples | None:
        samples = scrape(operator.metrics_url)
        ended = value(samples, "analysis_operator_stage_provider_batches", namespace=ns, batch="batched", state="ended")
        return samples if ended == 1 else None

    batches.eventually(exported, 30, "the provider batch in the operator's metrics")
