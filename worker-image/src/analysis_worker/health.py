"""Liveness of a worker: a heartbeat key with a TTL, and ``analysis-worker --check``.

The worker loop writes ``{uid}:health:<stage>:<pod>`` every third of the TTL
with what it is doing; the key expires on its own when the loop stops
beating (hung, deadlocked, or dead). ``check`` is what a pod's exec probe
runs: exit 0 if this pod's key exists, 1 otherwise (including when Redis
cannot be reached, which a worker cannot work without either).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from analysis_core import keys, queue
from analysis_worker import config as config_


async def beat(client: queue.Redis, cfg: config_.WorkerConfig, info: dict[str, Any]) -> None:
    key = keys.BatchKeys(cfg.batch_uid).health(cfg.stage, cfg.pod_name)
    payload = json.dumps({"at": time.time(), **info})
    await client.set(key, payload, px=int(cfg.health_ttl_s * 1000))


async def _check(cfg: config_.WorkerConfig) -> bool:
    client = queue.connect(cfg.redis_url, cfg.redis_secret)
    try:
        key = keys.BatchKeys(cfg.batch_uid).health(cfg.stage, cfg.pod_name)
        return bool(await client.exists(key))
    finally:
        await client.aclose()


def check(cfg: config_.WorkerConfig) -> int:
    """Exit code for an exec probe: 0 when this worker's heartbeat is fresh."""
    try:
        return 0 if asyncio.run(asyncio.wait_for(_check(cfg), timeout=5)) else 1
    except Exception:  # noqa: BLE001 (a probe answers yes or no: Redis away, slow or erroring means no)
        return 1
