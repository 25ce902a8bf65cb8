"""Kopf handler registration, loaded only by ``kopf run -m analysis_operator.handlers``.

Handlers stay thin; the reconciler (``reconciler.py``) decides everything.

- ``startup``: settings (our finalizer and annotation prefix, finite watch
  and request timeouts), then the operator's one Kubernetes client and one
  Redis client, kept in the memo and closed at ``cleanup``.
- ``reconcile``: a daemon per batch that still has something to do (see
  ``needs_reconciler``), running ``Reconciler.step`` every
  ``reconcile_interval_s`` or at once when kicked. Kopf stops it when the
  filter stops matching (the batch finished and its workers are gone) and
  starts it again if that changes (a retry-failed annotation, a spec edit).
- ``kick``: ``on.create`` / ``on.update`` of ``spec`` and of the retry-failed
  annotation only wake the daemon. Other label or annotation churn (Argo CD,
  Flux) reaches no handler at all.
- Indexes of the batches' Jobs, Deployments and Pods (by the batch-uid label)
  give the reconciler its children without an API call per step.
- ``tear_down``: the finalizer's work (``teardown.py``), with a bounded retry.
- ``liveness``: seconds since the operator last processed an event.
- Provider accounts (``accounts.py``): an index of the AnalysisProviders
  (batches resolve their ``providerRef`` against it); ``allocate``, a daemon
  per AnalysisProvider that grants its capacity to the batches using it and
  writes its status; ``release_account``, the finalizer's work, which holds
  an account's deletion while batches use it.
- Metrics (``metrics.py``): the endpoint starts with the operator; each
  step is timed and its errors counted; the status it computed feeds the
  batch's series, which go when its daemon ends; ``track_phase`` follows
  every batch's phase (and its deletion) for the batches-by-phase gauge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from analysis_core import queue, scripts
from analysis_core.api import GROUP, PLURAL, PROVIDER_PLURAL, VERSION, v1alpha1, wellknown
from analysis_operator import accounts, config, kube, logfilters, metrics, reconciler, status, teardown
from analysis_operator.config import OperatorConfig

FINALIZER = "analysis.dev/cleanup"
ANNOTATION_PREFIX = "analysis.dev"
TERMINAL = ("Complete", "Failed")
BATCH = (GROUP, VERSION, PLURAL)
PROVIDER = (GROUP, VERSION, PROVIDER_PLURAL)
ACCOUNT_STATUS_INTERVAL_S = 2.0  # an AnalysisProvider's status is written at most this often
ACCOUNT_IN_USE_RECHECK_S = 10  # a held deletion looks again this often
OWNED = {wellknown.LABEL_BATCH_UID: kopf.PRESENT}

# A step that fails on these is simply run again; anything else is a bug and is logged with its traceback.
RETRYABLE: tuple[type[Exception], ...] = (*kube.ERRORS, *queue.UNAVAILABLE)

_last_event = time.monotonic()


def configure(settings: kopf.OperatorSettings) -> None:
    """Own finalizer and annotation prefix, finite watch and request timeouts, cluster scanning only if needed."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30
    settings.execution.default_backoff = 10  # an unexpected error retries soon; the reconciler is idempotent
    settings.posting.level = 20  # INFO: our own Events only (log lines are not posted)
    settings.scanning.disabled = not config.CLUSTER_SCANNING


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    logfilters.install()
    configure(settings)
    cfg = OperatorConfig.from_env()
    memo.cfg = cfg
    memo.kube = kube.Kube(settings.networking.request_timeout or 30, trust_env=settings.networking.trust_env)
    memo.redis = queue.connect(cfg.redis_url, cfg.redis_password)
    try:
        await scripts.load(memo.redis)  # the queue's functions, before any batch needs them
    except queue.UNAVAILABLE as exc:  # loaded by the first call that finds them missing (scripts.Function)
        logger.warning(f"redis unavailable at start-up; its functions are loaded at the first call: {exc}")
    memo.accounts = accounts.Registry()
    memo.metrics = await metrics.serve(cfg.metrics_port) if cfg.metrics_port else None


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.kube.close()
    await memo.redis.aclose()
    if memo.get("metrics") is not None:
        await memo.metrics.cleanup()


@kopf.on.probe(id="secondsSinceLastEvent")
def liveness(**_: Any) -> float:
    return round(time.monotonic() - _last_event, 1)


def _touch() -> None:
    global _last_event
    _last_event = time.monotonic()


# ---------------------------------------------------------------- indexes of children


@kopf.index("batch", "v1", "jobs", labels=OWNED)
async def jobs_index(body: kopf.Body, **_: Any) -> dict[str, reconciler.Workload]:
    return {body["metadata"]["labels"][wellknown.LABEL_BATCH_UID]: reconciler.workload_summary(body)}


@kopf.index("apps", "v1", "deployments", labels=OWNED)
async def deployments_index(body: kopf.Body, **_: Any) -> dict[str, reconciler.Workload]:
    return {body["metadata"]["labels"][wellknown.LABEL_BATCH_UID]: reconciler.workload_summary(body)}


@kopf.index("", "v1", "pods", labels=OWNED)
async def pods_index(body: kopf.Body, **_: Any) -> dict[str, reconciler.Pod]:
    return {body["metadata"]["labels"][wellknown.LABEL_BATCH_UID]: reconciler.pod_summary(body)}


@kopf.index(*PROVIDER)
async def providers_index(name: str, body: kopf.Body, **_: Any) -> dict[str, reconciler.Account]:
    return {name: reconciler.account_summary(body)}


def children_of(
    uid: str, jobs: kopf.Index[str, Any], deployments: kopf.Index[str, Any], pods: kopf.Index[str, Any]
) -> reconciler.Children:
    workloads = [*jobs.get(uid, ()), *deployments.get(uid, ())]
    return reconciler.Children(workloads=workloads, pods=list(pods.get(uid, ())))


# ---------------------------------------------------------------- the per-batch reconciler


def needs_reconciler(body: kopf.Body, **_: Any) -> bool:
    """Whether a batch still needs its daemon: unfinished, changed, still has workers, or waits for its TTL."""
    meta, spec, st = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return False
    if st.get("phase") not in TERMINAL or st.get("observedGeneration") != meta.get("generation"):
        return True
    if any(stage.get("workers") for stage in st.get("stages") or []):
        return True
    token = (meta.get("annotations") or {}).get(wellknown.ANNOTATION_RETRY_FAILED)
    if token and token != st.get("retriedFailed"):
        return True
    return spec.get("ttlSecondsAfterFinished") is not None


def _kick_event(memo: kopf.Memo) -> asyncio.Event:
    if "kick" not in memo:
        memo.kick = asyncio.Event()
    event: asyncio.Event = memo.kick
    return event


@kopf.daemon(*BATCH, id="reconcile", when=needs_reconciler, cancellation_timeout=10)
async def reconcile(
    stopped: kopf.DaemonStopped,
    body: kopf.Body,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    jobs, deployments, pods = kwargs["jobs_index"], kwargs["deployments_index"], kwargs["pods_index"]
    providers: kopf.Index[str, reconciler.Account] = kwargs["providers_index"]
    cfg: OperatorConfig = memo.cfg
    if "reconciler" not in memo:
        memo.reconciler = reconciler.Reconciler(cfg, memo.kube, memo.redis, memo.accounts)
    rec: reconciler.Reconciler = memo.reconciler
    kick = _kick_event(memo)
    meta = body["metadata"]
    try:
        while not stopped:
            kick.clear()
            started = time.monotonic()
            known = {name: next(iter(found)) for name, found in providers.items() if found}
            await _step(rec, body, children_of(meta["uid"], jobs, deployments, pods), known, memo.kube, logger)
            _touch()
            wait = max(0.05, cfg.reconcile_interval_s - (time.monotonic() - started))
            kicked = asyncio.ensure_future(kick.wait())
            halted = asyncio.ensure_future(stopped.wait())
            try:
                await asyncio.wait({kicked, halted}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                kicked.cancel()
                halted.cancel()
    finally:
        # Finished (or deleted): its series go with its reconciler rather than linger at their last values,
        # and it stops counting as a user of its provider accounts.
        metrics.BATCHES.forget(meta["namespace"], meta["name"])
        memo.accounts.release(meta["uid"])


async def _step(
    rec: reconciler.Reconciler,
    body: kopf.Body,
    children: reconciler.Children,
    known: Mapping[str, reconciler.Account],
    client: kube.Kube,
    logger: kopf.Logger,
) -> None:
    """One timed reconcile step; a retryable failure is counted and logged, any other counted and raised."""
    started = time.monotonic()
    try:
        current = await rec.step(body, children, known)
        meta = body["metadata"]
        metrics.BATCHES.observe(meta["namespace"], meta["name"], current)
        await _expire(client, body, current, logger)
    except Exception as exc:
        metrics.reconcile_failed(exc)
        if not isinstance(exc, RETRYABLE):
            raise
        logger.warning(f"reconcile step failed; again in a moment: {kube.describe(exc)}")
    finally:
        metrics.reconciled(time.monotonic() - started)


async def _expire(client: kube.Kube, body: Mapping[str, Any], current: Mapping[str, Any], logger: kopf.Logger) -> None:
    """``ttlSecondsAfterFinished``: delete the batch that long after it completed or failed."""
    ttl = (body.get("spec") or {}).get("ttlSecondsAfterFinished")
    finished = current.get("completionTime")
    if ttl is None or not finished or current.get("phase") not in TERMINAL:
        return
    at = datetime.strptime(finished, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    if (datetime.now(UTC) - at).total_seconds() >= ttl:
        meta = body["metadata"]
        logger.info(f"finished {ttl}s ago (ttlSecondsAfterFinished): deleting")
        await client.delete(kube.BATCHES, meta["namespace"], meta["name"])


@kopf.on.create(*BATCH, id="kick-on-create")
@kopf.on.update(*BATCH, id="kick-on-spec", field="spec")
@kopf.on.update(*BATCH, id="kick-on-retry", field=("metadata", "annotations", wellknown.ANNOTATION_RETRY_FAILED))
async def kick(memo: kopf.Memo, **_: Any) -> None:
    """Wake the batch's reconciler now rather than at its next tick."""
    _kick_event(memo).set()
    _touch()


@kopf.on.event(*BATCH, id="track-phase")
def track_phase(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """Every batch's phase for ``analysis_operator_batches``, finished ones included; a deletion drops it."""
    meta = body["metadata"]
    if event.get("type") == "DELETED":
        metrics.BATCHES.phase(meta["uid"], meta["namespace"], None)
        metrics.BATCHES.forget(meta["namespace"], meta["name"])
        return
    phase = (body.get("status") or {}).get("phase") or str(v1alpha1.Phase.PENDING)
    metrics.BATCHES.phase(meta["uid"], meta["namespace"], phase)


# ---------------------------------------------------------------- deletion


@kopf.on.delete(*BATCH, id="tear-down")
async def tear_down(body: kopf.Body, memo: kopf.Memo, retry: int, logger: kopf.Logger, **_: Any) -> None:
    _touch()
    memo.accounts.release(body["metadata"]["uid"])
    batch_user = memo.cfg.redis_password is not None
    await teardown.tear_down(
        memo.kube,
        memo.redis,
        body,
        retry=retry,
        logger=logger,
        batch_user=batch_user,
        store=memo.cfg.results_store,
    )


# ---------------------------------------------------------------- provider accounts


@kopf.daemon(*PROVIDER, id="allocate", cancellation_timeout=5)
async def allocate(stopped: kopf.DaemonStopped, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Grant the account's capacity to the batches that use it, about ten times a second; write its status.

    Only while this install holds the account (its claim in the status,
    renewed with every status write): another install holding it leaves this
    one's batches waiting (``ProviderServedElsewhere``) until its claim lapses.
    """
    cfg: OperatorConfig = memo.cfg
    registry: accounts.Registry = memo.accounts
    me = cfg.install
    generation = int(body["metadata"].get("generation") or 1)
    spec = v1alpha1.AnalysisProviderSpec.model_validate(body["spec"])
    allocator = accounts.Allocator(name, spec, memo.redis, registry, probe_s=cfg.account_probe_s)
    written: dict[str, Any] = dict(body.get("status") or {})
    written_at = renewed_at = 0.0
    holding = False
    while not stopped:
        started = time.monotonic()
        if not holding:
            holding = await _claim(name, body, memo.kube, registry, me)
            if not holding:
                # Held elsewhere: look again in a while. A conflict (the object moved since it was read, e.g. its
                # finalizer was just added): again as soon as the body has caught up.
                await asyncio.sleep(ACCOUNT_STATUS_INTERVAL_S if name in registry.elsewhere else accounts.IDLE_TICK_S)
                continue
            renewed_at = time.monotonic()
        current = int(body["metadata"].get("generation") or 1)
        if current != generation:  # the daemon's body follows the object: an edited account applies at once
            generation, allocator.spec = current, v1alpha1.AnalysisProviderSpec.model_validate(body["spec"])
        busy = False
        try:
            busy = await allocator.tick()
        except queue.UNAVAILABLE as exc:
            accounts.log.warning(f"account {name}: redis unavailable; granting again in a second: {exc}")
            await asyncio.sleep(1.0)
        view = registry.views.get(name)
        if view is not None and time.monotonic() - written_at >= ACCOUNT_STATUS_INTERVAL_S:
            now_ms = int(time.time() * 1000)
            new = accounts.provider_status(view, allocator.spec, generation, written, now_ms, served_by=me)
            renew = time.monotonic() - renewed_at >= accounts.CLAIM_RENEW_S
            if renew or _essence(new) != _essence(written):
                try:
                    holding = await memo.kube.patch_provider_status(name, new, holder=me)
                    if holding:
                        written, renewed_at = new, time.monotonic()
                    else:
                        accounts.log.warning(f"account {name}: another install took it over; this one stops granting")
                except kube.ERRORS as exc:
                    accounts.log.warning(f"account {name}: cannot write status: {kube.describe(exc)}")
            written_at = time.monotonic()
        interval = accounts.TICK_S if busy else accounts.IDLE_TICK_S
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def _essence(provider_status: Mapping[str, Any]) -> dict[str, Any]:
    """What an account's status says, without what changes by itself (transition times, the claim's renewal)."""
    return {k: v for k, v in status.essence(provider_status).items() if k != "renewTime"}


async def _claim(name: str, body: kopf.Body, client: kube.Kube, registry: accounts.Registry, me: str) -> bool:
    """Take the account for this install unless another holds it; True once this install holds it."""
    now_ms = int(time.time() * 1000)
    other = accounts.held_elsewhere(body.get("status") or {}, me, now_ms)
    if other is not None:
        if registry.elsewhere.get(name) != other:
            accounts.log.warning(
                f"account {name} is held by the install in {other}: this one grants nothing to its batches "
                "until that claim lapses"
            )
        registry.elsewhere[name] = other
        registry.views.pop(name, None)
        return False
    try:
        renewed = accounts.iso_time(now_ms)
        claimed = await client.claim_provider(name, me, renewed, str(body["metadata"].get("resourceVersion") or ""))
    except kube.ERRORS as exc:
        accounts.log.warning(f"account {name}: cannot claim it: {kube.describe(exc)}")
        await asyncio.sleep(ACCOUNT_STATUS_INTERVAL_S)  # not a conflict: no sooner than a status write would be
        return False
    if claimed:
        registry.elsewhere.pop(name, None)
        accounts.log.info(f"account {name}: this install ({me}) holds it")
    return claimed


@kopf.on.delete(*PROVIDER, id="release-account")
async def release_account(name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """An account in use is deleted only once no batch uses it; the Event names the batches that hold it."""
    users = memo.accounts.users(name)
    if users:
        shown = ", ".join(users[:10]) + (f" and {len(users) - 10} more" if len(users) > 10 else "")
        kopf.warn(
            body, reason=v1alpha1.Reason.ACCOUNT_IN_USE, message=f"deletion waits for the batches using it: {shown}"
        )
        raise kopf.TemporaryError(f"in use by {shown}", delay=ACCOUNT_IN_USE_RECHECK_S)
    memo.accounts.views.pop(name, None)
    memo.accounts.elsewhere.pop(name, None)
