"""The metric modules of the worker and the operator, in process: labels, outcomes, series coming and going.

The processes themselves are scraped in ``tests/integration/test_metrics_worker.py``
and ``tests/e2e/test_metrics.py``; here the parts are checked one by one, and
``docs/metrics.md`` against the registries.
"""

import asyncio
import logging
import re
import shutil
import socket
import subprocess
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lightkube.models.meta_v1 import Status
from prometheus_client import CollectorRegistry, generate_latest

from analysis_core import env, errors, pricing
from analysis_operator import kube
from analysis_operator import metrics as operator_metrics
from analysis_worker import metrics as worker_metrics

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs/metrics.md"
EXPOSED_NAME = {"counter": "{}_total", "histogram": "{}", "gauge": "{}"}


def promtool_says(exposition: bytes) -> str:
    """What ``promtool check metrics`` complains about ("" when nothing, as it is silent then)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (tools/system-packages.sh installs Debian's prometheus package)"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30, check=False
    )
    said = (checked.stdout + checked.stderr).decode()
    return said if checked.returncode == 0 else f"{said}exit {checked.returncode}"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------- operator

STATUS: dict[str, Any] = {
    "phase": "Running",
    "stages": [
        {
            "name": "analyze",
            "pending": 4,
            "running": 2,
            "succeeded": 7,
            "failed": 1,
            "retrying": 1,
            "deadLettered": 0,
            "workers": 2,
        },
        {"name": "judge", "pending": 0, "running": 1, "succeeded": 5, "failed": 0, "retrying": 0, "workers": 1},
    ],
    "usage": {"inputTokens": 1200, "outputTokens": 3400, "costUSD": "0.0612"},
}


def batches_registry() -> tuple[operator_metrics.Batches, CollectorRegistry]:
    batches = operator_metrics.Batches()
    registry = CollectorRegistry()
    registry.register(batches)
    return batches, registry


def test_a_batch_status_becomes_its_series_and_forgetting_removes_them_all() -> None:
    batches, registry = batches_registry()
    batches.observe("research", "semis", STATUS)
    batches.observe("other", "semis", {**STATUS, "stages": STATUS["stages"][:1]})
    stage = {"namespace": "research", "batch": "semis", "stage": "analyze"}
    assert sample(registry, "analysis_operator_stage_items", **stage, state="pending") == 4
    assert sample(registry, "analysis_operator_stage_items", **stage, state="running") == 2
    assert sample(registry, "analysis_operator_stage_items", **stage, state="dead_lettered") == 0
    assert sample(registry, "analysis_operator_stage_workers", **stage) == 2
    # A field missing from a stage's status (deadLettered here) is exported as 0, not left out.
    judge = {"namespace": "research", "batch": "semis", "stage": "judge"}
    assert registry.get_sample_value("analysis_operator_stage_items", {**judge, "state": "dead_lettered"}) == 0
    batch = {"namespace": "research", "batch": "semis"}
    assert sample(registry, "analysis_operator_batch_tokens_total", **batch, direction="output") == 3400
    assert sample(registry, "analysis_operator_batch_cost_dollars_total", **batch) == pytest.approx(0.0612)

    batches.forget("research", "semis")
    text = generate_latest(registry).decode()
    assert 'namespace="research"' not in text
    assert 'namespace="other"' in text  # a batch of the same name elsewhere is another batch


def test_a_newer_status_replaces_the_stages_it_no_longer_has() -> None:
    batches, registry = batches_registry()
    batches.observe("ns", "b", STATUS)
    batches.observe("ns", "b", {"stages": [], "usage": {}})
    assert "stage=" not in generate_latest(registry).decode()
    assert sample(registry, "analysis_operator_batch_tokens_total", namespace="ns", batch="b", direction="input") == 0


def test_batches_are_counted_by_phase_with_every_phase_of_a_namespace_present() -> None:
    batches, registry = batches_registry()
    batches.phase("u1", "research", "Running")
    batches.phase("u2", "research", "Running")
    batches.phase("u3", "research", "Complete")
    batches.phase("u2", "research", "Failed")  # the same batch moved on
    phases = {
        phase: registry.get_sample_value("analysis_operator_batches", {"namespace": "research", "phase": phase})
        for phase in ("Pending", "Running", "WaitingForApproval", "Suspended", "Complete", "Failed")
    }
    assert phases == {"Pending": 0, "Running": 1, "WaitingForApproval": 0, "Suspended": 0, "Complete": 1, "Failed": 1}
    for uid in ("u1", "u2", "u3"):
        batches.phase(uid, "research", None)
    assert "analysis_operator_batches{" not in generate_latest(registry).decode()


def test_an_unreadable_cost_counts_as_zero_rather_than_breaking_the_scrape() -> None:
    assert operator_metrics.Progress.of({"usage": {"costUSD": "n/a"}}).cost_usd == 0
    assert operator_metrics.Progress.of({}).stages == ()


def api_error(code: int, reason: str, message: str) -> kube.ApiError:
    """What the client raises for an API server's Status answer."""
    return kube.ApiError(status=Status(code=code, reason=reason, message=message))


def test_reconcile_errors_are_labelled_by_class_and_api_reason_never_by_message() -> None:
    conflict = api_error(409, "Conflict", "jobs.batch x exists")
    assert operator_metrics.error_labels(conflict) == ("ApiError", "Conflict")
    assert operator_metrics.error_labels(ValueError("item NVDA broke")) == ("ValueError", "")
    before = sample(
        operator_metrics.REGISTRY, "analysis_operator_reconcile_errors_total", error="ApiError", reason="NotFound"
    )
    operator_metrics.reconcile_failed(api_error(404, "NotFound", "configmaps y not found"))
    after = sample(
        operator_metrics.REGISTRY, "analysis_operator_reconcile_errors_total", error="ApiError", reason="NotFound"
    )
    assert after == before + 1


def test_the_operator_exposition_passes_promtool() -> None:
    operator_metrics.BATCHES.observe("unit-ns", "unit-batch", STATUS)
    operator_metrics.BATCHES.phase("unit-uid", "unit-ns", "Running")
    operator_metrics.reconciled(0.02)
    try:
        exposition = generate_latest(operator_metrics.REGISTRY)
    finally:
        operator_metrics.BATCHES.forget("unit-ns", "unit-batch")
        operator_metrics.BATCHES.phase("unit-uid", "unit-ns", None)
    assert b'analysis_operator_stage_items{batch="unit-batch"' in exposition
    assert promtool_says(exposition) == ""


async def test_the_operator_serves_its_registry_and_survives_a_taken_port(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="analysis_operator"):
            assert await operator_metrics.serve(port, host="127.0.0.1") is None
        assert [r.getMessage() for r in caplog.records if str(port) in r.getMessage()]
    runner = await operator_metrics.serve(port, host="127.0.0.1")
    assert runner is not None
    try:
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    finally:
        await runner.cleanup()
    assert "# TYPE analysis_operator_reconcile_duration_seconds histogram" in text


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


# ---------------------------------------------------------------- worker

WORKER = worker_metrics.REGISTRY


def calls(stage: str, outcome: str) -> float:
    return sample(
        WORKER,
        "analysis_worker_provider_request_duration_seconds_count",
        stage=stage,
        provider="openai",
        model="m",
        outcome=outcome,
    )


async def test_provider_calls_are_timed_by_how_they_ended() -> None:
    stage = "unit-provider"
    m = worker_metrics.StageMetrics(stage, "openai", "m")

    async def call(fail: BaseException | None) -> None:
        with m.provider_call():
            in_flight = sample(
                WORKER, "analysis_worker_provider_calls_in_flight", stage=stage, provider="openai", model="m"
            )
            assert in_flight == 1
            if fail is not None:
                raise fail

    await call(None)
    limited = errors.ProviderError(errors.ErrorClass.RATE_LIMITED, "slow down", retry_after_s=1, status=429)
    for fail in (limited, TimeoutError(), asyncio.CancelledError()):
        with pytest.raises(type(fail)):
            await call(fail)
    assert {o: calls(stage, o) for o in ("success", "RateLimited", "Timeout", "cancelled")} == {
        "success": 1,
        "RateLimited": 1,
        "Timeout": 1,
        "cancelled": 1,
    }
    assert sample(WORKER, "analysis_worker_provider_rate_limited_total", stage=stage, provider="openai", model="m") == 1
    assert sample(WORKER, "analysis_worker_provider_calls_in_flight", stage=stage, provider="openai", model="m") == 0


def test_stage_metrics_count_outcomes_verdicts_and_usage() -> None:
    stage = "unit-counts"
    m = worker_metrics.StageMetrics(stage, "anthropic", "claude-x")
    # Every outcome and error class exists from the start, at zero.
    for outcome in worker_metrics.Outcome:
        assert WORKER.get_sample_value("analysis_worker_items_total", {"stage": stage, "outcome": outcome}) == 0
    for cls in errors.ErrorClass:
        assert WORKER.get_sample_value("analysis_worker_errors_total", {"stage": stage, "error_class": cls}) == 0
    m.item(worker_metrics.Outcome.SUCCEEDED)
    m.error(errors.ErrorClass.BAD_OUTPUT)
    m.verdict(approved=False)
    m.usage(pricing.Tokens(input=20, output=40, cache_write=30, cache_read=50), Decimal("0.00090"))
    m.redelivered(worker_metrics.Redelivery.EXPIRED_LEASE, 2)
    m.leases_lost(0)
    inflight = [1, 2, 3]
    m.track_in_flight(lambda: len(inflight))
    assert sample(WORKER, "analysis_worker_items_total", stage=stage, outcome="succeeded") == 1
    assert sample(WORKER, "analysis_worker_errors_total", stage=stage, error_class="BadOutput") == 1
    assert sample(WORKER, "analysis_worker_judge_verdicts_total", stage=stage, verdict="rejected") == 1
    labels = {"stage": stage, "provider": "anthropic", "model": "claude-x"}
    assert sample(WORKER, "analysis_worker_tokens_total", **labels, direction="input") == 100
    assert sample(WORKER, "analysis_worker_tokens_total", **labels, direction="output") == 40
    assert sample(WORKER, "analysis_worker_cache_tokens_total", **labels, use="write") == 30
    assert sample(WORKER, "analysis_worker_cache_tokens_total", **labels, use="read") == 50
    assert sample(WORKER, "analysis_worker_cost_dollars_total", **labels) == pytest.approx(0.0009)
    assert sample(WORKER, "analysis_worker_redeliveries_total", stage=stage, source="expired_lease") == 2
    assert sample(WORKER, "analysis_worker_leases_lost_total", stage=stage) == 0
    assert sample(WORKER, "analysis_worker_items_in_flight", stage=stage) == 3  # read when scraped


@pytest.mark.parametrize(
    ("raw", "port", "warned"),
    [
        (None, 0, False),
        ("", 0, False),
        ("0", 0, False),
        ("9090", 9090, False),
        ("metrics", 0, True),
        ("70000", 0, True),
        ("-1", 0, True),
    ],
)
def test_the_metrics_port_comes_from_the_environment(
    raw: str | None, port: int, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {} if raw is None else {env.METRICS_PORT: raw}
    with caplog.at_level(logging.WARNING, logger="analysis_worker"):
        assert worker_metrics.port_from_env(environ) == port
    assert bool(caplog.records) is warned
    assert all(env.METRICS_PORT in r.getMessage() for r in caplog.records)


def test_the_worker_endpoint_serves_promtool_clean_metrics_and_skips_a_taken_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker_metrics.StageMetrics("unit-serve", "offline", "offline").item(worker_metrics.Outcome.RETRIED)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="analysis_worker"):
            assert worker_metrics.serve(port, addr="127.0.0.1") is None
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert f"port {port}" in warnings[0].getMessage()
    server = worker_metrics.serve(port, addr="127.0.0.1")
    assert server is not None
    try:
        text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.close()
    assert 'analysis_worker_items_total{outcome="retried",stage="unit-serve"} 1.0' in text
    assert promtool_says(text.encode()) == ""


# ---------------------------------------------------------------- docs


def documented() -> dict[str, str]:
    """Name -> type from the tables of docs/metrics.md (rows whose first cell is a metric name)."""
    rows = re.findall(r"^\| `(analysis_[a-z_]+)` \| (counter|gauge|histogram) \|", DOCS.read_text(), re.MULTILINE)
    return dict(rows)


def defined() -> dict[str, str]:
    out = {}
    for registry in (worker_metrics.REGISTRY, operator_metrics.REGISTRY):
        for family in registry.collect():
            if family.name.startswith("analysis_"):
                out[EXPOSED_NAME[family.type].format(family.name)] = family.type
    return out


def test_docs_list_every_metric_with_its_type() -> None:
    assert documented() == defined()


def test_every_metric_has_help_and_the_conventional_name() -> None:
    for registry in (worker_metrics.REGISTRY, operator_metrics.REGISTRY):
        for family in registry.collect():
            assert family.documentation.strip(), family.name
            if family.name.startswith("analysis_"):
                assert re.fullmatch(r"analysis_(worker|operator)_[a-z_]+", family.name), family.name
                assert not family.name.endswith("_total"), family.name  # counters get it on exposition


def test_a_batch_mode_stage_exports_its_provider_batches_and_a_realtime_one_none() -> None:
    batches, registry = batches_registry()
    stages = [
        {"name": "draft", "running": 3},
        {"name": "analyze", "running": 40, "providerBatches": {"submitted": 4, "inProgress": 1, "ended": 3}},
    ]
    batches.observe("ns", "b", {"stages": stages, "usage": {}})
    stage = {"namespace": "ns", "batch": "b", "stage": "analyze"}
    assert sample(registry, "analysis_operator_stage_provider_batches", **stage, state="in_progress") == 1
    assert sample(registry, "analysis_operator_stage_provider_batches", **stage, state="ended") == 3
    draft = {"namespace": "ns", "batch": "b", "stage": "draft", "state": "ended"}
    assert registry.get_sample_value("analysis_operator_stage_provider_batches", draft) is None
