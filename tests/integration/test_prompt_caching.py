"""Prompt caching end to end: real worker processes, the real SDKs, the stand-in's model of each provider's cache.

A 200-item stage whose prompt starts with a 3,000-token rubric shared by
every item: the worker sends that prefix for the cache (Anthropic: a block
marked ``cache_control``; OpenAI caches it by itself), one call primes the
cache before the others go out, and every later call reads the prefix. The
stand-in reports cache usage as each provider does; the counters in Redis and
the cost they add up to must match the price table's cache prices, call by call.
"""

from decimal import Decimal
from typing import Any

import pytest

from analysis_core import keys, pricing, queue, wire
from analysis_devcluster import promptcache, standin
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-cache-51e8"
ITEMS = [f"C{n:03d}" for n in range(200)]
RUBRIC = "".join(f"Rule {n}: weigh the evidence for criterion {n} before you score it.\n" for n in range(185))
MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4.1"}
NANO = Decimal(10) ** 9


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.timeout(120)
async def test_a_shared_prefix_is_written_once_and_read_by_every_later_call(
    api: str, stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    prefix_tokens = promptcache.tokens(RUBRIC + "Company: ")  # the template's text up to its first {{ item }}
    assert 2900 <= prefix_tokens <= 3100
    model = MODELS[api]
    spec = stand_in.batch_spec(
        api, ITEMS, model=model, prompt=RUBRIC + "Company: {{ item }}\nScore it.", concurrency=16
    )
    # Each answer takes 300 ms, as a provider's do: calls that start together overlap, and without priming they
    # would all miss and all write the prefix.
    stand_in.set_plan([{"kind": "ok", "delay_s": 0.3, "times": len(ITEMS)}])
    batch = workers.batch(spec)
    await batch.seed()
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    async def done() -> bool:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        return counts.counters.get(wire.COUNT_SUCCEEDED, 0) == len(ITEMS)

    await workers.eventually(done, 90, "every item analyzed")
    calls = sorted((c for c in stand_in.requests() if c["kind"] == "ok"), key=lambda c: c["time"])
    assert len(calls) == len(ITEMS)
    first, later = calls[0], calls[1:]
    # One call primed the cache (it read nothing); every later one read the prefix, or all of it but the last
    # step of 128 tokens OpenAI counts in.
    assert first["cache_read"] == 0
    if api == "anthropic":
        assert first["cache_write"] == prefix_tokens
    least = min(c["cache_read"] for c in later)
    assert least >= 0.9 * prefix_tokens, least
    assert sum(c["cache_write"] for c in later) == 0  # no second write of the same prefix

    # What Redis counted is what the stand-in reported, and its cost is the price table's, call by call.
    usage = await redis.hgetall(keys.BatchKeys(batch.uid).usage)
    table = pricing.PriceTable.default()
    tokens = [pricing.Tokens(c["input_tokens"], c["output_tokens"], c["cache_write"], c["cache_read"]) for c in calls]
    assert int(usage[wire.USAGE_CACHE_READ_TOKENS]) == sum(t.cache_read for t in tokens)
    assert int(usage.get(wire.USAGE_CACHE_WRITE_TOKENS, 0)) == sum(t.cache_write for t in tokens)
    assert int(usage[wire.USAGE_INPUT_TOKENS]) == sum(t.prompt for t in tokens)
    expected_nusd = sum(int(table.cost_of(model, t) * NANO) for t in tokens)
    assert int(usage[wire.USAGE_COST_NUSD]) == expected_nusd
    uncached = sum(int(table.cost_of(model, pricing.Tokens(t.prompt, t.output)) * NANO) for t in tokens)
    assert expected_nusd < 0.5 * uncached  # the cache took more than half off the bill
