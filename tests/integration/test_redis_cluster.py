"""The queue on a real Redis Cluster of three primaries (``analysis_devcluster.rediscluster``).

Every key of a batch carries the batch's hash tag, so every script's keys sit
in one slot and the cluster client needs nothing else: the operator's
producer (seed, snapshot, the transaction of ``mark_retried``, the sweep)
and real worker processes, given ``redis+cluster://`` as their Redis URL,
run a two-stage batch with a rate-limited stage to its end, each item once;
the batches spread over the primaries, and the teardown's sweep leaves no
key of a batch on any node. A batch's own ACL user is set on every primary
(a node keeps its users to itself), restored where one node lost it, and a
real worker runs the batch on it.
"""

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
import redis.exceptions as redis_exceptions

from analysis_core import env, keys, queue, tenancy, wire
from analysis_devcluster import rediscluster
from analysis_operator import producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCHES = 6
ADMIN = "cluster-admin-password"  # what batch passwords derive from (the test cluster itself asks for none)


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


def users_on(cluster_: rediscluster.RedisCluster, uid: str) -> list[bool]:
    """Whether each node has the batch's user."""
    found = []
    for port in cluster_.ports:
        client = redis_sync.Redis(port=port, decode_responses=True)
        try:
            found.append(client.acl_getuser(tenancy.username(uid)) is not None)
        finally:
            client.close()
    return found


@pytest.mark.timeout(120)
async def test_a_batchs_own_user_is_on_every_primary_and_its_worker_runs_on_it(
    redis_cluster: rediscluster.RedisCluster, make_workers: Callable[[str], Any], tmp_path: Path
) -> None:
    workers = make_workers(redis_cluster.url)
    client = queue.connect(redis_cluster.url)
    batch = workers.batch(spec([f"U-{i:02d}" for i in range(8)]))
    other = keys.BatchKeys(str(uuid.uuid4()))
    try:
        await producer.ensure_user(client, batch.uid, ADMIN)
        assert users_on(redis_cluster, batch.uid) == [True] * len(redis_cluster.ports)  # a node keeps its own users
        assert await producer.has_user(client, batch.uid)
        # A node that forgot the user (a restart, a promoted replica): the check sees it, and it is set again.
        lost = redis_sync.Redis(port=redis_cluster.ports[1], decode_responses=True)
        lost.acl_deluser(tenancy.username(batch.uid))
        lost.close()
        assert not await producer.has_user(client, batch.uid)
        await producer.ensure_user(client, batch.uid, ADMIN)
        assert await producer.has_user(client, batch.uid)

        mounted = tmp_path / "auth"
        mounted.mkdir()
        (mounted / tenancy.SECRET_USERNAME).write_text(tenancy.username(batch.uid))
        (mounted / tenancy.SECRET_PASSWORD).write_text(tenancy.password(ADMIN, batch.uid))
        await batch.seed()
        for stage in batch.plan.stages:
            workers.start(batch, stage.name, **{env.REDIS_AUTH_DIR: str(mounted)})

        async def done() -> bool:
            counts = await producer.snapshot(client, batch.uid, ["draft", "polish"])
            return counts.stages["polish"].counters.get(wire.COUNT_SUCCEEDED, 0) == len(batch.items)

        await workers.eventually(done, 60, "the batch done by workers on its own user, on the cluster")
        # The user finds the cluster's nodes (CLUSTER SLOTS, COMMAND) but touches no other batch's key.
        own = queue.connect(
            redis_cluster.url, password=tenancy.password(ADMIN, batch.uid), username=tenancy.username(batch.uid)
        )
        try:
            assert await own.xlen(keys.BatchKeys(batch.uid).stream("draft")) >= 0
            with pytest.raises(redis_exceptions.NoPermissionError):
                await own.xlen(other.stream("draft"))
        finally:
            await own.aclose()
        for worker in workers.started:
            assert not [line for line in worker.lines() if line["level"] == "error"], worker.pod
    finally:
        workers.kill_all()
        await producer.remove_user(client, batch.uid)
        await producer.remove(client, batch.uid)
        await client.aclose()
    assert users_on(redis_cluster, batch.uid) == [False] * len(redis_cluster.ports)
