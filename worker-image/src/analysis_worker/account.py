"""A batch's allowance of a shared provider account, as one worker process spends it.

A provider account (an AnalysisProvider) is shared by every batch, stage and
worker that names it, across namespaces. Its limits are enforced by the
operator, which alone writes the account's state: about ten times a second
it grants each batch that waits an allowance (calls, and input and output
tokens where the account limits them) by fair share, under the batch's own
hash tag (docs/design.md#provider-accounts). A worker only ever touches its
batch's keys:

- ``acquire`` spends one call of the allowance (``lua/account_spend.lua``),
  or puts the call among the batch's waiting calls, which is how the
  operator learns the batch's demand, and waits for the next grant;
- ``settle`` replaces a call's reserved tokens with what it used and takes it
  out of the calls in flight (``lua/account_settle.lua``);
- ``pause``, ``refused`` and ``passed`` report what the provider said about
  the account (a 429's retry-after, a refusal for quota or billing, a probe
  that passed) for the operator to apply to every user of the account
  (``lua/account_report.lua``).

Callers: the worker, around each call on a provider that names an account,
after the stage's own limiter. It keeps no state in the process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid

import redis.asyncio as aioredis

from analysis_core import keys as keys_
from analysis_core import scripts, wire

# How long a waiting call's ask stands without being renewed: a worker that died stops asking after this.
ASK_TTL_MS = 2000
# How long to wait before asking again when no grant says when the next one comes (no operator, or none yet).
DEFAULT_ASK_MS = 25
# Longest single sleep between asks.
MAX_SLEEP_S = 0.5
# A call in flight that never settles (its worker died) stops counting this long after its own deadline.
FLIGHT_MARGIN_S = 5.0


@dataclasses.dataclass(frozen=True)
class Grant:
    id: str
    epoch: str  # the operator's grant it was spent from
    input: int
    output: int
    waited_s: float
    probe: bool = False  # the one call let through while the provider refuses the account for quota


class AccountWaitTooLong(Exception):
    """The account would make the call wait longer than the caller may; nothing was spent."""

    def __init__(self, waited_s: float, wait_s: float, held: str) -> None:
        super().__init__(f"waited {waited_s:.1f}s, and the provider account asks for {wait_s:.1f}s more")
        self.waited_s = waited_s
        self.wait_s = wait_s
        self.held = held  # the provider's refusal for quota holding the account, if that is the cause


class Allowance:
    """One batch's use of the account behind one of its providers."""

    def __init__(self, client: aioredis.Redis, uid: str, provider: str, *, call_timeout_s: float) -> None:
        k = keys_.BatchKeys(uid)
        self._keys = [k.allowance(provider, part) for part in keys_.ALLOWANCE_PARTS]
        self._flight_ms = math.ceil((call_timeout_s + FLIGHT_MARGIN_S) * 1000)
        self._spend = scripts.function(client, "account_spend")
        self._settle = scripts.function(client, "account_settle")
        self._report = scripts.function(client, "account_report")

    async def acquire(self, input_tokens: int, output_tokens: int, *, give_up_after_s: float | None = None) -> Grant:
        """Wait until the batch's allowance covers the call; raise ``AccountWaitTooLong`` past ``give_up_after_s``."""
        call = uuid.uuid4().hex
        waited = 0.0
        while True:
            reply = await self._spend(
                keys=self._keys[:4],
                args=[call, input_tokens, output_tokens, ASK_TTL_MS, self._flight_ms, DEFAULT_ASK_MS],
            )
            wait_ms = int(reply[0])
            if wait_ms <= 0:
                return Grant(call, str(reply[1]), input_tokens, output_tokens, waited, probe=str(reply[2]) == "1")
            held = str(reply[1])
            if give_up_after_s is not None and waited + wait_ms / 1000 > give_up_after_s:
                raise AccountWaitTooLong(waited, wait_ms / 1000, held)
            pause = min(wait_ms / 1000, MAX_SLEEP_S)
            waited += pause
            await asyncio.sleep(pause)

    async def settle(self, grant: Grant, input_used: int, output_used: int) -> None:
        """The call returned having used these tokens (0 and 0 if the provider refused it)."""
        await self._settle(
            keys=[self._keys[3], self._keys[4]],
            args=[grant.id, grant.epoch, input_used - grant.input, output_used - grant.output],
        )

    async def pause(self, seconds: float) -> None:
        """The provider says the account must wait ``seconds`` (a 429's retry-after)."""
        await self._report(keys=[self._keys[4]], args=[wire.REPORT_PAUSE_UNTIL, max(1, math.ceil(seconds * 1000))])

    async def refused(self, message: str, model: str | None) -> None:
        """The provider refused a call for quota or billing (``model``: for that model only)."""
        await self._report(keys=[self._keys[4]], args=[wire.REPORT_REFUSED, message, model or ""])

    async def passed(self) -> None:
        """The probe call was answered: the account can pay again."""
        await self._report(keys=[self._keys[4]], args=[wire.REPORT_PASSED_AT])
