"""The finalizer's work when a batch is deleted: stop the workers, keep or delete the results, remove the rest.

Order matters. Workers write to Redis until they stop, so their workloads go
first and the Redis keys last, once no worker pod of the batch is left:
otherwise a worker finishing its item would recreate a counter or a
heartbeat after the sweep. In between, the results: by default
(``spec.results.onDelete: Retain``) the items that ended since the last export
are exported (``sinks.export_pass``), so nothing that ended is lost with
Redis, and the result ConfigMaps lose any owner reference, so that garbage
collection leaves them; with ``Delete`` they are deleted, ConfigMaps or the
batch's folder in the results store. Each call does what it can and raises
``kopf.TemporaryError`` to be called again shortly; Kopf keeps the finalizer
until a call returns.

A cleanup that cannot finish (Redis away for minutes) must not wedge the
batch in Terminating forever, which would also block its namespace's
deletion: after ``GIVE_UP_AFTER`` retries it posts a Warning Event naming
what is left behind and lets go.
"""

from __future__ import annotations

import contextlib
from typing import Any

import kopf

from analysis_core import keys, queue
from analysis_core.api import v1alpha1, wellknown
from analysis_operator import builders, kube, objectstore, producer, results, sinks

# What keeping or deleting the results can fail with: the store, the ConfigMap sink's ceiling, Redis, the API.
_RESULTS_ERRORS: tuple[type[Exception], ...] = (objectstore.StoreError, sinks.Full, *queue.UNAVAILABLE, *kube.ERRORS)
GIVE_UP_AFTER = 60  # retries, about two seconds apart while pods drain, longer while Redis is away


async def tear_down(
    client: kube.Kube,
    redis: queue.Redis,
    body: kopf.Body,
    *,
    retry: int,
    logger: kopf.Logger,
    batch_user: bool = False,
    store: objectstore.Settings | None = None,
) -> None:
    """Stop the batch's workers, delete its children, keep or delete its results (``store``: the install's results
    store), then delete its Redis keys and (``batch_user``) its Redis user."""
    meta = body["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    labels = {wellknown.LABEL_BATCH_UID: uid}
    with contextlib.suppress(*queue.UNAVAILABLE):  # the workers go anyway; the keys are swept once Redis is back
        await _stop_claims(redis, uid)
    retain = _results_spec(body).on_delete is v1alpha1.ResultsOnDelete.RETAIN
    for kind in (kube.JOBS, kube.DEPLOYMENTS, kube.SERVICEACCOUNTS):
        await client.delete_labelled(kind, namespace, labels)
    # The results ConfigMaps stay when retained; every other ConfigMap of the batch goes.
    kept: dict[str, Any] = {results.LABEL_RESULTS: kube.ABSENT} if retain else {}
    await client.delete_labelled(kube.CONFIGMAPS, namespace, {**labels, **kept})
    pods = [p for p in await client.list(kube.PODS, namespace, labels) if _running(p)]
    if pods and retry < GIVE_UP_AFTER:
        raise kopf.TemporaryError(f"waiting for {len(pods)} worker pods to stop", delay=2)
    await _results(client, redis, body, store, retry=retry, logger=logger)
    try:
        removed = await sweep(redis, uid)
        if batch_user:
            await producer.remove_user(redis, uid)  # also closes its connections
    except queue.UNAVAILABLE as exc:
        _again_or_give_up(
            body,
            retry,
            exc,
            "Redis unavailable, the batch's keys remain",
            f"Redis keys matching {keys.BatchKeys(uid).pattern} remain",
        )
        return
    logger.info(f"removed {removed} Redis keys and every child of the batch")


def _results_spec(body: kopf.Body) -> v1alpha1.ResultsSpec:
    raw = (body.get("spec") or {}).get("results")
    try:
        return v1alpha1.ResultsSpec.model_validate(raw or {})
    except ValueError:
        return v1alpha1.ResultsSpec()  # the schema admits nothing else; keep the results when in doubt


async def _results(
    client: kube.Kube,
    redis: queue.Redis,
    body: kopf.Body,
    store: objectstore.Settings | None,
    *,
    retry: int,
    logger: kopf.Logger,
) -> None:
    """Retain: export what ended since the last pass and disown the ConfigMaps; Delete: delete the results."""
    meta = body["metadata"]
    batch = builders.Batch(meta["name"], meta["namespace"], meta["uid"])
    spec = _results_spec(body)
    wanted = spec.sink or (v1alpha1.ResultsSink.OBJECT_STORE if store else v1alpha1.ResultsSink.CONFIG_MAP)
    try:
        if spec.on_delete is v1alpha1.ResultsOnDelete.DELETE:
            await client.delete_labelled(kube.CONFIGMAPS, batch.namespace, results.labels(batch.uid))
            if store is not None:
                removed = await sinks.delete_folder(objectstore.open_store(store), batch)
                logger.info(f"deleted {removed} results objects under {store.url(sinks.folder(store, batch))}")
            return
        sink: sinks.Sink | None = None
        if wanted is v1alpha1.ResultsSink.CONFIG_MAP:
            sink = sinks.ConfigMapSink(client, batch, lambda chunk: chunk)
        elif store is not None:
            sink = sinks.ObjectStoreSink(objectstore.open_store(store), batch)
        if sink is not None:
            try:
                cursor, length = await sinks.export_pass(sink, redis, batch.uid, final=True)
            except sinks.Diverged as exc:  # no later try can mend it: keep what the sink holds, say why
                kopf.warn(body, reason=wellknown.Reason.CLEANUP_INCOMPLETE, message=f"results kept as they are: {exc}")
            else:
                if cursor < length:
                    raise sinks.Full(f"{length - cursor} ended items could not be written")
        for chunk in await client.list(kube.CONFIGMAPS, batch.namespace, results.labels(batch.uid)):
            if chunk.metadata is not None and chunk.metadata.ownerReferences and chunk.metadata.name:
                patch = {"metadata": {"ownerReferences": None}}
                await client.merge_patch(kube.CONFIGMAPS, batch.namespace, chunk.metadata.name, patch)
    except _RESULTS_ERRORS as exc:
        what = "delete" if spec.on_delete is v1alpha1.ResultsOnDelete.DELETE else "keep"
        _again_or_give_up(body, retry, exc, f"cannot {what} the results yet", f"could not {what} every result")


def _again_or_give_up(body: kopf.Body, retry: int, exc: Exception, waiting: str, left: str) -> None:
    """Raise to be called again in a moment (a Warning Event says so), or, after ``GIVE_UP_AFTER`` tries, post a
    Warning Event naming what is ``left`` behind and return: the batch must not stay Terminating for ever."""
    if retry < GIVE_UP_AFTER:
        why = f"{waiting}; retry {retry + 1} of {GIVE_UP_AFTER}: {exc}"
        kopf.warn(body, reason=wellknown.Reason.CLEANUP_RETRYING, message=why)
        raise kopf.TemporaryError(why, delay=5) from exc
    kopf.warn(body, reason=wellknown.Reason.CLEANUP_INCOMPLETE, message=f"gave up after {retry} tries: {left} ({exc})")


async def _stop_claims(redis: queue.Redis, uid: str) -> None:
    await producer.deleting(redis, uid)


def _running(pod: kube.PODS) -> bool:
    return (pod.status.phase if pod.status else None) not in ("Succeeded", "Failed")


async def sweep(redis: queue.Redis, uid: str) -> int:
    """Unlink every key of the batch."""
    return await producer.remove(redis, uid)
