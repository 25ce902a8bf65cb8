"""The results export: which result ConfigMaps to write so that newly ended items follow. Pure: no I/O.

The reconciler calls this with the chunks it listed and the finals it read
from Redis, and writes what it returns. The chunks' format, and everything
that reads them, is ``analysis_operator.results``; this module makes rows
(``row``), caps them (``encode``) and plans the writes (``plan_export``), so
it needs the builders (names, labels) and the producer's ``FinalRecord``, which
readers of results never do.

The export and its cursor (write, then derive)
----------------------------------------------
The operator reads the batch's finals list from Redis (``producer.finals``) and
appends rows to the chunks. Its cursor into that list is *not* stored
anywhere: it is the number of rows the batch's result ConfigMaps hold
(``results.exported``), because every row exported so far is in exactly one
chunk and the chunks hold the list's prefix, in order. So the loop is:

1. list the batch's result ConfigMaps (``results.selector``);
   ``cursor = results.exported(chunks)``;
2. ``records = await producer.finals(client, uid, cursor, n)``;
3. ``plan_export(batch, chunks, [row(r) for r in records])`` and apply the
   ConfigMaps it returns *in order*, stopping at the first failure.

Each write is atomic and the plan only ever appends (to the last chunk, then
to new ones), so whatever prefix of the writes succeeded leaves the chunks
holding a prefix of the finals list, and the next pass derives the cursor
from what really landed: an operator restart, a failed write or a timeout
neither loses nor duplicates rows. Two details keep it so under races (a
stale cache, a second operator replica): a replaced chunk carries the
``resourceVersion`` it was planned from, so replacing a chunk that changed
since fails with 409 Conflict; and creating a chunk that already exists fails
with 409 AlreadyExists. Either 409 means "list again and re-plan", never
success (unlike the other children); it also covers a batch deleted and
recreated under the same name, whose first chunks collide with the old
batch's until garbage collection has removed those. Write with create/replace (a returned
dict with ``metadata.resourceVersion`` replaces, one without is created),
not client-side apply, whose last-applied annotation would double the size.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from analysis_core.api import v1alpha1
from analysis_operator import builders, producer, results

# Data per chunk: half the 1 MiB object cap, leaving ample room for metadata and any encoding overhead.
CHUNK_BYTES = 512 * 1024
# One row at most (its output is cut to fit); below CHUNK_BYTES, so every row fits a fresh chunk.
ROW_BYTES = 256 * 1024
# The ConfigMap sink's ceiling, in chunks (the API's promise): a batch past it needs the ObjectStore sink.
MAX_CHUNKS = v1alpha1.CONFIGMAP_RESULTS_MAX_CHUNKS
# The ObjectStore sink: a part holds at most this much, a row at most OBJECT_ROW_BYTES (no object size to fit).
PART_BYTES = 8 * 1024 * 1024
OBJECT_ROW_BYTES = 4 * 1024 * 1024

_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", flags=re.DOTALL)


# ---------------------------------------------------------------- rows


def parse_output(text: str | None) -> Any:
    """The output as a row holds it: a JSON object or array parsed, anything else the text itself."""
    if text is None:
        return None
    stripped = text.strip()
    fenced = _FENCE.fullmatch(stripped)
    try:
        value = json.loads(fenced.group(1) if fenced else stripped)
    except ValueError:
        return text
    return value if isinstance(value, dict | list) else text


def row(record: producer.FinalRecord) -> dict[str, Any]:
    """The result row of one ended item (not yet capped: ``encode`` does that)."""
    return {
        "item": record.item,
        "stage": record.stage,
        "status": record.status,
        "output": parse_output(record.output),
        "error": record.error,
        "errorClass": record.error_class,
        "round": record.round,
        "attempt": record.attempt,
    }


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut(the_row: dict[str, Any], field: str, limit: int) -> dict[str, Any]:
    """``the_row`` with ``field`` (as text) cut to the longest prefix whose line fits ``limit`` bytes."""
    value = the_row.get(field)
    text = "" if value is None else value if isinstance(value, str) else results.dumps(value)
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits; escaping makes the size non-linear, so search
        middle = (low + high + 1) // 2
        if _size(results.dumps({**the_row, field: text[:middle]})) <= limit:
            low = middle
        else:
            high = middle - 1
    return {**the_row, field: text[:low]}


def encode(the_row: Mapping[str, Any], limit: int = ROW_BYTES) -> str:
    """One JSON line (no newline) of at most ``limit`` bytes.

    A row that is too large has its output cut (as text, so parsed JSON
    becomes the prefix of its serialization), then its error if that is not
    enough, and says ``"truncated": true``.
    """
    text = results.dumps(dict(the_row))
    if _size(text) <= limit:
        return text
    capped = {**the_row, "truncated": True}
    for field in ("output", "error"):
        capped = _cut(capped, field, limit)
        text = results.dumps(capped)
        if _size(text) <= limit:
            return text
    raise ValueError(f"a result row for item {str(the_row.get('item'))[:100]!r} does not fit {limit} bytes")


# ---------------------------------------------------------------- chunks


def chunk_name(batch: builders.Batch, index: int) -> str:
    return builders.child_name(batch, "results", str(index))


def results_configmap(batch: builders.Batch, index: int, lines: Sequence[str]) -> dict[str, Any]:
    """Chunk ``index`` holding ``lines`` (encoded rows); not owned yet: the operator adopts it like every child."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": chunk_name(batch, index),
            "namespace": batch.namespace,
            "labels": {**builders.labels(batch), results.LABEL_RESULTS: "true"},
            "annotations": {results.ANNOTATION_ROWS: str(len(lines)), results.ANNOTATION_INDEX: str(index)},
        },
        "data": {results.RESULTS_KEY: "".join(line + "\n" for line in lines)},
    }


def _chunk(batch: builders.Batch, index: int, lines: Sequence[str], base: Mapping[str, Any] | None) -> dict[str, Any]:
    made = results_configmap(batch, index, lines)
    if base is not None:  # a replacement: the version it was planned from, and the owner it already has
        metadata = base.get("metadata") or {}
        for field in ("resourceVersion", "ownerReferences"):
            if metadata.get(field):
                made["metadata"][field] = metadata[field]
    return made


def plan_export(
    batch: builders.Batch,
    existing: Iterable[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[dict[str, Any]]:
    """The chunks to write so that ``rows`` follow the ``existing`` ones: replacements and creations, in order.

    ``rows`` must be the finals from position ``results.exported(existing)`` on. They
    go to the last chunk until it would pass ``chunk_bytes``, then to new
    chunks. A returned dict with ``metadata.resourceVersion`` replaces that
    version of an existing chunk; one without is created. Apply them in the
    returned order and stop at the first failure (see the module docstring).
    """
    if not rows:
        return []
    chunks = results.ordered(existing)
    base: Mapping[str, Any] | None = chunks[-1] if chunks else None
    index, current = (results.chunk_index(base), results.chunk_lines(base)) if base is not None else (0, [])
    size = sum(_size(line) + 1 for line in current)
    planned: list[dict[str, Any]] = []
    changed = False
    for the_row in rows:
        line = encode(the_row, min(ROW_BYTES, chunk_bytes - 1))
        grown = _size(line) + 1
        if current and size + grown > chunk_bytes:  # full: close it, open the next
            if changed:
                planned.append(_chunk(batch, index, current, base))
            base, index, current, size, changed = None, index + 1, [], 0, False
        current.append(line)
        size += grown
        changed = True
    planned.append(_chunk(batch, index, current, base))
    return planned


# ---------------------------------------------------------------- object store parts


@dataclasses.dataclass(frozen=True)
class Part:
    """One object of the ObjectStore sink: ``rows`` rows from position ``first`` on (``results.part_name``)."""

    first: int
    rows: int
    data: bytes

    @property
    def name(self) -> str:
        return results.part_name(self.first, self.rows)


def plan_parts(first: int, rows: Sequence[Mapping[str, Any]], *, part_bytes: int = PART_BYTES) -> list[Part]:
    """``rows`` (the finals from position ``first`` on) as parts of at most ``part_bytes`` each, in order."""
    parts: list[Part] = []
    lines: list[bytes] = []
    size = 0
    start = first
    for the_row in rows:
        line = (encode(the_row, min(OBJECT_ROW_BYTES, part_bytes - 1)) + "\n").encode("utf-8")
        if lines and size + len(line) > part_bytes:
            parts.append(Part(start, len(lines), b"".join(lines)))
            start, lines, size = start + len(lines), [], 0
        lines.append(line)
        size += len(line)
    if lines:
        parts.append(Part(start, len(lines), b"".join(lines)))
    return parts
