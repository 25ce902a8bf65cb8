"""The stage's call deadline: asyncio.timeout's behaviour, with one timer for all calls."""

import asyncio

import pytest

from analysis_worker import deadlines

pytestmark = pytest.mark.unit

SHORT = 0.05  # a deadline the hanging calls below run past
FOREVER = 3600


async def call(d: deadlines.Deadlines, seconds: float) -> str:
    with d.within():
        await asyncio.sleep(seconds)
    return "answered"


async def test_a_call_past_its_deadline_raises_timeout_and_leaves_its_task_uncancelled() -> None:
    d = deadlines.Deadlines(SHORT)

    async def hangs() -> int:
        with pytest.raises(TimeoutError):
            await call(d, FOREVER)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    assert await hangs() == 0
    assert len(d) == 0


async def test_calls_in_time_answer_and_leave_nothing_queued() -> None:
    d = deadlines.Deadlines(FOREVER)
    assert await asyncio.gather(*(call(d, 0) for _ in range(100))) == ["answered"] * 100
    assert len(d) == 0


async def test_each_hanging_call_times_out_while_the_calls_around_it_answer() -> None:
    d = deadlines.Deadlines(SHORT)
    results = await asyncio.gather(
        call(d, FOREVER), call(d, 0), call(d, FOREVER), call(d, 0), call(d, 0), return_exceptions=True
    )
    assert [type(r).__name__ if isinstance(r, BaseException) else r for r in results] == [
        "TimeoutError",
        "answered",
        "TimeoutError",
        "answered",
        "answered",
    ]
    # Armed again after going idle: a later call still has a deadline.
    with pytest.raises(TimeoutError):
        await call(d, FOREVER)


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    d = deadlines.Deadlines(FOREVER)
    task = asyncio.create_task(call(d, FOREVER))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(d) == 0


async def test_a_shutdown_cancel_after_the_deadline_expired_is_not_swallowed() -> None:
    d = deadlines.Deadlines(SHORT)
    entered = asyncio.Event()

    async def slow_to_notice() -> None:
        with d.within():
            entered.set()
            try:
                await asyncio.sleep(FOREVER)
            except asyncio.CancelledError:
                # Expired; while it tidies up, the worker's shutdown cancels it as well.
                asyncio.current_task().cancel()  # type: ignore[union-attr]
                raise

    task = asyncio.create_task(slow_to_notice())
    await entered.wait()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_one_hanging_call_does_not_keep_the_calls_that_passed_it() -> None:
    d = deadlines.Deadlines(FOREVER)
    hanging = asyncio.create_task(call(d, FOREVER))
    await asyncio.sleep(0)
    most = 0
    for _ in range(2000):
        await call(d, 0)
        most = max(most, len(d))
    # The hanging call, and at most the slack of finished ones behind it.
    assert most <= 2 + deadlines.SWEEP_SLACK
    hanging.cancel()
    await asyncio.gather(hanging, return_exceptions=True)


def test_a_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        deadlines.Deadlines(0)
