"""What ``kubectl analysis status`` shows: one snapshot of a batch, rates, and when following ends. Pure.

A snapshot is read off the batch object alone (the status the operator
writes is aggregates only, so nothing per item is needed): the phase, a bar
for the whole batch and one per stage, each stage's counts and workers,
retries, judge verdicts, tokens and cost, and the conditions someone may have
to act on (a Failed or Stalled reason and its message, a budget, a suspend,
held items).

Rates (items per minute) come from successive observations of the same
batch (:class:`Rates`); a single observation (``--once``) has no rate, so
the batch line shows the average since the first item was enqueued instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from analysis_core.api import wellknown
from analysis_operator.plugin import render

WINDOW_S = 60.0  # rates are over the last minute of observations
MIN_SPAN_S = 1.0  # below this, a difference of counts says nothing about a rate
BATCH_BAR = 30
STAGE_BAR = 20
# Conditions worth a line when true, in the order they are shown: what ended it, then what blocks it.
NOTABLE = (
    wellknown.ConditionType.COMPLETE,
    wellknown.ConditionType.FAILED,
    wellknown.ConditionType.STALLED,
    wellknown.ConditionType.BUDGET_EXCEEDED,
    wellknown.ConditionType.SUSPENDED,
    wellknown.ConditionType.WAITING_FOR_APPROVAL,
)
STAGE_COLUMNS = ("STAGE", "TYPE", "PROGRESS", "DONE", "PENDING", "RUNNING", "RETRYING", "FAILED", "WORKERS", "RATE")


# ---------------------------------------------------------------- counts


def stage_counts(stage: Mapping[str, Any]) -> tuple[int, int]:
    """``(done, total)`` of one stage's status: what left it for good, out of everything that reached it so far."""
    done = sum(int(stage.get(key) or 0) for key in ("succeeded", "failed", "deadLettered"))
    waiting = sum(int(stage.get(key) or 0) for key in ("pending", "running", "retrying"))
    return done, done + waiting


def _stage_statuses(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(s.get("name")): s for s in status.get("stages") or [] if isinstance(s, Mapping)}


def conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in status.get("conditions") or [] if isinstance(c, Mapping)}


# ---------------------------------------------------------------- rates


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds on a monotonic clock
    done: int  # items done, the whole batch
    stages: Mapping[str, int]  # stage -> items that left it for good


class Rates:
    """Items per minute from successive observations of one batch, over a sliding window.

    Counts only grow while a batch runs; a retry-failed takes failed items
    out of ``done`` again, and a drop like that restarts the window rather
    than showing a negative rate.
    """

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: list[Sample] = []

    def observe(self, at: float, batch: Mapping[str, Any]) -> None:
        status = render.status_of(batch)
        done = int(render.section(status, "items").get("done") or 0)
        stages = {name: stage_counts(stage)[0] for name, stage in _stage_statuses(status).items()}
        sample = Sample(at, done, stages)
        if self.samples and done < self.samples[-1].done:
            self.samples = []
        self.samples.append(sample)
        while len(self.samples) > 2 and self.samples[0].at < at - self.window_s:
            self.samples.pop(0)

    def per_minute(self, stage: str | None = None) -> float | None:
        """The rate of the whole batch (``stage`` None) or of one stage; None without two observations far enough apart."""
        if len(self.samples) < 2:
            return None
        first, last = self.samples[0], self.samples[-1]
        span = last.at - first.at
        if span < MIN_SPAN_S:
            return None
        if stage is None:
            delta = last.done - first.done
        elif stage in last.stages:
            delta = last.stages[stage] - first.stages.get(stage, 0)
        else:
            return None
        return max(0, delta) * 60.0 / span


def average_per_minute(status: Mapping[str, Any], now: datetime) -> float | None:
    """Items done per minute since the first item was enqueued (until completion, if finished)."""
    start = render.parse_time(status.get("startTime"))
    if start is None:
        return None
    end = render.parse_time(status.get("completionTime")) or now
    minutes = (end - start).total_seconds() / 60.0
    if minutes <= 0:
        return None
    return int(render.section(status, "items").get("done") or 0) / minutes


def tokens_text(tokens: int) -> str:
    """Tokens as the status summarizes them (``analysis_operator.status.tokens_summary``): 950, 4.1k, 48k, 1.2M.

    Written out here so the plugin does not load the operator's status
    module, and with it the plan models and the Redis client.
    """
    if tokens < 1000:
        return str(tokens)
    if tokens < 1_000_000:
        return f"{tokens / 1000:.0f}k" if tokens >= 10_000 else f"{tokens / 1000:.1f}k"
    return f"{tokens / 1_000_000:.1f}M"


def rate_text(per_minute: float | None) -> str:
    if per_minute is None:
        return render.NONE
    return f"{per_minute:.1f}/min" if per_minute < 100 else f"{per_minute:.0f}/min"


# ---------------------------------------------------------------- finished?


def outcome(batch: Mapping[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` once the batch has finished, else None.

    Only a status that describes the current spec and the latest
    retry-failed request counts: right after ``retry-failed`` the batch
    still says Failed until the operator has acted on the new token, and
    following it must not stop there.
    """
    metadata = batch.get("metadata") or {}
    status = render.status_of(batch)
    generation = metadata.get("generation")
    if generation is not None and status.get("observedGeneration") != generation:
        return None
    token = (metadata.get("annotations") or {}).get(wellknown.ANNOTATION_RETRY_FAILED)
    if token and status.get("retriedFailed") != token:
        return None
    conds = conditions(status)
    for kind in (wellknown.ConditionType.COMPLETE, wellknown.ConditionType.FAILED):
        cond = conds.get(kind)
        if cond is not None and cond.get("status") == wellknown.ConditionStatus.TRUE:
            return str(kind)
    if not conds and status.get("phase") in (wellknown.Phase.COMPLETE, wellknown.Phase.FAILED):
        return str(status["phase"])
    return None


# ---------------------------------------------------------------- the snapshot


def _header(batch: Mapping[str, Any], now: datetime) -> str:
    metadata = batch.get("metadata") or {}
    status = render.status_of(batch)
    parts = [
        f"analysisbatch {metadata.get('namespace', '')}/{metadata.get('name', '')}",
        str(status.get("phase") or wellknown.Phase.PENDING),
        f"age {render.since(render.parse_time(metadata.get('creationTimestamp')), now)}",
    ]
    if status.get("startTime"):
        verb = "ran" if status.get("completionTime") else "running"
        parts.append(f"{verb} {render.run_time(status, now)}")
    return render.GAP.join(parts)


def _batch_line(status: Mapping[str, Any], rates: Rates, now: datetime, unicode: bool) -> str:
    items = render.section(status, "items")
    done, total = int(items.get("done") or 0), int(items.get("total") or 0)
    rate = rates.per_minute()
    # With one observation only, the average since the first item was enqueued.
    rate_part = f"rate {rate_text(rate)}" if rate is not None else f"avg {rate_text(average_per_minute(status, now))}"
    counts = f"{done}/{total} ({render.percent(done, total)}%)"
    succeeded, failed = int(items.get("succeeded") or 0), render.failed_items(status)
    return render.GAP.join(
        [
            "items",
            render.bar(done, total, BATCH_BAR, unicode=unicode),
            counts,
            f"{succeeded} succeeded, {failed} failed",
            rate_part,
        ]
    )


def _stage_rows(batch: Mapping[str, Any], rates: Rates, unicode: bool) -> list[list[str]]:
    status = render.status_of(batch)
    by_name = _stage_statuses(status)
    types = render.stage_types(batch)
    rows = [list(STAGE_COLUMNS)]
    for name in render.stage_names(batch) or list(by_name):
        stage = by_name.get(name, {})
        done, total = stage_counts(stage)
        failed = int(stage.get("failed") or 0) + int(stage.get("deadLettered") or 0)
        rows.append(
            [
                name,
                types.get(name, wellknown.StageType.GENERATE),
                f"{render.bar(done, total, STAGE_BAR, unicode=unicode)} {render.percent(done, total):>3}%",
                f"{done}/{total}",
                str(stage.get("pending") or 0),
                str(stage.get("running") or 0),
                str(stage.get("retrying") or 0),
                str(failed),
                str(stage.get("workers") or 0),
                rate_text(rates.per_minute(name)) if stage else render.NONE,
            ]
        )
    return rows


def _usage_line(status: Mapping[str, Any]) -> str:
    usage = render.section(status, "usage")
    judge = render.section(status, "judge")
    parts = [f"retries {int(status.get('retries') or 0)}"]
    if judge:
        parts.append(
            f"judge {int(judge.get('approved') or 0)} approved, {int(judge.get('rejected') or 0)} rejected "
            f"(sent back for another round), {int(judge.get('exhausted') or 0)} exhausted"
        )
    tokens_in, tokens_out = int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)
    total = int(usage.get("totalTokens") or tokens_in + tokens_out)
    parts.append(f"tokens {tokens_text(total)} ({tokens_text(tokens_in)} in, {tokens_text(tokens_out)} out)")
    parts.append(f"cost {usage.get('costSummary') or '$0'}")
    return render.GAP.join(parts)


def _held(status: Mapping[str, Any]) -> list[str]:
    """``waiting at gate: A, B, C (and 47 more)``: the items each approval stage holds, as the status lists them."""
    lines = []
    for row in status.get("stages") or []:
        if not isinstance(row, Mapping) or not row.get("heldItems"):
            continue
        listed = [str(item) for item in row["heldItems"]]
        more = int(row.get("pending") or 0) - len(listed)
        lines.append(f"waiting at {row.get('name')}: {', '.join(listed)}" + (f" (and {more} more)" if more > 0 else ""))
    return lines


def _provider_batches(status: Mapping[str, Any]) -> list[str]:
    """``provider batches of analyze: 4 submitted, 1 in progress, 3 ended``: each mode: Batch stage's, as the status
    counts them."""
    lines = []
    for row in status.get("stages") or []:
        batches = row.get("providerBatches") if isinstance(row, Mapping) else None
        if not isinstance(batches, Mapping):
            continue
        lines.append(
            f"provider batches of {row.get('name')}: {int(batches.get('submitted') or 0)} submitted, "
            f"{int(batches.get('inProgress') or 0)} in progress, {int(batches.get('ended') or 0)} ended"
        )
    return lines


def _notes(batch: Mapping[str, Any]) -> list[str]:
    """The true conditions that matter, each once, then the headline if it adds something, then lags."""
    metadata = batch.get("metadata") or {}
    status = render.status_of(batch)
    conds = conditions(status)
    lines: list[str] = []
    said: set[str] = set()
    for kind in NOTABLE:
        cond = conds.get(kind)
        if cond is None or cond.get("status") != wellknown.ConditionStatus.TRUE:
            continue
        message = " ".join(str(cond.get("message") or "").split())
        if message and message in said:
            continue
        said.add(message)
        reason = str(cond.get("reason") or "")
        label = kind if reason in ("", kind) else f"{kind}: {reason}"
        lines.append(label + (f": {message}" if message else ""))
    lines += _held(status)
    lines += _provider_batches(status)
    headline = " ".join(str(status.get("message") or "").split())
    if headline and headline not in said:
        lines.append(f"message: {headline}")
    generation = metadata.get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        lines.append(
            f"note: this status is for generation {observed}; the spec is at {generation} "
            "(the operator has not caught up yet)"
        )
    token = (metadata.get("annotations") or {}).get(wellknown.ANNOTATION_RETRY_FAILED)
    if token and status.get("retriedFailed") != token:
        lines.append(f"note: retry-failed {token} requested; the operator has not acted on it yet")
    if not status:
        lines.append("note: the operator has not reported on this batch yet")
    return lines


def snapshot(batch: Mapping[str, Any], rates: Rates, now: datetime, *, unicode: bool = True) -> list[str]:
    """The lines of one snapshot (unclipped; a terminal caller clips them to its width)."""
    status = render.status_of(batch)
    lines = [_header(batch, now), _batch_line(status, rates, now, unicode)]
    lines += ["  " + line for line in render.columns(_stage_rows(batch, rates, unicode))]
    lines.append(_usage_line(status))
    lines += _notes(batch)
    return lines
