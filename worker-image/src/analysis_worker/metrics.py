"""The worker's Prometheus metrics: what its items, provider calls and rate limiter did.

The loop (``loop.Worker``) owns one :class:`StageMetrics`, bound to its
stage, provider type and model once at start, and calls it where things
happen. It counts in plain numbers (a call adds to a float, an observation
to a bucket count): a worker finishes thousands of items a second, and
prometheus_client's metric objects take a lock and look up a child per
increment. ``REGISTRY`` (this module's own, not prometheus_client's global
one, so the exposition holds exactly what is documented in
``docs/metrics.md``) reads them when scraped, through a collector; the
definitions are the ``Family`` constants below, which a test reads.
prometheus_client is imported only when the registry is first used (a worker
that serves no metrics never imports it).

Labels stay bounded: the stage (one per process), the provider type
(anthropic, openai, offline), the model the spec configures, an outcome or an
error class from a fixed set. Never an item id, a batch name or an error
message: Prometheus adds the pod's namespace and labels when it scrapes, and
per-batch figures come from the operator's metrics.

``serve`` exposes the registry on ``ANALYSIS_METRICS_PORT`` from a daemon
thread (prometheus_client's own HTTP server: the worker image carries no web
framework). A port that is taken does not stop the worker (a pod on the
host's network, or a second worker process beside it): it logs a warning
and runs without an endpoint.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import enum
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

from analysis_core import env, errors, pricing, wire

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("analysis_worker")

# LLM calls take from a fraction of a second to many minutes.
PROVIDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900)
# Most grants are immediate; a saturated limiter holds calls for up to a window or a provider's reset.
WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Outcome(enum.StrEnum):
    """How one attempt at an item ended in this worker.

    ``SUCCEEDED``, ``REJECTED`` and ``FAILED`` are the outcome statuses a completion records (``Outcome(routed.status)``).
    """

    SUCCEEDED = wire.STATUS_SUCCEEDED  # completed and routed on (a judge's approval or AcceptLast included)
    REJECTED = wire.STATUS_REJECTED  # a judge sent it back to the stage it reviews
    RETRIED = "retried"  # failed, and a retry was scheduled (rate limits included)
    FAILED = wire.STATUS_FAILED  # failed for good (a judge out of rejections with onExhausted: Fail included)
    DUPLICATE = "duplicate"  # another delivery of the same attempt had completed it first


class Pause(enum.StrEnum):
    """Why the worker paused its stage's shared limiter."""

    RETRY_AFTER = "retry_after"  # a 429 said how long to wait
    QUOTA_EXHAUSTED = "quota_exhausted"  # a success's rate-limit headers said the quota is spent
    QUOTA_REFUSED = "quota_refused"  # the provider refused a call for quota or billing: paused until a probe passes


class Redelivery(enum.StrEnum):
    """Where an item claimed again came from."""

    EXPIRED_LEASE = "expired_lease"  # another worker's lease ran out (it died or stalled)
    OWN_PENDING = "own_pending"  # this pod name held it before a restart


@dataclasses.dataclass(frozen=True)
class Family:
    """One metric: its name (without ``_total``), type, help and label names; a histogram's buckets."""

    name: str
    type: str  # counter, gauge or histogram
    documentation: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


ITEMS = Family(
    "analysis_worker_items",
    "counter",
    "Item attempts this worker finished, by stage and outcome.",
    ("stage", "outcome"),
)
ERRORS = Family(
    "analysis_worker_errors",
    "counter",
    "Item attempts that failed, by stage and error class (the error taxonomy's RateLimited, Timeout, ...).",
    ("stage", "error_class"),
)
JUDGE_VERDICTS = Family(
    "analysis_worker_judge_verdicts",
    "counter",
    "Verdicts of a judge stage: approved or rejected.",
    ("stage", "verdict"),
)
TOKENS = Family(
    "analysis_worker_tokens",
    "counter",
    "Tokens the provider reported for answered calls, by direction (input is the prompt, output the answer).",
    ("stage", "provider", "model", "direction"),
)
CACHE_TOKENS = Family(
    "analysis_worker_cache_tokens",
    "counter",
    "Of the input tokens, those the provider wrote to its prompt cache and those it read from it (read over input "
    "is the stage's cache hit rate).",
    ("stage", "provider", "model", "use"),
)
COST = Family(
    "analysis_worker_cost_dollars",
    "counter",
    "Cost of answered calls in US dollars, from the price table (0 for a model it does not list).",
    ("stage", "provider", "model"),
)
PROVIDER_LATENCY = Family(
    "analysis_worker_provider_request_duration_seconds",
    "histogram",
    "Duration of provider calls; outcome is success or the error class of the failure.",
    ("stage", "provider", "model", "outcome"),
    PROVIDER_BUCKETS,
)
PROVIDER_RATE_LIMITED = Family(
    "analysis_worker_provider_rate_limited",
    "counter",
    "Provider calls refused for a rate limit (HTTP 429, not a refusal for quota).",
    ("stage", "provider", "model"),
)
PROVIDER_IN_FLIGHT = Family(
    "analysis_worker_provider_calls_in_flight",
    "gauge",
    "Provider calls running now.",
    ("stage", "provider", "model"),
)
ITEMS_IN_FLIGHT = Family(
    "analysis_worker_items_in_flight",
    "gauge",
    "Items claimed and not yet finished (waiting for the limiter, calling, or completing).",
    ("stage",),
)
LIMITER_WAIT = Family(
    "analysis_worker_rate_limiter_wait_seconds",
    "histogram",
    "Time a call waited for the stage's shared limiter: its rateLimit and the stage's pauses.",
    ("stage",),
    WAIT_BUCKETS,
)
LIMITER_PAUSES = Family(
    "analysis_worker_rate_limiter_pauses",
    "counter",
    "Times this worker paused its whole stage because the provider said its quota was spent or refused a call.",
    ("stage", "cause"),
)
REDELIVERIES = Family(
    "analysis_worker_redeliveries",
    "counter",
    "Items this worker claimed again after an earlier delivery did not finish them.",
    ("stage", "source"),
)
LEASES_LOST = Family(
    "analysis_worker_leases_lost",
    "counter",
    "Leases this worker found taken over by another worker while it still held the item.",
    ("stage",),
)
FAMILIES = (
    ITEMS,
    ERRORS,
    JUDGE_VERDICTS,
    TOKENS,
    CACHE_TOKENS,
    COST,
    PROVIDER_LATENCY,
    PROVIDER_RATE_LIMITED,
    PROVIDER_IN_FLIGHT,
    ITEMS_IN_FLIGHT,
    LIMITER_WAIT,
    LIMITER_PAUSES,
    REDELIVERIES,
    LEASES_LOST,
)


class _Histogram:
    """Observations counted per bucket (not cumulative: the collector adds them up when scraped)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # a bucket holds values <= its bound
        self.sum += value


Series = tuple[Family, tuple[str, ...]]
_LIVE: list[StageMetrics] = []  # every StageMetrics made in this process, which the collector reads


class StageMetrics:
    """The metrics of one worker: its stage, provider type and model are fixed at construction."""

    def __init__(self, stage: str, provider: str, model: str) -> None:
        self._provider = (stage, provider, model)
        # Every series a worker can have is here from the start, at zero: rate() sees the first increase
        # (latency by outcome is the exception: one per way a call ended, made on first use).
        self._items = {outcome: 0.0 for outcome in Outcome}
        self._errors = {cls: 0.0 for cls in errors.ErrorClass}
        self._verdicts = [0.0, 0.0]  # approved, rejected
        self._tokens = [0.0, 0.0]  # input, output
        self._cache = [0.0, 0.0]  # of the input: written to the prompt cache, read from it
        self._cost = 0.0
        self._rate_limited = 0.0
        self._calls = 0.0
        self._in_flight: Callable[[], float] = lambda: 0.0
        self._latency: dict[str, _Histogram] = {}
        self._wait = _Histogram(WAIT_BUCKETS)
        self._pauses = {cause: 0.0 for cause in Pause}
        self._redelivered = {source: 0.0 for source in Redelivery}
        self._leases_lost = 0.0
        _LIVE.append(self)

    def item(self, outcome: Outcome) -> None:
        self._items[outcome] += 1

    def error(self, error_class: errors.ErrorClass) -> None:
        self._errors[error_class] += 1

    def verdict(self, approved: bool) -> None:
        self._verdicts[0 if approved else 1] += 1

    def usage(self, tokens: pricing.Tokens, cost_usd: Decimal) -> None:
        self._tokens[0] += tokens.prompt
        self._tokens[1] += tokens.output
        self._cache[0] += tokens.cache_write
        self._cache[1] += tokens.cache_read
        self._cost += float(cost_usd)

    def track_in_flight(self, count: Callable[[], float]) -> None:
        """Read the items in flight at scrape time, so claiming and finishing pay nothing for it."""
        self._in_flight = count

    def limiter_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def pause(self, cause: Pause) -> None:
        self._pauses[cause] += 1

    def redelivered(self, source: Redelivery, count: int = 1) -> None:
        self._redelivered[source] += count

    def leases_lost(self, count: int) -> None:
        self._leases_lost += count

    def provider_call(self) -> ProviderCall:
        """Time one provider call and count it in flight (a ``with`` block); the outcome label says how it ended.

        ``success``, the error class of a ``ProviderError`` (a ``TimeoutError``
        from the stage's deadline is ``Timeout``), or ``cancelled`` when the
        worker stopped it while shutting down.
        """
        return ProviderCall(self)

    def _call_ended(self, started: float, exc: BaseException | None) -> None:
        self._calls -= 1
        if exc is None:
            outcome = "success"
        elif isinstance(exc, errors.ProviderError):
            outcome = str(exc.error_class)
            if exc.error_class is errors.ErrorClass.RATE_LIMITED:  # a 429, unless it refused for quota
                self._rate_limited += 1
        elif isinstance(exc, TimeoutError):
            outcome = str(errors.ErrorClass.TIMEOUT)
        elif isinstance(exc, asyncio.CancelledError):
            outcome = "cancelled"
        else:
            outcome = str(errors.ErrorClass.UNKNOWN)
        histogram = self._latency.get(outcome)
        if histogram is None:
            histogram = self._latency[outcome] = _Histogram(PROVIDER_BUCKETS)
        histogram.observe(time.monotonic() - started)

    def series(self) -> Iterator[tuple[Series, float | _Histogram]]:
        """Every series of this worker and its value now: what a scrape exposes."""
        stage, provider, model = self._provider
        for outcome, count in self._items.items():
            yield (ITEMS, (stage, outcome)), count
        for cls, count in self._errors.items():
            yield (ERRORS, (stage, cls)), count
        for verdict, count in zip(("approved", "rejected"), self._verdicts, strict=True):
            yield (JUDGE_VERDICTS, (stage, verdict)), count
        yield (TOKENS, (stage, provider, model, "input")), self._tokens[0]
        yield (TOKENS, (stage, provider, model, "output")), self._tokens[1]
        yield (CACHE_TOKENS, (stage, provider, model, "write")), self._cache[0]
        yield (CACHE_TOKENS, (stage, provider, model, "read")), self._cache[1]
        yield (COST, (stage, provider, model)), self._cost
        for ended, histogram in list(self._latency.items()):  # a copy: the loop may add one meanwhile
            yield (PROVIDER_LATENCY, (stage, provider, model, ended)), histogram
        yield (PROVIDER_RATE_LIMITED, (stage, provider, model)), self._rate_limited
        yield (PROVIDER_IN_FLIGHT, (stage, provider, model)), self._calls
        yield (ITEMS_IN_FLIGHT, (stage,)), float(self._in_flight())
        yield (LIMITER_WAIT, (stage,)), self._wait
        for cause, count in self._pauses.items():
            yield (LIMITER_PAUSES, (stage, cause)), count
        for source, count in self._redelivered.items():
            yield (REDELIVERIES, (stage, source)), count
        yield (LEASES_LOST, (stage,)), self._leases_lost


class ProviderCall:
    """One provider call being timed; see ``StageMetrics.provider_call``. A class, not a generator: it runs per call."""

    __slots__ = ("_metrics", "_started")

    def __init__(self, stage_metrics: StageMetrics) -> None:
        self._metrics = stage_metrics
        self._started = 0.0

    def __enter__(self) -> None:
        self._metrics._calls += 1
        self._started = time.monotonic()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._metrics._call_ended(self._started, exc)


# ---------------------------------------------------------------- the registry


class _Collector:
    """What the workers of this process counted, as metric families (series of equal labels added up)."""

    def describe(self) -> list[Metric]:
        return [_empty(family) for family in FAMILIES]

    def collect(self) -> list[Metric]:
        from prometheus_client.utils import floatToGoString

        counted: dict[Series, float] = {}
        observed: dict[Series, tuple[list[int], float]] = {}
        for stage_metrics in _LIVE:
            for key, value in stage_metrics.series():
                if isinstance(value, _Histogram):
                    counts, total = observed.get(key, ([0] * len(value.counts), 0.0))
                    observed[key] = ([a + b for a, b in zip(counts, value.counts, strict=True)], total + value.sum)
                else:
                    counted[key] = counted.get(key, 0.0) + value
        families = {family: _empty(family) for family in FAMILIES}
        for (family, labels), value in counted.items():
            families[family].add_metric(labels, value)  # type: ignore[attr-defined]  # (each family type has it)
        for (family, labels), (counts, total) in observed.items():
            running, buckets = 0, []
            for bound, count in zip((*family.buckets, float("inf")), counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            families[family].add_metric(labels, buckets, total)  # type: ignore[attr-defined]
        return list(families.values())


def _empty(family: Family) -> Metric:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    kind = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}
    made: Metric = kind[family.type](family.name, family.documentation, labels=family.labels)
    return made


@functools.cache
def registry() -> CollectorRegistry:
    """The worker's registry (imports prometheus_client the first time): its collector and the process's figures."""
    import prometheus_client

    made = prometheus_client.CollectorRegistry(auto_describe=True)
    prometheus_client.ProcessCollector(registry=made)
    made.register(_Collector())
    return made


def __getattr__(name: str) -> Any:
    """``REGISTRY``, made on first use."""
    if name == "REGISTRY":
        return registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- the endpoint


def port_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``ANALYSIS_METRICS_PORT``; unset, empty or "0" is off (the operator always sets it on worker pods).

    A value that is not a port is off too, with a warning: metrics are worth
    a log line, not a worker that refuses to work.
    """
    raw = (os.environ if environ is None else environ).get(env.METRICS_PORT, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > 65535:
        log.warning(f"{env.METRICS_PORT}={raw!r} is not a port number: serving no metrics")
        return 0
    return int(raw)


class Server:
    """The running endpoint. A worker leaves it up until the process exits; ``close`` is for whoever must stop it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, port: int) -> None:
        self._server = server
        self._thread = thread
        self.port = port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(port: int, addr: str = "0.0.0.0") -> Server | None:
    """Serve ``/metrics`` on ``port`` (> 0) from a daemon thread; None, after one warning, if it is taken."""
    try:
        import prometheus_client

        server, thread = prometheus_client.start_http_server(port, addr=addr, registry=registry())
    except OSError as exc:
        log.warning(
            f"metrics port {port} is not available ({exc.strerror or exc}): running without a metrics endpoint",
            extra={"fields": {"port": port}},
        )
        return None
    log.info(f"serving metrics on port {port}", extra={"fields": {"port": port}})
    return Server(server, thread, port)
