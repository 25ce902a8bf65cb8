"""One call warms the provider's prompt cache before a stage's other calls go out.

A provider's prompt cache is readable only once the call that wrote it has
answered, so the first calls of a stage that start together all miss, and
each pays to write the same prefix. ``Primer.turn`` lets the first call with
a shared prefix go alone: the calls after it wait until it has answered
(then they read what it wrote), or, if it failed, the next one primes
instead. Each worker process primes once, so a stage of N pods writes its
prefix at most N times.

It deliberately does not coordinate across pods (each pod primes on its own),
nor re-prime when the provider's cache expires (5 minutes without a read).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class Primer:
    def __init__(self) -> None:
        self.primed = False
        self._priming: asyncio.Event | None = None  # set once the call that primes has ended

    @contextlib.asynccontextmanager
    async def turn(self, shared: bool) -> AsyncIterator[None]:
        """Around a call: ``shared``, whether its prompt starts with the stage's cacheable prefix."""
        while shared and not self.primed and self._priming is not None:
            await self._priming.wait()
        if not shared or self.primed:
            yield
            return
        event = self._priming = asyncio.Event()
        try:
            yield
            self.primed = True  # answered: what it wrote is readable now
        finally:
            self._priming = None
            event.set()
