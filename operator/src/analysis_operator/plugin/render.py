"""Pure text for ``kubectl analysis``: durations, bars, columns, and the ``get``/``list`` table.

Nothing here runs kubectl or reads the clock: callers pass ``now``, so every
function is a plain mapping from a batch (the JSON kubectl prints) to text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from analysis_core.api import wellknown

GAP = "   "  # between columns, as kubectl get
NONE = "-"
COLUMNS = (
    "NAME",
    "PHASE",
    "STAGE",
    "STAGES",
    "PROGRESS",
    "FAILED",
    "RETRIES",
    "JUDGE",
    "TOKENS",
    "COST",
    "DURATION",
    "AGE",
)
WIDE_COLUMNS = ("WORKERS", "MESSAGE")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as the API server writes it (``2026-01-02T03:04:05Z``), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """A duration the way kubectl prints ages: ``45s``, ``3m12s``, ``25m``, ``5h3m``, ``3d4h``, ``400d``."""
    if seconds < -1:
        return "<invalid>"
    total = int(max(0, seconds))
    minutes, hours, days = total // 60, total // 3600, total // 86400
    if total < 120:
        return f"{total}s"
    if minutes < 10:
        return f"{minutes}m{total % 60}s" if total % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y{days % 365}d" if days < 365 * 8 else f"{days // 365}y"


def since(start: datetime | None, end: datetime) -> str:
    return NONE if start is None else human_duration((end - start).total_seconds())


def bar(done: int, total: int, width: int, *, unicode: bool = True) -> str:
    """``[████░░░░]``: ``done`` of ``total`` as a bar of ``width`` cells; a bar never shows full before it is."""
    full_cell, empty_cell = ("█", "░") if unicode else ("#", "-")
    if total <= 0:
        filled = 0
    elif done >= total:
        filled = width
    else:
        filled = min(width - 1, done * width // total)
    return "[" + full_cell * filled + empty_cell * (width - filled) + "]"


def percent(done: int, total: int) -> int:
    """Whole percent, rounded down, 100 only when everything is done (as the operator reports it)."""
    if total <= 0:
        return 0
    return 100 if done >= total else done * 100 // total


def columns(rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns, ``kubectl get`` style; the last column is not padded."""
    table = [list(row) for row in rows]
    if not table:
        return []
    count = max(len(row) for row in table)
    widths = [max((len(row[i]) for row in table if i < len(row)), default=0) for i in range(count)]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append(GAP.join(cells).rstrip())
    return lines


def clip(line: str, width: int) -> str:
    if width <= 0 or len(line) <= width:
        return line
    return line[: width - 1] + "…"


# ---------------------------------------------------------------- a batch, read


def status_of(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    value = batch.get("status")
    return value if isinstance(value, Mapping) else {}


def section(status: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A sub-object of the status (``usage``, ``judge``, ``items``), empty when absent."""
    value = status.get(key)
    return value if isinstance(value, Mapping) else {}


def stage_names(batch: Mapping[str, Any]) -> list[str]:
    """The spec's stages, in order."""
    return [str(s.get("name", "")) for s in (batch.get("spec") or {}).get("stages") or [] if isinstance(s, Mapping)]


def stage_types(batch: Mapping[str, Any]) -> dict[str, str]:
    """Stage name -> type (generate when the stored object leaves it out)."""
    out = {}
    for stage in (batch.get("spec") or {}).get("stages") or []:
        if isinstance(stage, Mapping):
            out[str(stage.get("name", ""))] = str(stage.get("type") or wellknown.StageType.GENERATE)
    return out


def stages_done(batch: Mapping[str, Any]) -> str:
    """``finished/total`` stages: every stage before the earliest one that still has work.

    With no counts yet (not seeded), none; with counts and no current stage,
    every stage has drained.
    """
    names = stage_names(batch)
    status = status_of(batch)
    current = status.get("currentStage")
    if not status.get("stages"):
        finished = 0
    elif current in names:
        finished = names.index(str(current))
    else:
        finished = len(names)
    return f"{finished}/{len(names)}"


def progress(status: Mapping[str, Any]) -> str:
    items = section(status, "items")
    if not items:
        return str(status.get("progress") or NONE)
    done, total = int(items.get("done") or 0), int(items.get("total") or 0)
    return f"{done}/{total} ({percent(done, total)}%)"


def failed_items(status: Mapping[str, Any]) -> int:
    items = section(status, "items")
    return int(items.get("failed") or 0) + int(items.get("deadLettered") or 0)


def workers(status: Mapping[str, Any]) -> int:
    return sum(int(s.get("workers") or 0) for s in status.get("stages") or [] if isinstance(s, Mapping))


def run_time(status: Mapping[str, Any], now: datetime) -> str:
    """How long the batch ran: start to completion, or to now while it runs."""
    start = parse_time(status.get("startTime"))
    end = parse_time(status.get("completionTime")) or now
    return since(start, end)


def table_row(batch: Mapping[str, Any], now: datetime, *, wide: bool = False, namespace: bool = False) -> list[str]:
    metadata = batch.get("metadata") or {}
    status = status_of(batch)
    usage, judge = section(status, "usage"), section(status, "judge")
    row = [str(metadata.get("namespace", ""))] if namespace else []
    row += [
        str(metadata.get("name", "")),
        str(status.get("phase") or wellknown.Phase.PENDING),
        str(status.get("currentStage") or NONE),
        stages_done(batch),
        progress(status),
        str(failed_items(status)),
        str(int(status.get("retries") or 0)),
        str(judge.get("summary") or NONE),
        str(usage.get("tokensSummary") or NONE),
        str(usage.get("costSummary") or NONE),
        run_time(status, now),
        since(parse_time(metadata.get("creationTimestamp")), now),
    ]
    if wide:
        row += [str(workers(status)), " ".join(str(status.get("message") or "").split()) or NONE]
    return row


def table(batches: Iterable[Mapping[str, Any]], now: datetime, *, wide: bool = False, namespace: bool = False) -> str:
    """The ``get``/``list`` table, sorted by namespace and name; "" for no batches."""
    ordered = sorted(
        batches,
        key=lambda b: ((b.get("metadata") or {}).get("namespace", ""), (b.get("metadata") or {}).get("name", "")),
    )
    if not ordered:
        return ""
    header = (["NAMESPACE"] if namespace else []) + list(COLUMNS) + (list(WIDE_COLUMNS) if wide else [])
    rows = [header, *(table_row(b, now, wide=wide, namespace=namespace) for b in ordered)]
    return "\n".join(columns(rows)) + "\n"
