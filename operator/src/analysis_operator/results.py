"""A batch's results as ConfigMaps, as every reader sees them: the format, the order, the readers. Pure.

Why ConfigMaps
--------------
Results must outlive Redis (which the operator cleans up after a batch) and
be readable with the user's own credentials, without a port-forward into the
data plane: ``kubectl analysis results`` reads them like any other object the
batch owns, and garbage collection deletes them with it. An object is capped
at 1 MiB, so results are split into numbered chunks, each holding at most
``export.CHUNK_BYTES`` of JSON Lines under ``RESULTS_KEY``; a single row is
capped at ``export.ROW_BYTES`` (its output is cut, and the row says
``"truncated": true``), so any row fits in any fresh chunk.

The format
----------
A chunk carries the label ``LABEL_RESULTS`` and the batch's uid label
(``selector``), its position in ``ANNOTATION_INDEX`` (names may be hashed)
and its row count in ``ANNOTATION_ROWS``. Chunks in index order hold one row
per ended item (``analysis_operator.producer.FinalRecord``), in the order the items
ended::

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

Who uses it
-----------
The operator's export (``analysis_operator.export``) writes chunks in this
format and derives its cursor from them (``exported``); the plugin's
``results`` verb reads them. So this module needs nothing but the standard
library and ``analysis_core.api.wellknown``: reading results loads neither
the plan models nor the Redis client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from analysis_core.api import wellknown

RESULTS_KEY = "results.jsonl"
LABEL_RESULTS = "analysis.dev/results"
ANNOTATION_ROWS = "analysis.dev/results-rows"  # rows in the chunk (also countable from its data)
ANNOTATION_INDEX = "analysis.dev/results-index"  # the chunk's position (names may be hashed)
COLUMNS = ("ITEM", "STAGE", "STATUS", "SUMMARY")


def dumps(value: Any) -> str:
    """A value as a row line holds it: compact JSON, non-ASCII characters as they are."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- chunks


def labels(batch_uid: str) -> dict[str, str]:
    """The labels that select one batch's result chunks (by uid: a recreated batch of the same name is another)."""
    return {wellknown.LABEL_BATCH_UID: batch_uid, LABEL_RESULTS: "true"}


def selector(batch_uid: str) -> str:
    """``labels`` as a label selector string (``kubectl -l``)."""
    return ",".join(f"{key}={value}" for key, value in labels(batch_uid).items())


def _annotation(configmap: Mapping[str, Any], name: str) -> int | None:
    raw = ((configmap.get("metadata") or {}).get("annotations") or {}).get(name)
    if not isinstance(raw, str):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def chunk_lines(configmap: Mapping[str, Any]) -> list[str]:
    """The encoded rows of one chunk, one per line."""
    data = (configmap.get("data") or {}).get(RESULTS_KEY) or ""
    return [line for line in str(data).splitlines() if line.strip()]


def rows_in(configmap: Mapping[str, Any]) -> int:
    """How many rows a chunk holds: its annotation, or counted from its data when that is missing."""
    counted = _annotation(configmap, ANNOTATION_ROWS)
    return counted if counted is not None else len(chunk_lines(configmap))


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


# ---------------------------------------------------------------- object store parts
#
# The ObjectStore sink writes the same rows as JSON Lines objects under the
# batch's folder ``<prefix>/<namespace>/<batch>/<uid>/``: part ``part-<first>-<rows>.jsonl``
# holds the rows at positions first .. first+rows-1 of the finals list. The
# name is the part's whole index: the export's cursor after a restart is
# where the parts it finds leave off (``parts_cursor``), without reading any.
# A part is written in one atomic put. Two writers that raced (an operator
# replaced mid-pass) can leave parts that overlap; their rows at the same
# position are the same row, and readers keep one (``read_parts``).

PART_PREFIX = "part-"
PART_SUFFIX = ".jsonl"
MANIFEST = "manifest.json"  # written when the batch has ended and every row is in a part
_PART = re.compile(rf"^{PART_PREFIX}(\d{{12}})-(\d{{7}}){re.escape(PART_SUFFIX)}$")


def part_name(first: int, rows: int) -> str:
    return f"{PART_PREFIX}{first:012d}-{rows:07d}{PART_SUFFIX}"


def parse_part(name: str) -> tuple[int, int] | None:
    """``(first, rows)`` of a part's (base) name, or None for any other object."""
    found = _PART.match(name.rsplit("/", 1)[-1])
    return (int(found.group(1)), int(found.group(2))) if found else None


def parts_cursor(names: Iterable[str]) -> int:
    """The rows the parts hold from position 0 on without a gap: where the export goes on from."""
    cursor = 0
    for first, rows in sorted(p for p in (parse_part(n) for n in names) if p is not None):
        if first > cursor:
            break  # a gap (never written so): rows from here on are written again
        cursor = max(cursor, first + rows)
    return cursor


def read_parts(parts: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """Every row of the parts ``(name, text)``, in export order, each position once."""
    by_position: dict[int, dict[str, Any]] = {}
    for name, text in parts:
        found = parse_part(name)
        if found is None:
            continue
        lines = [line for line in text.splitlines() if line.strip()]
        for offset, line in enumerate(lines):
            if found[0] + offset not in by_position:  # else an overlapping part holds the same row
                value = json.loads(line)
                if isinstance(value, dict):
                    by_position[found[0] + offset] = value
    return [by_position[position] for position in sorted(by_position)]


# ---------------------------------------------------------------- readers


def read_rows(configmaps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every row of the batch's chunks, in export order (an item re-run appears once per end)."""
    rows: list[dict[str, Any]] = []
    for chunk in ordered(configmaps):
        for line in chunk_lines(chunk):
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
        text = "" if output is None else output if isinstance(output, str) else dumps(output)
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
