"""The operator's own configuration, from environment variables (the Helm chart sets them).

Read once at startup; a wrong value stops the operator with a message naming
the variable, before it touches any batch.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
from collections.abc import Mapping

import analysis_core
from analysis_core import env, pricing, queue
from analysis_core.api import v1alpha1
from analysis_operator import builders, objectstore

PREFIX = "ANALYSIS_OPERATOR_"
LEADER_LEASE = PREFIX + "LEADER_LEASE"  # set: replicas elect their one active operator by this Lease (cli, leader)
# The install's results store (objectstore.Settings): set the bucket and it has one.
RESULTS_STORE = PREFIX + "RESULTS_STORE_"
RESULTS_STORE_ENV = {
    objectstore.BUCKET: (RESULTS_STORE + "BUCKET", "results.objectStore.bucket"),
    objectstore.ENDPOINT: (RESULTS_STORE + "ENDPOINT", "results.objectStore.endpoint"),
    "prefix": (RESULTS_STORE + "PREFIX", "results.objectStore.prefix"),
    "region": (RESULTS_STORE + "REGION", "results.objectStore.region"),
    objectstore.CREDENTIALS: (RESULTS_STORE + "CREDENTIALS_DIR", "results.objectStore.credentialsSecret"),
}
# Whether Kopf watches namespaces and CRDs cluster-wide; the CLI turns it off for a fixed list of namespaces
# (cli.needs_cluster_scanning), where the operator has namespaced Roles only.
CLUSTER_SCANNING = True
MAX_WAIT_REPLICAS = 16


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    redis_url: str  # what the operator connects to
    worker: builders.WorkerSettings
    # From a Secret's file (the chart mounts it). The operator connects with it and derives each batch's own
    # Redis user's password from it (tenancy.password), which goes into the batch's Secret for its workers.
    redis_password: str | None = dataclasses.field(
        default=None, repr=False
    )  # what worker pods get (their Redis URL may differ: a Service name)
    reconcile_interval_s: float = 1.0  # a batch's reconciler runs at least this often (kicks run it sooner)
    status_interval_s: float = 2.0  # at most one status write per batch per this interval
    results_interval_s: float = 5.0  # results export, while items finish
    scale_down_delay_s: float = 5.0  # a stage shrinks only after wanting fewer pods this long
    metrics_port: int = 8080  # the operator's Prometheus /metrics; 0 turns it off
    # The operator's own namespace (the chart sets it from the downward API): where accounts' CA bundles are.
    namespace: str | None = None
    # A provider account refused for quota: the first wait before a probe call (doubling with each refused one).
    account_probe_s: float = float(env.DEFAULT_QUOTA_PROBE_SECONDS)
    # The Lease in the operator's namespace that replicas elect their one active operator by (leader.Elector);
    # None: no election, a single replica.
    leader_lease: str | None = None
    # The install's S3-compatible results store (objectstore.Settings.from_env); None: ConfigMaps only.
    results_store: objectstore.Settings | None = None
    # Ended items that may wait in Redis for the results sink (it is away, or full) before claims pause.
    results_max_pending: int = 5000
    # Replicas that must hold the ended items an export pass reads before it writes them to the sink (Redis WAIT,
    # queue.replicated): 0 waits for none (one Redis, or replicas whose failover may lose the newest writes).
    redis_wait_replicas: int = 0

    @property
    def install(self) -> str:
        """This install, as an account's claim names it (``status.servedBy``): the operator's namespace, or, for an
        operator run outside the cluster, its host."""
        return self.namespace or socket.gethostname()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        environ = os.environ if environ is None else environ

        def get(name: str, default: str | None = None) -> str:
            value = environ.get(PREFIX + name, default)
            if value is None or value == "":
                raise ConfigError(f"{PREFIX}{name} is required")
            return value

        def number(name: str, default: str) -> float:
            text = get(name, default)
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{PREFIX}{name}={text!r} is not a number") from None
            if value <= 0:
                raise ConfigError(f"{PREFIX}{name}={text!r} must be positive")
            return value

        def whole(name: str, default: str, most: int) -> int:
            text = get(name, default)
            if not text.isdigit() or not 1 <= int(text) <= most:
                raise ConfigError(f"{PREFIX}{name}={text!r} must be a whole number from 1 to {most}")
            return int(text)

        def port(name: str, default: str) -> int:
            text = get(name, default)
            if not text.isdigit() or int(text) > 65535:
                raise ConfigError(f"{PREFIX}{name}={text!r} is not a port number (0 turns it off)")
            return int(text)

        redis_url = _redis_url("REDIS_URL", get("REDIS_URL", environ.get("REDIS_URL")))
        password = _redis_password(environ)
        worker = builders.WorkerSettings(
            # The worker image of the operator's own release: the two move together.
            image=get("WORKER_IMAGE", f"analysis-worker:{analysis_core.__version__}"),
            redis_url=_redis_url("WORKER_REDIS_URL", get("WORKER_REDIS_URL", redis_url)),
            cpu_request=get("WORKER_CPU_REQUEST", _default(builders.WorkerSettings, "cpu_request")),
            memory_request=get("WORKER_MEMORY_REQUEST", _default(builders.WorkerSettings, "memory_request")),
            memory_limit=get("WORKER_MEMORY_LIMIT", _default(builders.WorkerSettings, "memory_limit")),
            cpu_limit=environ.get(PREFIX + "WORKER_CPU_LIMIT") or None,
            image_pull_policy=get("WORKER_IMAGE_PULL_POLICY", _default(builders.WorkerSettings, "image_pull_policy")),
            metrics_port=port("WORKER_METRICS_PORT", _default(builders.WorkerSettings, "metrics_port")),
            calls_per_pod=whole(
                "CALLS_PER_POD", _default(builders.WorkerSettings, "calls_per_pod"), v1alpha1.MAX_CALLS_PER_POD
            ),
            redis_auth=password is not None,
            prices=_prices(environ.get(PREFIX + "PRICES_PATH") or None),
        )
        return cls(
            redis_url=redis_url,
            worker=worker,
            redis_password=password,
            reconcile_interval_s=number("RECONCILE_INTERVAL", _default(cls, "reconcile_interval_s")),
            status_interval_s=number("STATUS_INTERVAL", _default(cls, "status_interval_s")),
            results_interval_s=number("RESULTS_INTERVAL", _default(cls, "results_interval_s")),
            scale_down_delay_s=number("SCALE_DOWN_DELAY", _default(cls, "scale_down_delay_s")),
            metrics_port=port("METRICS_PORT", _default(cls, "metrics_port")),
            account_probe_s=number("QUOTA_PROBE_SECONDS", _default(cls, "account_probe_s")),
            namespace=environ.get(PREFIX + "NAMESPACE") or None,
            leader_lease=_leader_lease(environ),
            results_store=_results_store(environ),
            results_max_pending=whole("RESULTS_MAX_PENDING", _default(cls, "results_max_pending"), 10_000_000),
            redis_wait_replicas=_wait_replicas(environ, redis_url),
        )


def _redis_url(name: str, url: str) -> str:
    problem = queue.check_url(url)
    if problem is not None:
        raise ConfigError(f"{PREFIX}{name}: {problem}")
    return url


def _wait_replicas(environ: Mapping[str, str], redis_url: str) -> int:
    name = PREFIX + "REDIS_WAIT_REPLICAS"
    text = environ.get(name) or "0"
    if not text.isdigit() or int(text) > MAX_WAIT_REPLICAS:
        raise ConfigError(f"{name}={text!r} must be a whole number from 0 to {MAX_WAIT_REPLICAS}")
    if int(text) and redis_url.partition("://")[0] in queue.CLUSTER_SCHEMES:
        raise ConfigError(
            f"{name}={text}: waiting for replicas needs one primary (redis:// or redis+sentinel://), "
            "not a Redis Cluster (redis+cluster://)"
        )
    return int(text)


def _leader_lease(environ: Mapping[str, str]) -> str | None:
    name = environ.get(LEADER_LEASE) or None
    if name is not None and not environ.get(PREFIX + "NAMESPACE"):
        raise ConfigError(f"{LEADER_LEASE}={name!r} needs {PREFIX}NAMESPACE, the namespace of the Lease")
    return name


def _results_store(environ: Mapping[str, str]) -> objectstore.Settings | None:
    """The results store from ``ANALYSIS_OPERATOR_RESULTS_STORE_*``; None without a bucket.

    Nothing is checked here but the form: a wrong bucket, endpoint or
    credential is a condition on the batches that use the store (the message
    names the variable and the chart value), not an operator that will not start.
    """
    values = {field: (environ.get(name) or "").strip() for field, (name, _value) in RESULTS_STORE_ENV.items()}
    if not values[objectstore.BUCKET]:
        return None
    endpoint = values[objectstore.ENDPOINT].rstrip("/")
    name = RESULTS_STORE_ENV[objectstore.ENDPOINT][0]
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={endpoint!r} must be an http:// or https:// URL")
    return objectstore.Settings(
        bucket=values[objectstore.BUCKET],
        endpoint=endpoint,
        prefix=values["prefix"].strip("/"),
        region=values["region"] or "us-east-1",
        credentials_dir=values[objectstore.CREDENTIALS] or None,
        names={field: f"{name} (chart value {value})" for field, (name, value) in RESULTS_STORE_ENV.items()},
    )


def _default(cls: type, name: str) -> str:
    """The default of the dataclass field ``name`` of ``cls``, as its environment variable spells it: one home."""
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return str(field.default)


def _redis_password(environ: Mapping[str, str]) -> str | None:
    """Redis's admin password: from the file ``ANALYSIS_OPERATOR_REDIS_PASSWORD_FILE`` names (the chart mounts the
    Secret's key there), or ``ANALYSIS_OPERATOR_REDIS_PASSWORD`` for an operator run by hand."""
    path = environ.get(PREFIX + "REDIS_PASSWORD_FILE") or None
    if path is None:
        return environ.get(PREFIX + "REDIS_PASSWORD") or None
    try:
        return pathlib.Path(path).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ConfigError(f"{PREFIX}REDIS_PASSWORD_FILE={path}: cannot read it: {exc.strerror or exc}") from None


def _prices(path: str | None) -> str | None:
    """The text of the price table at ``path`` (``ANALYSIS_OPERATOR_PRICES_PATH``), checked as workers will read it.

    The operator hands the text to each batch's workers in the plan ConfigMap,
    so a malformed table stops the operator at start rather than every worker.
    """
    if path is None:
        return None
    try:
        pricing.PriceTable.load(pathlib.Path(path))
        return pathlib.Path(path).read_text()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{PREFIX}PRICES_PATH={path}: {exc}") from None
