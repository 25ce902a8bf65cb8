"""The shared rate limiter against a real redis-server: windows, token reservations, pauses, quota probes."""

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from analysis_core import queue
from analysis_worker import ratelimit

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["one-instance", "cluster-of-three"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """Every test of the module on the dev cluster's Redis, then on a real Redis Cluster of three primaries."""
    if request.param == "cluster-of-three":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("devcluster").redis_url)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[queue.Redis]:
    c = queue.connect(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


def limiter(
    client: queue.Redis, window_s: float = 0.5, uid: str | None = None, probe_s: float = 0.2, **limits: int
) -> ratelimit.Limiter:
    return ratelimit.Limiter(
        client,
        uid or uuid.uuid4().hex,
        "stage",
        requests_per_window=limits.get("requests"),
        tokens_per_window=limits.get("tokens"),
        window_s=window_s,
        probe_s=probe_s,
        probe_lease_s=5.0,
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
    other = limiter(client, uid=lim._keys[0].split("}")[0][1:], requests=5)
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


async def test_without_limits_only_pauses_hold(client: queue.Redis) -> None:
    lim = limiter(client)
    assert not lim.enabled
    assert (await lim.acquire(10**6)).waited_s == 0
    # A 429's retry-after holds a stage without a rateLimit too.
    await lim.pause(0.3)
    assert (await lim.acquire(10**6)).waited_s >= 0.2


# ---------------------------------------------------------------- refusals for quota


async def test_a_quota_refusal_lets_one_probe_through_at_a_time(client: queue.Redis) -> None:
    lim = limiter(client, probe_s=0.2)
    first = await lim.acquire(1)
    assert not first.probe  # no pause yet: an ordinary grant
    began = await lim.refused(first, "no credit", None)
    assert (began.began, began.probe_refused, began.wait_s) == (True, False, 0.2)

    # Three callers: once the wait is over exactly one goes, as the probe; the others wait for its answer.
    waiting = {asyncio.create_task(lim.acquire(1)) for _ in range(3)}
    done, waiting = await asyncio.wait(waiting, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    [probe] = [task.result() for task in done]
    assert probe.probe
    done, waiting = await asyncio.wait(waiting, timeout=1.5)
    assert not done, "nobody goes while the probe is out"

    # Refused again: the wait doubles, and the next caller probes after it.
    again = await lim.refused(probe, "still no credit", None)
    assert (again.began, again.probe_refused, again.wait_s) == (False, True, 0.4)
    pause = await lim.quota()
    assert pause is not None
    assert (pause.message, pause.model, pause.probes, pause.backoff_ms) == ("still no credit", None, 1, 400)
    done, waiting = await asyncio.wait(waiting, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    [second] = [task.result() for task in done]
    assert second.probe

    # The provider answers the probe: the pause is over and everyone goes, as ordinary calls.
    assert await lim.probed(second, answered=True)
    rest = await asyncio.wait_for(asyncio.gather(*waiting), timeout=3)
    assert not any(r.probe for r in rest)
    assert await lim.quota() is None
    assert not await lim.probed(rest[0], answered=True)  # not a probe: nothing to report


async def test_calls_already_on_their_way_do_not_stretch_the_pause(client: queue.Redis) -> None:
    lim = limiter(client, probe_s=0.2)
    a, b = await lim.acquire(1), await lim.acquire(1)
    assert (await lim.refused(a, "model refused", "model-1")).began
    late = await lim.refused(b, "model refused", "model-1")
    assert (late.began, late.probe_refused) == (False, False)
    assert late.wait_s <= 0.2
    pause = await lim.quota()
    assert pause is not None
    assert (pause.model, pause.probes, pause.backoff_ms) == ("model-1", 0, 200)


async def test_a_probe_without_an_answer_or_without_a_worker_hands_the_turn_on(
    client: queue.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "PROBE_LEASE_MARGIN_S", 0.5)
    lim = ratelimit.Limiter(
        client,
        uuid.uuid4().hex,
        "stage",
        requests_per_window=None,
        tokens_per_window=None,
        window_s=1,
        probe_s=0.2,
        probe_lease_s=0,
    )
    await lim.refused(await lim.acquire(1), "no credit", None)
    probe = await lim.acquire(1)
    assert probe.probe
    # A timeout says nothing about the account: the pause stands, at the same wait, and the next caller probes.
    assert not await lim.probed(probe, answered=False)
    pause = await lim.quota()
    assert pause is not None
    assert pause.backoff_ms == 200
    orphan = await lim.acquire(1)
    assert orphan.probe
    # Its worker died and never reports: once its lease is over, another caller probes.
    successor = await asyncio.wait_for(lim.acquire(1), timeout=5)
    assert successor.probe
    pause = await lim.quota()
    assert pause is not None
    assert pause.probes == 3


async def test_a_caller_that_may_not_wait_that_long_gives_up_naming_the_refusal(client: queue.Redis) -> None:
    lim = limiter(client, probe_s=30)
    await lim.refused(await lim.acquire(1), "no credit", None)
    with pytest.raises(ratelimit.WaitTooLong) as raised:
        await lim.acquire(1, give_up_after_s=5)
    assert raised.value.quota is not None
    assert raised.value.quota.message == "no credit"
    assert raised.value.wait_s > 5
