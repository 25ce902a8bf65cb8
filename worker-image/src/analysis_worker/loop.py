"""The worker loop: claim, wait for the limiter, render, call, classify, complete or retry.

One ``Worker`` serves one stage of one batch. Three tasks run side by side:

- the claimer takes messages from the stage's stream (first the ones this
  pod name already held, then expired leases of dead workers, then new work,
  waiting briefly for it) and starts one task per message, at most
  ``concurrency`` (the pod's calls) at a time, while the stage's workers
  together hold fewer than the stage's ``concurrency`` (``claim.lua`` checks
  both in one step, and refuses a worker the operator retired to scale in);
- each item task renders the prompt, waits for the stage's shared limiter
  (its ``rateLimit``, and the pauses a 429 or a refusal for quota puts on the
  whole stage), calls the provider under the stage's deadline, and finishes
  the attempt in one atomic step (``consumer.StageQueue.complete``) or
  schedules a retry as the error taxonomy decides
  (``analysis_core.errors.decide``); while the provider refuses for quota,
  only the limiter's probe calls, and the item it refused waits for the next
  probe without using an attempt;
- the keeper renews the leases of items in flight, moves due retries back
  into the stream, and writes the health key.

In Job mode the worker returns once the stage is sealed and drained; in
Deployment mode it idles. ``stop()`` (SIGTERM) stops claiming, lets items in
flight finish within the grace period, then cancels the rest and hands their
messages back so another worker picks them up at once. Nothing is lost at any
point in between: a message is acknowledged only in the same step that
records its outcome, and a worker that dies leaves its leases to expire.

What happens along the way is counted in ``metrics`` (outcomes, error
classes, verdicts, tokens and cost, provider latency, limiter waits and
pauses, redeliveries), served on ``ANALYSIS_METRICS_PORT`` from the start of ``run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from decimal import Decimal
from typing import Any

from analysis_core import env, errors, plan, pricing, queue, wire
from analysis_core.api import v1alpha1
from analysis_worker import account, consumer, deadlines, health, metrics, priming, ratelimit, routing, templates
from analysis_worker import config as config_
from analysis_worker.providers import base

log = logging.getLogger("analysis_worker")

CLAIM_BLOCK_MS = 500
KEEPER_TICK_S = 0.25
CLAIM_BLOCKED_RECHECK_S = 0.5  # how soon a suspended, over-budget or retired worker looks again
STAGE_FULL_RECHECK_S = 0.05  # how soon a worker looks again for a slot another worker's call freed
NANO = Decimal(10) ** 9
NO_TOKENS = pricing.Tokens(0, 0)  # a call that did not answer
# A shared prefix shorter than this (about 1,024 tokens, the least either provider caches) is not worth priming.
MIN_SHARED_CHARS = 4 * 1024
# What a call holds when its stage skips the limiter: nothing reserved, so nothing to settle or report.
UNCONSULTED = ratelimit.Reservation("", 0, 0.0)


@dataclasses.dataclass
class Stats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    duplicates: int = 0


_now_ms = consumer.now_ms


def _output_kind(stage: plan.StagePlan) -> base.OutputKind:
    if stage.type is v1alpha1.StageType.JUDGE:
        return base.OutputKind.VERDICT
    return base.OutputKind.JSON if stage.output is v1alpha1.OutputFormat.JSON else base.OutputKind.TEXT


class Worker:
    def __init__(
        self,
        cfg: config_.WorkerConfig,
        the_plan: plan.Plan,
        provider: base.Provider,
        client: queue.Redis,
        blocking: queue.Redis,
        prices: pricing.PriceTable,
    ) -> None:
        self.cfg = cfg
        self.plan = the_plan
        self.stage = the_plan.stage(cfg.stage)
        self.provider = provider
        self.client = client
        self.prices = prices
        self.queue = consumer.StageQueue(
            client,
            blocking,
            cfg.batch_uid,
            cfg.stage,
            cfg.pod_name,
            budget=the_plan.budget,
            concurrency=self.stage.concurrency,
        )
        limits = self.stage.rate_limit
        self.limiter = ratelimit.Limiter(
            client,
            cfg.batch_uid,
            cfg.stage,
            requests_per_window=limits.requests_per_minute if limits else None,
            tokens_per_window=limits.tokens_per_minute if limits else None,
            window_s=limits.window_s if limits else plan.RATE_LIMIT_WINDOW_S,
            probe_s=cfg.quota_probe_s,
            probe_lease_s=self.stage.timeout_seconds,
        )
        # Calls in this process (the operator sets the stage's calls per pod); never more than the whole stage's.
        self.concurrency = min(cfg.concurrency or self.stage.concurrency, self.stage.concurrency)
        self.lease_s = the_plan.lease_s
        self.max_deliveries = the_plan.max_deliveries
        self.provider_plan = the_plan.providers[self.stage.provider] if self.stage.provider else None
        # A provider on a shared account: calls spend the batch's allowance of it, which the operator grants.
        self.allowance = (
            account.Allowance(client, cfg.batch_uid, self.stage.provider, call_timeout_s=self.stage.timeout_seconds)
            if self.provider_plan is not None and self.provider_plan.account is not None and self.stage.provider
            else None
        )
        # Pauses come from a real provider's answers; a stage that has neither one nor limits skips the round trip.
        self.consults_limiter = self.limiter.enabled or (
            self.provider_plan is not None and self.provider_plan.type is not v1alpha1.ProviderType.OFFLINE
        )
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.deadlines = deadlines.Deadlines(self.stage.timeout_seconds)
        self.primer = priming.Primer()
        self.metrics = metrics.StageMetrics(
            cfg.stage,
            str(self.provider_plan.type) if self.provider_plan else "none",
            self.provider_plan.model if self.provider_plan else "none",
        )
        self.metrics.track_in_flight(lambda: len(self.inflight))
        self._lost: set[str] = set()  # entries whose lease another worker took, counted once each
        self.stats = Stats()
        self._over_budget: str | None = None  # why, once the batch's budget is used up
        self._suspended = False
        self._next_reclaim = 0.0  # monotonic: when the claimer next takes over expired leases
        self._retired = False  # the operator retired this worker to scale in (consumer.StageQueue.claim)
        # Calls are priced at the provider's batch API prices (a mode: Batch stage's worker, batching.BatchWorker).
        self.batch_priced = False
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._finished = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    def use_provider(self, provider: base.Provider) -> base.Provider:
        """Make calls from now on with ``provider``; returns the one it replaces, which calls in flight still use."""
        old, self.provider = self.provider, provider
        return old

    def stop(self) -> None:
        """Stop claiming; ``run`` then drains within the grace period and returns."""
        if not self._stopping.is_set():
            log.info("stopping: no new claims", extra={"fields": {"in_flight": len(self.inflight)}})
        self._stopping.set()

    async def run(self) -> int:
        """Serve the stage until it is done (Job mode) or ``stop()``; returns the exit code."""
        port = metrics.port_from_env()
        if port:
            # Left running until the process exits, so the last figures stay scrapeable to the end.
            metrics.serve(port)
        await self.queue.ensure_group()
        await self._resume()
        log.info(
            "worker started",
            extra={
                "fields": {
                    "pod": self.cfg.pod_name,
                    "mode": self.cfg.mode.value,
                    "concurrency": self.concurrency,
                    "lease_s": self.lease_s,
                }
            },
        )
        claimer = asyncio.create_task(self._claim_loop(), name="claimer")
        keeper = asyncio.create_task(self._keep_loop(), name="keeper")
        stop_wait = asyncio.create_task(self._stopping.wait())
        done_wait = asyncio.create_task(self._finished.wait())
        helpers = self._helpers()
        try:
            await asyncio.wait({claimer, stop_wait, done_wait}, return_when=asyncio.FIRST_COMPLETED)
            failure = claimer.exception() if claimer.done() else None
            if failure is not None:
                raise failure
        finally:
            claimer.cancel()
            # A cancelled blocking read may take its connection down with it; never wait on it for long.
            await asyncio.wait({claimer}, timeout=CLAIM_BLOCK_MS / 1000 + 1)
            for helper in helpers:
                helper.cancel()
            if helpers:
                await asyncio.wait(helpers)
            await self._drain()
            keeper.cancel()
            stop_wait.cancel()
            done_wait.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        log.info("worker finished", extra={"fields": dataclasses.asdict(self.stats)})
        if self.cfg.mode is config_.Mode.JOB and not self._finished.is_set():
            # Stopped before the stage was done: exit 0 would end the work-queue Job.
            return env.EXIT_STOPPED_EARLY
        return 0

    async def _resume(self) -> None:
        """Before claiming: take over what a stopped worker of the stage left in flight (``batching``); nothing here."""

    def _helpers(self) -> list[asyncio.Task[None]]:
        """Tasks that run beside the claimer and the keeper until the worker stops (``batching``); none here."""
        return []

    async def _drain(self) -> None:
        """Let items in flight finish within the grace period; hand back what is left."""
        if self.inflight:
            _done, pending = await asyncio.wait(set(self.inflight.values()), timeout=self.cfg.grace_s)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Whatever this consumer still holds (cancelled items, or entries a cancelled
        # blocking read or completion had already claimed) goes back to the stream for another worker.
        await self.queue.sent()
        held = await self.queue.pending_ids()
        if held:
            handed = await self.queue.hand_back(held)
            log.info("handed back unfinished items", extra={"fields": {"count": handed}})

    # ---------------------------------------------------------------- claiming

    async def _claim_loop(self) -> None:
        """Claim until stopped; a Redis outage (a restart, with AOF) pauses claiming, it does not end it."""
        resumed = False
        while not (self._stopping.is_set() or self._finished.is_set()):
            try:
                if not resumed:
                    held = await self.queue.claim_own_pending(self.concurrency)
                    self.metrics.redelivered(metrics.Redelivery.OWN_PENDING, len(held))
                    self._start(held)
                    resumed = True
                await self._claim_until_stopped()
            except queue.UNAVAILABLE as exc:
                if self._stopping.is_set():
                    return
                log.warning("redis unavailable; claiming again in a second", extra={"fields": {"error": str(exc)}})
                await asyncio.sleep(1.0)

    async def _claim_until_stopped(self) -> None:
        lease_ms = int(self.lease_s * 1000)
        while not self._stopping.is_set():
            # Checked before every claim (complete.lua checks before a completion's): at most the items already in
            # flight run past a budget or a suspend.
            if await self._claims_blocked():
                # No new claims; items in flight finish, the rest wait for the operator.
                await asyncio.sleep(CLAIM_BLOCKED_RECHECK_S)
                continue
            free = self.concurrency - len(self.inflight)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            deliveries: list[consumer.Delivery] = []
            if time.monotonic() >= self._next_reclaim:
                deliveries = await self.queue.reclaim(free, lease_ms, self.max_deliveries)
                self.metrics.redelivered(metrics.Redelivery.EXPIRED_LEASE, len(deliveries))
                self._next_reclaim = time.monotonic() + min(self.lease_s / 4, 5.0)
            if deliveries:
                self._start(deliveries)
                continue
            self._slot_free.clear()
            claim = await self.queue.claim(free, self.queue.concurrency)
            if claim.deliveries:
                self._start(claim.deliveries)
            elif claim.empty_because == wire.CLAIM_FULL:
                # The stage holds its concurrency's worth: a call of ours ending frees a slot at once, another
                # worker's is seen at the next look.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STAGE_FULL_RECHECK_S):
                        await self._slot_free.wait()
            elif self.cfg.mode is config_.Mode.JOB and not self.inflight and await self._stage_done():
                log.info("stage sealed and drained")
                self._finished.set()
                return
            elif claim.empty_because == wire.CLAIM_RETIRED:
                if not self._retired:
                    self._retired = True
                    log.info(
                        "retired by the operator: no new claims", extra={"fields": {"in_flight": len(self.inflight)}}
                    )
                await asyncio.sleep(CLAIM_BLOCKED_RECHECK_S)
            else:
                await self.queue.wait_for_new(claim.last_id, CLAIM_BLOCK_MS)

    async def _stage_done(self) -> bool:
        if not await self.queue.sealed():
            return False
        return (await self.queue.counts()).drained

    def _start(self, deliveries: list[consumer.Delivery]) -> None:
        for delivery in deliveries:
            if delivery.entry_id in self.inflight:
                continue
            self.stats.claimed += 1
            task = asyncio.create_task(self._process(delivery), name=f"item:{delivery.message.item}")
            self.inflight[delivery.entry_id] = task
            task.add_done_callback(functools.partial(self._done, delivery.entry_id))

    def _claim_next(self) -> int:
        """How many new messages a success claims in the step that completes it (``consumer.StageQueue.finish``).

        One, to take its own slot, unless the claimer has to look first: the
        worker is stopping or retired, the batch is suspended or over budget,
        or expired leases are due to be taken over. (complete.lua checks the
        retirement, the suspend, the budget and the stage's concurrency again.)
        """
        if (
            self._stopping.is_set()
            or self._retired
            or self._suspended
            or self._over_budget
            or time.monotonic() >= self._next_reclaim
        ):
            return 0
        return 1

    def _done(self, entry_id: str, _task: asyncio.Task[None]) -> None:
        self.inflight.pop(entry_id, None)
        self._lost.discard(entry_id)
        if len(self.inflight) < self.concurrency:  # not when the item's completion claimed its successor
            self._slot_free.set()

    # ---------------------------------------------------------------- keeping

    async def _keep_loop(self) -> None:
        next_renew = next_beat = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_renew and self.inflight:
                    lost = await self.queue.renew(list(self.inflight))
                    # Items that completed while the renewal ran are acknowledged, not lost.
                    still_held = {e for e in lost if e in self.inflight}
                    for entry in still_held:
                        log.warning("lease lost to another worker", extra={"fields": {"entry": entry}})
                    self.metrics.leases_lost(len(still_held - self._lost))
                    self._lost |= still_held
                    next_renew = now + self.lease_s / 3
                await self.queue.promote()
                if now >= next_beat:
                    await health.beat(self.client, self.cfg, len(self.inflight), dataclasses.asdict(self.stats))
                    next_beat = now + self.cfg.health_ttl_s / 3
            except queue.UNAVAILABLE as exc:
                log.warning("redis unavailable", extra={"fields": {"error": str(exc)}})
            await asyncio.sleep(KEEPER_TICK_S)

    async def _claims_blocked(self) -> bool:
        """The batch is suspended (spec.suspend) or its budget is used up: claim nothing now."""
        suspended = await consumer.suspended(self.client, self.cfg.batch_uid)
        if suspended != self._suspended:
            self._suspended = bool(suspended)
            log.info("suspended: no new claims" if suspended else "resumed")
        if suspended:
            return True
        budget = self.plan.budget
        if budget is None or self._over_budget:
            return self._over_budget is not None
        why = budget.exceeded(await consumer.usage(self.client, self.cfg.batch_uid))
        if why:
            self._over_budget = why
            await consumer.raise_budget_exceeded(self.client, self.cfg.batch_uid, why)
            log.warning("budget used up: no new claims", extra={"fields": {"why": why}})
        return self._over_budget is not None

    # ---------------------------------------------------------------- one item

    async def _process(self, delivery: consumer.Delivery) -> None:
        try:
            await self._process_one(delivery)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Not acknowledged, so the lease expires and the item is redelivered.
            log.exception("item aborted", extra={"fields": {"item": delivery.message.item}})

    async def _process_one(self, delivery: consumer.Delivery) -> None:
        claimed_ms = _now_ms()
        message = delivery.message
        if not message.since_ms:  # the consumer sets it when it claims; a delivery made otherwise starts the clock here
            message = dataclasses.replace(message, since_ms=claimed_ms)
            delivery = dataclasses.replace(delivery, message=message)
        fields = {"item": message.item, "round": message.round, "attempt": message.attempt}
        try:
            completion, called_ms = await self._call(delivery)
        except errors.ProviderError as exc:
            await self._failed_attempt(delivery, exc, NO_TOKENS, fields)
            return
        except templates.TemplateError as exc:
            error = errors.ProviderError(errors.ErrorClass.INVALID_REQUEST, str(exc))
            await self._failed_attempt(delivery, error, NO_TOKENS, fields)
            return
        timing = {wire.OUTCOME_CLAIMED_MS: claimed_ms, wire.OUTCOME_CALLED_MS: called_ms}
        await self._answered(delivery, completion, fields, timing)

    async def _answered(
        self, delivery: consumer.Delivery, completion: base.Completion, fields: dict[str, Any], timing: dict[str, int]
    ) -> None:
        """An answer, parsed and routed: the attempt succeeds, or fails as bad output (paid for either way)."""
        message = delivery.message
        tokens = completion.tokens
        idem = self.queue.keys.idem(self.stage.name, message.item, message.round, message.attempt)
        try:
            parsed = routing.parse_output(self.stage, completion.text)
            reviewed_input = await self._reviewed_input(message)
            routed = routing.after_success(self.plan, self.stage, message, idem, parsed, reviewed_input=reviewed_input)
        except routing.BadOutput as exc:
            error = errors.ProviderError(errors.ErrorClass.BAD_OUTPUT, str(exc))
            await self._failed_attempt(delivery, error, tokens, fields, model=completion.model)
            return
        await self._succeed(delivery, completion.text, tokens, completion.model, fields, timing, routed)

    async def _reviewed_input(self, message: queue.Message) -> str:
        """For a judge: the input the reviewed attempt had, which a rejected item takes back."""
        if self.stage.type is not v1alpha1.StageType.JUDGE or not message.input:
            return ""
        reviewed = await self.queue.outcome(message.input)
        return str((reviewed or {}).get(wire.OUTCOME_INPUT, ""))

    async def _call(self, delivery: consumer.Delivery) -> tuple[base.Completion, int]:
        """Render, wait for the limiter, call the provider under the stage's deadline; also when it was called."""
        message = delivery.message
        request, prompt, shared = await self._request_for(message)
        async with self.primer.turn(shared >= MIN_SHARED_CHARS and request.cache_prefix > 0):
            return await self._request(message, request, prompt)

    async def _request_for(self, message: queue.Message) -> tuple[base.Request, str, int]:
        """The attempt's request, its rendered prompt, and how many characters of it every item of the stage
        shares (``templates.split``)."""
        stage, provider_plan = self.stage, self.provider_plan
        if provider_plan is None or stage.prompt is None:
            raise errors.ProviderError(errors.ErrorClass.INVALID_REQUEST, f"stage {stage.name} has nothing to call")
        previous = await self.queue.result(message.input) if message.input else ""
        prompt, shared = templates.render_split(
            stage.prompt,
            item=message.item,
            input=previous or "",
            vars=self.plan.vars,
            feedback=message.feedback,
            round=message.round,
            attempt=message.attempt,
        )
        request = base.Request(
            prompt=prompt,
            max_tokens=provider_plan.max_tokens,
            timeout_seconds=stage.timeout_seconds,
            output=_output_kind(stage),
            temperature=provider_plan.temperature,
            item=message.item,
            stage=stage.name,
            round=message.round,
            attempt=message.attempt,
            json_schema=stage.json_schema,
            fan_out=None
            if stage.fan_out is None
            else base.FanOutHint(stage.fan_out.path, stage.fan_out.key, stage.fan_out.sort_by),
            cache_prefix=shared if provider_plan.type is not v1alpha1.ProviderType.OFFLINE else 0,
        )
        return request, prompt, shared

    async def _request(self, message: queue.Message, request: base.Request, prompt: str) -> tuple[base.Completion, int]:
        stage, provider_plan = self.stage, self.provider_plan
        assert provider_plan is not None  # _call checked
        reservation = await self._acquire(message, ratelimit.estimate_tokens(prompt, provider_plan.max_tokens))
        # The account after the stage: its grant is spent just before the call, which the account's window counts.
        grant = await self._spend(message, ratelimit.estimate_input_tokens(prompt), provider_plan.max_tokens)
        called_ms = _now_ms()
        try:
            with self.metrics.provider_call(), self.deadlines.within():
                completion = await self.provider.complete(request)
        except TimeoutError as exc:
            await self.limiter.settle(reservation, reservation.tokens)
            await self.limiter.probed(reservation, answered=False)
            if grant is not None and self.allowance is not None:
                await self.allowance.settle(grant, grant.input, grant.output)
            raise errors.ProviderError(
                errors.ErrorClass.TIMEOUT, f"no answer within the stage's {stage.timeout_seconds:g}s"
            ) from exc
        except errors.ProviderError as exc:
            await self.limiter.settle(reservation, 0)
            if grant is not None and self.allowance is not None:
                await self.allowance.settle(grant, 0, 0)
                await self._refused_on_account(message, grant, exc)
            else:
                await self._refused(message, reservation, exc)
            raise
        await self.limiter.settle(reservation, completion.input_tokens + completion.output_tokens)
        if await self.limiter.probed(reservation, answered=True):
            log.info("quota probe passed: the stage resumes", extra={"fields": {"item": message.item}})
        if grant is not None and self.allowance is not None:
            await self.allowance.settle(grant, completion.input_tokens, completion.output_tokens)
            if grant.probe:
                await self.allowance.passed()
                log.info("quota probe passed: the account resumes", extra={"fields": {"item": message.item}})
        self.metrics.usage(completion.tokens, self.prices.cost_of(completion.model, completion.tokens))
        state = completion.rate_limit
        if state and state.reset_after_s and (state.requests_remaining == 0 or state.tokens_remaining == 0):
            await self.limiter.pause(state.reset_after_s)
            if self.allowance is not None:
                await self.allowance.pause(state.reset_after_s)
            self.metrics.pause(metrics.Pause.QUOTA_EXHAUSTED)
        return completion, called_ms

    async def _spend(self, message: queue.Message, input_tokens: int, output_tokens: int) -> account.Grant | None:
        """Wait for the batch's allowance of its provider account, at most until the item's deadline for waits."""
        if self.allowance is None:
            return None
        asked = time.monotonic()
        deadline_s = errors.limited_wait_deadline_s(self.stage.retry)
        elapsed_s = max(0.0, (_now_ms() - message.since_ms) / 1000)
        try:
            grant = await self.allowance.acquire(
                input_tokens, output_tokens, give_up_after_s=max(0.0, deadline_s - elapsed_s)
            )
        except account.AccountWaitTooLong as exc:
            if exc.held:
                raise errors.ProviderError(
                    errors.ErrorClass.QUOTA_EXHAUSTED, exc.held, retry_after_s=exc.wait_s
                ) from exc
            raise errors.ProviderError(
                errors.ErrorClass.RATE_LIMITED, f"the provider account held the call: {exc}", retry_after_s=exc.wait_s
            ) from exc
        self.metrics.limiter_wait(time.monotonic() - asked)
        return grant

    async def _refused_on_account(
        self, message: queue.Message, grant: account.Grant, exc: errors.ProviderError
    ) -> None:
        """A failed call's effect on the whole account: the operator pauses it for every batch that uses it."""
        assert self.allowance is not None
        if exc.error_class is errors.ErrorClass.QUOTA_EXHAUSTED:
            await self.allowance.refused(exc.message, exc.model)
            # The item waits on the account's allowance, which the operator holds back until a probe passes.
            exc.retry_after_s = self.cfg.quota_probe_s
            self.metrics.pause(metrics.Pause.QUOTA_REFUSED)
            fields = {"item": message.item, "model": exc.model, "error": exc.message, "probe": grant.probe}
            log.warning("provider refuses the account for quota: the operator pauses it", extra={"fields": fields})
            return
        if grant.probe and exc.status is not None:
            await self.allowance.passed()  # answered otherwise: the account can pay again
        if exc.error_class is errors.ErrorClass.RATE_LIMITED and exc.retry_after_s:
            await self.allowance.pause(exc.retry_after_s)
            await self.limiter.pause(exc.retry_after_s)
            self.metrics.pause(metrics.Pause.RETRY_AFTER)

    async def _acquire(self, message: queue.Message, tokens: int) -> ratelimit.Reservation:
        """Wait for the stage's limiter, at most until the item's deadline for waits on the provider's limits."""
        if not self.consults_limiter:
            return UNCONSULTED
        asked = time.monotonic()
        deadline_s = errors.limited_wait_deadline_s(self.stage.retry)
        elapsed_s = max(0.0, (_now_ms() - message.since_ms) / 1000)
        try:
            reservation = await self.limiter.acquire(tokens, give_up_after_s=max(0.0, deadline_s - elapsed_s))
        except ratelimit.WaitTooLong as exc:
            # Failed by the taxonomy's deadline (errors.decide), with the refusal that holds the stage, if any.
            if exc.quota is not None:
                raise errors.ProviderError(
                    errors.ErrorClass.QUOTA_EXHAUSTED,
                    exc.quota.message,
                    retry_after_s=exc.wait_s,
                    model=exc.quota.model,
                ) from exc
            raise errors.ProviderError(
                errors.ErrorClass.RATE_LIMITED, f"the stage's limiter held the call: {exc}", retry_after_s=exc.wait_s
            ) from exc
        self.metrics.limiter_wait(time.monotonic() - asked)
        return reservation

    async def _refused(
        self, message: queue.Message, reservation: ratelimit.Reservation, exc: errors.ProviderError
    ) -> None:
        """A failed call's effect on the whole stage: a quota refusal or a 429's retry-after pauses it."""
        if exc.error_class is errors.ErrorClass.QUOTA_EXHAUSTED:
            refusal = await self.limiter.refused(reservation, exc.message, exc.model)
            # The item waits for the next probe, not for a backoff of its own.
            exc.retry_after_s = refusal.wait_s
            self.metrics.pause(metrics.Pause.QUOTA_REFUSED)
            fields = {
                "item": message.item,
                "wait_s": round(refusal.wait_s, 3),
                "model": exc.model,
                "error": exc.message,
            }
            if refusal.began:
                log.warning("provider refuses for quota: the stage pauses and probes", extra={"fields": fields})
            elif refusal.probe_refused:
                log.info("quota probe refused", extra={"fields": fields})
            return
        # The provider answered (or not): either way this probe's turn is over.
        await self.limiter.probed(reservation, answered=exc.status is not None)
        if exc.error_class is errors.ErrorClass.RATE_LIMITED and exc.retry_after_s:
            await self.limiter.pause(exc.retry_after_s)
            self.metrics.pause(metrics.Pause.RETRY_AFTER)

    def _usage(self, model: str, tokens: pricing.Tokens) -> dict[str, int]:
        """The counters a call adds: its tokens (the cache's share only where it had one), and its cost in
        nano-dollars."""
        cost_nusd = int(self.prices.cost_of(model, tokens, batch=self.batch_priced) * NANO)
        counters = {
            wire.USAGE_INPUT_TOKENS: tokens.prompt,
            wire.USAGE_OUTPUT_TOKENS: tokens.output,
            wire.USAGE_COST_NUSD: cost_nusd,
        }
        if tokens.cache_write:
            counters[wire.USAGE_CACHE_WRITE_TOKENS] = tokens.cache_write
        if tokens.cache_read:
            counters[wire.USAGE_CACHE_READ_TOKENS] = tokens.cache_read
        return counters

    async def _succeed(
        self,
        delivery: consumer.Delivery,
        text: str,
        tokens: pricing.Tokens,
        model: str,
        fields: dict[str, Any],
        timing: dict[str, int],
        routed: routing.Routed,
    ) -> None:
        message = delivery.message
        idem = self.queue.keys.idem(self.stage.name, message.item, message.round, message.attempt)
        outcome: dict[str, Any] = {
            wire.OUTCOME_STATUS: routed.status,
            wire.OUTCOME_POD: self.cfg.pod_name,
            wire.OUTCOME_MODEL: model,
            wire.OUTCOME_INPUT_TOKENS: tokens.prompt,
            wire.OUTCOME_OUTPUT_TOKENS: tokens.output,
            wire.OUTCOME_INPUT: message.input,
            **timing,
        }
        # Sent nowhere: the item's journey ends here (the last stage, a fan-out without children, a judge's Fail).
        final = not routed.routes
        if routed.status == wire.STATUS_FAILED:  # a judge out of rejections (onExhausted: Fail)
            outcome[wire.OUTCOME_ERROR_CLASS] = str(errors.ErrorClass.JUDGE_REJECTED)
            outcome[wire.OUTCOME_ERROR] = routed.note
        elif final and self.stage.type is v1alpha1.StageType.JUDGE:
            outcome[wire.OUTCOME_OUTPUT_KEY] = (
                message.input
            )  # what it ends with is the reviewed answer, not the verdict
        usage = self._usage(model, tokens)
        increments = {**routed.increments, **usage}
        spent: list[str] = []
        if final and routed.status != wire.STATUS_FAILED:  # ended with a success: its earlier attempts are spent
            keep = {idem, str(outcome.get(wire.OUTCOME_OUTPUT_KEY) or idem)}
            spent = routing.spent(self.plan, message, self.stage, keep)
        completion = consumer.Completion(
            delivery,
            outcome,
            text,
            increments,
            routed.routes,
            routed.results,
            final,
            claim=self._claim_next(),
            spent=spent,
        )
        finished = await self.queue.finish(completion)
        self._start(finished.claimed)
        if finished.first:
            if routed.status == wire.STATUS_FAILED:
                self.stats.failed += 1
            else:
                self.stats.succeeded += 1
            self._count_success(routed)
            note = {"note": routed.note} if routed.note else {}
            log.info(
                routed.status,
                extra={"fields": {**fields, "tokens": tokens.prompt + tokens.output, "idem": idem, **note}},
            )
        else:
            self.stats.duplicates += 1
            self.metrics.item(metrics.Outcome.DUPLICATE)
            log.info("duplicate completion ignored", extra={"fields": {**fields, "idem": idem}})

    def _count_success(self, routed: routing.Routed) -> None:
        """Metrics of a completed call: how the attempt ended, and a judge's verdict."""
        self.metrics.item(metrics.Outcome(routed.status))
        if wire.COUNT_APPROVED in routed.increments:
            self.metrics.verdict(approved=True)
        elif wire.COUNT_REJECTED in routed.increments:
            self.metrics.verdict(approved=False)
        if routed.status == wire.STATUS_FAILED:  # out of rejections, onExhausted: Fail
            self.metrics.error(errors.ErrorClass.JUDGE_REJECTED)

    async def _failed_attempt(
        self,
        delivery: consumer.Delivery,
        error: errors.ProviderError,
        tokens: pricing.Tokens,
        fields: dict[str, Any],
        *,
        model: str = "",
    ) -> None:
        """An attempt that did not succeed; an answer it got anyway (bad output) is paid for like any other."""
        message = delivery.message
        self.metrics.error(error.error_class)
        elapsed_s = max(0.0, (_now_ms() - message.since_ms) / 1000)
        # A re-run item (producer.retry_failed) gets the policy's attempts afresh, counted from its first_attempt.
        decision = errors.decide(error, self.stage.retry, attempt=message.attempts_in_run, elapsed_s=elapsed_s)
        spent = self._usage(model, tokens) if tokens.prompt or tokens.output else {}
        details = {**fields, "error_class": str(error.error_class), "error": error.message}
        if decision.action is errors.Action.RETRY:
            next_message = dataclasses.replace(message, attempt=message.attempt + (1 if decision.uses_attempt else 0))
            outcome = {
                wire.OUTCOME_STATUS: wire.STATUS_RETRY,
                wire.OUTCOME_ERROR_CLASS: str(error.error_class),
                wire.OUTCOME_ERROR: error.message[:500],
            }
            counter = wire.COUNT_RETRIES if decision.uses_attempt else wire.COUNT_RATE_LIMITED
            scheduled = await self.queue.retry(
                delivery,
                next_message,
                delay_ms=int(decision.delay_s * 1000),
                outcome=outcome if decision.uses_attempt else None,
                increments={counter: 1, **spent},
            )
            if scheduled:
                self.stats.retried += 1
                self.metrics.item(metrics.Outcome.RETRIED)
                log.info("retry scheduled", extra={"fields": {**details, "delay_s": round(decision.delay_s, 3)}})
            else:
                self.stats.duplicates += 1
                self.metrics.item(metrics.Outcome.DUPLICATE)
            return
        # Failed for good: the end of its journey. Input and feedback let producer.retry_failed run it again.
        # A wait on the provider's limits fails only by its deadline, which the message says before the refusal.
        why = f"{decision.reason}: {error.message}" if error.error_class in errors.KEEPS_ATTEMPT else error.message
        outcome = {
            wire.OUTCOME_STATUS: wire.STATUS_FAILED,
            wire.OUTCOME_ERROR_CLASS: str(error.error_class),
            wire.OUTCOME_ERROR: why[:500],
            wire.OUTCOME_INPUT: message.input,
            **({wire.OUTCOME_FEEDBACK: message.feedback} if message.feedback else {}),
        }
        increments = {wire.COUNT_FAILED: 1, **spent}
        first = await self.queue.complete(delivery, outcome, result=None, increments=increments, final=True)
        if first:
            self.stats.failed += 1
            self.metrics.item(metrics.Outcome.FAILED)
            log.warning("failed", extra={"fields": {**details, "reason": decision.reason}})
        else:
            self.stats.duplicates += 1
            self.metrics.item(metrics.Outcome.DUPLICATE)
