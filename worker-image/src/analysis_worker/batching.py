"""A ``mode: Batch`` stage's worker: its items go to the provider's batch API, at half the price.

One ``BatchWorker`` (a workload of one pod) serves the stage. It claims
items as a realtime worker does, up to ``concurrency`` provider batches of
``batch.maxItems`` each, and each item's task renders its request and waits
in the pool. The dispatcher submits the pool as a provider batch once it
holds ``maxItems`` requests, its oldest waited ``maxWaitSeconds``, or no
more can come (the stage is sealed, or no stage that feeds it holds an
item: a judge loop's rounds need not wait), within the provider's limits on
requests and bytes and what the budget has room for (each request's worst
case, its whole ``maxTokens`` of output at the batch price, is held against
the budget until the batch is collected). A poller per provider batch reads
its progress, backing off to ``POLL_MAX_S``, and once it ended hands each
request's result to its item's task, which finishes the attempt as a
realtime call's answer is finished (``loop.Worker._answered``: routing,
fan-out, judge rounds, usage and cost, here at the batch price) or fails it
by the error taxonomy and the stage's retry policy, item by item. A
provider batch that failed as a whole fails each of its requests so. Once
every item of a batch is recorded, the provider's copy (prompts and
answers) is deleted and the record goes.

The items of a provider batch stay claimed by this worker, their leases
renewed, so no other worker's reclaim or dead-lettering ever sees them. The
record in Redis (``consumer.ProviderBatchRecord``: tag, the provider's id
once known, ``custom_id`` -> stream entry) is written before the batch is
submitted and gets the provider's id right after, so a restarted worker
takes the entries over at once (``consumer.StageQueue.adopt``) and:

- a batch with an id is polled and collected, never submitted again;
- a batch without one (the worker stopped between writing the record and
  recording the id) is looked for by its tag (OpenAI keeps it in the batch's
  metadata); found, it is collected; not found (never created, or Anthropic,
  which keeps no metadata), its items are gathered again. Anthropic may then
  hold one orphaned batch per such stop, whose results nobody reads: a
  request may run twice at the provider, an attempt's result is recorded once.

Suspending the batch stops claiming and submitting: items not yet submitted
are handed back, submitted batches run to their end and are collected.
Deleting the batch cancels them (``wire.FLAG_DELETING``). Batch traffic does
not go through the stage's rate limiter or the account's allowance, which
govern realtime calls; a provider refusing a batch for its own queue limits
(a 429) is asked again after its retry-after or a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from analysis_core import errors, pricing, queue
from analysis_core.api import v1alpha1
from analysis_worker import consumer, loop, ratelimit
from analysis_worker.providers import base, batches

log = logging.getLogger("analysis_worker")

# The first look at a submitted batch's progress; each later one waits POLL_GROWTH times longer, up to POLL_MAX_S.
# A batch is then seen ended at most a fifth of its run time late (at 1.5, a 30 s batch was seen at 43 s), for a
# dozen more looks in its first minutes; a batch running for hours is looked at every POLL_MAX_S either way.
POLL_FIRST_S = 0.25
POLL_GROWTH = 1.2
POLL_MAX_S = 30.0
SUBMIT_BACKOFF_MAX_S = 60.0  # a refused or failed submission is tried again after at most this long
QUEUE_FULL_FIRST_WAIT_S = 1.0  # a batch refused for the provider's full queue goes again after this, doubling
DISPATCH_TICK_S = 0.1  # how often the dispatcher looks at the pool when nothing wakes it
QUIET_CHECK_S = 0.5  # how often, at most, it asks whether more items can still come before maxWaitSeconds
REQUEST_OVERHEAD_BYTES = 512  # what a request adds to a batch's size beyond its prompt (JSON, parameters)
# The providers' limits on one batch (v1alpha1 has the request counts the schema checks).
LIMITS = {
    v1alpha1.ProviderType.ANTHROPIC: (v1alpha1.ANTHROPIC_BATCH_MAX_REQUESTS, v1alpha1.ANTHROPIC_BATCH_MAX_BYTES),
    v1alpha1.ProviderType.OPENAI: (v1alpha1.OPENAI_BATCH_MAX_REQUESTS, v1alpha1.OPENAI_BATCH_MAX_BYTES),
}
# A submission that failed with one of these may be tried again as it is.
_TRANSIENT = frozenset(
    {
        errors.ErrorClass.RATE_LIMITED,
        errors.ErrorClass.OVERLOADED,
        errors.ErrorClass.TIMEOUT,
        errors.ErrorClass.NETWORK,
        errors.ErrorClass.UNKNOWN,
    }
)
# ... and after one of these the batch may exist at the provider all the same: look for it before submitting again.
_MAYBE_CREATED = frozenset({errors.ErrorClass.TIMEOUT, errors.ErrorClass.NETWORK, errors.ErrorClass.UNKNOWN})
NANO = Decimal(10) ** 9

Answer = tuple[base.Completion, int]  # a request's completion, and when its batch was submitted (ms)


@dataclasses.dataclass
class Pending:
    """One attempt's request, waiting for a provider batch to carry it and for its answer."""

    custom_id: str
    entry_id: str
    request: base.Request
    answer: asyncio.Future[Answer]
    size: int  # bytes it adds to a batch, about
    worst_nusd: int  # its cost if it used its whole maxTokens, at the batch price
    worst_tokens: int
    since: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class InFlight:
    """A provider batch this worker submitted or took over, until its results are recorded."""

    tag: str
    batch_id: str
    entries: dict[str, str]  # custom_id -> stream entry id
    requests: dict[str, Pending] = dataclasses.field(default_factory=dict)  # the tasks waiting on it, by custom_id
    early: dict[str, Answer | errors.ProviderError] = dataclasses.field(default_factory=dict)
    submitted_ms: int = 0

    def attach(self, pending: Pending) -> None:
        """A task of a taken-over batch waits on it from now on (its answer may be here already)."""
        self.requests[pending.custom_id] = pending
        said = self.early.pop(pending.custom_id, None)
        if said is not None:
            _settle(pending.answer, said)

    def resolve(self, custom_id: str, said: Answer | errors.ProviderError) -> None:
        pending = self.requests.get(custom_id)
        if pending is None:
            if custom_id in self.entries:  # its task has yet to attach (a worker that took the batch over)
                self.early[custom_id] = said
            return
        _settle(pending.answer, said)


def _settle(future: asyncio.Future[Answer], said: Answer | errors.ProviderError) -> None:
    if future.done():
        return
    if isinstance(said, errors.ProviderError):
        future.set_exception(said)
    else:
        future.set_result(said)


def choose(
    pool: Sequence[Pending],
    *,
    max_items: int,
    max_bytes: int,
    room_nusd: int | None,
    room_tokens: int | None,
    overshoot: bool = True,
) -> list[Pending]:
    """The requests of the next provider batch: the pool's oldest first, within its count and byte limits and the
    budget's room (None: no limit). With ``overshoot`` (nothing in flight holds part of the budget), one request
    goes whatever its worst case, as a realtime call may overshoot the budget; without, only what fits goes (the
    batches in flight settle soon and give back most of what they hold)."""
    chosen: list[Pending] = []
    size = nusd = tokens = 0
    for pending in pool:
        if pending.answer.done():
            continue
        if len(chosen) >= max_items or (chosen and size + pending.size > max_bytes):
            break
        fits = (room_nusd is None or nusd + pending.worst_nusd <= room_nusd) and (
            room_tokens is None or tokens + pending.worst_tokens <= room_tokens
        )
        if not fits and (chosen or not overshoot):
            break
        chosen.append(pending)
        size, nusd, tokens = size + pending.size, nusd + pending.worst_nusd, tokens + pending.worst_tokens
    return chosen


class BatchWorker(loop.Worker):
    """``loop.Worker`` for a ``mode: Batch`` stage: the same claims, leases and completions, another way to call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options, provider_plan = self.stage.batch, self.provider_plan
        if options is None or provider_plan is None:
            raise ValueError(f"stage {self.stage.name} is not a mode: Batch stage with a provider")
        self.options = options
        self.batch_priced = True
        self.consults_limiter = False  # the realtime limits are not the batch API's
        self.allowance = None
        most_requests, self.max_bytes = LIMITS.get(provider_plan.type, (options.max_items, 2**62))
        self.max_items = min(options.max_items, most_requests)
        # What the stage holds at once: its concurrency counts provider batches in flight, each of maxItems.
        self.concurrency = self.stage.concurrency * options.max_items
        self.queue.concurrency = self.concurrency
        self.pool: list[Pending] = []
        self.flights: dict[str, InFlight] = {}  # by tag
        self._adopted: dict[str, str] = {}  # custom_id -> the tag of the taken-over batch that carries it
        self._pool_changed = asyncio.Event()
        self._pollers: set[asyncio.Task[None]] = set()
        self._hold_until = 0.0  # monotonic: no batch is submitted before (the provider's batch queue was full)
        self._queue_full_count = 0  # batches refused in a row for a full queue
        self._batch_stages = [s.name for s in self.plan.stages if s.mode is v1alpha1.StageMode.BATCH]
        self._feeders = self.plan.feeders(self.stage.name)
        self._next_quiet_check = 0.0  # monotonic: when _nothing_comes looks at the feeding stages again

    @property
    def batch_provider(self) -> batches.BatchProvider:
        return self.provider  # type: ignore[return-value]  # every provider type implements the batch API

    # ---------------------------------------------------------------- starting: take over what was in flight

    async def _resume(self) -> None:
        """Take over the stage's provider batches in flight (a restart): collect those with an id, look for the
        others by their tag, and gather the items of those never submitted again."""
        records = await self.queue.provider_batches()
        for record in records.values():
            held = await self.queue.adopt(record.requests.values())
            batch_id = record.batch_id or await self._look_up(record.tag)
            if batch_id and not record.batch_id:
                await self.queue.batch_submitted(record.tag, batch_id)
            if not batch_id:
                await self._forget_unsubmitted(record.tag)
                await self.queue.batch_ended(record.tag)
                log.info(
                    "a provider batch never submitted: its items are gathered again",
                    extra={"fields": {"tag": record.tag, "items": len(held)}},
                )
                self._start(held)
                continue
            flight = InFlight(record.tag, batch_id, dict(record.requests), submitted_ms=record.at_ms)
            self.flights[record.tag] = flight
            for custom_id in record.requests:
                self._adopted[custom_id] = record.tag
            log.info(
                "took over a provider batch",
                extra={"fields": {"tag": record.tag, "batch": batch_id, "items": len(held)}},
            )
            self._start(held)
            self._poll(flight)

    async def _look_up(self, tag: str) -> str | None:
        """A batch prepared before a stop, found by its tag; asked until the provider answers, since taking an
        unanswered look for "not found" would submit the same requests again."""
        wait = 1.0
        while True:
            try:
                return await self.batch_provider.find_batch(tag)
            except errors.ProviderError as exc:
                fields = {"tag": tag, "error": exc.message, "wait_s": wait}
                log.warning("could not look for a provider batch; looking again", extra={"fields": fields})
            await asyncio.sleep(wait)
            wait = min(wait * 2, POLL_MAX_S)

    async def _find(self, tag: str) -> str | None:
        try:
            return await self.batch_provider.find_batch(tag)
        except errors.ProviderError as exc:
            log.warning("could not look for a provider batch", extra={"fields": {"tag": tag, "error": exc.message}})
            return None

    async def _forget_unsubmitted(self, tag: str) -> None:
        try:
            await self.batch_provider.forget_unsubmitted(tag)
        except errors.ProviderError as exc:
            log.warning(
                "what the provider keeps of a batch never created was not deleted",
                extra={"fields": {"tag": tag, "error": exc.message}},
            )

    def _helpers(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._dispatch_loop(), name="dispatcher")]

    # ---------------------------------------------------------------- one item

    async def _call(self, delivery: consumer.Delivery) -> tuple[base.Completion, int]:
        """Render the attempt's request and wait for its provider batch's answer (and when it was submitted)."""
        message = delivery.message
        request, prompt, _shared = await self._request_for(message)
        assert self.provider_plan is not None  # __init__ checked
        idem = self.queue.keys.idem(self.stage.name, message.item, message.round, message.attempt)
        input_tokens = ratelimit.estimate_input_tokens(prompt)
        worst = pricing.Tokens(input_tokens, self.provider_plan.max_tokens)
        pending = Pending(
            batches.custom_id(idem),
            delivery.entry_id,
            request,
            asyncio.get_running_loop().create_future(),
            len(prompt.encode()) + len(request.system or "") + REQUEST_OVERHEAD_BYTES,
            int(self.prices.cost_of(self.provider_plan.model, worst, batch=True) * NANO),
            worst.prompt + worst.output,
        )
        tag = self._adopted.pop(pending.custom_id, None)
        flight = self.flights.get(tag) if tag else None
        if flight is not None:
            flight.attach(pending)
        else:
            self.pool.append(pending)
            self._pool_changed.set()
        completion, submitted_ms = await pending.answer
        self.metrics.usage(completion.tokens, self.prices.cost_of(completion.model, completion.tokens, batch=True))
        return completion, submitted_ms

    # ---------------------------------------------------------------- gathering and submitting

    async def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._dispatch()
            except queue.UNAVAILABLE as exc:
                log.warning("redis unavailable", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(1.0)
                continue
            except Exception:
                log.exception("gathering or submitting failed; trying again")
                await asyncio.sleep(1.0)
                continue
            self._pool_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISPATCH_TICK_S):
                    await self._pool_changed.wait()

    async def _dispatch(self) -> None:
        self.pool = [p for p in self.pool if not p.answer.done()]
        if not self.pool:
            return
        if self._suspended:
            await self._hand_back_pool()
            return
        if self._over_budget or len(self.flights) >= self.stage.concurrency or time.monotonic() < self._hold_until:
            return
        oldest = time.monotonic() - self.pool[0].since
        if len(self.pool) < self.max_items and oldest < self.options.max_wait_s and not await self._nothing_comes():
            return
        room_nusd, room_tokens, held = await self._budget_room()
        if (room_nusd is not None and room_nusd <= 0) or (room_tokens is not None and room_tokens <= 0):
            if not held:  # nothing in flight will settle: the budget is used up
                why = f"the budget has no room for the next provider batch of stage {self.stage.name}"
                self._over_budget = why
                await consumer.raise_budget_exceeded(self.client, self.cfg.batch_uid, why)
                log.warning("budget used up: nothing more is submitted", extra={"fields": {"why": why}})
            return
        group = choose(
            self.pool,
            max_items=self.max_items,
            max_bytes=self.max_bytes,
            room_nusd=room_nusd,
            room_tokens=room_tokens,
            overshoot=not held,
        )
        if not group:  # the budget's room waits for the batches in flight to settle
            return
        chosen = {id(p) for p in group}
        self.pool = [p for p in self.pool if id(p) not in chosen]
        await self._submit(group)

    async def _nothing_comes(self) -> bool:
        """Whether waiting longer gathers nothing more: the stage is sealed, or it has no retry waiting and nothing
        it could still claim, and none of the stages that feed it (``plan.Plan.feeders``) holds an item (looked at
        every ``QUIET_CHECK_S`` at most). Items a collect stage gathers for the operator are not seen: a batch may
        then go a little early."""
        now = time.monotonic()
        if now < self._next_quiet_check:
            return False
        self._next_quiet_check = now + QUIET_CHECK_S
        if await self.queue.sealed():
            return True
        own = await self.queue.counts()
        if own.retrying or (own.ready and len(self.inflight) < self.concurrency):
            return False  # its own retries come back, and what is in its stream can still be claimed
        for name in self._feeders:
            counts = await consumer.stage_counts(self.client, self.cfg.batch_uid, name)
            if not counts.drained:
                return False
        return True

    async def _budget_room(self) -> tuple[int | None, int | None, bool]:
        """What the budget has left for another provider batch after what is spent and what batches in flight
        hold (None: that side has no limit), and whether any batch in flight holds some of it."""
        budget = self.plan.budget
        if budget is None:
            return None, None, False
        used = await consumer.usage(self.client, self.cfg.batch_uid)
        held_nusd, held_tokens = await consumer.reserved(self.client, self.cfg.batch_uid, self._batch_stages)
        return *budget.room(used, held_nusd, held_tokens), bool(held_nusd or held_tokens)

    async def _submit(self, group: list[Pending]) -> None:
        tag = f"{self.stage.name[:20]}-{uuid.uuid4().hex[:16]}"
        record = consumer.ProviderBatchRecord(
            tag,
            "",
            consumer.now_ms(),
            {p.custom_id: p.entry_id for p in group},
            sum(p.worst_nusd for p in group),
            sum(p.worst_tokens for p in group),
        )
        try:
            await self.queue.prepare_batch(record)
        except BaseException:
            self.pool[:0] = group  # nothing was written: they wait for the next try
            raise
        flight = InFlight(tag, "", dict(record.requests), {p.custom_id: p for p in group})
        self.flights[tag] = flight
        batch_id = await self._create(flight, group)
        if batch_id is None:
            return
        flight.batch_id, flight.submitted_ms = batch_id, consumer.now_ms()
        while True:  # the batch exists: its id must be kept, or a restart would look for it (or orphan it)
            try:
                await self.queue.batch_submitted(tag, batch_id)
                break
            except queue.UNAVAILABLE as exc:
                log.warning("redis unavailable; keeping the batch's id again", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(1.0)
        log.info("provider batch submitted", extra={"fields": {"tag": tag, "batch": batch_id, "items": len(group)}})
        self._poll(flight)

    async def _create(self, flight: InFlight, group: list[Pending]) -> str | None:
        """Submit the batch, as often as the provider's answers allow; None when it refused it for good (each of
        its requests then fails with the refusal, by the stage's retry policy)."""
        requests = [(p.custom_id, p.request) for p in group]
        failures = 0
        while True:
            try:
                return await self.batch_provider.submit_batch(requests, flight.tag)
            except errors.ProviderError as exc:
                failures += 1
                fields = {"tag": flight.tag, "error_class": str(exc.error_class), "error": exc.message}
                if exc.error_class not in _TRANSIENT or self._stopping.is_set():
                    log.warning("provider batch refused", extra={"fields": fields})
                    for pending in group:
                        _settle(pending.answer, exc)
                    await self._ended(flight)
                    return None
                if exc.error_class in _MAYBE_CREATED:
                    found = await self._find(flight.tag)
                    if found:
                        return found
                wait = exc.retry_after_s or min(SUBMIT_BACKOFF_MAX_S, 2.0**failures)
                log.warning("provider batch not taken; submitting again", extra={"fields": {**fields, "wait_s": wait}})
                await asyncio.sleep(wait)

    async def _hand_back_pool(self) -> None:
        """Suspended: items not submitted yet go back to the stream, for when the batch resumes."""
        pool, self.pool = self.pool, []
        tasks = [self.inflight[p.entry_id] for p in pool if p.entry_id in self.inflight]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        handed = await self.queue.hand_back(p.entry_id for p in pool)
        log.info("suspended: items not submitted handed back", extra={"fields": {"count": handed}})

    # ---------------------------------------------------------------- polling and collecting

    def _poll(self, flight: InFlight) -> None:
        task = asyncio.create_task(self._collecting(flight), name=f"poll:{flight.tag}")
        self._pollers.add(task)
        task.add_done_callback(self._pollers.discard)

    async def _collecting(self, flight: InFlight) -> None:
        """``_collect`` until it gets through: each of its steps may be taken again (a result already handed to its
        item is not handed again, deleting what is gone is no error), so Redis away or a surprise starts it over."""
        while True:
            try:
                await self._collect(flight)
                return
            except queue.UNAVAILABLE as exc:
                log.warning("redis unavailable; collecting again", extra={"fields": {"error": str(exc)}})
            except Exception:
                log.exception(
                    "collecting a provider batch failed; collecting again", extra={"fields": {"tag": flight.tag}}
                )
            await asyncio.sleep(1.0)

    async def _collect(self, flight: InFlight) -> None:
        """Wait for the batch to end, hand each request its result, then delete the provider's copy and the record."""
        delay = POLL_FIRST_S
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * POLL_GROWTH, POLL_MAX_S)
            try:
                progress = await self.batch_provider.batch_progress(flight.batch_id)
            except errors.ProviderError as exc:
                if exc.status == 404:
                    self._fail_all(flight, f"the provider no longer knows batch {flight.batch_id}: {exc.message}")
                    break
                log.warning("provider batch progress unknown", extra={"fields": self._fields(flight, exc)})
                continue
            if not progress.ended:
                continue
            if progress.failed and progress.queue_full:
                await self._queue_full(flight, progress.failed)
                return
            if progress.failed:
                self._fail_all(flight, f"provider batch {flight.batch_id} failed: {progress.failed}")
                break
            answered: set[str] = set()
            try:
                async for result in self.batch_provider.batch_results(flight.batch_id):
                    said: Answer | errors.ProviderError = (
                        result.error if result.error is not None else (result.completion, flight.submitted_ms)  # type: ignore[assignment]
                    )
                    flight.resolve(result.custom_id, said)
                    answered.add(result.custom_id)
            except errors.ProviderError as exc:
                log.warning("provider batch results unread; reading again", extra={"fields": self._fields(flight, exc)})
                continue
            for custom_id in flight.entries.keys() - answered:  # a request the results left out ran out of time
                flight.resolve(custom_id, batches.expired(custom_id).error)  # type: ignore[arg-type]
            self._queue_full_count = 0
            log.info(
                "provider batch ended",
                extra={"fields": {"tag": flight.tag, "batch": flight.batch_id, "status": progress.status}},
            )
            break
        await self._wait_recorded(flight)
        await self._forget(flight)
        await self._ended(flight)

    async def _forget(self, flight: InFlight) -> None:
        """Delete the provider's copy of a batch (its prompts and answers); a failure is logged, not retried."""
        try:
            await self.batch_provider.forget_batch(flight.batch_id)
        except errors.ProviderError as exc:
            log.warning("the provider's copy of a batch was not deleted", extra={"fields": self._fields(flight, exc)})

    async def _queue_full(self, flight: InFlight, why: str) -> None:
        """The provider's queue for batches was full: nothing ran. The requests go back to the front of the pool,
        without using an attempt, and nothing is submitted until a backoff has passed (doubling while it lasts)."""
        self._queue_full_count += 1
        wait = min(SUBMIT_BACKOFF_MAX_S, QUEUE_FULL_FIRST_WAIT_S * 2 ** (self._queue_full_count - 1))
        self._hold_until = time.monotonic() + wait
        fields = {"tag": flight.tag, "batch": flight.batch_id, "why": why, "wait_s": wait}
        log.warning("the provider's batch queue is full: the batch goes again", extra={"fields": fields})
        waiting = [p for p in flight.requests.values() if not p.answer.done()]
        await self._forget(flight)
        await self._ended(flight)
        self.pool[:0] = waiting

    def _fail_all(self, flight: InFlight, why: str) -> None:
        log.warning("provider batch failed as a whole", extra={"fields": {"tag": flight.tag, "why": why}})
        for custom_id in flight.entries:
            flight.resolve(custom_id, errors.ProviderError(errors.ErrorClass.UNKNOWN, why))

    async def _wait_recorded(self, flight: InFlight) -> None:
        """Until every item the batch carried is recorded (or its task ended otherwise)."""
        while True:
            tasks = [self.inflight[e] for e in flight.entries.values() if e in self.inflight]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def _ended(self, flight: InFlight) -> None:
        await self.queue.batch_ended(flight.tag)
        self.flights.pop(flight.tag, None)
        for custom_id in flight.entries:
            self._adopted.pop(custom_id, None)
        self._pool_changed.set()

    @staticmethod
    def _fields(flight: InFlight, exc: errors.ProviderError) -> dict[str, Any]:
        # Log fields, as keywords: the checks of wire names take the literals "error" and "error_class" for outcome fields.
        return dict(tag=flight.tag, batch=flight.batch_id, error_class=str(exc.error_class), error=exc.message)  # noqa: C408

    # ---------------------------------------------------------------- stopping

    async def _drain(self) -> None:
        """Stop: a batch being deleted cancels its provider batches; otherwise they keep running at the provider
        and the next worker takes them over. Items not submitted yet are handed back at once."""
        for task in list(self._pollers):
            task.cancel()
        if self._pollers:
            await asyncio.wait(set(self._pollers))
        deleting = await _deleting(self.client, self.cfg.batch_uid)
        in_flight = {e for f in self.flights.values() for e in f.entries.values()}
        if deleting:
            for flight in list(self.flights.values()):
                await self._cancel(flight)
        tasks = list(self.inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self.queue.sent()
        held = await self.queue.pending_ids(count=max(1000, self.concurrency))
        unsent = [e for e in held if deleting or e not in in_flight]
        if unsent:
            handed = await self.queue.hand_back(unsent)
            log.info("handed back items not in a provider batch", extra={"fields": {"count": handed}})
        if in_flight and not deleting:
            log.info(
                "provider batches left running for the next worker",
                extra={"fields": {"batches": len(self.flights), "items": len(in_flight)}},
            )

    async def _cancel(self, flight: InFlight) -> None:
        with contextlib.suppress(errors.ProviderError):
            if flight.batch_id:
                await self.batch_provider.cancel_batch(flight.batch_id)
                await self.batch_provider.forget_batch(flight.batch_id)
                log.info("provider batch cancelled", extra={"fields": {"tag": flight.tag, "batch": flight.batch_id}})
        await self.queue.batch_ended(flight.tag)


async def _deleting(client: queue.Redis, uid: str) -> bool:
    with contextlib.suppress(*queue.UNAVAILABLE):
        return await consumer.deleting(client, uid)
    return False
