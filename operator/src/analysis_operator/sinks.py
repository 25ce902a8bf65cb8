"""The results sinks: where the export writes finished items, and what it remembers between passes.

Two sinks take the same rows (``export.row``), in the order of the batch's
finals list:

- :class:`ConfigMapSink`, the zero-setup default: chunks of JSON Lines in
  ConfigMaps of the batch's namespace (``export.plan_export``), up to
  ``export.MAX_CHUNKS`` of them; past that it raises :class:`Full` and the
  rows wait in Redis until the batch switches sink;
- :class:`ObjectStoreSink`: parts of JSON Lines in the install's bucket
  (``export.plan_parts``), one atomic put each, under the batch's own folder.

Linear work: a sink reads what exists once (its first ``cursor`` call, after
an operator start or a conflict) and from then on keeps the little it needs
in memory (where the rows end, the last chunk), so a pass costs calls in
proportion to the rows it adds, not to the rows already written
(tests/integration/test_results_sinks.py counts them). Whatever a failed or
interrupted pass wrote is found again by the next listing: the cursor is
always derived from what landed (``results.exported``, ``results.parts_cursor``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from analysis_core import api, queue
from analysis_core.api import v1alpha1
from analysis_operator import builders, export, kube, objectstore, producer, results

Own = Callable[[dict[str, Any]], dict[str, Any]]  # what a new chunk gets before it is created (an owner, or not)
EXPORT_PAGE = 500  # finals read per round trip while exporting to ConfigMaps
PART_PAGE = 5000  # finals read per round trip, and at most per part, while exporting to the object store


class Full(Exception):
    """The ConfigMap sink holds as much as it may; ``str()`` names the way out."""


class NotReplicated(Exception):
    """Fewer replicas than the install asks for hold the ends an export would write; they wait in Redis."""

    def __init__(self, acknowledged: int, wanted: int) -> None:
        super().__init__(
            f"{acknowledged} of the {wanted} Redis replicas the operator waits for (chart value redis.waitReplicas) "
            f"acknowledged the ended items within {producer.REPLICATION_WAIT_MS} ms"
        )


class Diverged(Exception):
    """The sink holds more rows than Redis lists ends: Redis lost writes (a failover, or a restart without its AOF)."""

    def __init__(self, rows: int, length: int) -> None:
        super().__init__(
            f"the results sink holds {rows} rows but Redis lists only {length} ended items: Redis lost ends the "
            "sink already has (a failover to a replica that lagged, or a restart without persistence), and going "
            "on could skip or repeat results, so the export stops here. Items whose ends were lost run again. With "
            "replicas, set the chart value redis.waitReplicas so that the export waits for them "
            "(docs/design.md#what-a-redis-failover-can-lose)"
        )


class Sink(Protocol):
    kind: v1alpha1.ResultsSink

    @property
    def rows(self) -> int:
        """The rows it holds as far as it knows, without a call (0 before the first ``cursor``)."""
        ...

    async def cursor(self) -> int:
        """Rows already written: the position in the finals list the export goes on from."""
        ...

    async def append(self, first: int, rows: Sequence[Mapping[str, Any]]) -> int:
        """Write ``rows`` (positions ``first`` on, ``first`` being the cursor); the new cursor."""
        ...

    async def finish(self) -> None:
        """The batch ended and every row is written: leave what readers of a finished batch look for."""
        ...

    def forget(self) -> None:
        """Someone else wrote (a conflict): read what exists again on the next pass."""
        ...

    def manifest(self) -> dict[str, Any]:
        """``status.results``."""
        ...


class ConfigMapSink:
    kind = v1alpha1.ResultsSink.CONFIG_MAP

    @property
    def rows(self) -> int:
        return self._rows

    def __init__(self, client: kube.Kube, batch: builders.Batch, own: Own) -> None:
        self.kube, self.batch, self.own = client, batch, own
        self._known = False
        self._names: list[str] = []  # every chunk, by index
        self._rows = 0
        self._bytes = 0
        self._last: dict[str, Any] | None = None  # the last chunk as it is now (what the next rows go into)

    async def cursor(self) -> int:
        if not self._known:
            listed = await self.kube.list(kube.CONFIGMAPS, self.batch.namespace, results.labels(self.batch.uid))
            chunks = [dict(c) for c in results.ordered(c.to_dict() for c in listed)]
            self._names = [c["metadata"]["name"] for c in chunks]
            self._rows = sum(results.rows_in(c) for c in chunks)
            self._bytes = sum(_data_bytes(c) for c in chunks)
            self._last = chunks[-1] if chunks else None
            self._known = True
        return self._rows

    async def append(self, first: int, rows: Sequence[Mapping[str, Any]]) -> int:
        planned = export.plan_export(self.batch, [self._last] if self._last else [], rows)
        for chunk in planned:
            index = results.chunk_index(chunk)
            if index >= export.MAX_CHUNKS:
                raise Full(
                    f"the batch's results fill {export.MAX_CHUNKS} ConfigMaps "
                    f"({v1alpha1.CONFIGMAP_RESULTS_MAX_MIB} MiB, the ConfigMap sink's ceiling) and "
                    f"{first + len(rows) - self._rows} more rows wait in Redis: set spec.results.sink to "
                    "ObjectStore (the install's results store) to write them"
                )
            if chunk["metadata"].get("resourceVersion"):
                written = await self.kube.replace(chunk)
            else:
                written = await self.kube.create(self.own(chunk))
            self._took(chunk, written)
        return self._rows

    def _took(self, chunk: Mapping[str, Any], written: dict[str, Any]) -> None:
        index = results.chunk_index(chunk)
        previous = self._last if self._last is not None and results.chunk_index(self._last) == index else None
        if previous is not None:
            self._rows -= results.rows_in(previous)
            self._bytes -= _data_bytes(previous)
        else:
            self._names.append(chunk["metadata"]["name"])
        self._rows += results.rows_in(chunk)
        self._bytes += _data_bytes(chunk)
        self._last = written

    async def finish(self) -> None:
        return None

    def forget(self) -> None:
        self._known = False

    def manifest(self) -> dict[str, Any]:
        return {
            "sink": str(self.kind),
            "configMaps": list(self._names),
            "rows": self._rows,
            "objects": len(self._names),
            "bytes": self._bytes,
        }


def _data_bytes(chunk: Mapping[str, Any]) -> int:
    return len(str((chunk.get("data") or {}).get(results.RESULTS_KEY) or "").encode("utf-8"))


class ObjectStoreSink:
    kind = v1alpha1.ResultsSink.OBJECT_STORE

    @property
    def rows(self) -> int:
        return self._rows

    def __init__(self, store: objectstore.Store, batch: builders.Batch) -> None:
        self.store, self.batch = store, batch
        self.folder = folder(store.settings, batch)
        self._known = False
        self._rows = 0
        self._objects = 0
        self._bytes = 0
        self._finished_at: int | None = None  # the rows the manifest was written for

    async def cursor(self) -> int:
        if not self._known:
            found = await self.store.list(self.folder)
            parts = [(key, size) for key, size in found if results.parse_part(key) is not None]
            self._rows = results.parts_cursor(key for key, _ in parts)
            self._objects = len(parts)
            self._bytes = sum(size for _, size in parts)
            self._known = True
        return self._rows

    async def append(self, first: int, rows: Sequence[Mapping[str, Any]]) -> int:
        for part in export.plan_parts(first, rows):
            await self.store.put(self.folder + part.name, part.data)
            self._rows = part.first + part.rows
            self._objects += 1
            self._bytes += len(part.data)
        return self._rows

    async def finish(self) -> None:
        if self._finished_at == self._rows:
            return
        body = {
            "apiVersion": f"{api.GROUP}/{api.VERSION}",
            "kind": "AnalysisResults",
            "batch": {"namespace": self.batch.namespace, "name": self.batch.name, "uid": self.batch.uid},
            "format": "jsonl",
            **{key: value for key, value in self.manifest().items() if key != "sink"},
        }
        await self.store.put(self.folder + results.MANIFEST, json.dumps(body, indent=2).encode())
        self._finished_at = self._rows

    def forget(self) -> None:
        self._known = False

    def manifest(self) -> dict[str, Any]:
        return {
            "sink": str(self.kind),
            "location": self.store.settings.url(self.folder),
            **({"endpoint": self.store.settings.endpoint} if self.store.settings.endpoint else {}),
            "rows": self._rows,
            "objects": self._objects,
            "bytes": self._bytes,
        }


async def export_pass(
    sink: Sink,
    redis: queue.Redis,
    uid: str,
    *,
    final: bool,
    replicas: int = 0,
    seen: Callable[[Sequence[Mapping[str, Any]]], None] | None = None,
) -> tuple[int, int]:
    """Write every ended item the sink does not hold yet; ``(cursor, length)`` of the finals list after it.

    ``final``: the batch has ended, so once everything is written the sink
    finishes (``Sink.finish``). ``seen`` gets each page of rows before it is
    written. Raises what the sink raises (``kube.ApiError``,
    ``objectstore.StoreError``, :class:`Full`); what was written until then stays
    written, and the next pass goes on from there.

    A Redis failover to a replica that lacks the newest writes takes back the
    end of the finals list, and the ends appended after it would land on
    positions the sink has passed. So, with ``replicas``, nothing is written
    until that many replicas hold the whole list read (:class:`NotReplicated`
    otherwise: the rows wait); and a sink ahead of the list, which only a
    failover without that wait can cause, raises :class:`Diverged` rather than
    write rows out of step.
    """
    page = PART_PAGE if sink.kind is v1alpha1.ResultsSink.OBJECT_STORE else EXPORT_PAGE
    length = await producer.finals_length(redis, uid)
    cursor = await sink.cursor()
    if cursor > length:
        raise Diverged(cursor, length)
    if replicas and cursor < length:
        acknowledged = await producer.replicate_finals(redis, uid, length, replicas)
        if acknowledged < replicas:
            raise NotReplicated(acknowledged, replicas)
    while cursor < length:
        records = await producer.finals(redis, uid, cursor, page)
        if not records:
            break
        rows = [export.row(r) for r in records]
        if seen is not None:
            seen(rows)
        cursor = await sink.append(cursor, rows)
    if final and cursor >= length:
        await sink.finish()
    return cursor, length


def folder(settings: objectstore.Settings, batch: builders.Batch) -> str:
    """The batch's folder in the install's bucket: ``<prefix>/<namespace>/<batch>/<uid>/``."""
    return settings.key(batch.namespace, batch.name, batch.uid) + "/"


async def delete_folder(store: objectstore.Store, batch: builders.Batch) -> int:
    """Delete every object of the batch's results (``spec.results.onDelete: Delete``); how many there were."""
    keys = [key for key, _ in await store.list(folder(store.settings, batch))]
    for start in range(0, len(keys), 1000):
        await store.delete(keys[start : start + 1000])
    return len(keys)
