"""Refusals for quota and billing through the whole loop: worker processes, the real SDKs, the stand-in, Redis.

When the provider says the account cannot pay (OpenAI's 429
``insufficient_quota``, Anthropic's 400 about the credit balance), the stage
pauses for every worker: the provider's words are recorded in the batch's
Redis state, where the operator reads them (``producer.snapshot``), no
attempt is used, and only one call at a time probes the provider, each
after twice the wait of the last. Counted at the stand-in, the requests are
the calls already on their way when the pause began plus the probes, and the
probes fit the backoff schedule. When the stand-in stops refusing, a probe
passes and every item completes at its first attempt. An item that waits on
the provider's limits past its deadline fails, saying so.
"""

import json
import math
from typing import Any

import pytest

from analysis_core import env, errors, keys, queue, wire
from analysis_devcluster import standin
from analysis_operator import producer
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-quota-5e7a1c"  # what the stand-in (tests/integration/conftest.py) wants
PROBE_S = 0.2  # the first wait before a probe; it doubles with each refused probe
WORKERS, CALLS_PER_WORKER = 2, 2
# (API, the stand-in's step, the provider's words that must reach Redis)
REFUSALS = [
    pytest.param("openai", "insufficient_quota", standin.OPENAI_INSUFFICIENT_QUOTA, id="openai-insufficient-quota"),
    pytest.param("anthropic", "low_credit", standin.ANTHROPIC_LOW_CREDIT, id="anthropic-low-credit"),
]


async def outcomes(redis: queue.Redis, uid: str) -> dict[str, dict[str, Any]]:
    raw = await redis.hgetall(keys.BatchKeys(uid).outcomes)
    return {key.split("/", 1)[1]: json.loads(value) for key, value in raw.items() if value != wire.OUTCOME_SPENT}


def most_probes(span_s: float) -> int:
    """How many probes the schedule allows in ``span_s``: k probes need PROBE_S * (2^k - 1) seconds of waits."""
    return math.floor(math.log2(span_s / PROBE_S + 1))


@pytest.mark.parametrize(("api", "kind", "words"), REFUSALS)
@pytest.mark.timeout(120)
async def test_a_refusal_for_quota_pauses_the_stage_and_only_probes_reach_the_provider(
    api: str, kind: str, words: str, stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    stand_in.set_plan([{"kind": kind, "times": 10_000}])  # the account cannot pay until the test says so
    items = [f"Q{i}" for i in range(6)]
    batch = workers.batch(stand_in.batch_spec(api, items, concurrency=WORKERS * CALLS_PER_WORKER))
    await batch.seed()
    for _ in range(WORKERS):
        workers.start(
            batch,
            "analyze",
            ANALYSIS_API_KEY=API_KEY,
            **{env.CONCURRENCY: str(CALLS_PER_WORKER), env.QUOTA_PROBE_SECONDS: str(PROBE_S)},
        )

    async def probed(times: int) -> queue.QuotaPause | None:
        pause = (await producer.snapshot(redis, batch.uid, ["analyze"])).quota.get("analyze")
        return pause if pause is not None and pause.probes >= times else None

    pause = await workers.eventually(lambda: probed(4), 60, "four probes refused")
    seen = stand_in.requests()
    pause = await probed(4)
    assert pause is not None
    # The batch's Redis state holds the provider's words, for the whole account.
    assert words in pause.message
    assert pause.model is None
    # What reached the provider: the calls already on their way when the pause began, and the probes; ...
    assert {call["kind"] for call in seen} == {kind}
    in_flight = WORKERS * CALLS_PER_WORKER
    assert len(seen) - in_flight <= pause.probes
    # ... and the probes fit the backoff schedule (a slow machine only spreads them further).
    span_s = seen[-1]["time"] - seen[0]["time"]
    assert len(seen) - in_flight <= most_probes(span_s) + 1
    # No attempt was used and nothing failed: every refused item waits for a probe with its attempt kept.
    counts = await consumer.stage_counts(redis, batch.uid, "analyze")
    assert counts.counters.get(wire.COUNT_RETRIES, 0) == 0
    assert counts.counters.get(wire.COUNT_FAILED, 0) == 0
    assert counts.counters[wire.COUNT_RATE_LIMITED] >= 1
    assert await outcomes(redis, batch.uid) == {}

    # The account can pay again: the next probe passes, the pause ends, and everything completes.
    stand_in.set_plan([])

    async def all_done() -> bool:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        return counts.counters.get(wire.COUNT_SUCCEEDED, 0) == len(items) and counts.drained

    await workers.eventually(all_done, 60, "every item done after the refusals")
    snapshot = await producer.snapshot(redis, batch.uid, ["analyze"])
    assert snapshot.quota == {}
    done = await outcomes(redis, batch.uid)
    assert {key: value["status"] for key, value in done.items()} == {
        f"analyze/{item}/0/1": wire.STATUS_SUCCEEDED for item in items
    }
    answered = [call["kind"] for call in stand_in.requests()]
    assert answered.count("ok") == len(items)  # each item was answered once, at its first attempt


@pytest.mark.timeout(90)
async def test_an_item_that_waits_too_long_on_the_providers_limits_fails_saying_so(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    stand_in.set_plan([{"kind": "insufficient_quota", "times": 10_000}])
    items = ["LATE1", "LATE2"]
    # retry.deadlineSeconds bounds the wait (without it, errors.LIMITED_WAIT_DEADLINE_S would).
    batch = workers.batch(stand_in.batch_spec("openai", items, concurrency=2, retry={"deadlineSeconds": 2}))
    await batch.seed()
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY, **{env.QUOTA_PROBE_SECONDS: str(PROBE_S)})

    async def failed() -> bool:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        return counts.counters.get(wire.COUNT_FAILED, 0) == len(items) and counts.drained

    await workers.eventually(failed, 60, "both items failed by the deadline")
    done = await outcomes(redis, batch.uid)
    assert set(done) == {f"analyze/{item}/0/1" for item in items}  # at their first attempt: none was used
    for outcome in done.values():
        assert outcome[wire.OUTCOME_STATUS] == wire.STATUS_FAILED
        assert outcome[wire.OUTCOME_ERROR_CLASS] == str(errors.ErrorClass.QUOTA_EXHAUSTED)
        assert outcome[wire.OUTCOME_ERROR].startswith("waited too long on the provider's limits: ")
        assert "would pass the 2s deadline" in outcome[wire.OUTCOME_ERROR]
        assert "You exceeded your current quota" in outcome[wire.OUTCOME_ERROR]
    counts = await consumer.stage_counts(redis, batch.uid, "analyze")
    assert counts.counters.get(wire.COUNT_RETRIES, 0) == 0


@pytest.mark.timeout(90)
async def test_a_retry_after_holds_every_worker_of_a_stage_without_a_rate_limit(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    hold_s = 1.5
    stand_in.set_plan([{"kind": "rate_limit", "retry_after_s": hold_s}])  # the first call is told to wait
    items = [f"R{i}" for i in range(8)]
    batch = workers.batch(stand_in.batch_spec("openai", items, concurrency=WORKERS))
    assert batch.plan.stages[0].rate_limit is None
    await batch.seed()
    for _ in range(WORKERS):
        workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY, **{env.CONCURRENCY: "1"})

    async def all_done() -> bool:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        return counts.counters.get(wire.COUNT_SUCCEEDED, 0) == len(items) and counts.drained

    await workers.eventually(all_done, 60, "every item done")
    seen = stand_in.requests()
    [told] = [call for call in seen if call["kind"] == "rate_limit"]
    # While the pause lasts only the other worker's call, already on its way, may reach the provider; without the
    # stage-wide pause that worker would have gone on through the items meanwhile.
    during = [call for call in seen if told["time"] < call["time"] < told["time"] + hold_s - 0.1]
    assert len(during) <= WORKERS - 1
    assert len(seen) == len(items) + 1
