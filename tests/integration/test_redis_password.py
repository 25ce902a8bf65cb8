"""A Redis that wants a password: workers authenticate from ``ANALYSIS_REDIS_PASSWORD`` and never print it."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions

from analysis_core import env, queue
from analysis_devcluster import cluster
from analysis_operator import producer
from analysis_worker import consumer

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-redis-pw-4c1b"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[str]:
    with cluster.private_redis(tmp_path, password=PASSWORD) as url:
        yield url


async def test_workers_authenticate_with_the_password_from_their_environment(
    locked_redis: str, make_workers: Any
) -> None:
    anonymous = queue.connect(locked_redis)
    with pytest.raises(redis.exceptions.AuthenticationError):
        await anonymous.ping()
    await anonymous.aclose()
    client = queue.connect(locked_redis, PASSWORD)
    harness = make_workers(locked_redis)
    try:
        spec = {
            "items": ["NVDA", "AMD", "TSM"],
            "providers": {"local": {"type": "offline", "offline": {"seed": 3}}},
            "stages": [{"name": "only", "provider": "local", "prompt": "{{ item }}"}],
        }
        batch = harness.batch(spec)
        await producer.seed(client, batch.uid, ["only"], batch.items)
        refused = harness.start(batch, "only", pod="no-password")
        assert await asyncio.to_thread(refused.process.wait, 30) == 2
        assert any("Redis refused the worker" in line["msg"] for line in refused.lines())
        worker = harness.start(batch, "only", pod="with-password", **{env.REDIS_PASSWORD: PASSWORD})

        async def done() -> bool:
            return (await consumer.stage_counts(client, batch.uid, "only")).counters.get("succeeded", 0) == 3

        await harness.eventually(done, 20, "every item done by the authenticated worker")
        for started in (refused, worker):
            assert PASSWORD not in started.log.read_text(errors="replace")
    finally:
        await client.aclose()
