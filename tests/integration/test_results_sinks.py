"""The results sinks against the real parts: ConfigMaps on the real apiserver, parts in a real SeaweedFS.

The export's work must be proportional to the rows it adds, not to the rows
already written: with 10 and with 1,000 rows exported before, one more pass
of 5 rows costs the same calls (counted on the real clients: every call is
made, none is faked). A fresh sink (an operator restart) pays one listing,
then the same. Faults: a store that goes away keeps the rows in Redis and
the cursor where it was; a wrong bucket or credential names the setting;
overlapping parts (two writers) read back as each row once.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis_core import keys, queue, wire
from analysis_devcluster import s3server
from analysis_devcluster.cluster import DevCluster
from analysis_operator import builders, export, kube, objectstore, producer, results, sinks
from analysis_operator.plugin import stored

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crds_installed")]

BUCKET = "results"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.SeaweedFS]:
    with s3server.SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
async def client(devcluster: DevCluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator["Counting"]:
    monkeypatch.setenv("KUBECONFIG", str(devcluster.kubeconfig))
    counting = Counting()
    try:
        yield counting
    finally:
        await counting.close()


class Counting(kube.Kube):
    """The operator's real client, counting the calls it makes by verb."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    async def list(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["list"] += 1
        return await super().list(*args, **kwargs)

    async def create(self, obj: Any) -> dict[str, Any]:
        self.calls["create"] += 1
        return await super().create(obj)

    async def replace(self, obj: Any) -> dict[str, Any]:
        self.calls["replace"] += 1
        return await super().replace(obj)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["get"] += 1
        return await super().get(*args, **kwargs)


class CountingStore(objectstore.Store):
    """The operator's real store client, counting its calls."""

    def __init__(self, settings: objectstore.Settings) -> None:
        super().__init__(settings, objectstore.credential_of(settings))
        self.calls: Counter[str] = Counter()

    async def put(self, key: str, data: bytes) -> None:
        self.calls["put"] += 1
        await super().put(key, data)

    async def list(self, prefix: str) -> list[tuple[str, int]]:
        self.calls["list"] += 1
        return await super().list(prefix)


def settings(server: s3server.SeaweedFS, **changes: Any) -> objectstore.Settings:
    base = objectstore.Settings(
        bucket=BUCKET,
        endpoint=server.endpoint,
        prefix="analysis",
        credentials_dir=str(server.credentials_dir),
        timeout_s=3.0,
    )
    return objectstore.Settings(**{**base.__dict__, **changes})


async def end_items(redis: queue.Redis, uid: str, first: int, count: int) -> None:
    """``count`` items end (as complete.lua records an end): finals entry, outcome and output."""
    k = keys.BatchKeys(uid)
    async with redis.pipeline(transaction=True) as pipe:
        for n in range(first, first + count):
            idem = k.idem("analyze", f"item-{n:05d}", 0, 1)
            failed = n % 7 == 3
            outcome = {wire.OUTCOME_STATUS: wire.STATUS_FAILED if failed else wire.STATUS_SUCCEEDED}
            if failed:
                outcome |= {wire.OUTCOME_ERROR: f"boom {n}", wire.OUTCOME_ERROR_CLASS: "Permanent"}
            pipe.hset(k.outcomes, idem, json.dumps(outcome))
            pipe.hset(k.results, idem, json.dumps({"n": n, "text": "x" * 300}))
            pipe.rpush(k.finals, idem)
        await pipe.execute()


def new_batch(namespace: str, name: str = "big") -> builders.Batch:
    return builders.Batch(name, namespace, str(uuid.uuid4()))


def keep(chunk: dict[str, Any]) -> dict[str, Any]:
    return chunk


async def test_a_configmap_export_pass_costs_calls_for_the_new_rows_only(
    client: Counting, redis: queue.Redis, namespace: str
) -> None:
    costs = {}
    for existing in (10, 1000):
        batch = new_batch(namespace, f"big-{existing}")
        await end_items(redis, batch.uid, 0, existing)
        sink = sinks.ConfigMapSink(client, batch, keep)
        assert await sinks.export_pass(sink, redis, batch.uid, final=False) == (existing, existing)
        chunks = sink.manifest()["objects"]
        await end_items(redis, batch.uid, existing, 5)
        client.calls.clear()
        assert await sinks.export_pass(sink, redis, batch.uid, final=False) == (existing + 5, existing + 5)
        costs[existing] = dict(client.calls)
        # A restarted operator (a new sink) lists once, then goes on where the ConfigMaps end.
        await end_items(redis, batch.uid, existing + 5, 5)
        restarted = sinks.ConfigMapSink(client, batch, keep)
        client.calls.clear()
        assert await sinks.export_pass(restarted, redis, batch.uid, final=False) == (existing + 10, existing + 10)
        assert client.calls["list"] == 1
        listed = [c.to_dict() for c in await client.list(kube.CONFIGMAPS, namespace, results.labels(batch.uid))]
        rows = results.read_rows(listed)
        assert [r["item"] for r in rows] == [f"item-{n:05d}" for n in range(existing + 10)]
        assert restarted.manifest()["rows"] == existing + 10
        assert restarted.manifest()["objects"] == len(listed) >= chunks
    # Rows that fit the last chunk: one replace of it, nothing listed, at 10 rows as at 1,000 (in several chunks).
    assert costs[10] == costs[1000] == {"replace": 1}, costs


async def test_an_object_store_export_pass_costs_one_put_per_part_whatever_exists(
    seaweed: s3server.SeaweedFS, redis: queue.Redis
) -> None:
    store = CountingStore(settings(seaweed))
    costs = {}
    for existing in (10, 1000):
        batch = new_batch("tenant-a")
        await end_items(redis, batch.uid, 0, existing)
        sink = sinks.ObjectStoreSink(store, batch)
        assert await sinks.export_pass(sink, redis, batch.uid, final=False) == (existing, existing)
        await end_items(redis, batch.uid, existing, 5)
        store.calls.clear()
        assert await sinks.export_pass(sink, redis, batch.uid, final=True) == (existing + 5, existing + 5)
        costs[existing] = dict(store.calls)
        restarted = sinks.ObjectStoreSink(store, batch)
        store.calls.clear()
        assert await restarted.cursor() == existing + 5
        assert store.calls == {"list": 1}
        manifest = restarted.manifest()
        assert manifest["location"] == f"s3://{BUCKET}/analysis/tenant-a/big/{batch.uid}/"
        assert manifest["rows"] == existing + 5
        rows = stored.read_folder(store, sinks.folder(store.settings, batch).rstrip("/"))
        assert [r["item"] for r in rows] == [f"item-{n:05d}" for n in range(existing + 5)]
        assert rows[3]["status"] == "failed"
        assert rows[3]["errorClass"] == "Permanent"
        assert rows[0]["output"] == {"n": 0, "text": "x" * 300}
        written = json.loads(await store.get(sinks.folder(store.settings, batch) + results.MANIFEST) or b"{}")
        assert written["rows"] == existing + 5
        assert written["batch"]["uid"] == batch.uid
    # The new rows as one part, and the manifest of the ended batch: two puts, no listing, at 10 as at 1,000.
    assert costs[10] == costs[1000] == {"put": 2}, costs


async def test_overlapping_parts_of_two_writers_read_back_as_each_row_once(
    seaweed: s3server.SeaweedFS, redis: queue.Redis
) -> None:
    store = objectstore.open_store(settings(seaweed))
    batch = new_batch("tenant-b")
    await end_items(redis, batch.uid, 0, 30)
    first, second = sinks.ObjectStoreSink(store, batch), sinks.ObjectStoreSink(store, batch)
    rows = [export.row(r) for r in await producer.finals(redis, batch.uid, 0, 30)]
    # An operator replaced mid-pass: the old one wrote rows 0-19, the new one (listing before that landed) 0-29.
    await first.append(0, rows[:20])
    await second.append(0, rows)
    found = await store.list(sinks.folder(store.settings, batch))
    assert sorted(results.parse_part(key) for key, _ in found) == [(0, 20), (0, 30)]
    parts = [(key, (await store.get(key) or b"").decode()) for key, _ in found]
    assert [r["item"] for r in results.read_parts(parts)] == [f"item-{n:05d}" for n in range(30)]
    assert results.parts_cursor(key for key, _ in found) == 30


async def test_the_plugins_read_of_a_folder_exits_cleanly_every_time(
    seaweed: s3server.SeaweedFS, redis: queue.Redis
) -> None:
    """``kubectl analysis results`` reads a folder and exits at once. With obstore's async calls, about one
    exit in twelve aborted (SIGABRT after the output) when a runtime thread handing back the last result
    took the GIL while the interpreter was finalizing; so each run here is a fresh interpreter."""
    store = objectstore.open_store(settings(seaweed))
    batch = new_batch("tenant-e")
    await end_items(redis, batch.uid, 0, 12)
    sink = sinks.ObjectStoreSink(store, batch)
    assert await sinks.export_pass(sink, redis, batch.uid, final=True) == (12, 12)
    access, secret = seaweed.operator_keys
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    code = (
        "import sys; from analysis_operator.plugin import stored; "
        "print(len(stored.read_location(sys.argv[1], sys.argv[2])))"
    )
    argv = [sys.executable, "-c", code, sink.manifest()["location"], seaweed.endpoint]

    def read() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=False)

    runs = [await asyncio.to_thread(read) for _ in range(40)]
    assert Counter((run.returncode, run.stdout.strip()) for run in runs) == {(0, "12"): 40}, [
        run.stderr[-300:] for run in runs if run.returncode
    ]


async def test_a_store_away_keeps_the_rows_in_redis_and_the_export_goes_on_when_it_is_back(
    seaweed: s3server.SeaweedFS, redis: queue.Redis
) -> None:
    store = objectstore.open_store(settings(seaweed))
    batch = new_batch("tenant-c")
    await end_items(redis, batch.uid, 0, 40)
    sink = sinks.ObjectStoreSink(store, batch)
    assert await sinks.export_pass(sink, redis, batch.uid, final=False) == (40, 40)
    await end_items(redis, batch.uid, 40, 25)
    with seaweed.down():
        with pytest.raises(objectstore.StoreError) as away:
            await sinks.export_pass(sink, redis, batch.uid, final=True)
        assert away.value.setting == objectstore.ENDPOINT
        assert seaweed.endpoint in str(away.value)
        assert sink.rows == 40  # nothing counted that did not land
        assert await redis.llen(keys.BatchKeys(batch.uid).finals) == 65  # and nothing dropped
    # A restarted SeaweedFS answers before its volumes take writes again: the export retries, as the reconciler
    # does on its later passes, until the rows land.
    deadline = time.monotonic() + 60
    while True:
        try:
            assert await sinks.export_pass(sink, redis, batch.uid, final=True) == (65, 65)
            break
        except objectstore.StoreError:
            assert time.monotonic() < deadline, "not exported within 60 s of the store's return"
            await asyncio.sleep(1.0)
    rows = stored.read_folder(store, sinks.folder(store.settings, batch).rstrip("/"))
    assert [r["item"] for r in rows] == [f"item-{n:05d}" for n in range(65)]


async def test_a_wrong_bucket_or_credential_names_the_setting(
    seaweed: s3server.SeaweedFS, redis: queue.Redis, tmp_path: Path
) -> None:
    names = {objectstore.BUCKET: "BUCKET_SETTING", objectstore.CREDENTIALS: "CREDENTIALS_SETTING"}
    batch = new_batch("tenant-d")
    await end_items(redis, batch.uid, 0, 3)
    wrong_bucket = objectstore.open_store(settings(seaweed, bucket="no-such-bucket", names=names))
    with pytest.raises(objectstore.StoreError) as refused:
        await sinks.export_pass(sinks.ObjectStoreSink(wrong_bucket, batch), redis, batch.uid, final=False)
    assert "no-such-bucket" in str(refused.value)
    assert "BUCKET_SETTING" in str(refused.value)
    (tmp_path / objectstore.ACCESS_KEY_FILE).write_text(seaweed.operator_keys[0])
    (tmp_path / objectstore.SECRET_KEY_FILE).write_text("not-the-secret")
    wrong_key = objectstore.open_store(settings(seaweed, credentials_dir=str(tmp_path), names=names))
    with pytest.raises(objectstore.StoreError) as denied:
        await sinks.export_pass(sinks.ObjectStoreSink(wrong_key, batch), redis, batch.uid, final=False)
    assert denied.value.setting == objectstore.CREDENTIALS
    assert "CREDENTIALS_SETTING" in str(denied.value)
    assert "not-the-secret" not in str(denied.value)
    with pytest.raises(objectstore.StoreError) as missing:
        objectstore.open_store(settings(seaweed, credentials_dir=str(tmp_path / "absent"), names=names))
    assert missing.value.setting == objectstore.CREDENTIALS
    assert "access-key-id" in str(missing.value)


async def test_the_configmap_sink_stops_at_its_ceiling_and_says_how_to_go_on(
    client: Counting, redis: queue.Redis, namespace: str
) -> None:
    batch = new_batch(namespace)
    # Rows of ~80 KiB: a 512 KiB chunk holds 6, so the ceiling of 16 chunks is passed at about 100 rows.
    k = keys.BatchKeys(batch.uid)
    async with redis.pipeline(transaction=True) as pipe:
        for n in range(120):
            idem = k.idem("analyze", f"item-{n:05d}", 0, 1)
            pipe.hset(k.outcomes, idem, json.dumps({wire.OUTCOME_STATUS: wire.STATUS_SUCCEEDED}))
            pipe.hset(k.results, idem, "y" * 80_000)
            pipe.rpush(k.finals, idem)
        await pipe.execute()
    sink = sinks.ConfigMapSink(client, batch, keep)
    with pytest.raises(sinks.Full) as full:
        await sinks.export_pass(sink, redis, batch.uid, final=True)
    assert "spec.results.sink" in str(full.value)
    assert "ObjectStore" in str(full.value)
    assert sink.manifest()["objects"] == export.MAX_CHUNKS
    assert 0 < sink.rows < 120
    listed = [c.to_dict() for c in await client.list(kube.CONFIGMAPS, namespace, results.labels(batch.uid))]
    assert len(listed) == export.MAX_CHUNKS
    assert results.exported(listed) == sink.rows


async def test_an_export_that_waits_for_a_replica_redis_lacks_writes_nothing(
    client: Counting, redis: queue.Redis, namespace: str
) -> None:
    """The session's Redis has no replica: a pass that must wait for one writes no row, and says how many
    acknowledged; without the wait the same rows go out, each once."""
    batch = new_batch(namespace, "waits")
    await end_items(redis, batch.uid, 0, 8)
    sink = sinks.ConfigMapSink(client, batch, keep)
    with pytest.raises(sinks.NotReplicated, match="0 of the 1 Redis replicas"):
        await sinks.export_pass(sink, redis, batch.uid, final=False, replicas=1)
    assert sink.rows == 0
    assert client.calls["create"] == client.calls["replace"] == 0
    assert await redis.get(keys.BatchKeys(batch.uid).exported) == "8"  # the write the wait covered
    assert await sinks.export_pass(sink, redis, batch.uid, final=False) == (8, 8)
