"""The worker's side of the batch's Redis queue: claim, lease, complete, retry, reclaim, hand back.

A ``StageQueue`` is one stage's queue as one consumer (a worker pod, named by
the pod) sees it, for ``loop.Worker``; the functions below it are the
worker's reads of the whole batch (counts, usage, the flags), the budget flag
it raises and its heartbeat (``health``). The worker touches Redis through
this module and ``ratelimit`` only. Every change of state that touches more
than one key is one Lua script from ``lua/`` next to this module, so it is
atomic and replay-safe. Completing an attempt records its outcome under
the idempotency key with HSETNX, stores the result, counts, routes follow-ups
and acknowledges in one step (``complete.lua``); the first completion wins
and a duplicate (a redelivered item whose first worker was slow, not dead)
only acknowledges its own delivery. The same step can claim the consumer's
next messages, and completions handed over in the same turn of the event
loop share it (many of them in two halves, so the worker starts on the
first half's new messages while Redis runs the second), so a busy worker
needs a round trip or two per batch of items. Retries wait in a sorted set scored by
due time and are moved back into the stream when due (``retry.lua``,
``promote.lua``). Leases, redelivery and dead letters are described in
``analysis_core.queue``, with what the two sides share; the operator's side
is ``analysis_operator.producer``.

Decides nothing about routing: the caller passes the follow-up messages
(``routing``), and says whether a completion ends the item's journey.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis

from analysis_core import keys as keys_
from analysis_core import plan, queue, scripts, wire

# Most attempts one complete.lua call finishes: a script holds Redis for its whole run, so it stays short.
COMPLETIONS_PER_STEP = 100
# Completions handed over in one turn of the event loop from which they go to Redis in two steps (``finish``).
SPLIT_AT = 8
# Entries one adopt.lua call takes over: a script holds Redis for its whole run.
ADOPT_PER_STEP = 500
# Compact JSON, with the encoder built once (json.dumps with any option builds one per call).
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode


def now_ms() -> int:
    """Wall-clock milliseconds, as messages and outcomes record times."""
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A claimed message: the stream entry that holds the lease, and how often it was delivered."""

    entry_id: str
    message: queue.Message
    deliveries: int = 1


@dataclasses.dataclass(frozen=True)
class Route:
    """A follow-up message for a stage, written in the same step as the completion.

    ``gather``: the stage collects (fan-in), so the item waits in its gathering
    hash until the operator combines everything that reached it
    (``analysis_operator.producer.collect``).
    """

    stage: str
    message: queue.Message
    gather: bool = False

    def script_arg(self) -> dict[str, Any]:
        """The route as ``complete.lua`` reads it."""
        if self.gather:
            return {wire.ROUTE_GATHER: self.message.item, wire.ROUTE_INPUT: self.message.input}
        return {wire.ROUTE_FIELDS: self.message.fields()}


@dataclasses.dataclass(frozen=True)
class Claim:
    """What ``StageQueue.claim`` got: deliveries, or why none (``wire.CLAIM_*``) and the id to wait after."""

    deliveries: list[Delivery]
    empty_because: str = ""
    last_id: str = ""


def _flat(fields: Sequence[str]) -> dict[str, str]:
    """A script's ``{field, value, ...}`` as a dict."""
    return {str(name): str(value) for name, value in zip(fields[::2], fields[1::2], strict=True)}


def _decode_entries(reply: Any) -> list[tuple[str, dict[str, str]]]:
    """Entries of an XREADGROUP reply: ``[[stream, [(id, {field: value}), ...]], ...]``."""
    entries: list[tuple[str, dict[str, str]]] = []
    for _stream, stream_entries in reply or []:
        for entry_id, fields in stream_entries:
            if fields:  # None or {} for an entry deleted while it was pending
                entries.append((entry_id, fields))
    return entries


@dataclasses.dataclass(frozen=True)
class Completion:
    """An attempt's end, as ``complete.lua`` records it, and how many new messages to claim in the same step.

    ``final``: the item's journey ends with this attempt (no route onward, or
    failed for good); its key is appended to the batch's finals. ``spent``:
    keys of the item's earlier attempts nothing needs any more (an item that
    ended with a success, ``routing.spent``): their outcomes become
    ``wire.OUTCOME_SPENT`` and their results go, in the same step.
    """

    delivery: Delivery
    outcome: dict[str, Any]
    result: str | None
    increments: dict[str, int]
    routes: Sequence[Route] = ()
    more_results: dict[str, str] = dataclasses.field(default_factory=dict)
    final: bool = False
    claim: int = 0
    spent: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class ProviderBatchRecord:
    """A provider batch in flight, as its stage's record in Redis has it (``wire.PB_*``).

    ``batch_id`` is empty until the provider's id is recorded; ``requests``
    maps each request's ``custom_id`` to the stream entry of the attempt it
    runs, which the stage's worker holds until the result is recorded.
    """

    tag: str
    batch_id: str
    at_ms: int
    requests: dict[str, str]
    reserved_nusd: int = 0
    reserved_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Finished:
    """What finishing an attempt did: ``first`` False for a duplicate; the messages it claimed for this consumer."""

    first: bool
    claimed: list[Delivery]


class StageQueue:
    """The queue of one stage of one batch, as one consumer (a worker pod) sees it.

    ``budget``: the batch's budget, which a claim made with a completion
    checks (``finish``), as ``loop.Worker`` checks it before every other claim;
    ``concurrency``: the stage's cap on what its workers hold together, which
    such a claim keeps as ``claim`` does.
    """

    def __init__(
        self,
        client: queue.Redis,
        blocking: queue.Redis,
        uid: str,
        stage: str,
        consumer: str,
        *,
        budget: plan.BudgetPlan | None = None,
        concurrency: int = 0,
    ) -> None:
        self.client = client
        self.concurrency = concurrency  # the stage's cap, which a claim made with a completion keeps (0: none)
        self.blocking = blocking
        self.keys = keys_.BatchKeys(uid)
        self.stage = stage
        self.consumer = consumer
        limits = (budget.max_tokens, budget.max_cost_nusd) if budget else (None, None)
        self._budget_args = ["" if limit is None else limit for limit in limits]
        self.stream = self.keys.stream(stage)
        # Registered once: each call of a script is then its EVALSHA, with no SHA1 of its text per call.
        self._complete = scripts.function(client, "complete")
        self._retry = scripts.function(client, "retry")
        self._reclaim = scripts.function(client, "reclaim")
        self._renew = scripts.function(client, "renew")
        self._waiting: list[tuple[Completion, asyncio.Future[Finished]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def ensure_group(self) -> None:
        """Create the stage's consumer group (from the start of the stream) if it does not exist."""
        try:
            await self.client.xgroup_create(self.stream, keys_.GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---------------------------------------------------------------- claiming

    async def claim(self, count: int, concurrency: int) -> Claim:
        """Up to ``count`` new messages, so long as the stage's workers hold fewer than ``concurrency`` together.

        Never blocks: when it claims nothing, the answer says why, and
        ``wait_for_new`` waits for the stream to grow past what it saw.
        """
        reply = await scripts.function(self.client, "claim")(
            keys=[self.stream, self.keys.retiring(self.stage)],
            args=[keys_.GROUP, self.consumer, count, concurrency],
        )
        first = reply[0]
        if isinstance(first, list):
            entries = [(str(entry_id), _flat(fields)) for entry_id, fields in first if fields]
            now = now_ms()
            return Claim([Delivery(entry_id, queue.Message.from_fields(f, now)) for entry_id, f in entries])
        return Claim([], str(first), str(reply[1]) if len(reply) > 1 else "")

    async def wait_for_new(self, after: str, block_ms: int) -> None:
        """Return once the stream has an entry newer than ``after`` (or after ``block_ms``); claims nothing.

        A blocking ``XREAD``, not ``XREADGROUP``: the claim itself must go
        through ``claim.lua``, which keeps the stage within its concurrency.
        """
        await self.blocking.xread({self.stream: after}, count=1, block=block_ms)

    async def claim_own_pending(self, count: int) -> list[Delivery]:
        """Messages this consumer name already holds: a restarted worker resumes them at once."""
        reply = await self.client.xreadgroup(keys_.GROUP, self.consumer, {self.stream: "0"}, count=count)
        now = now_ms()
        return [
            Delivery(entry_id, queue.Message.from_fields(fields, now), 2) for entry_id, fields in _decode_entries(reply)
        ]

    async def reclaim(self, count: int, lease_ms: int, max_deliveries: int) -> list[Delivery]:
        """Take over up to ``count`` deliveries whose lease expired; dead-letter those past the bound."""
        reply = await self._reclaim(
            keys=[
                self.stream,
                self.keys.outcomes,
                self.keys.dead(self.stage),
                self.keys.counts(self.stage),
                self.keys.finals,
                self.keys.retiring(self.stage),
            ],
            args=[keys_.GROUP, self.consumer, lease_ms, count, max_deliveries, self.keys.uid, self.stage],
        )
        now = now_ms()
        return [
            Delivery(str(entry_id), queue.Message.from_fields(fields, now), int(n)) for entry_id, fields, n in reply
        ]

    async def renew(self, entry_ids: Iterable[str]) -> list[str]:
        """Renew the leases of ``entry_ids``; returns those another consumer took over (finished ones are not)."""
        ids = list(entry_ids)
        if not ids:
            return []
        lost = await self._renew(keys=[self.stream], args=[keys_.GROUP, self.consumer, *ids])
        return [str(i) for i in lost]

    async def hand_back(self, entry_ids: Iterable[str]) -> int:
        """Return deliveries to the stream at once (graceful shutdown)."""
        ids = list(entry_ids)
        if not ids:
            return 0
        return int(await scripts.function(self.client, "handback")(keys=[self.stream], args=[keys_.GROUP, *ids]))

    async def adopt(self, entry_ids: Iterable[str]) -> list[Delivery]:
        """Take over ``entry_ids`` at once, from whoever held them, without counting a delivery (``adopt.lua``):
        the entries of this stage's provider batches, which a restarted worker of a ``mode: Batch`` stage resumes.
        Returns the deliveries it holds now; entries finished meanwhile are left out."""
        ids = list(entry_ids)
        deliveries: list[Delivery] = []
        adopt = scripts.function(self.client, "adopt")
        now = now_ms()
        for start in range(0, len(ids), ADOPT_PER_STEP):
            reply = await adopt(
                keys=[self.stream], args=[keys_.GROUP, self.consumer, *ids[start : start + ADOPT_PER_STEP]]
            )
            deliveries.extend(
                Delivery(str(entry_id), queue.Message.from_fields(_flat(fields), now), 2) for entry_id, fields in reply
            )
        return deliveries

    # ---------------------------------------------------------------- a mode: Batch stage's provider batches

    async def provider_batches(self) -> dict[str, ProviderBatchRecord]:
        """The stage's provider batches in flight, by tag, with their requests (``custom_id`` -> entry id)."""
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.provider_batches(self.stage))
            pipe.hgetall(self.keys.provider_batch_requests(self.stage))
            records, requests = await pipe.execute()
        found = {}
        for tag, raw in records.items():
            record = json.loads(raw)
            found[str(tag)] = ProviderBatchRecord(
                str(tag),
                str(record.get(wire.PB_ID) or ""),
                int(record.get(wire.PB_AT, 0)),
                {str(k): str(v) for k, v in json.loads(requests.get(tag) or "{}").items()},
                int(record.get(wire.PB_RESERVED_NUSD, 0)),
                int(record.get(wire.PB_RESERVED_TOKENS, 0)),
            )
        return found

    async def prepare_batch(self, record: ProviderBatchRecord) -> bool:
        """Write a provider batch's record before it is submitted; False if its tag has one already."""
        fields = {
            wire.PB_AT: record.at_ms,
            wire.PB_ID: "",
            wire.PB_REQUESTS: len(record.requests),
            wire.PB_RESERVED_NUSD: record.reserved_nusd,
            wire.PB_RESERVED_TOKENS: record.reserved_tokens,
        }
        return await self._provider_batch(wire.PB_PREPARE, record.tag, _COMPACT(fields), _COMPACT(record.requests))

    async def batch_submitted(self, tag: str, batch_id: str) -> bool:
        """Record the provider's id of a submitted batch (once); False if it had one or its record is gone."""
        return await self._provider_batch(wire.PB_SUBMITTED, tag, batch_id)

    async def batch_ended(self, tag: str) -> bool:
        """Remove a provider batch's record once its results are collected (or it was never submitted)."""
        return await self._provider_batch(wire.PB_ENDED, tag)

    async def _provider_batch(self, op: str, tag: str, *args: str) -> bool:
        keys = [
            self.keys.provider_batches(self.stage),
            self.keys.provider_batch_requests(self.stage),
            self.keys.counts(self.stage),
        ]
        return bool(await scripts.function(self.client, "provider_batch")(keys=keys, args=[op, tag, *args]))

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
        completion = Completion(delivery, outcome, result, increments, tuple(routes), more_results or {}, final)
        return (await self.finish(completion)).first

    async def finish(self, completion: Completion) -> Finished:
        """Finish an attempt for good and claim ``completion.claim`` new messages, in one step (``complete.lua``).

        Completions that arrive in the same turn of the event loop (the items
        of one claim, done together) go to Redis as one script call, or as
        two, half each, when there are ``SPLIT_AT`` or more (at most
        ``COMPLETIONS_PER_STEP`` in a call).
        """
        done: asyncio.Future[Finished] = asyncio.get_running_loop().create_future()
        self._waiting.append((completion, done))
        if len(self._waiting) == 1:
            asyncio.get_running_loop().call_soon(self._send_waiting)
        return await done

    def _send_waiting(self) -> None:
        waiting, self._waiting = self._waiting, []
        # Many at once go in two steps, not one: the reply to the first brings the messages it claimed, which the
        # worker starts on while Redis runs the second (in one step, each would wait for the other). Fewer go in
        # one, so the halves of a busy worker stay as they are instead of splitting into ever smaller steps.
        step = COMPLETIONS_PER_STEP
        if len(waiting) >= SPLIT_AT:
            step = min(COMPLETIONS_PER_STEP, (len(waiting) + 1) // 2)
        for start in range(0, len(waiting), step):
            # A task of its own: an item cancelled while it waits (shutdown) does not cancel the others' write.
            task = asyncio.create_task(self._send(waiting[start : start + step]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[Completion, asyncio.Future[Finished]]]) -> None:
        try:
            finished = await self._finish_all([completion for completion, _ in batch])
        except Exception as exc:  # noqa: BLE001 (each waiting item gets the error, as its own call would have)
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        except BaseException:
            for _, done in batch:
                done.cancel()
            raise
        for (_, done), each in zip(batch, finished, strict=True):
            # An item cancelled meanwhile (shutdown) leaves what was claimed for it pending: the drain hands it back.
            if not done.done():
                done.set_result(each)

    async def sent(self) -> None:
        """Wait until every completion handed to ``finish`` has been written (or has failed)."""
        while self._waiting or self._sending:
            if self._sending:
                await asyncio.wait(set(self._sending))  # unlike gather, never cancels them
            else:
                await asyncio.sleep(0)  # the waiting ones are sent on the loop's next turn

    async def _finish_all(self, completions: Sequence[Completion]) -> list[Finished]:
        keys = [
            self.stream,
            self.keys.outcomes,
            self.keys.results,
            self.keys.counts(self.stage),
            self.keys.usage,
            self.keys.finals,
            self.keys.flags,
            self.keys.retiring(self.stage),
        ]
        args: list[Any] = [
            keys_.GROUP,
            self.consumer,
            sum(c.claim for c in completions),
            *self._budget_args,
            self.concurrency,
        ]
        attempts: list[list[Any]] = []
        texts: list[str] = []  # each attempt's outcome and result, beside the JSON (complete.lua's ARGV[8..])
        for c in completions:
            message = c.delivery.message
            first_route_key = len(keys) + 1  # Lua counts from 1
            keys.extend(self.keys.gathered(r.stage) if r.gather else self.keys.stream(r.stage) for r in c.routes)
            attempts.append(
                [
                    c.delivery.entry_id,
                    self.keys.idem(self.stage, message.item, message.round, message.attempt),
                    c.result is not None,
                    c.increments,
                    [route.script_arg() for route in c.routes],
                    first_route_key,
                    c.more_results,
                    c.final,
                    list(c.spent),
                ]
            )
            texts += [_COMPACT(c.outcome), c.result or ""]
        args += [_COMPACT(attempts), *texts]
        done, entries = await self._complete(keys=keys, args=args)
        now = now_ms()
        claimed = [Delivery(str(entry_id), queue.Message.from_fields(fields, now)) for entry_id, fields in entries]
        finished = []
        for c, first in zip(completions, done, strict=True):
            finished.append(Finished(bool(first), claimed[: c.claim]))
            claimed = claimed[c.claim :]
        return finished

    async def retry(
        self,
        delivery: Delivery,
        next_message: queue.Message,
        *,
        delay_ms: int,
        outcome: dict[str, Any] | None,
        increments: dict[str, int],
    ) -> bool:
        """Schedule ``next_message`` after ``delay_ms``; ``outcome`` None keeps the attempt (rate limits)."""
        message = delivery.message
        idem = self.keys.idem(self.stage, message.item, message.round, message.attempt)
        scheduled = await self._retry(
            keys=[
                self.stream,
                self.keys.outcomes,
                self.keys.delayed(self.stage),
                self.keys.counts(self.stage),
                self.keys.usage,
            ],
            args=[
                keys_.GROUP,
                delivery.entry_id,
                idem,
                "" if outcome is None else _COMPACT(outcome),
                max(0, delay_ms),
                json.dumps(next_message.fields()),
                json.dumps(increments),
            ],
        )
        return bool(scheduled)

    async def promote(self, limit: int = 100) -> tuple[int, int]:
        """Move due retries into the stream; returns (moved, ms until the next is due or -1)."""
        moved, wait = await scripts.function(self.client, "promote")(
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

    async def counts(self) -> queue.StageCounts:
        return await stage_counts(self.client, self.keys.uid, self.stage)

    async def pending_ids(self, count: int = 1000) -> list[str]:
        """Entries this consumer holds (claimed, not acknowledged)."""
        rows = await self.client.xpending_range(
            self.stream, keys_.GROUP, min="-", max="+", count=count, consumername=self.consumer
        )
        return [str(row["message_id"]) for row in rows]

    async def sealed(self) -> bool:
        return bool(await self.client.sismember(self.keys.sealed, self.stage))


async def stage_counts(client: queue.Redis, uid: str, stage: str) -> queue.StageCounts:
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
    return queue.StageCounts(
        ready=max(0, length - running),
        running=running,
        retrying=int(retrying),
        counters={name: int(value) for name, value in (counters or {}).items()},
    )


async def reserved(client: queue.Redis, uid: str, stages: Iterable[str]) -> tuple[int, int]:
    """What the provider batches of ``stages`` (``mode: Batch``) hold against the budget until they are collected:
    nano-dollars and tokens, each batch's worst case."""
    k = keys_.BatchKeys(uid)
    names = list(stages)
    if not names:
        return 0, 0
    async with client.pipeline(transaction=False) as pipe:
        for stage in names:
            pipe.hvals(k.provider_batches(stage))
        replies = await pipe.execute()
    nusd = tokens = 0
    for values in replies:
        for raw in values:
            record = json.loads(raw)
            nusd += int(record.get(wire.PB_RESERVED_NUSD, 0))
            tokens += int(record.get(wire.PB_RESERVED_TOKENS, 0))
    return nusd, tokens


async def usage(client: queue.Redis, uid: str) -> dict[str, int]:
    """The whole batch's tokens and cost so far (what budgets are checked against)."""
    raw = await client.hgetall(keys_.BatchKeys(uid).usage)
    return {str(field): int(value) for field, value in raw.items()}


async def layout(client: queue.Redis, uid: str) -> int | None:
    """The layout version the batch was seeded with (``keys.LAYOUT_VERSION`` then); None before seeding."""
    value = await client.get(keys_.BatchKeys(uid).seeded)
    return None if value is None else int(value)


async def suspended(client: queue.Redis, uid: str) -> bool:
    """The operator suspended the batch (``spec.suspend``, a failed batch, a deletion): claim nothing now."""
    return bool(await client.hexists(keys_.BatchKeys(uid).flags, wire.FLAG_SUSPENDED))


async def deleting(client: queue.Redis, uid: str) -> bool:
    """The batch is being deleted: a stopping worker cancels its provider batches rather than leave them running."""
    return bool(await client.hexists(keys_.BatchKeys(uid).flags, wire.FLAG_DELETING))


async def raise_budget_exceeded(client: queue.Redis, uid: str, why: str) -> bool:
    """Tell every worker and the operator that the budget is used up (once): True if this call said it first."""
    return bool(await client.hsetnx(keys_.BatchKeys(uid).flags, wire.FLAG_BUDGET_EXCEEDED, why))


async def beat(
    client: queue.Redis, uid: str, stage: str, pod: str, *, in_flight: int, ttl_s: float, about: Mapping[str, Any]
) -> None:
    """Write this worker's heartbeat, which expires after ``ttl_s`` unless written again.

    ``in_flight`` is what the operator reads (``producer.items_in_flight``);
    ``about`` (the worker's tallies) is there for people reading the key.
    """
    payload = {wire.BEAT_AT: time.time(), wire.BEAT_POD: pod, wire.BEAT_IN_FLIGHT: in_flight, **about}
    await client.set(keys_.BatchKeys(uid).health(stage, pod), json.dumps(payload), px=int(ttl_s * 1000))


async def beating(client: queue.Redis, uid: str, stage: str, pod: str) -> bool:
    """This worker's heartbeat has not expired."""
    return bool(await client.exists(keys_.BatchKeys(uid).health(stage, pod)))
