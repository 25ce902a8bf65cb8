"""The worker's Prometheus metrics: what its items, provider calls and rate limiter did.

Every metric lives in this module's own ``REGISTRY`` (not prometheus_client's
global one), so the exposition holds exactly what is documented in
``docs/metrics.md`` and a test can read the definitions. The loop
(``loop.Worker``) owns one :class:`StageMetrics`, bound to its stage, provider
type and model once at start, and calls it where things happen; the label
lookups the hot path would repeat are done there, once.

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
import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from analysis_core import env, errors, wire

log = logging.getLogger("analysis_worker")

# Created series (a _created sample per counter and histogram) would double the
# series count for a timestamp nobody graphs.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # (unannotated upstream)

REGISTRY = CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=REGISTRY)

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


ITEMS = Counter(
    "analysis_worker_items",
    "Item attempts this worker finished, by stage and outcome.",
    ["stage", "outcome"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "analysis_worker_errors",
    "Item attempts that failed, by stage and error class (the error taxonomy's RateLimited, Timeout, ...).",
    ["stage", "error_class"],
    registry=REGISTRY,
)
JUDGE_VERDICTS = Counter(
    "analysis_worker_judge_verdicts",
    "Verdicts of a judge stage: approved or rejected.",
    ["stage", "verdict"],
    registry=REGISTRY,
)
TOKENS = Counter(
    "analysis_worker_tokens",
    "Tokens the provider reported for answered calls, by direction (input is the prompt, output the answer).",
    ["stage", "provider", "model", "direction"],
    registry=REGISTRY,
)
COST = Counter(
    "analysis_worker_cost_dollars",
    "Cost of answered calls in US dollars, from the price table (0 for a model it does not list).",
    ["stage", "provider", "model"],
    registry=REGISTRY,
)
PROVIDER_LATENCY = Histogram(
    "analysis_worker_provider_request_duration_seconds",
    "Duration of provider calls; outcome is success or the error class of the failure.",
    ["stage", "provider", "model", "outcome"],
    buckets=PROVIDER_BUCKETS,
    registry=REGISTRY,
)
PROVIDER_RATE_LIMITED = Counter(
    "analysis_worker_provider_rate_limited",
    "Provider calls refused for a rate limit (HTTP 429, not a refusal for quota).",
    ["stage", "provider", "model"],
    registry=REGISTRY,
)
PROVIDER_IN_FLIGHT = Gauge(
    "analysis_worker_provider_calls_in_flight",
    "Provider calls running now.",
    ["stage", "provider", "model"],
    registry=REGISTRY,
)
ITEMS_IN_FLIGHT = Gauge(
    "analysis_worker_items_in_flight",
    "Items claimed and not yet finished (waiting for the limiter, calling, or completing).",
    ["stage"],
    registry=REGISTRY,
)
LIMITER_WAIT = Histogram(
    "analysis_worker_rate_limiter_wait_seconds",
    "Time a call waited for the stage's shared limiter: its rateLimit and the stage's pauses.",
    ["stage"],
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
LIMITER_PAUSES = Counter(
    "analysis_worker_rate_limiter_pauses",
    "Times this worker paused its whole stage because the provider said its quota was spent or refused a call.",
    ["stage", "cause"],
    registry=REGISTRY,
)
REDELIVERIES = Counter(
    "analysis_worker_redeliveries",
    "Items this worker claimed again after an earlier delivery did not finish them.",
    ["stage", "source"],
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "analysis_worker_leases_lost",
    "Leases this worker found taken over by another worker while it still held the item.",
    ["stage"],
    registry=REGISTRY,
)


class StageMetrics:
    """The metrics of one worker: its stage, provider type and model are fixed at construction."""

    def __init__(self, stage: str, provider: str, model: str) -> None:
        self._items = {outcome: ITEMS.labels(stage, outcome) for outcome in Outcome}
        # Every class present from the start, at zero: rate() then sees the first error as an increase.
        self._errors = {cls: ERRORS.labels(stage, cls) for cls in errors.ErrorClass}
        self._verdicts = {verdict: JUDGE_VERDICTS.labels(stage, verdict) for verdict in ("approved", "rejected")}
        self._tokens_in = TOKENS.labels(stage, provider, model, "input")
        self._tokens_out = TOKENS.labels(stage, provider, model, "output")
        self._cost = COST.labels(stage, provider, model)
        self._provider = (stage, provider, model)
        self._latency: dict[str, Histogram] = {}  # outcome -> histogram child, made on first use
        self._rate_limited = PROVIDER_RATE_LIMITED.labels(stage, provider, model)
        self._calls = PROVIDER_IN_FLIGHT.labels(stage, provider, model)
        self._in_flight = ITEMS_IN_FLIGHT.labels(stage)
        self._wait = LIMITER_WAIT.labels(stage)
        self._pauses = {cause: LIMITER_PAUSES.labels(stage, cause) for cause in Pause}
        self._redelivered = {source: REDELIVERIES.labels(stage, source) for source in Redelivery}
        self._leases_lost = LEASES_LOST.labels(stage)

    def item(self, outcome: Outcome) -> None:
        self._items[outcome].inc()

    def error(self, error_class: errors.ErrorClass) -> None:
        self._errors[error_class].inc()

    def verdict(self, approved: bool) -> None:
        self._verdicts["approved" if approved else "rejected"].inc()

    def usage(self, input_tokens: int, output_tokens: int, cost_usd: Decimal) -> None:
        self._tokens_in.inc(input_tokens)
        self._tokens_out.inc(output_tokens)
        self._cost.inc(float(cost_usd))

    def track_in_flight(self, count: Callable[[], float]) -> None:
        """Read the items in flight at scrape time, so claiming and finishing pay nothing for it."""
        self._in_flight.set_function(count)

    def limiter_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def pause(self, cause: Pause) -> None:
        self._pauses[cause].inc()

    def redelivered(self, source: Redelivery, count: int = 1) -> None:
        if count:
            self._redelivered[source].inc(count)

    def leases_lost(self, count: int) -> None:
        if count:
            self._leases_lost.inc(count)

    @contextmanager
    def provider_call(self) -> Iterator[None]:
        """Time one provider call and count it in flight; the outcome label says how it ended.

        ``success``, the error class of a ``ProviderError`` (a ``TimeoutError``
        from the stage's deadline is ``Timeout``), or ``cancelled`` when the
        worker stopped it while shutting down.
        """
        self._calls.inc()
        started = time.monotonic()
        outcome = "success"
        try:
            yield
        except errors.ProviderError as exc:
            outcome = str(exc.error_class)
            if exc.error_class is errors.ErrorClass.RATE_LIMITED:  # a 429, unless it refused for quota
                self._rate_limited.inc()
            raise
        except TimeoutError:
            outcome = str(errors.ErrorClass.TIMEOUT)
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            outcome = str(errors.ErrorClass.UNKNOWN)
            raise
        finally:
            self._calls.dec()
            child = self._latency.get(outcome)
            if child is None:
                child = self._latency[outcome] = PROVIDER_LATENCY.labels(*self._provider, outcome)
            child.observe(time.monotonic() - started)


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
        server, thread = prometheus_client.start_http_server(port, addr=addr, registry=REGISTRY)
    except OSError as exc:
        log.warning(
            f"metrics port {port} is not available ({exc.strerror or exc}): running without a metrics endpoint",
            extra={"fields": {"port": port}},
        )
        return None
    log.info(f"serving metrics on port {port}", extra={"fields": {"port": port}})
    return Server(server, thread, port)
