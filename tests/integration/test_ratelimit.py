"""The shared rate limiter against a real redis-server: windows, token reservations, pauses."""

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from analysis_core import queue
from analysis_worker import ratelimit

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[queue.Redis]:
    c = queue.connect(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


def limiter(client: queue.Redis, window_s: float = 0.5, **limits: int) -> ratelimit.Limiter:
    return ratelimit.Limiter(
        client,
        uuid.uuid4().hex,
        "stage",
        requests_per_window=limits.get("requests"),
        tokens_per_window=limits.get("tokens"),
        window_s=window_s,
    )


async def test_no_window_holds_more_than_the_request_limit(client: queue.Redis) -> None:
    lim = limiter(client, requests=4)
    grants = []
    for _ in range(10):
        await lim.acquire(1)
        grants.append(time.monotonic())
    assert max(sum(1 for t in grants if start <= t < start + 0.5) for start in grants) <= 4
    # Paced: consecutive grants at least window/limit apart (the guard widens the window).
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= 0.5 / 4


async def test_concurrent_callers_share_one_limit(client: queue.Redis) -> None:
    lim = limiter(client, requests=5)
    other = ratelimit.Limiter(
        client, lim._keys[0].split("}")[0][1:], "stage", requests_per_window=5, tokens_per_window=None, window_s=0.5
    )
    grants: list[float] = []

    async def caller(which: ratelimit.Limiter) -> None:
        for _ in range(6):
            await which.acquire(1)
            grants.append(time.monotonic())

    await asyncio.gather(caller(lim), caller(other), caller(lim))
    grants.sort()
    assert len(grants) == 18
    assert max(sum(1 for t in grants if start <= t < start + 0.5) for start in grants) <= 5


async def test_token_reservations_are_settled_to_real_usage(client: queue.Redis) -> None:
    lim = limiter(client, window_s=5, tokens=1000)
    first = await lim.acquire(600)
    assert first.waited_s == 0
    assert first.tokens == 600
    # 600 more would pass the budget; settling the first to its real 100 makes room at once.
    waiting = asyncio.create_task(lim.acquire(600))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await lim.settle(first, 100)
    second = await asyncio.wait_for(waiting, timeout=2)
    # Noticed at the next poll (at most a second), not when the first leaves the 5 s window.
    assert second.waited_s <= ratelimit.MAX_SLEEP_S


async def test_a_call_larger_than_the_budget_goes_alone(client: queue.Redis) -> None:
    lim = limiter(client, tokens=100)
    big = await lim.acquire(5000)
    assert big.tokens == 100


async def test_a_pause_holds_every_caller_and_never_shortens(client: queue.Redis) -> None:
    lim = limiter(client, requests=100)
    await lim.pause(0.4)
    await lim.pause(0.1)  # a shorter pause does not cut the longer one
    held = await lim.acquire(1)
    assert held.waited_s >= 0.3


async def test_without_limits_nothing_is_asked(client: queue.Redis) -> None:
    lim = limiter(client)
    assert not lim.enabled
    assert (await lim.acquire(10**6)).waited_s == 0
