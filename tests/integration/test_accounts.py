"""Provider accounts through the whole loop: the operator's allocator, worker processes, the real SDKs, the stand-in.

An AnalysisProvider's limit is one limit for every batch on it, in any
namespace: the allocator (``analysis_operator.accounts``, run here in the
test's process, as the operator's daemon runs it) grants allowances by fair
share into each batch's Redis keys, and the batches' real worker processes
spend them, calling the stand-in through the real SDKs. Counted at the
stand-in: no window of the account's length holds more calls than its limit,
and the calls split between namespaces by their weights whatever each wants,
however many batches a namespace splits its work into, and from the first
call of a small batch that arrives behind a large one.
"""

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from analysis_core import env, keys, queue, wire
from analysis_core.api import v1alpha1
from analysis_devcluster import standin
from analysis_operator import accounts, producer, reconciler
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-accounts-3b9d40"  # what the stand-in (tests/integration/conftest.py) wants
ACCOUNT = "shared"
WINDOW_S = 1
PER_WINDOW = 20  # calls per window: 1200 per minute over a 1-second window
TOLERANCE = 0.10


def account_spec(stand_in: standin.StandIn, weights: dict[str, int], **limits: Any) -> v1alpha1.AnalysisProviderSpec:
    return v1alpha1.AnalysisProviderSpec.model_validate(
        {
            "type": "openai",
            "baseURL": stand_in.base_url("openai"),
            "limits": {"requestsPerMinute": PER_WINDOW * 60 // WINDOW_S, "windowSeconds": WINDOW_S, **limits},
            "namespaces": [{"name": ns, "weight": w} for ns, w in weights.items()],
        }
    )


def batch_spec(stand_in: standin.StandIn, items: list[str], concurrency: int) -> dict[str, Any]:
    spec = stand_in.batch_spec("openai", items, concurrency=concurrency)
    provider = spec["providers"]["llm"]
    del provider["type"], provider["baseURL"]
    provider["providerRef"] = {"name": ACCOUNT}
    return spec


def calls_by_prefix(stand_in: standin.StandIn, prefixes: Sequence[str]) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for call in stand_in.requests():
        for prefix in prefixes:
            if call["prompt"].startswith(f"Analyze {prefix}-"):
                counts[prefix] += 1
    return counts


def most_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


async def saturate(
    stand_in: standin.StandIn,
    workers: Any,
    allocating: Any,
    groups: dict[str, list[tuple[str, int]]],
    measured_calls: int,
) -> collections.Counter[str]:
    """Batches (prefix, concurrency) per namespace, all wanting more than they get; calls per namespace once
    ``measured_calls`` more were made after every batch had its first."""
    prefix_ns = {}
    for namespace, batches in groups.items():
        for prefix, concurrency in batches:
            items = [f"{prefix}-{i}" for i in range(2000)]
            batch = workers.batch(
                batch_spec(stand_in, items, concurrency), accounts={ACCOUNT: allocating.allocator.spec}
            )
            await batch.seed()
            allocating.use(namespace, prefix, batch)
            workers.start(batch, "analyze", **{env.API_KEY: API_KEY, env.CONCURRENCY: str(concurrency)})
            prefix_ns[prefix] = namespace
    prefixes = list(prefix_ns)

    async def all_started() -> bool:
        return all(calls_by_prefix(stand_in, prefixes)[p] >= 3 for p in prefixes)

    await workers.eventually(all_started, 60, "every batch calling")
    before = calls_by_prefix(stand_in, prefixes)

    async def measured() -> bool:
        return sum(calls_by_prefix(stand_in, prefixes).values()) - sum(before.values()) >= measured_calls

    await workers.eventually(measured, 120, f"{measured_calls} more calls")
    after = calls_by_prefix(stand_in, prefixes)
    per_ns: collections.Counter[str] = collections.Counter()
    for prefix in prefixes:
        per_ns[prefix_ns[prefix]] += after[prefix] - before[prefix]
    times = [c["time"] for c in stand_in.requests()]
    assert most_in_any_window(times, WINDOW_S) <= PER_WINDOW, "a window held more calls than the account's limit"
    return per_ns


def assert_shares(per_ns: collections.Counter[str], expected: dict[str, float]) -> None:
    total = sum(per_ns.values())
    for ns, share in expected.items():
        got = per_ns[ns] / total
        assert abs(got - share) <= TOLERANCE * share, (
            f"{ns} got {got:.3f} of the calls, its share is {share:.3f}: {dict(per_ns)}"
        )


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        pytest.param(
            {"team-a": 1, "team-b": 1, "team-c": 1}, {"team-a": 1 / 3, "team-b": 1 / 3, "team-c": 1 / 3}, id="equal"
        ),
        pytest.param(
            {"team-a": 2, "team-b": 1, "team-c": 1}, {"team-a": 0.5, "team-b": 0.25, "team-c": 0.25}, id="2-1-1"
        ),
    ],
)
async def test_namespaces_wanting_unequally_split_the_account_by_weight(
    weights: dict[str, int],
    expected: dict[str, float],
    stand_in: standin.StandIn,
    workers: Any,
    allocate: Callable[..., Any],
) -> None:
    allocating = allocate(ACCOUNT, account_spec(stand_in, weights))
    async with allocating.running():
        # Calls wanted at once: 8, 2 and 1 times what a namespace's third of the account keeps busy (a third of
        # 20 calls a second, each taking a worker up to half a second from grant to its next ask on a loaded
        # machine: about 4), so each wants at least its share and a first-come limiter would favour team-a.
        groups = {"team-a": [("a", 32)], "team-b": [("b", 8)], "team-c": [("c", 4)]}
        per_ns = await saturate(stand_in, workers, allocating, groups, measured_calls=8 * PER_WINDOW)
    assert_shares(per_ns, expected)


@pytest.mark.timeout(240)
async def test_ten_batches_of_one_namespace_get_what_one_batch_of_another_gets(
    stand_in: standin.StandIn, workers: Any, allocate: Callable[..., Any]
) -> None:
    allocating = allocate(ACCOUNT, account_spec(stand_in, {"many": 1, "one": 1}))
    async with allocating.running():
        # Each namespace wants more than its half: 10 calls a second, up to half a second each.
        groups = {"many": [(f"m{i}", 4) for i in range(10)], "one": [("o", 16)]}
        per_ns = await saturate(stand_in, workers, allocating, groups, measured_calls=8 * PER_WINDOW)
    assert_shares(per_ns, {"many": 0.5, "one": 0.5})


@pytest.mark.timeout(240)
async def test_a_small_batch_behind_a_huge_one_gets_its_share_from_its_first_call(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis, allocate: Callable[..., Any]
) -> None:
    allocating = allocate(ACCOUNT, account_spec(stand_in, {"big": 1, "small": 1}))
    async with allocating.running():
        big = workers.batch(
            batch_spec(stand_in, [f"big-{i}" for i in range(2000)], 16), accounts={ACCOUNT: allocating.allocator.spec}
        )
        await big.seed()
        allocating.use("big", "big", big)
        workers.start(big, "analyze", **{env.API_KEY: API_KEY, env.CONCURRENCY: "16"})

        async def backlog() -> bool:
            return calls_by_prefix(stand_in, ["big"])["big"] >= 2 * PER_WINDOW

        await workers.eventually(backlog, 60, "the big batch busy")
        # Wanting more than its share (8 calls at once against one call per grant), so what it gets is its share.
        small = workers.batch(
            batch_spec(stand_in, [f"small-{i}" for i in range(20)], 8), accounts={ACCOUNT: allocating.allocator.spec}
        )
        await small.seed()
        allocating.use("small", "small", small)
        workers.start(small, "analyze", **{env.API_KEY: API_KEY, env.CONCURRENCY: "8"})

        async def small_done() -> bool:
            return calls_by_prefix(stand_in, ["small"])["small"] >= 20

        await workers.eventually(small_done, 60, "the small batch done")
    calls = [c for c in stand_in.requests() if c["prompt"].startswith(("Analyze big-", "Analyze small-"))]
    first = next(i for i, c in enumerate(calls) if c["prompt"].startswith("Analyze small-"))
    last = max(i for i, c in enumerate(calls) if c["prompt"].startswith("Analyze small-"))
    during = calls[first : last + 1]
    small_share = sum(1 for c in during if c["prompt"].startswith("Analyze small-")) / len(during)
    assert small_share >= 0.5 * (1 - TOLERANCE), f"the small batch got {small_share:.2f} of the calls while it ran"
    # And the big one kept its backlog throughout: it wanted more the whole time.
    pending = await redis.xlen(keys.BatchKeys(big.uid).stream("analyze"))
    assert pending > 0


PROBE_S = 0.2  # the allocator's first wait before a probe; it doubles with each refused probe


def most_probes(span_s: float) -> int:
    """How many probes the schedule allows in ``span_s``: k probes need PROBE_S * (2^k - 1) seconds of waits."""
    return math.floor(math.log2(span_s / PROBE_S + 1))


async def start_team(
    stand_in: standin.StandIn, workers: Any, allocating: Any, namespace: str, prefix: str, n: int
) -> Any:
    batch = workers.batch(
        batch_spec(stand_in, [f"{prefix}-{i}" for i in range(n)], 2), accounts={ACCOUNT: allocating.allocator.spec}
    )
    await batch.seed()
    allocating.use(namespace, prefix, batch)
    workers.start(batch, "analyze", **{env.API_KEY: API_KEY, env.CONCURRENCY: "2", env.QUOTA_PROBE_SECONDS: "0.2"})
    return batch


async def done(redis: queue.Redis, batch: Any, n: int) -> bool:
    counts = await consumer.stage_counts(redis, batch.uid, "analyze")
    return counts.counters.get(wire.COUNT_SUCCEEDED, 0) == n and counts.drained


@pytest.mark.timeout(120)
async def test_a_refusal_for_quota_holds_every_namespace_on_the_account_and_only_probes_go_out(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis, allocate: Callable[..., Any]
) -> None:
    in_flight = 2
    stand_in.set_plan([{"kind": "insufficient_quota", "times": 10_000}])  # the account cannot pay until told
    allocating = allocate(ACCOUNT, account_spec(stand_in, {"team-a": 1, "team-b": 1}, maxInFlight=in_flight))
    async with allocating.running():
        teams = {ns: await start_team(stand_in, workers, allocating, ns, ns, 4) for ns in ("team-a", "team-b")}

        async def probed(times: int) -> accounts.Quota | None:
            quota = allocating.registry.quota(ACCOUNT, "stand-in-model")
            return quota if quota is not None and quota.backoff_s >= PROBE_S * 2**times else None

        quota = await workers.eventually(lambda: probed(3), 60, "three probes refused")
        seen = stand_in.requests()
        assert standin.OPENAI_INSUFFICIENT_QUOTA in quota.message
        # Both namespaces' batches see the account's refusal as their condition, naming the account.
        for batch in teams.values():
            snapshot = await producer.snapshot(redis, batch.uid, ["analyze"])
            [problem] = reconciler.account_quota_problems(batch.plan, snapshot, allocating.registry)
            assert problem.reason == v1alpha1.Reason.PROVIDER_QUOTA_EXHAUSTED
            assert f"AnalysisProvider {ACCOUNT}" in problem.message
            assert standin.OPENAI_INSUFFICIENT_QUOTA in problem.message
        # What reached the provider: calls granted before the refusal was reported (at most the calls in flight
        # of two grants), then the probes, which fit the doubling schedule.
        assert {call["kind"] for call in seen} == {"insufficient_quota"}
        span_s = seen[-1]["time"] - seen[0]["time"]
        assert len(seen) <= 2 * in_flight + most_probes(span_s) + 1
        for batch in teams.values():
            counts = await consumer.stage_counts(redis, batch.uid, "analyze")
            assert counts.counters.get(wire.COUNT_RETRIES, 0) == 0  # no attempt used
            assert counts.counters.get(wire.COUNT_FAILED, 0) == 0

        # The account can pay again: the next probe passes and both teams finish, every item at its first attempt.
        stand_in.set_plan([])
        for batch in teams.values():
            await workers.eventually(lambda b=batch: done(redis, b, 4), 60, "every item done after the refusals")
        assert allocating.registry.quota(ACCOUNT, "stand-in-model") is None
    for batch in teams.values():
        outcomes = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
        assert {key.rsplit("/", 1)[1] for key in outcomes} == {"1"}


@pytest.mark.timeout(120)
async def test_a_retry_after_pauses_the_account_for_every_batch_on_it(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis, allocate: Callable[..., Any]
) -> None:
    hold_s, in_flight = 2.0, 2
    stand_in.set_plan([{"kind": "rate_limit", "retry_after_s": hold_s}])  # the first call is told to wait
    allocating = allocate(ACCOUNT, account_spec(stand_in, {"team-a": 1, "team-b": 1}, maxInFlight=in_flight))
    async with allocating.running():
        teams = [await start_team(stand_in, workers, allocating, ns, ns, 6) for ns in ("team-a", "team-b")]
        for batch in teams:
            await workers.eventually(lambda b=batch: done(redis, b, 6), 60, "every item done")
    seen = stand_in.requests()
    [told] = [call for call in seen if call["kind"] == "rate_limit"]
    # Once the allocator has seen the report (a grant or two later), no batch on the account calls until the end
    # of the pause: only calls granted before it may still arrive.
    during = [c for c in seen if told["time"] < c["time"] < told["time"] + hold_s - 0.1]
    assert len(during) <= 2 * in_flight
    assert {c["prompt"].split("-")[0] for c in seen if c["time"] > told["time"] + hold_s} == {"Analyze team"}
    assert len(seen) == 12 + 1


def per_window(times: list[float], window_s: float) -> int:
    return most_in_any_window(times, window_s)


@pytest.mark.timeout(180)
async def test_a_namespace_cap_holds_even_when_the_rest_of_the_account_idles(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis, allocate: Callable[..., Any]
) -> None:
    cap_per_window = 5  # 300 a minute over the 1-second window, a quarter of the account
    spec = v1alpha1.AnalysisProviderSpec.model_validate(
        {
            "type": "openai",
            "baseURL": stand_in.base_url("openai"),
            "limits": {"requestsPerMinute": PER_WINDOW * 60, "windowSeconds": WINDOW_S},
            "namespaces": [{"name": "capped", "requestsPerMinute": cap_per_window * 60}, {"name": "*"}],
        }
    )
    allocating = allocate(ACCOUNT, spec)
    async with allocating.running():
        batch = workers.batch(batch_spec(stand_in, [f"cap-{i}" for i in range(30)], 8), accounts={ACCOUNT: spec})
        await batch.seed()
        allocating.use("capped", "capped", batch)
        workers.start(batch, "analyze", **{env.API_KEY: API_KEY, env.CONCURRENCY: "8"})
        await workers.eventually(lambda: done(redis, batch, 30), 60, "the capped batch done")
    times = [c["time"] for c in stand_in.requests()]
    assert per_window(times, WINDOW_S) <= cap_per_window
    # Spread over the windows the cap allows, not faster: 30 calls at 5 per window take at least 5 windows.
    assert max(times) - min(times) >= (30 / cap_per_window - 1) * WINDOW_S


@pytest.mark.timeout(180)
async def test_output_tokens_are_reserved_then_settled_to_what_calls_used(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis, allocate: Callable[..., Any]
) -> None:
    """Each call reserves maxTokens of output; the stand-in answers with a few: settling frees the rest.

    So more calls go per window than the reservations alone would allow, and
    the output tokens really used per window stay within the limit.
    """
    max_tokens, limit = 100, 400  # reservations alone: 4 calls per window
    stand_in.set_plan([{"kind": "ok", "output_tokens": 10, "times": 10_000}])
    spec = v1alpha1.AnalysisProviderSpec.model_validate(
        {
            "type": "openai",
            "baseURL": stand_in.base_url("openai"),
            "limits": {"outputTokensPerMinute": limit * 60, "windowSeconds": WINDOW_S},
            "namespaces": [{"name": "*"}],
        }
    )
    allocating = allocate(ACCOUNT, spec)
    async with allocating.running():
        batch_manifest = batch_spec(stand_in, [f"tok-{i}" for i in range(40)], 4)
        batch_manifest["providers"]["llm"]["maxTokens"] = max_tokens
        batch = workers.batch(batch_manifest, accounts={ACCOUNT: spec})
        await batch.seed()
        allocating.use("tokens", "tokens", batch)
        workers.start(batch, "analyze", **{env.API_KEY: API_KEY, env.CONCURRENCY: "4"})
        await workers.eventually(lambda: done(redis, batch, 40), 90, "the batch done")
    calls = stand_in.requests()
    assert {c["max_tokens"] for c in calls} == {max_tokens}
    busiest = per_window([c["time"] for c in calls], WINDOW_S)
    assert busiest > limit // max_tokens  # settled reservations made room for more calls than reserved alone
    assert busiest * 10 <= limit  # and what they used stayed within the limit
