"""Liveness of a worker: a heartbeat key with a TTL, and ``analysis-worker --check``.

The worker loop writes ``{uid}:health:<stage>:<pod>`` (``consumer.beat``)
every third of the TTL with what it is doing; the key expires on its own when
the loop stops beating (hung, deadlocked, or dead). ``check`` is what a pod's
exec probe runs: exit 0 if this pod's key exists, 1 otherwise (including when
Redis cannot be reached, which a worker cannot work without either).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from analysis_core import queue
from analysis_worker import config as config_
from analysis_worker import consumer


async def beat(client: queue.Redis, cfg: config_.WorkerConfig, in_flight: int, about: Mapping[str, Any]) -> None:
    await consumer.beat(
        client, cfg.batch_uid, cfg.stage, cfg.pod_name, in_flight=in_flight, ttl_s=cfg.health_ttl_s, about=about
    )


async def _check(cfg: config_.WorkerConfig) -> bool:
    client = queue.connect(cfg.redis_url, cfg.redis_secret, cfg.redis_username)
    try:
        return await consumer.beating(client, cfg.batch_uid, cfg.stage, cfg.pod_name)
    finally:
        await client.aclose()


def check(cfg: config_.WorkerConfig) -> int:
    """Exit code for an exec probe: 0 when this worker's heartbeat is fresh."""
    try:
        return 0 if asyncio.run(asyncio.wait_for(_check(cfg), timeout=5)) else 1
    except Exception:  # noqa: BLE001 (a probe answers yes or no: Redis away, slow or erroring means no)
        return 1
