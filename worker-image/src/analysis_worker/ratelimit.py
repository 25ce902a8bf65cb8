"""The global rate limiter of a stage: requests and tokens per window, across all replicas.

Every worker of a stage asks Redis before each provider call
(``lua/limiter_acquire.lua``): a sliding-window log of granted requests and of
token reservations. A call reserves ``maxTokens`` plus its prompt's estimated
size; once it returns, the reservation is settled to the real usage
(``limiter_settle.lua``), which frees the over-estimate. When a provider says
its quota is spent (a 429's retry-after, or rate-limit headers at zero), the
whole stage pauses until the reset (``limiter_pause.lua``).

The limiter counts over whatever window it is given, so its limits are
``requests_per_window`` and ``tokens_per_window``. The worker passes the
stage's ``rateLimit`` from the plan: ``requests_per_minute`` and
``tokens_per_minute`` over ``window_s``, which is a minute
(``plan.RATE_LIMIT_WINDOW_S``) in every plan the operator writes.

Why a log and not a token bucket: a bucket of size L refilling at L per
minute admits up to 2L in some 60-second windows; the log admits at most L in
every window, which is what "requests per minute" promises a provider. A
guard (2% of the window, at least 250 ms) keeps that true at the provider's
side too, where requests arrive some time after their grant: measured here,
four busy worker processes on two cores spread that delay by over 100 ms.
Grants are also paced at least window/limit apart: providers may enforce a
per-minute limit in shorter slices, and even traffic is what they expect.

Callers: the worker, around each call. It holds no state in the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid

import redis.asyncio as aioredis

from analysis_core import keys as keys_
from analysis_core import scripts

GUARD_FRACTION = 0.02
GUARD_MIN_S = 0.25
# Longest single sleep between tries, so a stop request or a settle elsewhere is noticed.
MAX_SLEEP_S = 1.0
LUA = scripts.Library("analysis_worker")


def estimate_tokens(prompt: str, max_tokens: int) -> int:
    """What a call may use at most: its output cap plus about four characters per prompt token."""
    return max_tokens + math.ceil(len(prompt) / 4)


@dataclasses.dataclass(frozen=True)
class Reservation:
    id: str
    tokens: int
    waited_s: float


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
    ) -> None:
        self.requests = requests_per_window or 0
        self.tokens = tokens_per_window or 0
        self.window_ms = math.ceil(1000 * (window_s + max(window_s * GUARD_FRACTION, GUARD_MIN_S)))
        k = keys_.BatchKeys(uid)
        self._keys = [k.limiter(stage, part) for part in keys_.LIMITER_PARTS]
        self._acquire = LUA.script(client, "limiter_acquire")
        self._settle = LUA.script(client, "limiter_settle")
        self._pause = LUA.script(client, "limiter_pause")

    @property
    def enabled(self) -> bool:
        return bool(self.requests or self.tokens)

    async def acquire(self, tokens: int) -> Reservation:
        """Wait until the call may go; returns its reservation (settle it after the call)."""
        reservation = uuid.uuid4().hex
        waited = 0.0
        if not self.enabled:
            return Reservation(reservation, 0, 0.0)
        while True:
            wait_ms = int(
                await self._acquire(
                    keys=self._keys, args=[self.window_ms, self.requests, self.tokens, tokens, reservation]
                )
            )
            if wait_ms <= 0:
                return Reservation(reservation, min(tokens, self.tokens) if self.tokens else 0, waited)
            pause = min(wait_ms / 1000, MAX_SLEEP_S)
            waited += pause
            await asyncio.sleep(pause)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if self.tokens and reservation.tokens:
            await self._settle(keys=[self._keys[2], self._keys[3]], args=[reservation.id, used_tokens])

    async def pause(self, seconds: float) -> None:
        """Hold the whole stage for ``seconds`` (a provider's reset); never shortens a pause."""
        await self._pause(keys=[self._keys[4]], args=[max(1, math.ceil(seconds * 1000))])
