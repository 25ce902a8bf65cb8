"""The finalizer's work when a batch is deleted: stop the workers, then remove every trace.

Order matters. Workers write to Redis until they stop, so their workloads go
first and the Redis keys last, once no worker pod of the batch is left:
otherwise a worker finishing its item would recreate a counter or a
heartbeat after the sweep. Each call does what it can and raises
``kopf.TemporaryError`` to be called again shortly; Kopf keeps the finalizer
until a call returns.

A cleanup that cannot finish (Redis away for minutes) must not wedge the
batch in Terminating forever, which would also block its namespace's
deletion: after ``GIVE_UP_AFTER`` retries it posts a Warning Event naming
what is left behind and lets go.
"""

from __future__ import annotations

import contextlib

import kopf

from analysis_core import keys, queue
from analysis_core.api import wellknown
from analysis_operator import kube, producer

GIVE_UP_AFTER = 60  # retries, about two seconds apart while pods drain, longer while Redis is away


async def tear_down(
    client: kube.Kube,
    redis: queue.Redis,
    body: kopf.Body,
    *,
    retry: int,
    logger: kopf.Logger,
    batch_user: bool = False,
) -> None:
    """Stop the batch's workers, delete its children, then its Redis keys and (``batch_user``) its Redis user."""
    meta = body["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    labels = {wellknown.LABEL_BATCH_UID: uid}
    with contextlib.suppress(*queue.UNAVAILABLE):  # the workers go anyway; the keys are swept once Redis is back
        await _stop_claims(redis, uid)
    for kind in (kube.JOBS, kube.DEPLOYMENTS, kube.CONFIGMAPS, kube.SERVICEACCOUNTS):
        await client.delete_labelled(kind, namespace, labels)
    pods = [p for p in await client.list(kube.PODS, namespace, labels) if _running(p)]
    if pods and retry < GIVE_UP_AFTER:
        raise kopf.TemporaryError(f"waiting for {len(pods)} worker pods to stop", delay=2)
    try:
        removed = await sweep(redis, uid)
        if batch_user:
            await producer.remove_user(redis, uid)  # also closes its connections
    except queue.UNAVAILABLE as exc:
        if retry < GIVE_UP_AFTER:
            why = f"Redis unavailable, the batch's keys remain; retry {retry + 1} of {GIVE_UP_AFTER}: {exc}"
            kopf.warn(body, reason=wellknown.Reason.CLEANUP_RETRYING, message=why)
            raise kopf.TemporaryError(why, delay=5) from exc
        kopf.warn(
            body,
            reason=wellknown.Reason.CLEANUP_INCOMPLETE,
            message=f"gave up after {retry} tries: Redis keys matching {keys.BatchKeys(uid).pattern} remain ({exc})",
        )
        return
    logger.info(f"removed {removed} Redis keys and every child of the batch")


async def _stop_claims(redis: queue.Redis, uid: str) -> None:
    await producer.suspend(redis, uid, "the batch is being deleted")


def _running(pod: kube.PODS) -> bool:
    return (pod.status.phase if pod.status else None) not in ("Succeeded", "Failed")


async def sweep(redis: queue.Redis, uid: str) -> int:
    """Unlink every key of the batch."""
    return await producer.remove(redis, uid)
