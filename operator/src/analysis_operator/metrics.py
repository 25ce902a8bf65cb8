"""The operator's Prometheus metrics: its reconcile loop, and each batch's progress as its status shows it.

``handlers.py`` starts the endpoint at startup (``serve``, an aiohttp site on
Kopf's own event loop, ``ANALYSIS_OPERATOR_METRICS_PORT``), times every
reconcile step (``reconciled``, ``reconcile_failed``), hands the status each
step computed to ``BATCHES.observe``, keeps the phase of every batch it sees
with ``BATCHES.phase`` and drops a batch with ``BATCHES.forget`` when its
reconciler ends or the batch is deleted.

Per-batch series are rendered at scrape time from the last status of each
batch (a custom collector), so forgetting a batch removes every series it
had, whatever stages and states it reported: nothing piles up after batches
come and go. They are the only series labelled with namespace, batch and
stage; the reconcile metrics carry no batch at all, so their cardinality does
not grow with the number of batches.

Every metric lives in this module's ``REGISTRY``, which a test reads to check
the dashboard's queries and ``docs/metrics.md`` documents.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from analysis_core.api import v1alpha1
from analysis_operator import kube

log = logging.getLogger("analysis_operator")

# A _created sample per counter and histogram would double the series for a timestamp nobody graphs.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # (unannotated upstream)

REGISTRY = CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=REGISTRY)

# A step is a few Redis and API round trips; a slow API server or a big export stretches it to seconds.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
STATES = ("pending", "running", "retrying", "succeeded", "failed", "dead_lettered")
_STATE_FIELDS = {
    "pending": "pending",
    "running": "running",
    "retrying": "retrying",
    "succeeded": "succeeded",
    "failed": "failed",
    "dead_lettered": "deadLettered",
}
# A mode: Batch stage's provider batches (status.stages[].providerBatches), by the label's state.
_BATCH_STATE_FIELDS = {"in_progress": "inProgress", "ended": "ended"}

RECONCILE_DURATION = Histogram(
    "analysis_operator_reconcile_duration_seconds",
    "Duration of one reconcile step of a batch (observe, decide, converge, report).",
    buckets=RECONCILE_BUCKETS,
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "analysis_operator_reconcile_errors",
    "Reconcile steps that raised, by exception class and, for Kubernetes API errors, the Status reason.",
    ["error", "reason"],
    registry=REGISTRY,
)


def error_labels(exc: BaseException) -> tuple[str, str]:
    """(exception class, reason): a class name and, for an API error, its Status reason (``Conflict``...).

    Never the message: it names objects and items, which would make every
    error a new series.
    """
    if isinstance(exc, kube.ApiError):
        return type(exc).__name__, exc.status.reason or ""
    reason = getattr(exc, "reason", "")
    return type(exc).__name__, reason if isinstance(reason, str) else ""


def reconciled(seconds: float) -> None:
    RECONCILE_DURATION.observe(seconds)


def reconcile_failed(exc: BaseException) -> None:
    RECONCILE_ERRORS.labels(*error_labels(exc)).inc()


# ---------------------------------------------------------------- per-batch series


def _cost(text: Any) -> float:
    """``status.usage.costUSD`` (an exact decimal string) as a float; 0 if missing or unreadable."""
    try:
        return float(Decimal(str(text)))
    except (InvalidOperation, ValueError):
        return 0.0


@dataclasses.dataclass(frozen=True)
class Progress:
    """What the metrics need of one batch's status; read once per reconcile step, not per scrape."""

    stages: tuple[tuple[str, dict[str, int], int], ...]  # (stage, counts by state, workers)
    provider_batches: tuple[tuple[str, dict[str, int]], ...]  # (mode: Batch stage, its provider batches by state)
    input_tokens: int
    output_tokens: int
    cost_usd: float

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> Progress:
        stages, batched = [], []
        for stage in status.get("stages") or []:
            counts = {state: int(stage.get(field) or 0) for state, field in _STATE_FIELDS.items()}
            stages.append((str(stage.get("name", "")), counts, int(stage.get("workers") or 0)))
            made = stage.get("providerBatches")
            if isinstance(made, Mapping):
                by_state = {state: int(made.get(field) or 0) for state, field in _BATCH_STATE_FIELDS.items()}
                batched.append((str(stage.get("name", "")), by_state))
        usage = status.get("usage") or {}
        return cls(
            stages=tuple(stages),
            provider_batches=tuple(batched),
            input_tokens=int(usage.get("inputTokens") or 0),
            output_tokens=int(usage.get("outputTokens") or 0),
            cost_usd=_cost(usage.get("costUSD", "0")),
        )


class Batches(Collector):
    """The per-batch series, from the last status each reconciler computed and the phase of every batch seen."""

    def __init__(self) -> None:
        self._progress: dict[tuple[str, str], Progress] = {}  # (namespace, name) -> progress
        self._phases: dict[str, tuple[str, str]] = {}  # uid -> (namespace, phase)

    def observe(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._progress[namespace, name] = Progress.of(status)

    def phase(self, uid: str, namespace: str, phase: str | None) -> None:
        """The batch's phase as the API shows it (None: deleted)."""
        if phase is None:
            self._phases.pop(uid, None)
        else:
            self._phases[uid] = (namespace, phase)

    def forget(self, namespace: str, name: str) -> None:
        self._progress.pop((namespace, name), None)

    def collect(self) -> Iterable[Metric]:
        items = GaugeMetricFamily(
            "analysis_operator_stage_items",
            "Items of a batch's stage by state: pending (queue depth), running (in flight, leased), retrying "
            "(waiting for a retry), and the succeeded, failed and dead_lettered attempts so far.",
            labels=["namespace", "batch", "stage", "state"],
        )
        workers = GaugeMetricFamily(
            "analysis_operator_stage_workers",
            "Live worker pods of a batch's stage.",
            labels=["namespace", "batch", "stage"],
        )
        tokens = CounterMetricFamily(
            "analysis_operator_batch_tokens",
            "Tokens a batch used so far, by direction (input is the prompt, output the answer).",
            labels=["namespace", "batch", "direction"],
        )
        cost = CounterMetricFamily(
            "analysis_operator_batch_cost_dollars",
            "Cost of a batch so far in US dollars (status.usage.costUSD).",
            labels=["namespace", "batch"],
        )
        provider_batches = GaugeMetricFamily(
            "analysis_operator_stage_provider_batches",
            "A mode: Batch stage's provider batches by state: in_progress (submitted, not yet collected) and "
            "ended (collected) so far.",
            labels=["namespace", "batch", "stage", "state"],
        )
        for (namespace, name), progress in list(self._progress.items()):
            for stage, counts, live in progress.stages:
                for state in STATES:
                    items.add_metric([namespace, name, stage, state], counts[state])
                workers.add_metric([namespace, name, stage], live)
            for stage, by_state in progress.provider_batches:
                for state, value in by_state.items():
                    provider_batches.add_metric([namespace, name, stage, state], value)
            tokens.add_metric([namespace, name, "input"], progress.input_tokens)
            tokens.add_metric([namespace, name, "output"], progress.output_tokens)
            cost.add_metric([namespace, name], progress.cost_usd)
        yield from (items, workers, provider_batches, tokens, cost, self._by_phase())

    def _by_phase(self) -> GaugeMetricFamily:
        by_phase = GaugeMetricFamily(
            "analysis_operator_batches",
            "AnalysisBatches by namespace and phase, as the operator last saw them.",
            labels=["namespace", "phase"],
        )
        counted: dict[str, dict[str, int]] = {}
        for namespace, phase in list(self._phases.values()):
            # Every phase of a namespace that has batches, zeros included, so a phase emptying shows as 0.
            per = counted.setdefault(namespace, dict.fromkeys(map(str, v1alpha1.Phase), 0))
            per[phase] = per.get(phase, 0) + 1
        for namespace, per in sorted(counted.items()):
            for phase, count in per.items():
                by_phase.add_metric([namespace, phase], count)
        return by_phase


BATCHES = Batches()
REGISTRY.register(BATCHES)


# ---------------------------------------------------------------- the endpoint


async def serve(port: int, host: str = "0.0.0.0") -> web.AppRunner | None:
    """Serve ``/metrics`` on ``port`` from the running loop; None, after a warning, if the port is taken.

    A taken port costs the metrics, not the operator: batches still reconcile.
    """
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        log.warning(f"metrics port {port} is not available ({exc.strerror or exc}): running without metrics")
        return None
    log.info(f"serving metrics on port {port}")
    return runner
