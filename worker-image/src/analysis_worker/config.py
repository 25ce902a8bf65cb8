"""The worker's configuration, read from its environment only, and checked at start.

The operator sets these variables on worker pods (their names live in
``analysis_core.env``): which batch and stage, where Redis and the plan are,
the pod's name, and the provider's API key from a Secret. ``from_env``
collects every problem at once and names each variable, so a misconfigured
pod says exactly what to fix in one log line and exits 2.

It reads the plan file too (it must exist, parse, and contain the stage),
because a worker that starts without a usable plan can do nothing useful.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import socket
from collections.abc import Mapping
from pathlib import Path

import pydantic

from analysis_core import env, plan, queue, tenancy
from analysis_core.api import v1alpha1


class Mode(enum.StrEnum):
    JOB = "job"  # exit 0 once the stage is sealed and drained
    DEPLOYMENT = "deployment"  # idle when there is no work


class ConfigError(Exception):
    """The environment does not describe a runnable worker; the message names every bad variable."""


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    redis_url: str
    redis_password: pydantic.SecretStr | None
    batch_uid: str
    stage: str
    plan_path: Path
    pod_name: str
    api_key: pydantic.SecretStr | None
    mode: Mode
    concurrency: int | None  # None: the stage's concurrency
    grace_s: float
    health_ttl_s: float
    log_format: str
    prices_path: Path | None
    quota_probe_s: float  # from a refusal for quota to the first probe (doubling after each refused one)
    ca_bundle_dir: Path = Path(env.DEFAULT_CA_BUNDLE_DIR)  # a provider account's CA certificates, <provider>.pem
    redis_username: str | None = None  # the batch's own Redis user (analysis_core.tenancy); None: the default user

    @property
    def redis_secret(self) -> str | None:
        """The Redis password in the clear, for the client only."""
        return self.redis_password.get_secret_value() if self.redis_password else None


def _number(
    environ: Mapping[str, str], name: str, kind: type[float | int], problems: list[str], *, minimum: float
) -> float | int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not a{'n integer' if kind is int else ' number'}")
        return None
    if value < minimum:
        problems.append(f"{name}={raw!r} must be at least {minimum:g}")
        return None
    return value


def _load_plan(path: str, uid: str, stage: str, api_key: str | None, problems: list[str]) -> plan.Plan | None:
    """The plan at ``path``, checked against the batch, the stage and the key; problems are appended."""
    try:
        loaded = plan.Plan.load(Path(path))
    except FileNotFoundError:
        problems.append(f"{env.PLAN_PATH}={path}: no such file")
        return None
    except (ValueError, pydantic.ValidationError) as exc:
        problems.append(f"{env.PLAN_PATH}={path}: not a valid plan ({str(exc).splitlines()[0]})")
        return None
    if uid and loaded.uid != uid:
        problems.append(f"{env.BATCH_UID}={uid} but the plan is for batch {loaded.uid}")
    if not stage:
        return loaded
    try:
        stage_plan = loaded.stage(stage)
    except KeyError as exc:
        problems.append(f"{env.STAGE}={stage}: {exc.args[0]}")
        return loaded
    provider = loaded.providers.get(stage_plan.provider or "")
    if provider is not None and provider.type is not v1alpha1.ProviderType.OFFLINE and not api_key:
        problems.append(
            f"neither {env.API_KEY_FILE} nor {env.API_KEY} gives a key, and provider {stage_plan.provider}"
            f" ({provider.type}) needs one"
        )
    return loaded


def from_env(environ: Mapping[str, str] | None = None) -> tuple[WorkerConfig, plan.Plan]:
    """The configuration and the plan, or ``ConfigError`` listing every problem."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []

    def required(name: str) -> str:
        value = environ.get(name, "")
        if not value:
            problems.append(f"{name} is not set")
        return value

    redis_url = required(env.REDIS_URL)
    url_problem = queue.check_url(redis_url) if redis_url else None
    if url_problem is not None:
        problems.append(f"{env.REDIS_URL}: {url_problem}")
    uid = required(env.BATCH_UID)
    stage = required(env.STAGE)
    plan_path = required(env.PLAN_PATH)
    mode_raw = environ.get(env.MODE, Mode.JOB.value)
    if mode_raw not in {m.value for m in Mode}:
        problems.append(f"{env.MODE}={mode_raw!r} must be one of: job, deployment")
    concurrency = _number(environ, env.CONCURRENCY, int, problems, minimum=1)
    grace = _number(environ, env.GRACE_SECONDS, float, problems, minimum=0)
    health_ttl = _number(environ, env.HEALTH_TTL_SECONDS, float, problems, minimum=1)
    quota_probe = _number(environ, env.QUOTA_PROBE_SECONDS, float, problems, minimum=0.01)
    log_format = environ.get(env.LOG_FORMAT, "json")
    if log_format not in ("json", "text"):
        problems.append(f"{env.LOG_FORMAT}={log_format!r} must be json or text")
    prices = environ.get(env.PRICES_PATH) or None

    api_key = environ.get(env.API_KEY) or None
    key_file = environ.get(env.API_KEY_FILE) or None
    if key_file:
        try:
            api_key = Path(key_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            problems.append(f"{env.API_KEY_FILE}={key_file}: cannot read the API key: {exc.strerror or exc}")
    redis_password = environ.get(env.REDIS_PASSWORD) or None
    redis_username = None
    auth_dir = environ.get(env.REDIS_AUTH_DIR) or None
    if auth_dir:
        redis_username, redis_password = _redis_credential(Path(auth_dir), problems)
    loaded = _load_plan(plan_path, uid, stage, api_key, problems) if plan_path else None
    if problems:
        raise ConfigError("invalid worker configuration: " + "; ".join(problems))
    assert loaded is not None
    config = WorkerConfig(
        redis_url=redis_url,
        redis_password=pydantic.SecretStr(redis_password) if redis_password else None,
        batch_uid=uid,
        stage=stage,
        plan_path=Path(plan_path),
        pod_name=environ.get(env.POD_NAME) or f"{socket.gethostname()}-{os.getpid()}",
        api_key=pydantic.SecretStr(api_key) if api_key else None,
        mode=Mode(mode_raw),
        concurrency=None if concurrency is None else int(concurrency),
        grace_s=float(env.DEFAULT_GRACE_SECONDS if grace is None else grace),
        health_ttl_s=float(env.DEFAULT_HEALTH_TTL_SECONDS if health_ttl is None else health_ttl),
        log_format=log_format,
        prices_path=Path(prices) if prices else None,
        quota_probe_s=float(env.DEFAULT_QUOTA_PROBE_SECONDS if quota_probe is None else quota_probe),
        ca_bundle_dir=Path(environ.get(env.CA_BUNDLE_DIR) or env.DEFAULT_CA_BUNDLE_DIR),
        redis_username=redis_username,
    )
    return config, loaded


def _redis_credential(folder: Path, problems: list[str]) -> tuple[str | None, str | None]:
    """The batch's Redis user and password from the files of its mounted Secret; a problem when they are missing."""
    found = []
    for name in (tenancy.SECRET_USERNAME, tenancy.SECRET_PASSWORD):
        try:
            found.append((folder / name).read_text(encoding="utf-8").strip() or None)
        except OSError as exc:
            problems.append(f"{env.REDIS_AUTH_DIR}={folder}: cannot read {name}: {exc.strerror or exc}")
            found.append(None)
    return found[0], found[1]
