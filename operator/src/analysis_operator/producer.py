"""The operator's side of the batch's Redis queue: seed, release, collect, seal, snapshot, finals, re-runs.

The operator touches a batch's Redis data through this module only: the
reconciler (``reconciler.py``) every step, the teardown (``teardown.py``)
when the batch is deleted. Whatever changes more than one key is one Lua
script from ``lua/`` next to this module, so it is atomic; and every call can
be repeated: seeding and collecting run once (markers), a release records
each item's outcome with first-writer-wins, a re-run requeues each failed end
once, and flags are set to a value rather than toggled. The consumer side,
which workers run, is ``analysis_worker.consumer``; what both share is
``analysis_core.queue``.

Where items end (finals): the step that ends an item's journey also appends
its idempotency key to the batch's finals list (``keys.BatchKeys.finals``),
atomically with its outcome and once per key (behind the same HSETNX), so the
list holds every end exactly once, in the order they happened. An item ends
when a completion sends it nowhere (it left the last stage, a fan-out found
no children, a judge failed it), when it fails for good, when it is
dead-lettered, or when an approval gate that is the last stage releases it;
rejections and retries send it on, so they are not ends. The operator exports
the list incrementally (``finals``, with a cursor of its own) and
``retry_failed`` re-runs the failed ends from it.

Re-runs: ``retry_failed`` requeues each failed or dead-lettered end into the
stage where it ended at the next attempt number, so idempotency keys stay
unique, with ``queue.Message.first_attempt`` set to that number so the
worker's retry policy counts a fresh budget from it.

Decides nothing: when to seal, collect or fail is ``completion``'s to say,
from a ``snapshot``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

from analysis_core import keys as keys_
from analysis_core import queue, scripts, tenancy, wire

REPLICATION_WAIT_MS = 1000  # how long an export waits for replicas to acknowledge the ends it is about to write


class NewerLayout(Exception):
    """The batch's Redis data is in a newer layout than this operator's (``keys.LAYOUT_VERSION``)."""

    def __init__(self, layout: int) -> None:
        super().__init__(
            f"Redis holds this batch in layout version {layout}, newer than this operator's "
            f"({keys_.LAYOUT_VERSION}): a later release seeded it; run that release or a later one"
        )
        self.layout = layout


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every stage's counts, the sealed stages and whether the batch was seeded, read atomically."""

    stages: dict[str, queue.StageCounts]
    sealed: frozenset[str]
    seeded: bool
    usage: dict[str, int] = dataclasses.field(default_factory=dict)  # wire.USAGE_* -> tokens, nano-dollars
    flags: dict[str, str] = dataclasses.field(default_factory=dict)  # wire.FLAG_* -> value
    layout: int | None = None  # the layout version the batch was seeded with (keys.LAYOUT_VERSION then)
    # Stages whose provider refused for quota or billing, with no probe passed since (workers keep these).
    quota: dict[str, queue.QuotaPause] = dataclasses.field(default_factory=dict)
    # stage -> worker pod (its consumer name) -> items it holds; a pod that holds none is absent.
    held: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    # stage -> the worker pods the operator retired to scale in (``retire``): they claim nothing more.
    retired: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    @property
    def suspended(self) -> bool:
        """Workers claim nothing (``suspend``)."""
        return wire.FLAG_SUSPENDED in self.flags

    @property
    def budget_exceeded(self) -> str | None:
        """Why workers stopped claiming for the budget, if a worker found it used up."""
        return self.flags.get(wire.FLAG_BUDGET_EXCEEDED)

    @property
    def retry_token(self) -> str | None:
        """The retry-failed annotation value last acted on (``mark_retried``)."""
        return self.flags.get(wire.FLAG_RETRY_TOKEN)

    @property
    def run(self) -> int:
        """How many re-runs the batch had; part of every Job's name, so a re-run gets fresh Jobs."""
        return int(self.flags.get(wire.FLAG_RUN) or 0)


async def snapshot(client: queue.Redis, uid: str, stages: Sequence[str]) -> Snapshot:
    """One atomic read of the whole batch (``lua/snapshot.lua``): what sealing, completion and status decide from.

    Raises :class:`NewerLayout` for a batch seeded in a layout newer than this operator knows: nothing may be
    decided, let alone written, from data it may misread.
    """
    k = keys_.BatchKeys(uid)
    stage_keys = [
        key
        for stage in stages
        for key in (
            k.stream(stage),
            k.delayed(stage),
            k.counts(stage),
            k.gathered(stage),
            k.limiter(stage, keys_.LIMITER_QUOTA),
            k.retiring(stage),
        )
    ]
    per_stage, sealed, seeded, usage, flags = await scripts.function(client, "snapshot", loads=True)(
        keys=[*stage_keys, k.sealed, k.seeded, k.usage, k.flags], args=[keys_.GROUP]
    )
    if seeded is not None and int(seeded) > keys_.LAYOUT_VERSION:
        raise NewerLayout(int(seeded))
    counts, paused, held, retired = {}, {}, {}, {}
    for stage, (length, pending, delayed, flat, gathered, quota, holders, gone) in zip(stages, per_stage, strict=True):
        held[stage] = {str(consumer): int(n) for consumer, n in holders if int(n) > 0}
        retired[stage] = frozenset(str(pod) for pod in gone)
        pause = queue.QuotaPause.from_fields(quota)
        if pause is not None:
            paused[stage] = pause
        running = int(pending)
        counts[stage] = queue.StageCounts(
            ready=max(0, int(length) - running),
            running=running,
            retrying=int(delayed),
            counters={str(name): int(value) for name, value in zip(flat[::2], flat[1::2], strict=True)},
            gathered=int(gathered),
        )
    return Snapshot(
        counts,
        frozenset(str(s) for s in sealed),
        seeded is not None,
        {str(f): int(v) for f, v in zip(usage[::2], usage[1::2], strict=True)},
        {str(f): str(v) for f, v in zip(flags[::2], flags[1::2], strict=True)},
        None if seeded is None else int(seeded),
        paused,
        held,
        retired,
    )


def collected_id(items: Iterable[str]) -> str:
    """The item id of a collect stage's one message: the items' common parent, or ``all``."""
    parents = {item.rsplit("/", 1)[0] for item in items if "/" in item}
    if len(parents) == 1 and all("/" in item for item in items):
        return parents.pop()
    return "all"


async def collect(client: queue.Redis, uid: str, stage: str) -> int:
    """Fan-in: combine every item gathered for ``stage`` into one message; once. Returns how many."""
    k = keys_.BatchKeys(uid)
    items = [str(item) for item in await client.hkeys(k.gathered(stage))]
    collected = await scripts.function(client, "collect", loads=True)(
        keys=[k.gathered(stage), k.results, k.stream(stage), k.collected(stage)],
        args=[k.collected_input(stage), collected_id(items)],
    )
    return int(collected)


async def release(
    client: queue.Redis,
    uid: str,
    gate: str,
    next_stage: str | None,
    items: Iterable[str] | None,
    *,
    gather: bool = False,
    limit: int = 10_000,
) -> int:
    """Pass items waiting at the approval stage ``gate`` on (``items`` None: all of them); idempotent.

    ``gather``: the next stage collects, so released items are gathered for it (fan-in).
    """
    k = keys_.BatchKeys(uid)
    # Every key is named (one slot on Redis Cluster): without a next stage the gate's stream stands in, unused.
    if next_stage is None:
        target, mode = k.stream(gate), wire.RELEASE_NONE
    else:
        target, mode = (
            (k.gathered(next_stage), wire.RELEASE_GATHER) if gather else (k.stream(next_stage), wire.RELEASE_STREAM)
        )
    released = await scripts.function(client, "release", loads=True)(
        keys=[k.stream(gate), k.outcomes, k.counts(gate), target, k.finals],
        args=[uid, gate, "*" if items is None else json.dumps(sorted(items)), limit, mode],
    )
    return int(released)


async def held_items(client: queue.Redis, uid: str, gate: str, limit: int) -> list[str]:
    """The ids of up to ``limit`` items waiting at the approval stage ``gate``, oldest first (for display)."""
    entries = await client.xrange(keys_.BatchKeys(uid).stream(gate), count=limit) or []
    return list(
        dict.fromkeys(str(fields[wire.MSG_ITEM]) for _, fields in entries if fields and wire.MSG_ITEM in fields)
    )


async def seed(client: queue.Redis, uid: str, stages: Sequence[str], items: Sequence[str]) -> int:
    """Enqueue the initial items into the first stage, once; create every stage's group."""
    k = keys_.BatchKeys(uid)
    messages = [queue.Message(item).fields() for item in items]
    script = scripts.function(client, "seed", loads=True)
    enqueued = await script(
        keys=[k.seeded, k.stream(stages[0]), *(k.stream(stage) for stage in stages)],
        args=[keys_.GROUP, json.dumps(messages), keys_.LAYOUT_VERSION],
    )
    return int(enqueued)


async def seal(client: queue.Redis, uid: str, stage: str) -> None:
    """Mark ``stage`` as receiving no more work: its Job-mode workers exit once it has drained."""
    await client.sadd(keys_.BatchKeys(uid).sealed, stage)


# ---------------------------------------------------------------- flags and workers


async def suspend(client: queue.Redis, uid: str, why: str) -> None:
    """Stop new claims: workers check before every claim; what they hold runs to its end."""
    await client.hset(keys_.BatchKeys(uid).flags, wire.FLAG_SUSPENDED, why)


async def deleting(client: queue.Redis, uid: str) -> None:
    """The batch is being deleted: no new claims, and workers cancel its provider batches as they stop."""
    why = "the batch is being deleted"
    await client.hset(keys_.BatchKeys(uid).flags, mapping={wire.FLAG_SUSPENDED: why, wire.FLAG_DELETING: why})


async def resume(client: queue.Redis, uid: str) -> None:
    """Let workers claim again after ``suspend``."""
    await client.hdel(keys_.BatchKeys(uid).flags, wire.FLAG_SUSPENDED)


async def clear_budget_exceeded(client: queue.Redis, uid: str) -> None:
    """Forget that a worker found the budget used up (the budget was raised): workers claim again."""
    await client.hdel(keys_.BatchKeys(uid).flags, wire.FLAG_BUDGET_EXCEEDED)


async def mark_retried(client: queue.Redis, uid: str, token: str) -> None:
    """Record that the retry-failed value ``token`` was acted on, and count a new run (``Snapshot.run``)."""
    flags = keys_.BatchKeys(uid).flags
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(flags, wire.FLAG_RETRY_TOKEN, token)
        pipe.hincrby(flags, wire.FLAG_RUN, 1)
        await pipe.execute()


async def retire(client: queue.Redis, uid: str, stage: str, pods: Sequence[str]) -> list[str]:
    """Retire those of ``pods`` (worker pods of ``stage``) that hold no item, so that they never claim again.

    Atomic with the workers' claims (``lua/retire.lua`` against the worker's
    ``claim.lua``): a pod is retired only while it holds nothing, and a
    retired pod claims nothing, so deleting it kills no call. Returns the
    retired pods, those retired before included; the caller deletes them all.
    """
    if not pods:
        return []
    k = keys_.BatchKeys(uid)
    retired = await scripts.function(client, "retire", loads=True)(
        keys=[k.stream(stage), k.retiring(stage)], args=[keys_.GROUP, *pods]
    )
    return [str(pod) for pod in retired]


async def ensure_user(client: queue.Redis, uid: str, admin_password: str) -> None:
    """Create or restore the batch's Redis user (``analysis_core.tenancy``): its password, its keys, its commands.

    Idempotent, and cheap enough to repeat: Redis keeps ACL users neither in its
    AOF nor on its replicas, so the operator asserts them again after a restart
    or a failover. On a Redis Cluster every primary gets the user (a node keeps
    its users to itself).
    """
    rules = tenancy.rules(uid, tenancy.password(admin_password, uid))
    await queue.on_every_primary(client, "ACL", "SETUSER", tenancy.username(uid), *rules)


async def has_user(client: queue.Redis, uid: str) -> bool:
    """Whether Redis has the batch's user, on every primary (a node forgets users when it restarts without an ACL
    file, and a replica promoted by a failover never had them: users are not replicated)."""
    replies = await queue.on_every_primary(client, "ACL", "GETUSER", tenancy.username(uid))
    return all(reply is not None for reply in replies)


async def remove_user(client: queue.Redis, uid: str) -> None:
    """Delete the batch's Redis user, on every primary; its open connections are closed by Redis."""
    await queue.on_every_primary(client, "ACL", "DELUSER", tenancy.username(uid))


async def remove(client: queue.Redis, uid: str, *, page: int = 1000) -> int:
    """Unlink every key of the batch; returns how many. They share its hash tag, so one pattern finds them all."""
    removed, batch = 0, []
    async for key in client.scan_iter(match=keys_.BatchKeys(uid).pattern, count=page):
        batch.append(key)
        if len(batch) >= page:
            removed += int(await client.unlink(*batch))
            batch = []
    if batch:
        removed += int(await client.unlink(*batch))
    return removed


# ---------------------------------------------------------------- finals and re-runs

# How an item ended: the outcome statuses an end can have (wire.STATUS_SUCCEEDED, STATUS_FAILED, STATUS_DEAD).
FinalStatus = Literal["succeeded", "failed", "dead"]
_FINAL_STATUSES: dict[str, FinalStatus] = {status: status for status in get_args(FinalStatus)}


@dataclasses.dataclass(frozen=True)
class FinalRecord:
    """Where and how one item's journey ended: one entry of the batch's finals list.

    ``output`` is what the item ended with, for successes only: the last
    stage's result; for a judge as the last stage the *reviewed* answer it
    approved (or accepted with ``AcceptLast``), not its verdict; for a
    fan-out that found no children the fan-out stage's own JSON; for an
    approval gate as the last stage the input it held. Failures carry
    ``error`` and ``error_class`` instead (``JudgeRejected`` for a judge's
    ``onExhausted: Fail``; none for a dead letter, whose status says it).
    ``model`` and the token counts are the ending attempt's, when it called a
    model.
    """

    item: str
    stage: str
    status: FinalStatus
    round: int
    attempt: int
    idem: str
    output: str | None = None
    error: str | None = None
    error_class: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _final_record(idem: str, raw_outcome: str | None, output: str | None) -> FinalRecord:
    parsed = keys_.parse_idem(idem)
    try:
        loaded = json.loads(raw_outcome) if raw_outcome is not None else {}
    except ValueError:
        loaded = {}
    outcome: dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    # Only ends are listed; an outcome that is missing or unreadable is reported as a failure, not dropped.
    status = _FINAL_STATUSES.get(str(outcome.get(wire.OUTCOME_STATUS)), _FINAL_STATUSES[wire.STATUS_FAILED])
    error = _optional_str(outcome.get(wire.OUTCOME_ERROR))
    if status == wire.STATUS_FAILED and error is None and not outcome:
        error = "no outcome recorded"
    return FinalRecord(
        item=parsed.item,
        stage=parsed.stage,
        status=status,
        round=parsed.round,
        attempt=parsed.attempt,
        idem=idem,
        output=output if status == wire.STATUS_SUCCEEDED else None,
        error=error if status != wire.STATUS_SUCCEEDED else None,
        error_class=_optional_str(outcome.get(wire.OUTCOME_ERROR_CLASS)) if status != wire.STATUS_SUCCEEDED else None,
        model=_optional_str(outcome.get(wire.OUTCOME_MODEL)),
        input_tokens=_optional_int(outcome.get(wire.OUTCOME_INPUT_TOKENS)),
        output_tokens=_optional_int(outcome.get(wire.OUTCOME_OUTPUT_TOKENS)),
    )


async def finals(client: queue.Redis, uid: str, start: int, count: int) -> list[FinalRecord]:
    """Up to ``count`` ends of the batch from position ``start`` of its finals list, in order; one round trip.

    The list only grows, so a reader keeps its own cursor (how many it has
    consumed) and asks from there; fewer than ``count`` records means it has
    caught up for now.
    """
    if count <= 0 or start < 0:
        return []
    k = keys_.BatchKeys(uid)
    reply = await scripts.function(client, "finals", loads=True)(
        keys=[k.finals, k.outcomes, k.results], args=[start, start + count - 1]
    )
    return [_final_record(str(idem), outcome, output) for idem, outcome, output in reply]


async def finals_length(client: queue.Redis, uid: str) -> int:
    """How many ends the batch's finals list holds (the total an export has to reach)."""
    return int(await client.llen(keys_.BatchKeys(uid).finals))


async def replicate_finals(client: queue.Redis, uid: str, length: int, replicas: int) -> int:
    """Wait until ``replicas`` replicas hold the first ``length`` ends (and everything else written before now).

    Returns how many did within ``REPLICATION_WAIT_MS``; the export writes
    nothing to the results sink unless enough did, so that a failover to a
    replica never takes back an end the sink already holds.
    """
    return await queue.replicated(client, keys_.BatchKeys(uid).exported, str(length), replicas, REPLICATION_WAIT_MS)


async def retry_failed(client: queue.Redis, uid: str, stages: Sequence[str], *, page: int = 500) -> int:
    """Re-run the items that failed for good or were dead-lettered, and only those; returns how many were requeued.

    ``stages``: every stage of the batch, in plan order. Each failed end not
    re-run before goes back into the stage where it ended, with its round,
    input and feedback, at the next attempt number with a fresh attempt
    budget (``queue.Message.first_attempt``); its failure counter is taken back and
    ``rerun`` counted, atomically per item (``lua/rerun.lua``). Calling it
    again requeues nothing new until a re-run item fails again. Items that
    succeeded are never touched. An item whose stage comes before a collect
    stage that has already combined its items is left failed: it could no
    longer be gathered into it.

    When anything was requeued, every stage is unsealed in the same step, so
    Job-mode workers of the item's stage and of the stages after it (or of a
    judge loop around it) do not exit before it has passed. The operator
    must then re-seal from a snapshot taken *after* this call (a snapshot
    from before it would seal stages the re-run still has to pass), and make
    sure unsealed stages with a backlog have workers again: a work-queue Job
    whose pods all exited is complete and never starts new ones, so such a
    stage needs a new Job (the stage's ``rerun`` counter can name it).
    """
    k = keys_.BatchKeys(uid)
    stage_keys = [key for stage in stages for key in (k.stream(stage), k.counts(stage), k.collected(stage))]
    script = scripts.function(client, "rerun", loads=True)
    requeued, start = 0, 0
    while True:
        moved, _skipped, seen = await script(
            keys=[k.finals, k.outcomes, k.reruns, k.sealed, *stage_keys],
            args=[uid, start, start + page - 1, *stages],
        )
        requeued += int(moved)
        if int(seen) < page:
            return requeued
        start += page
