"""A Sentinel-managed primary failing over under a running batch (``analysis_devcluster.redissentinel``).

Real worker processes and the operator's export (to a real SeaweedFS) reach
Redis as ``redis+sentinel://``. To make the failover lose writes for sure,
replication is cut (the replica stops receiving the primary's stream) while
items go on ending on the primary, then the primary is killed and the stale
replica promoted: the ends of that window are gone, as after any failover to
a replica that lagged.

- With the export waiting for a replica (``redis.waitReplicas: 1``), nothing
  of that window reaches the sink; after the failover the lost items run
  again and every item is exported exactly once.
- Without the wait, the sink gets ahead of the finals list; the export notices
  and stops (``sinks.Diverged``) rather than skip or repeat rows.
"""

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis_core import queue
from analysis_devcluster import redissentinel, s3server
from analysis_operator import builders, objectstore, producer, sinks
from analysis_operator.plugin import stored

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "results"
ITEMS = [f"S{n:02d}" for n in range(40)]


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[redissentinel.RedisSentinel]:
    """A primary, a replica and three sentinels of the test's own (each test fails one over)."""
    with redissentinel.RedisSentinel(tmp_path / "sentinel") as running:
        yield running


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.SeaweedFS]:
    with s3server.SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
async def client(sentinel: redissentinel.RedisSentinel) -> AsyncIterator[queue.Redis]:
    connected = queue.connect(sentinel.url)
    try:
        yield connected
    finally:
        await connected.aclose()


@pytest.fixture
async def running(
    sentinel: redissentinel.RedisSentinel,
    seaweed: s3server.SeaweedFS,
    client: queue.Redis,
    make_workers: Callable[[str], Any],
) -> tuple[Any, sinks.ObjectStoreSink]:
    """The batch on two workers, with its first item ended, and its sink."""
    workers, sink = await run_batch(make_workers, sentinel.url, seaweed)
    await eventually(lambda: length(client, sink.batch.uid), 30, "a first item ended")
    return workers, sink


async def length(client: queue.Redis, uid: str) -> int:
    """The finals list's length, or 0 while Redis is away (failing over)."""
    with contextlib.suppress(*queue.UNAVAILABLE):
        return await producer.finals_length(client, uid)
    return 0


async def run_batch(
    make_workers: Callable[[str], Any], url: str, seaweed: s3server.SeaweedFS
) -> tuple[Any, sinks.ObjectStoreSink]:
    """Two workers on a 40-item batch (4 calls at a time, 400 ms each), and the batch's sink in the store."""
    workers = make_workers(url)
    spec = {
        "items": ITEMS,
        "providers": {"local": {"type": "offline", "offline": {"seed": 11, "latencyMilliseconds": 400}}},
        "stages": [{"name": "draft", "provider": "local", "prompt": "Draft {{ item }}", "concurrency": 2}],
    }
    batch = workers.batch(spec, lease_s=2.0)  # a short lease: the items a failover lost run again soon
    await batch.seed()
    for _ in range(2):
        workers.start(batch, "draft")
    store_settings = objectstore.Settings(
        bucket=BUCKET, endpoint=seaweed.endpoint, prefix="sentinel", credentials_dir=str(seaweed.credentials_dir)
    )
    sink = sinks.ObjectStoreSink(objectstore.open_store(store_settings), builders.Batch("b", "team", batch.uid))
    return workers, sink


async def fail_over_losing_writes(
    sentinel: redissentinel.RedisSentinel, client: queue.Redis, uid: str, *, before: Callable[[], Any]
) -> int:
    """Cut replication, let at least 4 more items end on the primary alone, call ``before``, then kill the
    primary and let the stale replica be promoted; returns how long the finals list was on the lost primary."""
    old = sentinel.primary()
    sentinel.partition()
    cut_at = await length(client, uid)

    async def ended_on_the_primary_alone() -> int:
        return max(0, await length(client, uid) - cut_at - 3)

    await eventually(ended_on_the_primary_alone, 30, "items ending while replication is cut")
    await before()
    lost_length = await length(client, uid)
    sentinel.kill(old)
    await eventually(lambda: asyncio.to_thread(sentinel.promoted, old), 60, "the replica promoted")
    return lost_length


async def eventually(check: Callable[[], Any], within_s: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        with contextlib.suppress(*queue.UNAVAILABLE):
            value = await check()
            if value:
                return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not {what} within {within_s:g}s")
        await asyncio.sleep(0.1)


@pytest.mark.timeout(240)
async def test_a_failover_under_a_running_batch_loses_no_item_and_exports_each_once(
    sentinel: redissentinel.RedisSentinel, client: queue.Redis, running: tuple[Any, sinks.ObjectStoreSink]
) -> None:
    workers, sink = running
    uid = sink.batch.uid
    exported, _ = await sinks.export_pass(sink, client, uid, final=False, replicas=1)
    assert exported > 0

    async def export_held_back() -> None:
        # Replication is cut: the wait for the replica times out, and nothing of this window reaches the sink.
        with pytest.raises(sinks.NotReplicated, match="0 of the 1 Redis replicas"):
            await sinks.export_pass(sink, client, uid, final=False, replicas=1)
        assert sink.rows == exported

    await fail_over_losing_writes(sentinel, client, uid, before=export_held_back)
    old = next(port for port in sentinel.data_ports if port != sentinel.primary())
    sentinel.restart(old)  # it comes back as a replica of the new primary: the export can wait for it again

    async def all_ended() -> bool:
        return await length(client, uid) == len(ITEMS)

    await eventually(all_ended, 120, "every item ended after the failover")

    async def exported_to_the_end() -> bool:
        try:
            cursor, total = await sinks.export_pass(sink, client, uid, final=True, replicas=1)
        except sinks.NotReplicated:
            return False  # the restarted node is still catching up
        return cursor == total == len(ITEMS)

    await eventually(exported_to_the_end, 60, "every end exported")
    rows = stored.read_folder(sink.store, sinks.folder(sink.store.settings, sink.batch).rstrip("/"))
    assert Counter(r["item"] for r in rows) == Counter(ITEMS)  # each item once: none skipped, none repeated
    assert {r["status"] for r in rows} == {"succeeded"}
    # The failover did lose writes: items whose first end was on the killed primary ended again.
    ends = Counter(line["item"] for w in workers.started for line in w.lines() if line.get("msg") == "succeeded")
    assert set(ends) == set(ITEMS)
    assert max(ends.values()) >= 2, ends


@pytest.mark.timeout(180)
async def test_without_the_wait_a_sink_ahead_of_redis_stops_the_export(
    sentinel: redissentinel.RedisSentinel, client: queue.Redis, running: tuple[Any, sinks.ObjectStoreSink]
) -> None:
    workers, sink = running
    uid = sink.batch.uid

    async def export_unreplicated() -> None:
        await sinks.export_pass(sink, client, uid, final=False)  # no wait: the sink takes ends only the primary has
        workers.kill_all()  # nothing ends again after the failover: the finals list stays behind the sink

    lost_length = await fail_over_losing_writes(sentinel, client, uid, before=export_unreplicated)
    written = sink.rows
    assert written <= lost_length
    await eventually(lambda: length(client, uid), 30, "the new primary answering")
    with pytest.raises(sinks.Diverged, match=f"the results sink holds {written} rows but Redis lists only"):
        await sinks.export_pass(sink, client, uid, final=False)
    assert sink.rows == written
