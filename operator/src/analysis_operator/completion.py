"""When a stage can receive no more work (sealing), and when a batch is done.

The operator reads an atomic ``producer.Snapshot`` of the batch, asks
``collectable`` which collect stages have all their items in (fan-in),
``sealable`` which stages to seal and ``state`` whether the batch is running,
complete or failed, and acts. Job-mode workers exit once their stage is
sealed and drained, so sealing too early would strand work; this module is
where that cannot happen.

Stages form units. A judge, the stage it reviews and the stages between them
are one unit, because the judge can send work back into it; every other stage
is a unit of its own. A unit may be sealed once it is seeded and every earlier
unit is sealed and drained (nothing upstream can send anything); a loop unit
also needs all of its own stages drained, since until then its judge may send
work back. Both conditions, once true, stay true: a sealed, drained unit gets
no new work, and completions route atomically, so a snapshot never sees an
item between two stages. Acting on a snapshot later is therefore safe.

Pure: decides from the plan and a snapshot, writes nothing.
"""

from __future__ import annotations

import dataclasses
import enum

from analysis_core import plan, wire
from analysis_core.api import v1alpha1
from analysis_operator import producer


def units(the_plan: plan.Plan) -> list[list[str]]:
    """The plan's stages grouped into units, in order (judge loops grouped)."""
    names = [s.name for s in the_plan.stages]
    start_of: dict[int, int] = {}  # unit end index -> start index, for loops
    for index, stage in enumerate(the_plan.stages):
        if stage.type is v1alpha1.StageType.JUDGE and stage.reviews in names:
            start_of[index] = names.index(stage.reviews)
    grouped: list[list[str]] = []
    index = 0
    while index < len(names):
        # The loop that starts here (or earliest) and ends furthest away swallows its stages.
        ends = [end for end, start in start_of.items() if start == index]
        end = max(ends, default=index)
        grouped.append(names[index : end + 1])
        index = end + 1
    return grouped


def _drained(snapshot: producer.Snapshot, stages: list[str]) -> bool:
    return all(snapshot.stages[name].drained for name in stages)


def _upstream_done(the_plan: plan.Plan, snapshot: producer.Snapshot, stage: str) -> bool:
    """Every unit before ``stage``'s unit is sealed and drained: nothing can send it work any more."""
    for unit in units(the_plan):
        if stage in unit:
            return True
        if not all(name in snapshot.sealed for name in unit) or not _drained(snapshot, unit):
            return False
    return True


def may_be_fed(the_plan: plan.Plan, snapshot: producer.Snapshot, stage: str) -> bool:
    """Whether work may still reach ``stage`` beyond what it holds now: an earlier unit is not sealed and drained,
    or another stage of its judge loop has work (a rejection comes back)."""
    if not _upstream_done(the_plan, snapshot, stage):
        return True
    unit = next(unit for unit in units(the_plan) if stage in unit)
    return any(not snapshot.stages[name].drained for name in unit if name != stage)


def collectable(the_plan: plan.Plan, snapshot: producer.Snapshot) -> list[str]:
    """Collect stages whose items are all in (``producer.collect`` them, then seal)."""
    if not snapshot.seeded:
        return []
    return [
        s.name
        for s in the_plan.stages
        if s.collect and snapshot.stages[s.name].gathered > 0 and _upstream_done(the_plan, snapshot, s.name)
    ]


def sealable(the_plan: plan.Plan, snapshot: producer.Snapshot) -> list[str]:
    """Stages to seal now (not yet sealed, and nothing can send them work any more)."""
    if not snapshot.seeded:
        return []
    out: list[str] = []
    upstream_done = True  # every earlier unit sealed and drained
    for unit in units(the_plan):
        is_loop = len(unit) > 1  # a judge and the stages it can send back to
        # Items gathered for a collect stage must be combined into its one message first.
        waiting = any(snapshot.stages[name].gathered for name in unit)
        if upstream_done and not waiting and (not is_loop or _drained(snapshot, unit)):
            out.extend(name for name in unit if name not in snapshot.sealed)
        sealed_now = all(name in snapshot.sealed or name in out for name in unit)
        upstream_done = upstream_done and sealed_now and _drained(snapshot, unit)
    return out


class Phase(enum.StrEnum):
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"


@dataclasses.dataclass(frozen=True)
class BatchState:
    phase: Phase
    failed_items: int  # failed or dead-lettered, all stages
    finished_items: int  # succeeded in the last stage
    reason: str = ""


def state(the_plan: plan.Plan, snapshot: producer.Snapshot, max_failed_items: int) -> BatchState:
    """Running until every stage is sealed and drained; Failed as soon as failures pass the policy."""
    counters = [c.counters for c in snapshot.stages.values()]
    failed = sum(c.get(wire.COUNT_FAILED, 0) + c.get(wire.COUNT_DEAD_LETTERED, 0) for c in counters)
    finished = snapshot.stages[the_plan.stages[-1].name].counters.get(wire.COUNT_SUCCEEDED, 0)
    if failed > max_failed_items:
        reason = f"{failed} items failed, more than failurePolicy.maxFailedItems ({max_failed_items})"
        return BatchState(Phase.FAILED, failed, finished, reason)
    names = [s.name for s in the_plan.stages]
    if snapshot.seeded and all(n in snapshot.sealed for n in names) and _drained(snapshot, names):
        return BatchState(Phase.COMPLETE, failed, finished, f"{finished} items finished, {failed} failed")
    return BatchState(Phase.RUNNING, failed, finished)
