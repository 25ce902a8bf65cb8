"""The queue on a real Redis Cluster of three primaries (``analysis_devcluster.rediscluster``).

Every key of a batch carries the batch's hash tag, so every script's keys sit
in one slot and the cluster client needs nothing else: the operator's
producer (seed, snapshot, the transaction of ``mark_retried``, the sweep)
and real worker processes, given ``redis+cluster://`` as their Redis URL,
run a two-stage batch with a rate-limited stage to its end, each item once;
the batches spread over the primaries, and the teardown's sweep leaves no
key of a batch on any node.
"""

from collections.abc import Callable
from typing import Any

import pytest
import redis as redis_sync

from analysis_core import keys, queue, wire
from analysis_devcluster import rediscluster
from analysis_operator import producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCHES = 6


def spec(items: list[str]) -> dict[str, Any]:
    return {
        "items": items,
        "providers": {"local": {"type": "offline", "offline": {"seed": 3}}},
        "stages": [
            {"name": "draft", "provider": "local", "prompt": "Draft {{ item }}", "concurrency": 4},
            {
                "name": "polish",
                "provider": "local",
                "prompt": "Polish {{ input }}",
                "concurrency": 4,
                "rateLimit": {"requestsPerMinute": 6000},
            },
        ],
    }


def node_keys(cluster: rediscluster.RedisCluster, pattern: str) -> dict[int, list[str]]:
    """The keys matching ``pattern`` on each node, by port."""
    found = {}
    for port in cluster.ports:
        client = redis_sync.Redis(port=port, decode_responses=True)
        try:
            found[port] = sorted(str(k) for k in client.scan_iter(match=pattern, count=1000))
        finally:
            client.close()
    return found


@pytest.mark.timeout(180)
async def test_batches_run_on_a_cluster_of_three_and_leave_no_key_behind(
    redis_cluster: rediscluster.RedisCluster, make_workers: Callable[[str], Any]
) -> None:
    workers = make_workers(redis_cluster.url)
    client = queue.connect(redis_cluster.url)
    batches = [workers.batch(spec([f"B{b}-{i:02d}" for i in range(12)])) for b in range(BATCHES)]
    try:
        for batch in batches:
            await batch.seed()
            for stage in batch.plan.stages:
                workers.start(batch, stage.name)

        async def all_done() -> bool:
            for batch in batches:
                counts = await producer.snapshot(client, batch.uid, ["draft", "polish"])
                if counts.stages["polish"].counters.get(wire.COUNT_SUCCEEDED, 0) < len(batch.items):
                    return False
            return True

        await workers.eventually(all_done, 120, "every batch done on the cluster")
        homes = set()
        for batch in batches:
            ends = await producer.finals(client, batch.uid, 0, 100)
            assert sorted(r.item for r in ends) == sorted(batch.items)  # each item once
            assert {r.status for r in ends} == {"succeeded"}
            await producer.mark_retried(client, batch.uid, "token")  # a MULTI on the batch's slot
            on_nodes = node_keys(redis_cluster, keys.BatchKeys(batch.uid).pattern)
            homes |= {port for port, names in on_nodes.items() if names}
            assert len([port for port, names in on_nodes.items() if names]) == 1  # one slot, one node
        assert len(homes) > 1  # the batches spread over the primaries
        workers.kill_all()  # before the sweep, as the teardown stops the workers first
        for batch in batches:
            assert await producer.remove(client, batch.uid) > 0
            assert not any(node_keys(redis_cluster, keys.BatchKeys(batch.uid).pattern).values())
    finally:
        await client.aclose()
