"""Redis (with AOF) restarting under running workers loses nothing and duplicates nothing."""

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from analysis_core import keys, queue, wire
from analysis_devcluster import cluster, processes
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(120)
async def test_workers_ride_out_a_redis_restart(tmp_path: Path, make_workers: Any) -> None:
    port, data = processes.free_port(), tmp_path / "redis"
    data.mkdir()
    server = processes.spawn("redis-server", cluster.redis_argv(port, data), tmp_path / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    harness = make_workers(url)
    client = queue.connect(url)
    try:
        for _ in range(50):
            if processes.port_open(port):
                break
            await asyncio.sleep(0.1)
        items = [f"R{i:03d}" for i in range(200)]
        spec: dict[str, Any] = {
            "items": items,
            "providers": {"local": {"type": "offline", "offline": {"latencyMilliseconds": 15}}},
            "stages": [{"name": "only", "provider": "local", "prompt": "{{ item }}", "concurrency": 4}],
        }
        batch = harness.batch(spec, lease_s=2.0, max_deliveries=50)
        await batch.seed()
        for _ in range(2):
            harness.start(batch, "only")

        async def succeeded() -> int:
            return (await consumer.stage_counts(client, batch.uid, "only")).counters.get("succeeded", 0)

        await harness.eventually(lambda: _at_least(succeeded, 40), 30, "some progress")
        server.stop(grace=10)  # SIGTERM: Redis writes its AOF and exits
        await asyncio.sleep(1.0)
        server = processes.spawn("redis-server", cluster.redis_argv(port, data), tmp_path / "redis.log")

        async def all_done() -> bool:
            try:
                counts = await consumer.stage_counts(client, batch.uid, "only")
            except queue.UNAVAILABLE:
                return False
            return counts.counters.get("succeeded", 0) == len(items) and counts.drained

        await harness.eventually(all_done, 60, "every item done after the restart")
        # One whole outcome per item, succeeded (attempts before it, after a restart's retry, are spent).
        raw = await client.hgetall(keys.BatchKeys(batch.uid).outcomes)
        recorded = {k: v for k, v in raw.items() if v != wire.OUTCOME_SPENT}
        per_item = Counter(keys.parse_idem(k).item for k in recorded)
        assert sorted(per_item) == items
        assert set(per_item.values()) == {1}
        assert all(json.loads(v)["status"] == "succeeded" for v in recorded.values())
        assert all(worker.process.poll() is None for worker in harness.started)  # nobody crashed
    finally:
        harness.kill_all()  # before Redis goes, so no worker logs a last outage
        await client.aclose()
        server.stop(grace=5)


async def _at_least(count: Any, n: int) -> bool:
    return await count() >= n
