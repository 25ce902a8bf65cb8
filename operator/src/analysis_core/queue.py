"""The Redis work queue of one batch stage: claim, lease, complete, retry, reclaim.

Why Streams with a consumer group, not lists with a lease set
--------------------------------------------------------------
``XREADGROUP`` is an atomic, *blocking* claim that records the delivery time
and count in the group's pending entries list (PEL). The PEL is exactly the
lease set a visibility timeout needs, kept by Redis itself:

- a lease is the entry's idle time in the PEL; renewing it is ``XCLAIM ...
  JUSTID`` by the holder (``renew.lua``), which resets the idle time without
  counting a delivery;
- a worker that dies mid-item leaves its entry pending; once idle longer than
  the lease, ``XAUTOCLAIM`` hands it to a live worker and counts the
  delivery, and past the bound the entry is dead-lettered (``reclaim.lua``);
- a blocked ``XREADGROUP`` wakes the moment work is added, so pickup takes
  one round trip, with no polling.

With lists, the blocking move (``BLMOVE``) and the lease registration are two
steps, and a worker dying between them leaves an item no lease covers; the
fix is a reaper that guesses. Streams need no guess.

What Lua adds: every state change that touches several keys is one script
(``lua/*.lua``), so it is atomic and replay-safe. Completing an attempt
records its outcome under the idempotency key with HSETNX, stores the result,
counts, routes follow-ups and acknowledges in one step (``complete.lua``);
the first completion wins and a duplicate (a redelivered item whose first
worker was slow, not dead) only acknowledges its own delivery. Retries wait
in a sorted set scored by due time and are moved back into the stream when
due (``retry.lua``, ``promote.lua``). Acknowledged entries are deleted, so
``XLEN - pending`` is the backlog.

Connections: blocking reads use a client of their own with no socket timeout
(redis-py 8's default 5 s timeout plus its retries turns a blocking read into
a minute-long stall) and short blocks, so shutdown stays responsive.

Where items end (finals): the step that ends an item's journey also appends
its idempotency key to the batch's finals list (``keys.BatchKeys.finals``),
atomically with its outcome and once per key (behind the same HSETNX), so the
list holds every end exactly once, in the order they happened. An item ends
when a completion sends it nowhere (it left the last stage, a fan-out found
no children, a judge failed it), when it fails for good, or when it is
dead-lettered; rejections and retries send it on, so they are not ends. The
operator exports the list incrementally (``finals``, with a cursor of its
own) and ``retry_failed`` re-runs the failed ends from it.

Re-runs: ``retry_failed`` requeues each failed or dead-lettered end into the
stage where it ended at the next attempt number, so idempotency keys stay
unique, with ``Message.first_attempt`` set to that number so the worker's
retry policy counts a fresh budget from it.

Callers: the worker (claim .. complete), the operator (``seed``, ``seal``,
``stage_counts``, ``finals``, ``retry_failed``) and tests. This module decides
nothing about routing: the caller passes the follow-up messages, and says
whether a completion is final.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import redis.asyncio as aioredis
import redis.exceptions

from analysis_core import keys as keys_
from analysis_core import scripts

Redis = aioredis.Redis

# What Redis being away looks like (down, restarting, still loading its AOF): wait and try again.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


def connect(url: str, password: str | None = None) -> Redis:
    """A client for ordinary commands: short timeouts, string replies.

    RESP2 is pinned: the reply shapes this module parses are RESP2's, whatever
    a future client chooses by default. ``password`` (kept out of the URL, so
    a logged URL never carries it) overrides one in the URL.
    """
    options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5, "protocol": 2}
    if password:
        options["password"] = password
    return aioredis.Redis.from_url(url, decode_responses=True, **options)


def connect_blocking(url: str, password: str | None = None) -> Redis:
    """A client for blocking reads only: no socket timeout (the block bounds the wait), no retries."""
    options: dict[str, Any] = {"socket_timeout": None, "socket_connect_timeout": 5, "retry": None, "protocol": 2}
    if password:
        options["password"] = password
    return aioredis.Redis.from_url(url, decode_responses=True, **options)


@dataclasses.dataclass(frozen=True)
class Message:
    """One unit of work for a stage: an item in a round, at an attempt."""

    item: str
    round: int = 0
    attempt: int = 1
    input: str = ""  # idempotency key of the previous stage's result ("" for initial items)
    since_ms: int = 0  # when the first attempt in this stage and round started (0: not yet)
    feedback: str = ""  # a judge's feedback, for the next round
    # The attempt this run of the item started at: 1, or past the old attempts after a re-run
    # (``retry_failed``); the retry policy counts attempts from here.
    first_attempt: int = 1

    def fields(self) -> list[str]:
        """Flat stream fields, the wire format of the stream and the delayed set."""
        return [
            "item", self.item, "round", str(self.round), "attempt", str(self.attempt),
            "input", self.input, "since", str(self.since_ms), "feedback", self.feedback,
            "first", str(self.first_attempt),
        ]  # fmt: skip

    @property
    def attempts_in_run(self) -> int:
        """Which attempt of this run this is (1-based), what the retry policy's ``maxAttempts`` bounds."""
        return max(1, self.attempt - self.first_attempt + 1)

    @classmethod
    def from_fields(cls, fields: dict[str, str] | Sequence[str]) -> Message:
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        return cls(
            item=fields["item"],
            round=int(fields.get("round", 0)),
            attempt=int(fields.get("attempt", 1)),
            input=fields.get("input", ""),
            since_ms=int(fields.get("since", 0) or 0),
            feedback=fields.get("feedback", ""),
            first_attempt=int(fields.get("first", 1) or 1),
        )


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A claimed message: the stream entry that holds the lease, and how often it was delivered."""

    entry_id: str
    message: Message
    deliveries: int = 1


@dataclasses.dataclass(frozen=True)
class Route:
    """A follow-up message for a stage, written in the same step as the completion.

    ``gather``: the stage collects (fan-in), so the item waits in its gathering
    hash until ``collect`` combines everything that reached it.
    """

    stage: str
    message: Message
    gather: bool = False

    def wire(self) -> dict[str, Any]:
        if self.gather:
            return {"gather": self.message.item, "input": self.message.input}
        return {"fields": self.message.fields()}


@dataclasses.dataclass(frozen=True)
class StageCounts:
    """What the operator reads for status and sizing; one round trip."""

    ready: int  # in the stream, not yet claimed
    running: int  # claimed and not acknowledged (leased)
    retrying: int  # waiting in the delayed set
    counters: dict[str, int]  # monotonic: succeeded, failed, retries, dead_lettered, tokens, ...
    gathered: int = 0  # waiting to be collected (collect stages)

    @property
    def drained(self) -> bool:
        return self.ready == 0 and self.running == 0 and self.retrying == 0 and self.gathered == 0


def _decode_entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """Entries of an XREADGROUP reply: ``[[stream, [(id, {field: value}), ...]], ...]``."""
    entries: list[tuple[str, dict[str, str]]] = []
    for _stream, stream_entries in reply or []:
        for entry_id, fields in stream_entries:
            if fields:  # None or {} for an entry deleted while it was pending
                entries.append((entry_id, fields))
    return entries


class StageQueue:
    """The queue of one stage of one batch, as one consumer (a worker pod) sees it."""

    def __init__(self, client: Redis, blocking: Redis, uid: str, stage: str, consumer: str) -> None:
        self.client = client
        self.blocking = blocking
        self.keys = keys_.BatchKeys(uid)
        self.stage = stage
        self.consumer = consumer
        self.stream = self.keys.stream(stage)

    async def ensure_group(self) -> None:
        """Create the stage's consumer group (from the start of the stream) if it does not exist."""
        try:
            await self.client.xgroup_create(self.stream, keys_.GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---------------------------------------------------------------- claiming

    async def claim(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` new messages, waiting at most ``block_ms`` for the first."""
        reply = await self.blocking.xreadgroup(
            keys_.GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return [Delivery(entry_id, Message.from_fields(fields)) for entry_id, fields in _decode_entries(reply)]

    async def claim_own_pending(self, count: int) -> list[Delivery]:
        """Messages this consumer name already holds: a restarted worker resumes them at once."""
        reply = await self.client.xreadgroup(keys_.GROUP, self.consumer, {self.stream: "0"}, count=count)
        return [Delivery(entry_id, Message.from_fields(fields), 2) for entry_id, fields in _decode_entries(reply)]

    async def reclaim(self, count: int, lease_ms: int, max_deliveries: int) -> list[Delivery]:
        """Take over up to ``count`` deliveries whose lease expired; dead-letter those past the bound."""
        reply = await scripts.script(self.client, "reclaim")(
            keys=[
                self.stream, self.keys.outcomes, self.keys.dead(self.stage), self.keys.counts(self.stage),
                self.keys.finals,
            ],
            args=[keys_.GROUP, self.consumer, lease_ms, count, max_deliveries, self.keys.uid, self.stage],
        )  # fmt: skip
        return [Delivery(str(entry_id), Message.from_fields(fields), int(n)) for entry_id, fields, n in reply]

    async def renew(self, entry_ids: Iterable[str]) -> list[str]:
        """Renew the leases of ``entry_ids``; returns the ones this consumer no longer holds."""
        ids = list(entry_ids)
        if not ids:
            return []
        lost = await scripts.script(self.client, "renew")(keys=[self.stream], args=[keys_.GROUP, self.consumer, *ids])
        return [str(i) for i in lost]

    async def hand_back(self, entry_ids: Iterable[str]) -> int:
        """Return deliveries to the stream at once (graceful shutdown)."""
        ids = list(entry_ids)
        if not ids:
            return 0
        return int(await scripts.script(self.client, "handback")(keys=[self.stream], args=[keys_.GROUP, *ids]))

    # ---------------------------------------------------------------- finishing

    async def complete(
        self,
        delivery: Delivery,
        outcome: dict[str, Any],
        *,
        result: str | None,
        increments: dict[str, int],
        routes: Sequence[Route] = (),
        more_results: dict[str, str] | None = None,
        final: bool = False,
    ) -> bool:
        """Finish the delivery's attempt for good; False if another completion of the same key came first.

        ``final``: the item's journey ends with this attempt (no route onward,
        or failed for good); its key is appended to the batch's finals.
        """
        message = delivery.message
        idem = self.keys.idem(self.stage, message.item, message.round, message.attempt)
        done = await scripts.script(self.client, "complete")(
            keys=[
                self.stream, self.keys.outcomes, self.keys.results, self.keys.counts(self.stage), self.keys.usage,
                self.keys.finals,
                *(self.keys.gathered(r.stage) if r.gather else self.keys.stream(r.stage) for r in routes),
            ],
            args=[
                keys_.GROUP, delivery.entry_id, idem, json.dumps(outcome, separators=(",", ":")),
                "0" if result is None else "1", result or "", json.dumps(increments),
                json.dumps([route.wire() for route in routes]), json.dumps(more_results or {}),
                "1" if final else "0",
            ],
        )  # fmt: skip
        return bool(done)

    async def retry(
        self,
        delivery: Delivery,
        next_message: Message,
        *,
        delay_ms: int,
        outcome: dict[str, Any] | None,
        increments: dict[str, int],
    ) -> bool:
        """Schedule ``next_message`` after ``delay_ms``; ``outcome`` None keeps the attempt (rate limits)."""
        message = delivery.message
        idem = self.keys.idem(self.stage, message.item, message.round, message.attempt)
        scheduled = await scripts.script(self.client, "retry")(
            keys=[
                self.stream, self.keys.outcomes, self.keys.delayed(self.stage), self.keys.counts(self.stage),
                self.keys.usage,
            ],
            args=[
                keys_.GROUP, delivery.entry_id, idem,
                "" if outcome is None else json.dumps(outcome, separators=(",", ":")),
                max(0, delay_ms), json.dumps(next_message.fields()), json.dumps(increments),
            ],
        )  # fmt: skip
        return bool(scheduled)

    async def promote(self, limit: int = 100) -> tuple[int, int]:
        """Move due retries into the stream; returns (moved, ms until the next is due or -1)."""
        moved, wait = await scripts.script(self.client, "promote")(
            keys=[self.keys.delayed(self.stage), self.stream], args=[limit]
        )
        return int(moved), int(wait)

    async def outcome(self, idem: str) -> dict[str, Any] | None:
        """The recorded outcome of an attempt, if it finished."""
        value = await self.client.hget(self.keys.outcomes, idem)
        return None if value is None else dict(json.loads(value))

    async def result(self, idem: str) -> str | None:
        """The stored output of a successful attempt (a follow-up stage's input)."""
        value = await self.client.hget(self.keys.results, idem)
        return None if value is None else str(value)

    # ---------------------------------------------------------------- state

    async def counts(self) -> StageCounts:
        return await stage_counts(self.client, self.keys.uid, self.stage)

    async def pending_ids(self, count: int = 1000) -> list[str]:
        """Entries this consumer holds (claimed, not acknowledged)."""
        rows = await self.client.xpending_range(
            self.stream, keys_.GROUP, min="-", max="+", count=count, consumername=self.consumer
        )
        return [str(row["message_id"]) for row in rows]

    async def sealed(self) -> bool:
        return bool(await self.client.sismember(self.keys.sealed, self.stage))


async def stage_counts(client: Redis, uid: str, stage: str) -> StageCounts:
    """Backlog, leases, retries and counters of one stage, in one round trip."""
    k = keys_.BatchKeys(uid)
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(k.stream(stage))
        pipe.xinfo_groups(k.stream(stage))
        pipe.zcard(k.delayed(stage))
        pipe.hgetall(k.counts(stage))
        length, groups, retrying, counters = await pipe.execute(raise_on_error=False)
    running = 0
    if isinstance(groups, list):
        for group in groups:
            if group.get("name") == keys_.GROUP:
                running = int(group.get("pending", 0))
    length = length if isinstance(length, int) else 0
    return StageCounts(
        ready=max(0, length - running),
        running=running,
        retrying=int(retrying),
        counters={name: int(value) for name, value in (counters or {}).items()},
    )


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every stage's counts, the sealed stages and whether the batch was seeded, read atomically."""

    stages: dict[str, StageCounts]
    sealed: frozenset[str]
    seeded: bool
    usage: dict[str, int] = dataclasses.field(default_factory=dict)  # input_tokens, output_tokens, cost_nusd
    flags: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. budget_exceeded -> why


async def snapshot(client: Redis, uid: str, stages: Sequence[str]) -> Snapshot:
    """One atomic read of the whole batch (``lua/snapshot.lua``): what sealing and completion decide from."""
    k = keys_.BatchKeys(uid)
    stage_keys = [
        key for stage in stages for key in (k.stream(stage), k.delayed(stage), k.counts(stage), k.gathered(stage))
    ]
    per_stage, sealed, seeded, usage, flags = await scripts.script(client, "snapshot")(
        keys=[*stage_keys, k.sealed, k.seeded, k.usage, k.flags], args=[keys_.GROUP]
    )
    counts = {}
    for stage, (length, pending, delayed, flat, gathered) in zip(stages, per_stage, strict=True):
        running = int(pending)
        counts[stage] = StageCounts(
            ready=max(0, int(length) - running),
            running=running,
            retrying=int(delayed),
            counters={str(name): int(value) for name, value in zip(flat[::2], flat[1::2], strict=True)},
            gathered=int(gathered),
        )
    return Snapshot(
        counts,
        frozenset(str(s) for s in sealed),
        bool(seeded),
        {str(f): int(v) for f, v in zip(usage[::2], usage[1::2], strict=True)},
        {str(f): str(v) for f, v in zip(flags[::2], flags[1::2], strict=True)},
    )


def collected_id(items: Iterable[str]) -> str:
    """The item id of a collect stage's one message: the items' common parent, or ``all``."""
    parents = {item.rsplit("/", 1)[0] for item in items if "/" in item}
    if len(parents) == 1 and all("/" in item for item in items):
        return parents.pop()
    return "all"


async def collect(client: Redis, uid: str, stage: str) -> int:
    """Fan-in: combine every item gathered for ``stage`` into one message; once. Returns how many."""
    k = keys_.BatchKeys(uid)
    items = [str(item) for item in await client.hkeys(k.gathered(stage))]
    collected = await scripts.script(client, "collect")(
        keys=[k.gathered(stage), k.results, k.stream(stage), k.collected(stage)],
        args=[f"{uid}/{stage}/collected", collected_id(items)],
    )
    return int(collected)


async def release(
    client: Redis,
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
        target, mode = k.stream(gate), "none"
    else:
        target, mode = (k.gathered(next_stage), "gather") if gather else (k.stream(next_stage), "stream")
    released = await scripts.script(client, "release")(
        keys=[k.stream(gate), k.outcomes, k.counts(gate), target, k.finals],
        args=[uid, gate, "*" if items is None else json.dumps(sorted(items)), limit, mode],
    )
    return int(released)


async def seed(client: Redis, uid: str, stages: Sequence[str], items: Sequence[str]) -> int:
    """Enqueue the initial items into the first stage, once; create every stage's group."""
    k = keys_.BatchKeys(uid)
    messages = [Message(item).fields() for item in items]
    script = scripts.script(client, "seed")
    enqueued = await script(
        keys=[k.seeded, k.stream(stages[0]), *(k.stream(stage) for stage in stages)],
        args=[keys_.GROUP, json.dumps(messages)],
    )
    return int(enqueued)


async def usage(client: Redis, uid: str) -> dict[str, int]:
    """The whole batch's tokens and cost so far (what budgets are checked against)."""
    raw = await client.hgetall(keys_.BatchKeys(uid).usage)
    return {str(field): int(value) for field, value in raw.items()}


async def raise_flag(client: Redis, uid: str, flag: str, why: str) -> bool:
    """Tell the operator something (once): True if this call raised it."""
    return bool(await client.hsetnx(keys_.BatchKeys(uid).flags, flag, why))


async def seal(client: Redis, uid: str, stage: str) -> None:
    """Mark ``stage`` as receiving no more work: its Job-mode workers exit once it has drained."""
    await client.sadd(keys_.BatchKeys(uid).sealed, stage)


# ---------------------------------------------------------------- finals and re-runs

FinalStatus = Literal["succeeded", "failed", "dead"]
_FINAL_STATUSES: dict[str, FinalStatus] = {"succeeded": "succeeded", "failed": "failed", "dead": "dead"}


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
    status = _FINAL_STATUSES.get(str(outcome.get("status")), "failed")
    error = _optional_str(outcome.get("error"))
    if status == "failed" and error is None and not outcome:
        error = "no outcome recorded"
    return FinalRecord(
        item=parsed.item,
        stage=parsed.stage,
        status=status,
        round=parsed.round,
        attempt=parsed.attempt,
        idem=idem,
        output=output if status == "succeeded" else None,
        error=error if status != "succeeded" else None,
        error_class=_optional_str(outcome.get("error_class")) if status != "succeeded" else None,
        model=_optional_str(outcome.get("model")),
        input_tokens=_optional_int(outcome.get("in")),
        output_tokens=_optional_int(outcome.get("out")),
    )


async def finals(client: Redis, uid: str, start: int, count: int) -> list[FinalRecord]:
    """Up to ``count`` ends of the batch from position ``start`` of its finals list, in order; one round trip.

    The list only grows, so a reader keeps its own cursor (how many it has
    consumed) and asks from there; fewer than ``count`` records means it has
    caught up for now.
    """
    if count <= 0 or start < 0:
        return []
    k = keys_.BatchKeys(uid)
    reply = await scripts.script(client, "finals")(
        keys=[k.finals, k.outcomes, k.results], args=[start, start + count - 1]
    )
    return [_final_record(str(idem), outcome, output) for idem, outcome, output in reply]


async def finals_length(client: Redis, uid: str) -> int:
    """How many ends the batch's finals list holds (the total an export has to reach)."""
    return int(await client.llen(keys_.BatchKeys(uid).finals))


async def retry_failed(client: Redis, uid: str, stages: Sequence[str], *, page: int = 500) -> int:
    """Re-run the items that failed for good or were dead-lettered, and only those; returns how many were requeued.

    ``stages``: every stage of the batch, in plan order. Each failed end not
    re-run before goes back into the stage where it ended, with its round,
    input and feedback, at the next attempt number with a fresh attempt
    budget (``Message.first_attempt``); its failure counter is taken back and
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
    script = scripts.script(client, "rerun")
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
