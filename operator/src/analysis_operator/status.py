"""A batch's status, computed from what the reconciler observed (docs/design.md#status-contract).

Pure: the reconciler gathers an :class:`Observation` (the plan, an atomic
Redis snapshot, the worker pods it sees, the problems it met) and
``compute`` returns the whole ``status`` stanza, camelCase, ready to patch.
``events`` says which condition transitions deserve an Event.

Conditions follow the Kubernetes convention and are all present from the
first write, so ``kubectl wait --for=condition=Complete`` and kstatus readers
never see "unknown". A condition keeps its ``lastTransitionTime`` while its
status stays the same; only a status flip moves it.

The kstatus trio reads like this (kstatus, and so Flux, reads the first two
and falls back on ``Ready``; tests/integration/test_kstatus.py runs the real
library on what this module writes):

- ``Reconciling=True`` while the operator has work it can do by itself:
  seeding, items to run, or Redis to wait for (kstatus: InProgress);
- ``Stalled=True`` when it cannot move without someone acting on a problem: it
  failed, its budget is used up, or a reference is broken; the reason says
  which (kstatus: Failed);
- ``Ready=True`` once it has done all that its spec allows: it is
  ``Complete``, or it is settled, i.e. suspended by ``spec.suspend``, or with
  nothing left to do but items held at an approval stage. A settled batch
  has ``Reconciling=False``, ``Stalled=False`` and ``Ready=True``, all with
  the reason ``Suspended`` or ``WaitingForApproval`` (kstatus: Current): the
  next move is a person's edit of the spec, which raises the generation, so
  kstatus reads InProgress again until the operator has acted on it.
  ``Complete`` is the condition that means done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from analysis_core import plan, queue, wire
from analysis_core.api import v1alpha1
from analysis_operator import completion, producer

C = v1alpha1.ConditionType
P = v1alpha1.Phase
R = v1alpha1.Reason
SUSPENDED_MESSAGE = "spec.suspend is true: no new claims; in-flight items finish"
HELD_ITEMS_SHOWN = v1alpha1.HELD_ITEMS_SHOWN  # in status.stages[].heldItems
HELD_ITEMS_NAMED = 5  # in the WaitingForApproval message


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something the schema could not catch: a CamelCase reason and a message naming the field or object.

    ``stalled``: it needs someone to act (a missing Secret); otherwise it is
    expected to pass by itself (Redis restarting).
    """

    reason: str
    message: str
    stalled: bool = True


@dataclasses.dataclass(frozen=True)
class Observation:
    generation: int
    now: datetime
    plan: plan.Plan | None = None  # None: not compiled (see problems)
    snapshot: producer.Snapshot | None = None  # None: not seeded yet, or Redis unreachable
    state: completion.BatchState | None = None
    workers: Mapping[str, int] = dataclasses.field(default_factory=dict)  # stage -> live worker pods
    held: Mapping[str, int] = dataclasses.field(default_factory=dict)  # approval stage -> items held
    # approval stage -> the first HELD_ITEMS_SHOWN of them, oldest first
    held_items: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    problems: Sequence[Problem] = ()
    suspended: bool = False
    results: Mapping[str, Any] | None = None  # the results sink: configMaps and rows
    retried_failed: str | None = None  # the retry-failed annotation value last acted on


def nusd_to_usd(nusd: int) -> str:
    """Nano-dollars as an exact decimal string: 610000000 -> '0.61'."""
    whole, frac = divmod(max(0, nusd), 10**9)
    text = f"{whole}.{frac:09d}".rstrip("0").rstrip(".")
    return text or "0"


def tokens_summary(tokens: int) -> str:
    if tokens < 1000:
        return str(tokens)
    if tokens < 1_000_000:
        return f"{tokens / 1000:.0f}k" if tokens >= 10_000 else f"{tokens / 1000:.1f}k"
    return f"{tokens / 1_000_000:.1f}M"


def cost_summary(nusd: int) -> str:
    usd = nusd / 1e9
    if usd <= 0:
        return "$0"
    return f"${usd:.2f}" if usd >= 0.01 else f"${usd:.4f}"


def judge_summary(approved: int, rejected: int) -> str:
    return f"{approved}✓ {rejected}✗"


def phase_of(obs: Observation) -> v1alpha1.Phase:
    if obs.state is not None and obs.state.phase is completion.Phase.COMPLETE:
        return P.COMPLETE
    if obs.state is not None and obs.state.phase is completion.Phase.FAILED:
        return P.FAILED
    if obs.plan is None or obs.snapshot is None:
        return P.PENDING
    if obs.suspended:
        return P.SUSPENDED
    if sum(obs.held.values()) and not _busy_outside_gates(obs):
        return P.WAITING_FOR_APPROVAL
    return P.RUNNING


def _busy_outside_gates(obs: Observation) -> bool:
    assert obs.plan is not None
    assert obs.snapshot is not None
    for stage in obs.plan.stages:
        if stage.type is v1alpha1.StageType.APPROVAL:
            continue
        if not obs.snapshot.stages[stage.name].drained:
            return True
    return False


def _stage_status(
    stage: plan.StagePlan, counts: queue.StageCounts, workers: int, held: Sequence[str] | None
) -> dict[str, Any]:
    c = counts.counters
    row: dict[str, Any] = {
        "name": stage.name,
        "pending": counts.ready + counts.gathered,
        "running": counts.running,
        "succeeded": c.get(wire.COUNT_SUCCEEDED, 0),
        "failed": c.get(wire.COUNT_FAILED, 0),
        "retrying": counts.retrying,
        "deadLettered": c.get(wire.COUNT_DEAD_LETTERED, 0),
        "workers": workers,
    }
    prompt = c.get(wire.USAGE_INPUT_TOKENS, 0)
    if prompt and (c.get(wire.USAGE_CACHE_READ_TOKENS, 0) or c.get(wire.USAGE_CACHE_WRITE_TOKENS, 0)):
        row["cacheHitPercent"] = min(100, c.get(wire.USAGE_CACHE_READ_TOKENS, 0) * 100 // prompt)
    if stage.mode is v1alpha1.StageMode.BATCH:
        row["providerBatches"] = {
            "submitted": c.get(wire.COUNT_PROVIDER_BATCHES, 0),
            "inProgress": counts.provider_batches_open,
            "ended": c.get(wire.COUNT_PROVIDER_BATCHES_ENDED, 0),
        }
    if held:
        row["heldItems"] = list(held[:HELD_ITEMS_SHOWN])
    return row


def _current_stage(the_plan: plan.Plan, snapshot: producer.Snapshot) -> str | None:
    for stage in the_plan.stages:
        if not snapshot.stages[stage.name].drained:
            return stage.name
    return None


def _counts(obs: Observation) -> dict[str, Any]:
    """Item counts, stage counts, judge verdicts, usage: everything read off the snapshot."""
    assert obs.plan is not None
    assert obs.snapshot is not None
    snap, the_plan = obs.snapshot, obs.plan
    last = snap.stages[the_plan.stages[-1].name].counters
    failed = sum(s.counters.get(wire.COUNT_FAILED, 0) for s in snap.stages.values())
    dead = sum(s.counters.get(wire.COUNT_DEAD_LETTERED, 0) for s in snap.stages.values())
    in_pipeline = sum(s.ready + s.running + s.retrying + s.gathered for s in snap.stages.values())
    done = last.get(wire.COUNT_SUCCEEDED, 0) + failed + dead
    total = done + in_pipeline
    judges = [snap.stages[s.name].counters for s in the_plan.stages if s.type is v1alpha1.StageType.JUDGE]
    approved = sum(j.get(wire.COUNT_APPROVED, 0) for j in judges)
    rejected = sum(j.get(wire.COUNT_REJECTED, 0) for j in judges)
    usage = snap.usage
    input_tokens, output_tokens = usage.get(wire.USAGE_INPUT_TOKENS, 0), usage.get(wire.USAGE_OUTPUT_TOKENS, 0)
    cost_nusd = usage.get(wire.USAGE_COST_NUSD, 0)
    tokens = input_tokens + output_tokens
    out: dict[str, Any] = {
        "currentStage": _current_stage(the_plan, snap),
        "progress": f"{done}/{total}",
        "percent": 100 if total and done == total else (done * 100 // total if total else 0),
        "retries": sum(s.counters.get(wire.COUNT_RETRIES, 0) for s in snap.stages.values()),
        "items": {
            "total": total,
            "done": done,
            "succeeded": last.get(wire.COUNT_SUCCEEDED, 0),
            "failed": failed,
            "deadLettered": dead,
        },
        "stages": [
            _stage_status(s, snap.stages[s.name], obs.workers.get(s.name, 0), obs.held_items.get(s.name))
            for s in the_plan.stages
        ],
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            **{
                name: usage[field]
                for name, field in (
                    ("cacheWriteTokens", wire.USAGE_CACHE_WRITE_TOKENS),
                    ("cacheReadTokens", wire.USAGE_CACHE_READ_TOKENS),
                )
                if usage.get(field)
            },
            "totalTokens": tokens,
            "costUSD": nusd_to_usd(cost_nusd),
            "tokensSummary": tokens_summary(tokens),
            "costSummary": cost_summary(cost_nusd),
        },
    }
    if judges:
        out["judge"] = {
            "approved": approved,
            "rejected": rejected,
            "exhausted": sum(j.get(wire.COUNT_EXHAUSTED, 0) for j in judges),
            "summary": judge_summary(approved, rejected),
        }
    return out


# ---------------------------------------------------------------- conditions


@dataclasses.dataclass(frozen=True)
class _Cond:
    type: v1alpha1.ConditionType
    true: bool
    reason: str
    message: str = ""


def _conditions(obs: Observation, phase: v1alpha1.Phase, counts: Mapping[str, Any]) -> list[_Cond]:
    terminal = phase in (P.COMPLETE, P.FAILED)
    blocking = [p for p in obs.problems if p.stalled]
    passing = [p for p in obs.problems if not p.stalled]
    budget = None if obs.snapshot is None else obs.snapshot.flags.get(wire.FLAG_BUDGET_EXCEEDED)
    state_msg = obs.state.reason if obs.state is not None else ""
    held = {stage: n for stage, n in obs.held.items() if n}
    held_msg = "; ".join(_held_message(stage, n, obs.held_items.get(stage) or ()) for stage, n in held.items())

    # Settled: all that the spec allows is done, and only a person's edit of the spec moves it on. With Redis away
    # (a passing problem) the operator cannot confirm that, nor the flag workers read before each claim.
    settled = phase in (P.SUSPENDED, P.WAITING_FOR_APPROVAL) and not passing
    if phase is P.FAILED:
        stalled = _Cond(C.STALLED, True, R.FAILED, state_msg)
    elif blocking:
        stalled = _Cond(C.STALLED, True, blocking[0].reason, blocking[0].message)
    elif budget and not terminal:
        stalled = _Cond(C.STALLED, True, R.BUDGET_EXCEEDED, budget)
    else:
        stalled = _Cond(C.STALLED, False, R(phase) if terminal or settled else R.PROGRESSING)

    if terminal:
        reconciling = _Cond(C.RECONCILING, False, R(phase), state_msg)
    elif stalled.true:
        reconciling = _Cond(C.RECONCILING, False, stalled.reason, stalled.message)
    elif passing:
        reconciling = _Cond(C.RECONCILING, True, passing[0].reason, passing[0].message)
    elif phase is P.SUSPENDED:
        reconciling = _Cond(C.RECONCILING, False, R.SUSPENDED, SUSPENDED_MESSAGE)
    elif phase is P.WAITING_FOR_APPROVAL:
        reconciling = _Cond(C.RECONCILING, False, R.WAITING_FOR_APPROVAL, held_msg)
    else:
        reconciling = _Cond(C.RECONCILING, True, R(phase), _progress_message(counts))

    if phase is P.COMPLETE:
        ready = _Cond(C.READY, True, R.COMPLETE, state_msg)
    elif settled and not stalled.true:
        ready = _Cond(C.READY, True, reconciling.reason, reconciling.message)
    else:
        ready = _Cond(
            C.READY,
            False,
            stalled.reason if stalled.true else reconciling.reason,
            stalled.message if stalled.true else reconciling.message,
        )
    return [
        ready,
        reconciling,
        stalled,
        _Cond(
            C.COMPLETE,
            phase is P.COMPLETE,
            R(phase),
            state_msg if phase is P.COMPLETE else "",
        ),
        _Cond(
            C.FAILED,
            phase is P.FAILED,
            R.TOO_MANY_FAILED_ITEMS if phase is P.FAILED else R.NO_FAILURE,
            state_msg if phase is P.FAILED else "",
        ),
        _Cond(
            C.SUSPENDED,
            obs.suspended and not terminal,
            R.SUSPENDED_BY_SPEC if obs.suspended else R.NOT_SUSPENDED,
            SUSPENDED_MESSAGE if obs.suspended else "",
        ),
        _Cond(C.BUDGET_EXCEEDED, bool(budget), R.BUDGET_EXCEEDED if budget else R.WITHIN_BUDGET, budget or ""),
        _Cond(C.WAITING_FOR_APPROVAL, bool(held) and not terminal, R.ITEMS_HELD if held else R.NOTHING_HELD, held_msg),
    ]


def _held_message(stage: str, n: int, items: Sequence[str]) -> str:
    """``3 items wait at plan-ok (a, b, c): approve them in spec.approvals``, naming the first few."""
    named = list(items[:HELD_ITEMS_NAMED])
    which = f" ({', '.join(named)}{', …' if n > len(named) else ''})" if named else ""
    if n == 1:
        return f"1 item waits at {stage}{which}: approve it in spec.approvals"
    return f"{n} items wait at {stage}{which}: approve them in spec.approvals"


def _progress_message(counts: Mapping[str, Any]) -> str:
    if "progress" not in counts:
        return "seeding"
    stage = counts.get("currentStage")
    return f"{counts['progress']} items done" + (f"; working on {stage}" if stage else "")


def _merge_conditions(
    new: Sequence[_Cond], previous: Sequence[Mapping[str, Any]], now: datetime, generation: int
) -> list[dict[str, Any]]:
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in new:
        status = "True" if cond.true else "False"
        old = before.get(str(cond.type))
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        out.append(
            {
                "type": str(cond.type),
                "status": status,
                "reason": cond.reason,
                "message": cond.message[:32768],
                "lastTransitionTime": since or _timestamp(now),
                "observedGeneration": generation,
            }
        )
    return out


def _timestamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


_COUNTED = ("currentStage", "progress", "percent", "retries", "items", "stages", "judge", "usage")


def compute(obs: Observation, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole status stanza for ``obs``; ``previous`` (the current status) keeps transition times."""
    previous = previous or {}
    phase = phase_of(obs)
    if obs.plan is not None and obs.snapshot is None and previous.get("phase"):
        phase = v1alpha1.Phase(previous["phase"])  # Redis away: nothing new is known about progress
    status: dict[str, Any] = {"observedGeneration": obs.generation, "phase": str(phase)}
    if obs.plan is not None and obs.snapshot is not None:
        status.update(_counts(obs))
    else:  # Redis away, or not compiled: the last counts stay, rather than dropping to nothing
        status.update({key: previous[key] for key in _COUNTED if key in previous})
    for kept in ("startTime", "completionTime", "results", "retriedFailed"):
        if previous.get(kept):
            status[kept] = previous[kept]
    if obs.snapshot is not None and obs.snapshot.seeded and "startTime" not in status:
        status["startTime"] = _timestamp(obs.now)
    if phase in (P.COMPLETE, P.FAILED):
        status.setdefault("completionTime", _timestamp(obs.now))
        if obs.state is not None and phase is P.COMPLETE:
            status["percent"] = 100
    else:
        status.pop("completionTime", None)  # retry-failed brought it back
    if obs.results is not None:
        status["results"] = dict(obs.results)
    if obs.retried_failed:
        status["retriedFailed"] = obs.retried_failed
    conditions = _conditions(obs, phase, status)
    status["conditions"] = _merge_conditions(conditions, previous.get("conditions") or [], obs.now, obs.generation)
    status["message"] = _headline(conditions, phase)
    return status


def unwritable(previous: Mapping[str, Any], generation: int, now: datetime, why: str) -> dict[str, Any]:
    """The status of a batch whose status the API server keeps refusing: Failed, with ``why``, and little else.

    A refused status cannot report progress, and a batch that says Running
    for ever is worse than one that ends: this is the last status the
    reconciler writes, small on purpose (the refusal may be about size). It
    keeps what says where the results are and when the batch ran.
    """
    conditions = [
        _Cond(C.READY, False, R.STATUS_WRITE_FAILED, why),
        _Cond(C.RECONCILING, False, R.STATUS_WRITE_FAILED, why),
        _Cond(C.STALLED, True, R.STATUS_WRITE_FAILED, why),
        _Cond(C.COMPLETE, False, R.FAILED),
        _Cond(C.FAILED, True, R.STATUS_WRITE_FAILED, why),
        _Cond(C.SUSPENDED, False, R.NOT_SUSPENDED),
        _Cond(C.BUDGET_EXCEEDED, False, R.WITHIN_BUDGET),
        _Cond(C.WAITING_FOR_APPROVAL, False, R.NOTHING_HELD),
    ]
    out: dict[str, Any] = {"observedGeneration": generation, "phase": str(P.FAILED), "message": why[:32768]}
    for kept in ("startTime", "results"):
        if previous.get(kept):
            out[kept] = previous[kept]
    out["completionTime"] = _timestamp(now)
    out["conditions"] = _merge_conditions(conditions, previous.get("conditions") or [], now, generation)
    return out


def _headline(conditions: Sequence[_Cond], phase: v1alpha1.Phase) -> str:
    """The most useful thing to know now, for ``kubectl get``: the first condition with a message that matters."""
    by_type = {c.type: c for c in conditions}
    for kind in (C.STALLED, C.COMPLETE, C.SUSPENDED, C.WAITING_FOR_APPROVAL):
        if by_type[kind].true and by_type[kind].message:
            return by_type[kind].message
    return by_type[C.RECONCILING].message or str(phase)


# ---------------------------------------------------------------- events

_WARNINGS = {str(C.STALLED), str(C.FAILED), str(C.BUDGET_EXCEEDED)}
_ANNOUNCED = {
    str(C.COMPLETE),
    str(C.FAILED),
    str(C.SUSPENDED),
    str(C.BUDGET_EXCEEDED),
    str(C.WAITING_FOR_APPROVAL),
    str(C.STALLED),
}


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def events(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[Event]:
    """One Event per condition that flipped (Ready and Reconciling only echo the others, so they stay quiet)."""
    before = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    out = []
    for cond in current.get("conditions") or []:
        kind = cond["type"]
        if kind not in _ANNOUNCED:
            continue
        old = before.get(kind) or {}
        was_true = old.get("status") == "True"
        now_true = cond["status"] == "True"
        same_reason = old.get("reason") == cond["reason"]
        if was_true == now_true and (not now_true or same_reason):
            continue
        if not now_true and not old:
            continue  # the first visit sets every condition; only what is true is news
        if now_true:
            severity = "Warning" if kind in _WARNINGS else "Normal"
            message = cond["message"] or kind
            out.append(Event(severity, cond["reason"], message))
        else:
            out.append(Event("Normal", R.cleared(C(kind)), f"{kind} is no longer true"))
    return out


def essence(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without what changes by itself (transition times), for "did anything change"."""
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or []
    ]
    return out
