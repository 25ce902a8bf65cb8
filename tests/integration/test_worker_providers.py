"""Worker processes calling the real anthropic and openai SDKs against the stand-in server.

Each error class takes its path through the whole loop: 401 fails the item
without a retry; 429 waits its retry-after and keeps its attempt; 5xx, 529,
timeouts and malformed output back off and use attempts; an item out of
attempts fails. And the shared limiter holds four worker processes to the
configured rate in every window.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from analysis_core import keys, plan, queue, wire
from analysis_devcluster import standin
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-4f1c9e2d7b"  # what the stand-in (tests/integration/conftest.py) wants


async def outcomes(redis: queue.Redis, uid: str) -> dict[str, dict[str, Any]]:
    raw = await redis.hgetall(keys.BatchKeys(uid).outcomes)
    return {key.split("/", 1)[1]: json.loads(value) for key, value in raw.items() if value != wire.OUTCOME_SPENT}


@pytest.mark.parametrize("api", ["anthropic", "openai"])
@pytest.mark.timeout(120)
async def test_each_error_class_takes_its_path(
    api: str, stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    stand_in.set_plan(
        [
            {"match": "AUTHX", "kind": "unauthorized"},
            {"match": "LIMIT", "kind": "rate_limit", "retry_after_s": 1},
            {"match": "FLAKY", "kind": "server_error", "times": 2},
            {"match": "BUSY", "kind": "overloaded"},
            {"match": "GARBLED", "kind": "malformed"},
            {"match": "SLOW", "kind": "timeout", "delay_s": 5},
            {"match": "DOOMED", "kind": "server_error", "times": 10},
        ]
    )
    items = ["OK", "AUTHX", "LIMIT", "FLAKY", "BUSY", "GARBLED", "SLOW", "DOOMED"]
    batch = workers.batch(
        stand_in.batch_spec(
            api,
            items,
            concurrency=8,
            timeoutSeconds=1,
            retry={"maxAttempts": 3, "backoff": {"initialSeconds": 0.2, "factor": 2, "maxSeconds": 1, "jitter": 0}},
        ),
    )
    await batch.seed()
    worker = workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    async def settled() -> dict[str, int] | None:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        done = counts.counters.get("succeeded", 0) + counts.counters.get("failed", 0)
        return counts.counters if done == len(items) and counts.drained else None

    counters = await workers.eventually(settled, 60, "every item finished")
    seen = await outcomes(redis, batch.uid)
    status = {key: value["status"] for key, value in seen.items()}
    calls: dict[str, list[dict[str, Any]]] = {item: [] for item in items}
    for call in stand_in.requests():
        calls[call["prompt"].removeprefix("Analyze ")].append(call)

    assert status["analyze/OK/0/1"] == "succeeded"
    # 401: fails at once, one call, no retry.
    assert status["analyze/AUTHX/0/1"] == "failed"
    assert seen["analyze/AUTHX/0/1"]["error_class"] == "Auth"
    assert len(calls["AUTHX"]) == 1
    # 429: waited retry-after, and the retry is still attempt 1.
    assert status["analyze/LIMIT/0/1"] == "succeeded"
    assert calls["LIMIT"][1]["time"] - calls["LIMIT"][0]["time"] >= 1.0
    # 5xx twice: backed off, third attempt succeeds.
    assert [status[f"analyze/FLAKY/0/{n}"] for n in (1, 2, 3)] == ["retry", "retry", "succeeded"]
    assert seen["analyze/FLAKY/0/1"]["error_class"] == "Unknown"
    assert calls["FLAKY"][2]["time"] - calls["FLAKY"][1]["time"] >= 0.4  # 0.2 s, then 0.4 s
    assert [status[f"analyze/BUSY/0/{n}"] for n in (1, 2)] == ["retry", "succeeded"]
    assert seen["analyze/BUSY/0/1"]["error_class"] == "Overloaded"
    assert seen["analyze/GARBLED/0/1"]["error_class"] == "BadOutput"
    assert status["analyze/GARBLED/0/2"] == "succeeded"
    assert seen["analyze/SLOW/0/1"]["error_class"] == "Timeout"
    assert status["analyze/SLOW/0/2"] == "succeeded"
    # Out of attempts: failed after maxAttempts calls.
    assert [status[f"analyze/DOOMED/0/{n}"] for n in (1, 2, 3)] == ["retry", "retry", "failed"]
    assert len(calls["DOOMED"]) == 3
    assert counters["rate_limited"] == 1
    assert counters["failed"] == 2
    # The SDKs never retried on their own, and the key reached the server but never the logs.
    assert all(call["retry_count"] == 0 and call["key_matched"] for call in stand_in.requests())
    worker.process.terminate()
    worker.process.wait(timeout=20)
    assert API_KEY not in worker.log.read_text(encoding="utf-8")
    assert API_KEY not in json.dumps(seen)


@pytest.mark.timeout(120)
async def test_four_processes_never_exceed_the_shared_rate_limit(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis
) -> None:
    limit, window_s, n_items = 6, 1.0, 36
    items = [f"R{i:02d}" for i in range(n_items)]
    batch = workers.batch(
        stand_in.batch_spec("openai", items, concurrency=4, rateLimit={"requestsPerMinute": limit}),
        stages={"analyze": {"rate_limit": plan.RateLimitPlan(requests_per_minute=limit, window_s=window_s)}},
    )
    await batch.seed()
    for _ in range(4):
        workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY)

    async def done() -> bool:
        counts = await consumer.stage_counts(redis, batch.uid, "analyze")
        return counts.counters.get("succeeded", 0) == n_items

    await workers.eventually(done, 60, "all items through the limiter")
    times = sorted(call["time"] for call in stand_in.requests())
    assert len(times) == n_items
    # No window of the configured length holds more than the limit, wherever it starts.
    busiest = max(sum(1 for t in times if start <= t < start + window_s) for start in times)
    assert busiest <= limit
    # And it let work through close to the limit: paced window/limit apart (plus the guard),
    # a window holds limit - 1 or limit requests, not a trickle.
    assert busiest >= limit - 1


@pytest.mark.timeout(60)
async def test_an_answer_that_fails_its_format_is_still_paid_for(
    stand_in: standin.StandIn, workers: Any, redis: queue.Redis, tmp_path: Path
) -> None:
    # The first answer is not JSON (BadOutput, retried); the second is. Both calls used tokens, and both cost money.
    stand_in.set_plan(
        [
            {"match": "ACME", "kind": "ok", "text": "not json", "input_tokens": 1000, "output_tokens": 500},
            {"match": "ACME", "kind": "ok", "text": '{"rating": 4}', "input_tokens": 1000, "output_tokens": 100},
        ]
    )
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  stand-in-model: {input: 3, output: 15}\n")
    batch = workers.batch(
        stand_in.batch_spec(
            "openai",
            ["ACME"],
            output="json",
            retry={"maxAttempts": 3, "backoff": {"initialSeconds": 0.1, "jitter": 0}},
        ),
    )
    await batch.seed()
    workers.start(batch, "analyze", ANALYSIS_API_KEY=API_KEY, ANALYSIS_PRICES_PATH=str(prices))

    async def succeeded() -> bool:
        return (await consumer.stage_counts(redis, batch.uid, "analyze")).counters.get("succeeded", 0) == 1

    await workers.eventually(succeeded, 30, "the second answer accepted")
    seen = await outcomes(redis, batch.uid)
    assert seen["analyze/ACME/0/1"]["error_class"] == "BadOutput"
    used = await consumer.usage(redis, batch.uid)
    assert (used["input_tokens"], used["output_tokens"]) == (2000, 600)
    # 2000 input tokens at $3/Mtok and 600 output tokens at $15/Mtok, in nano-dollars.
    assert used["cost_nusd"] == (2000 * 3 + 600 * 15) * 1000
