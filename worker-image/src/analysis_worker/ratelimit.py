"""The global rate limiter of a stage: requests and tokens per window, and pauses, across all replicas.

Every worker of a stage asks Redis before each provider call
(``lua/limiter_acquire.lua``): a sliding-window log of granted requests and of
token reservations. A call reserves ``maxTokens`` plus its prompt's estimated
size; once it returns, the reservation is settled to the real usage
(``limiter_settle.lua``), which frees the over-estimate. When a provider says
its quota is spent (a 429's retry-after, or rate-limit headers at zero), the
whole stage pauses until the reset (``limiter_pause.lua``).

When the provider refuses a call for quota or billing (``QuotaExhausted``:
the account cannot pay, or may not use the model), the stage pauses with no
end in sight (``limiter_quota.lua``): the provider's message is recorded for
the operator's condition, and from then on one call at a time, the probe, is
let through, first after ``probe_s`` and then after twice as long as the
last each time the account still refuses, up to ``PROBE_MAX_S``. Every other
call waits, so a stage that cannot be served sends the provider one request
per backoff and not one per item. The first probe the provider answers
otherwise ends the pause for everyone (``limiter_probed.lua``).

Pauses hold the stage whether or not it has a ``rateLimit``; the windows
count only where it has one. The limiter counts over whatever window it is
given, so its limits are ``requests_per_window`` and ``tokens_per_window``.
The worker passes the stage's ``rateLimit`` from the plan:
``requests_per_minute`` and ``tokens_per_minute`` over ``window_s``, which is
a minute (``plan.RATE_LIMIT_WINDOW_S``) in every plan the operator writes.

Why a log and not a token bucket: a bucket of size L refilling at L per
minute admits up to 2L in some 60-second windows; the log admits at most L in
every window, which is what "requests per minute" promises a provider. A
guard (2% of the window, at least 250 ms) keeps that true at the provider's
side too, where requests arrive some time after their grant: measured here,
four busy worker processes on two cores spread that delay by over 100 ms.
Grants are also paced at least window/limit apart: providers may enforce a
per-minute limit in shorter slices, and even traffic is what they expect.

Callers: the worker, around each call. It holds no state in the process.
The scope is the stage, under the batch's hash tag: provider accounts shared
across batches will hold the same pause and probe state of their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid

import redis.asyncio as aioredis

from analysis_core import keys as keys_
from analysis_core import queue, scripts

GUARD_FRACTION = 0.02
GUARD_MIN_S = 0.25
# Longest single sleep between tries, so a stop request, a settle or a probe's answer elsewhere is noticed.
MAX_SLEEP_S = 1.0
# The longest wait between two probes of a provider that refuses for quota (the first is the worker's setting,
# ANALYSIS_QUOTA_PROBE_SECONDS); each refused probe doubles the wait up to this.
PROBE_MAX_S = 300.0
# A probe that never reports back (its worker died) holds the others this long past the call's own deadline.
PROBE_LEASE_MARGIN_S = 5.0


def estimate_input_tokens(prompt: str) -> int:
    """A prompt's input tokens, about four characters each."""
    return math.ceil(len(prompt) / 4)


def estimate_tokens(prompt: str, max_tokens: int) -> int:
    """What a call may use at most: its output cap plus its prompt's estimate."""
    return max_tokens + estimate_input_tokens(prompt)


@dataclasses.dataclass(frozen=True)
class Reservation:
    id: str
    tokens: int
    waited_s: float
    probe: bool = False  # this call probes a provider that refused for quota: report how it went (``probed``)


class WaitTooLong(Exception):
    """Granting the call would take longer than the caller may still wait; nothing was reserved."""

    def __init__(self, waited_s: float, wait_s: float, quota: queue.QuotaPause | None) -> None:
        super().__init__(f"waited {waited_s:.1f}s, and the stage's limiter asks for {wait_s:.1f}s more")
        self.waited_s = waited_s
        self.wait_s = wait_s  # what the limiter asked for next
        self.quota = quota  # the quota pause holding the stage, if that is what it waits for


@dataclasses.dataclass(frozen=True)
class Refusal:
    """What a refusal for quota did to the stage's pause."""

    wait_s: float  # until the next probe may go
    began: bool  # this refusal started the pause
    probe_refused: bool  # it was the probe, refused again (the wait doubled)


class Limiter:
    """One stage's limits as seen from one worker process."""

    def __init__(
        self,
        client: aioredis.Redis,
        uid: str,
        stage: str,
        *,
        requests_per_window: int | None,
        tokens_per_window: int | None,
        window_s: float,
        probe_s: float,
        probe_lease_s: float,
    ) -> None:
        self.requests = requests_per_window or 0
        self.tokens = tokens_per_window or 0
        self.window_ms = math.ceil(1000 * (window_s + max(window_s * GUARD_FRACTION, GUARD_MIN_S)))
        self.probe_ms = max(1, math.ceil(probe_s * 1000))
        self.probe_max_ms = max(self.probe_ms, math.ceil(PROBE_MAX_S * 1000))
        self.probe_lease_ms = math.ceil((probe_lease_s + PROBE_LEASE_MARGIN_S) * 1000)
        k = keys_.BatchKeys(uid)
        self._keys = [k.limiter(stage, part) for part in keys_.LIMITER_PARTS]
        self._pause_key = k.limiter(stage, keys_.LIMITER_PAUSE)
        self._quota_key = k.limiter(stage, keys_.LIMITER_QUOTA)
        self._client = client
        self._acquire = scripts.function(client, "limiter_acquire")
        self._settle = scripts.function(client, "limiter_settle")
        self._pause = scripts.function(client, "limiter_pause")
        self._quota = scripts.function(client, "limiter_quota")
        self._probed = scripts.function(client, "limiter_probed")

    @property
    def enabled(self) -> bool:
        """The stage has limits of its own (a ``rateLimit``); pauses hold it either way."""
        return bool(self.requests or self.tokens)

    async def acquire(self, tokens: int, *, give_up_after_s: float | None = None) -> Reservation:
        """Wait until the call may go; returns its reservation (settle it after the call).

        ``give_up_after_s``: raise ``WaitTooLong`` rather than wait longer than
        this in all (an item's deadline for waits on the provider's limits).
        """
        reservation = uuid.uuid4().hex
        waited = 0.0
        while True:
            wait_ms = int(
                await self._acquire(
                    keys=self._keys,
                    args=[self.window_ms, self.requests, self.tokens, tokens, reservation, self.probe_lease_ms],
                )
            )
            if wait_ms <= 0:
                reserved = min(tokens, self.tokens) if self.tokens else 0
                return Reservation(reservation, reserved, waited, probe=wait_ms < 0)
            if give_up_after_s is not None and waited + wait_ms / 1000 > give_up_after_s:
                raise WaitTooLong(waited, wait_ms / 1000, await self.quota())
            pause = min(wait_ms / 1000, MAX_SLEEP_S)
            waited += pause
            await asyncio.sleep(pause)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if self.tokens and reservation.tokens:
            await self._settle(keys=[self._keys[2], self._keys[3]], args=[reservation.id, used_tokens])

    async def pause(self, seconds: float) -> None:
        """Hold the whole stage for ``seconds`` (a provider's reset); never shortens a pause."""
        await self._pause(keys=[self._pause_key], args=[max(1, math.ceil(seconds * 1000))])

    async def refused(self, reservation: Reservation, message: str, model: str | None) -> Refusal:
        """The provider refused ``reservation``'s call for quota or billing: pause the stage until a probe passes.

        ``model``: the refusal concerns this model only. Returns how long until the next probe may go.
        """
        wait_ms, what = await self._quota(
            keys=[self._pause_key, self._quota_key],
            args=[message, model or "", self.probe_ms, self.probe_max_ms, reservation.id],
        )
        return Refusal(int(wait_ms) / 1000, began=int(what) == 1, probe_refused=int(what) == 2)

    async def probed(self, reservation: Reservation, *, answered: bool) -> bool:
        """The probe ``reservation`` came back without a refusal for quota; True if that ended the pause.

        ``answered``: the provider answered (a success, or another error);
        False for a timeout or a connection failure, which says nothing about the account.
        """
        if not reservation.probe:
            return False
        ended = await self._probed(
            keys=[self._pause_key, self._quota_key], args=[reservation.id, "1" if answered else "0"]
        )
        return bool(ended)

    async def quota(self) -> queue.QuotaPause | None:
        """The stage's quota pause, if the provider refused for quota and no probe has passed since."""
        fields = await self._client.hgetall(self._quota_key)
        return queue.QuotaPause.from_fields({str(name): str(value) for name, value in fields.items()})
