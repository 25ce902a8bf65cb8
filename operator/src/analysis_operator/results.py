"""A batch's results as ConfigMaps: rows, chunks, and the export plan. Pure: no I/O.

Why ConfigMaps
--------------
Results must outlive Redis (which the operator cleans up after a batch) and
be readable with the user's own credentials, without a port-forward into the
data plane: ``kubectl analysis results`` reads them like any other object the
batch owns, and garbage collection deletes them with it. An object is capped
at 1 MiB, so results are split into numbered chunks, each holding at most
``CHUNK_BYTES`` of JSON Lines under ``RESULTS_KEY``; a single row is capped at
``ROW_BYTES`` (its output is cut, and the row says ``"truncated": true``), so
any row fits in any fresh chunk.

One row per ended item (``producer.FinalRecord``), in the order
the items ended::

    {"item", "stage", "status", "output", "error", "errorClass", "round", "attempt"}

``status`` is ``succeeded``, ``failed`` or ``dead`` (dead-lettered).
``output`` is what the item ended with (see ``FinalRecord``), for successes
only: parsed JSON when the whole text is a JSON object or array (optionally
in one Markdown code fence, as models like to answer), so consumers of a
``output: json`` stage get structure and not a string to parse again; the
raw text otherwise, so a prose answer that happens to read as a number or
``true`` stays the string it was. A re-run item (``producer.retry_failed``)
ends again and gets a new row later on; readers keep the last row per item
(``latest_per_item``). Rows carry no model name, token counts or anything
from the pod's environment: nothing secret can reach them.

The export and its cursor (write, then derive)
----------------------------------------------
The operator reads the batch's finals list from Redis (``producer.finals``) and
appends rows here. Its cursor into that list is *not* stored anywhere: it is
the number of rows the batch's result ConfigMaps hold (``exported``), because
every row exported so far is in exactly one chunk and the chunks hold the
list's prefix, in order. So the loop is:

1. list the batch's result ConfigMaps (label ``LABEL_RESULTS`` and the batch
   uid); ``cursor = exported(chunks)``;
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

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from analysis_operator import builders, producer

RESULTS_KEY = "results.jsonl"
LABEL_RESULTS = "analysis.dev/results"
ANNOTATION_ROWS = "analysis.dev/results-rows"  # rows in the chunk (also countable from its data)
ANNOTATION_INDEX = "analysis.dev/results-index"  # the chunk's position (names may be hashed)
# Data per chunk: half the 1 MiB object cap, leaving ample room for metadata and any encoding overhead.
CHUNK_BYTES = 512 * 1024
# One row at most (its output is cut to fit); below CHUNK_BYTES, so every row fits a fresh chunk.
ROW_BYTES = 256 * 1024
COLUMNS = ("ITEM", "STAGE", "STATUS", "SUMMARY")

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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut(the_row: dict[str, Any], field: str, limit: int) -> dict[str, Any]:
    """``the_row`` with ``field`` (as text) cut to the longest prefix whose line fits ``limit`` bytes."""
    value = the_row.get(field)
    text = "" if value is None else value if isinstance(value, str) else _dumps(value)
    low, high = 0, len(text)
    while low < high:  # the longest prefix that fits; escaping makes the size non-linear, so search
        middle = (low + high + 1) // 2
        if _size(_dumps({**the_row, field: text[:middle]})) <= limit:
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
    text = _dumps(dict(the_row))
    if _size(text) <= limit:
        return text
    capped = {**the_row, "truncated": True}
    for field in ("output", "error"):
        capped = _cut(capped, field, limit)
        text = _dumps(capped)
        if _size(text) <= limit:
            return text
    raise ValueError(f"a result row for item {str(the_row.get('item'))[:100]!r} does not fit {limit} bytes")


# ---------------------------------------------------------------- chunks


def chunk_name(batch: builders.Batch, index: int) -> str:
    return builders.child_name(batch, "results", str(index))


def selector(batch_uid: str) -> str:
    """The label selector of one batch's result chunks (by uid: a recreated batch of the same name is another)."""
    return f"{builders.LABEL_BATCH_UID}={batch_uid},{LABEL_RESULTS}=true"


def results_configmap(batch: builders.Batch, index: int, lines: Sequence[str]) -> dict[str, Any]:
    """Chunk ``index`` holding ``lines`` (encoded rows); not owned yet: the operator adopts it like every child."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": chunk_name(batch, index),
            "namespace": batch.namespace,
            "labels": {**builders.labels(batch), LABEL_RESULTS: "true"},
            "annotations": {ANNOTATION_ROWS: str(len(lines)), ANNOTATION_INDEX: str(index)},
        },
        "data": {RESULTS_KEY: "".join(line + "\n" for line in lines)},
    }


def _annotation(configmap: Mapping[str, Any], name: str) -> int | None:
    raw = ((configmap.get("metadata") or {}).get("annotations") or {}).get(name)
    if not isinstance(raw, str):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def _lines(configmap: Mapping[str, Any]) -> list[str]:
    data = (configmap.get("data") or {}).get(RESULTS_KEY) or ""
    return [line for line in str(data).splitlines() if line.strip()]


def rows_in(configmap: Mapping[str, Any]) -> int:
    """How many rows a chunk holds: its annotation, or counted from its data when that is missing."""
    counted = _annotation(configmap, ANNOTATION_ROWS)
    return counted if counted is not None else len(_lines(configmap))


def chunk_index(configmap: Mapping[str, Any]) -> int:
    index = _annotation(configmap, ANNOTATION_INDEX)
    if index is None:
        name = (configmap.get("metadata") or {}).get("name", "?")
        raise ValueError(f"ConfigMap {name} has no valid {ANNOTATION_INDEX} annotation")
    return index


def ordered(configmaps: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The result chunks among ``configmaps``, by index."""
    chunks = [cm for cm in configmaps if _annotation(cm, ANNOTATION_INDEX) is not None]
    return sorted(chunks, key=chunk_index)


def exported(configmaps: Iterable[Mapping[str, Any]]) -> int:
    """The export cursor: rows already exported, i.e. the position in the finals list to read from next."""
    return sum(rows_in(cm) for cm in ordered(configmaps))


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

    ``rows`` must be the finals from position ``exported(existing)`` on. They
    go to the last chunk until it would pass ``chunk_bytes``, then to new
    chunks. A returned dict with ``metadata.resourceVersion`` replaces that
    version of an existing chunk; one without is created. Apply them in the
    returned order and stop at the first failure (see the module docstring).
    """
    if not rows:
        return []
    chunks = ordered(existing)
    base: Mapping[str, Any] | None = chunks[-1] if chunks else None
    index, current = (chunk_index(base), _lines(base)) if base is not None else (0, [])
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


# ---------------------------------------------------------------- readers


def read_rows(configmaps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every row of the batch's chunks, in export order (an item re-run appears once per end)."""
    rows: list[dict[str, Any]] = []
    for chunk in ordered(configmaps):
        for line in _lines(chunk):
            value = json.loads(line)
            if isinstance(value, dict):
                rows.append(value)
    return rows


def latest_per_item(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each item, sorted by item id: what each item ended with in the end.

    A re-run item ends again later, and its new row replaces the earlier one.
    A re-run fan-out parent does not end again: it succeeds and its children
    (``<parent>/<key>``) end instead, so a parent's row is dropped when a row
    of one of its descendants comes after it (children only exist once their
    parent succeeded, so such a row means the parent's failure was re-run).
    """
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for position, the_row in enumerate(rows):
        latest[str(the_row.get("item", ""))] = (position, dict(the_row))
    last_descendant: dict[str, int] = {}  # item -> position of the latest row of any of its descendants
    for item, (position, _row) in latest.items():
        parts = item.split("/")
        for depth in range(1, len(parts)):
            ancestor = "/".join(parts[:depth])
            last_descendant[ancestor] = max(last_descendant.get(ancestor, -1), position)
    return [the_row for item, (position, the_row) in sorted(latest.items()) if last_descendant.get(item, -1) < position]


def summary(the_row: Mapping[str, Any]) -> str:
    """A one-line summary: the output, or for a failure its error class and error."""
    if the_row.get("status") == "succeeded":
        output = the_row.get("output")
        text = "" if output is None else output if isinstance(output, str) else _dumps(output)
        if the_row.get("truncated"):
            text = "(truncated) " + text
    else:
        error = str(the_row.get("error") or "")
        error_class = the_row.get("errorClass")
        text = f"{error_class}: {error}" if error_class else error
    return " ".join(text.split())


def _clip(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: Iterable[Mapping[str, Any]], width: int) -> str:
    """ITEM, STAGE, STATUS and SUMMARY columns, like ``kubectl get``; every line cut to ``width`` characters."""
    cells = [(str(r.get("item", "")), str(r.get("stage", "")), str(r.get("status", "")), summary(r)) for r in rows]
    table = [COLUMNS, *cells]
    widths = [max(len(line[column]) for line in table) for column in range(3)]
    lines = []
    for line in table:
        text = "   ".join(cell.ljust(widths[column]) for column, cell in enumerate(line[:3])) + "   " + line[3]
        lines.append(_clip(text.rstrip(), width))
    return "\n".join(lines) + "\n"
