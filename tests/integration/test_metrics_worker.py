"""The worker's Prometheus endpoint, scraped from real worker processes after they ran items.

Each scrape goes through ``promtool check metrics`` (Debian's prometheus
package; a missing promtool fails the test), and its values are compared with
what the run must have done and with the counters the worker wrote to Redis.
The stand-in provider's fault plan makes a 429, a server error, a refused key
and a judge's rejection happen, so those series exist and carry known values.
"""

import json
import shutil
import signal
import socket
import subprocess
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from analysis_core import env, keys
from analysis_devcluster import processes, standin
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-metrics-5e8a"
REJECT = json.dumps({"approved": False, "feedback": "name a risk"})
APPROVE = json.dumps({"approved": True, "feedback": ""})

Samples = list[tuple[str, dict[str, str], float]]


def promtool_check(exposition: str) -> None:
    """Fail on anything ``promtool check metrics`` says about the exposition (it is silent when all is well)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (tools/system-packages.sh installs Debian's prometheus package)"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=30, check=False
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, ""), checked.stdout + checked.stderr


def scrape(port: int) -> Samples:
    """``/metrics`` of the worker on ``port``, checked by promtool, as (name, labels, value) samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    promtool_check(text)
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for n, lab, v in samples if n == name and labels.items() <= lab.items())


def names(samples: Samples) -> set[str]:
    return {n for n, _labels, _v in samples}


async def test_worker_metrics_follow_a_run_with_faults(server: standin.StandIn, workers: Any, redis: Any) -> None:
    server.reset()
    server.set_plan(
        [
            {"match": "Review", "kind": "ok", "text": REJECT},
            {"match": "Review", "kind": "ok", "text": APPROVE, "times": 50},
            {"match": "Analyze LIMIT", "kind": "rate_limit", "retry_after_s": 1},
            {"match": "Analyze FLAKY", "kind": "server_error"},
            {"match": "Analyze AUTHX", "kind": "unauthorized"},
        ]
    )
    items = ["A", "B", "LIMIT", "FLAKY", "AUTHX"]
    retry = {"maxAttempts": 3, "backoff": {"initialSeconds": 0.2, "factor": 2, "maxSeconds": 1, "jitter": 0}}
    batch = workers.batch(
        {
            "items": items,
            "providers": {
                "llm": {
                    "type": "openai",
                    "model": "gpt-4.1",
                    "baseURL": server.openai_base_url,
                    "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
                }
            },
            "stages": [
                {
                    "name": "analyze",
                    "provider": "llm",
                    "prompt": "Analyze {{ item }}",
                    "concurrency": 4,
                    "rateLimit": {"requestsPerMinute": 600},
                    "retry": retry,
                },
                {
                    "name": "judge",
                    "type": "judge",
                    "provider": "llm",
                    "prompt": "Review {{ input }}",
                    "reviews": "analyze",
                    "maxRejections": 2,
                },
            ],
        }
    )
    await batch.seed()
    ports = {stage: processes.free_port() for stage in ("analyze", "judge")}
    for stage, port in ports.items():
        workers.start(batch, stage, ANALYSIS_API_KEY=API_KEY, **{env.METRICS_PORT: str(port)})

    async def settled() -> bool:
        analyze = await consumer.stage_counts(redis, batch.uid, "analyze")
        judge = await consumer.stage_counts(redis, batch.uid, "judge")
        return analyze.drained and judge.drained and judge.counters.get("succeeded", 0) == 4

    await workers.eventually(settled, 60, "every item judged")
    analyze = scrape(ports["analyze"])
    judge = scrape(ports["judge"])
    counted = (await consumer.stage_counts(redis, batch.uid, "analyze")).counters

    # Analyze: A, B, LIMIT and FLAKY pass (LIMIT after a 429, FLAKY after a 500), AUTHX fails on its key,
    # and the item the judge rejected passes a second time.
    outcomes = {
        o: value(analyze, "analysis_worker_items_total", stage="analyze", outcome=o)
        for o in ("succeeded", "rejected", "retried", "failed", "duplicate")
    }
    assert outcomes == {"succeeded": 5, "rejected": 0, "retried": 2, "failed": 1, "duplicate": 0}
    assert outcomes["succeeded"] == counted["succeeded"]
    assert outcomes["failed"] == counted["failed"]
    assert outcomes["retried"] == counted.get("retries", 0) + counted.get("rate_limited", 0)
    by_class = {lab["error_class"]: v for n, lab, v in analyze if n == "analysis_worker_errors_total"}
    assert {c: v for c, v in by_class.items() if v} == {"RateLimited": 1, "Unknown": 1, "Auth": 1}
    assert "Timeout" in by_class  # every class is exported from the start, at zero
    assert value(analyze, "analysis_worker_provider_rate_limited_total", stage="analyze") == 1
    assert value(analyze, "analysis_worker_rate_limiter_pauses_total", stage="analyze", cause="retry_after") == 1
    latency = "analysis_worker_provider_request_duration_seconds_count"
    call = {"stage": "analyze", "provider": "openai", "model": "gpt-4.1"}
    assert value(analyze, latency, **call, outcome="success") == 5
    assert value(analyze, latency, **call, outcome="RateLimited") == 1
    assert value(analyze, latency, **call, outcome="Auth") == 1
    assert value(analyze, latency, **call) == 8
    # Every call went through the limiter: analyze's for its rateLimit, the judge's (which has none) for the
    # stage's pauses, which hold a real provider's stage either way.
    assert value(analyze, "analysis_worker_rate_limiter_wait_seconds_count", stage="analyze") == 8
    assert value(judge, "analysis_worker_rate_limiter_wait_seconds_count", stage="judge") == 5

    # Judge: one rejection (the first review), then four approvals.
    assert value(judge, "analysis_worker_judge_verdicts_total", stage="judge", verdict="rejected") == 1
    assert value(judge, "analysis_worker_judge_verdicts_total", stage="judge", verdict="approved") == 4
    assert value(judge, "analysis_worker_items_total", stage="judge", outcome="rejected") == 1
    assert value(judge, "analysis_worker_items_total", stage="judge", outcome="succeeded") == 4

    # Tokens and cost of both stages add up to the batch's usage in Redis; gpt-4.1 has a price, so cost > 0.
    usage = await consumer.usage(redis, batch.uid)
    for direction, field in (("input", "input_tokens"), ("output", "output_tokens")):
        spent = sum(value(s, "analysis_worker_tokens_total", direction=direction) for s in (analyze, judge))
        assert spent == usage[field] > 0
    cost = sum(
        value(s, "analysis_worker_cost_dollars_total", provider="openai", model="gpt-4.1") for s in (analyze, judge)
    )
    assert cost == pytest.approx(usage["cost_nusd"] / 1e9, rel=1e-6)
    assert cost > 0
    for samples, stage in ((analyze, "analyze"), (judge, "judge")):
        assert value(samples, "analysis_worker_items_in_flight", stage=stage) == 0
        assert value(samples, "analysis_worker_provider_calls_in_flight", stage=stage) == 0
    # Nothing in a label that identifies an item.
    assert not any(item in json.dumps(lab) for _n, lab, _v in analyze + judge for item in items if len(item) > 1)


async def test_a_worker_whose_metrics_port_is_taken_still_works(workers: Any, redis: Any) -> None:
    batch = workers.batch(
        {
            "items": ["P", "Q", "R"],
            "providers": {"local": {"type": "offline", "offline": {"seed": 3}}},
            "stages": [{"name": "draft", "provider": "local", "prompt": "Draft {{ item }}"}],
        }
    )
    await batch.seed()
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = workers.start(batch, "draft", **{env.METRICS_PORT: str(port)})

        async def done() -> bool:
            return (await consumer.stage_counts(redis, batch.uid, "draft")).counters.get("succeeded", 0) == 3

        await workers.eventually(done, 30, "items done without a metrics endpoint")
        assert worker.process.poll() is None
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=20) == 0
    warnings = [line for line in worker.lines() if line["level"] == "warning"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["port"] == port
    assert f"port {port}" in warnings[0]["msg"]


async def test_items_taken_over_from_a_dead_worker_count_as_redeliveries(workers: Any, redis: Any) -> None:
    batch = workers.batch(
        {
            "items": ["X1", "X2", "X3"],
            "providers": {"local": {"type": "offline", "offline": {"seed": 5, "latencyMilliseconds": 3000}}},
            "stages": [{"name": "draft", "provider": "local", "prompt": "Draft {{ item }}", "concurrency": 3}],
        },
        lease_s=1.0,
    )
    await batch.seed()
    first = workers.start(batch, "draft")

    async def all_running() -> bool:
        return (await consumer.stage_counts(redis, batch.uid, "draft")).running == 3

    await workers.eventually(all_running, 15, "claimed by the first worker")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    port = processes.free_port()
    workers.start(batch, "draft", **{env.METRICS_PORT: str(port)})

    async def done() -> bool:
        return (await consumer.stage_counts(redis, batch.uid, "draft")).counters.get("succeeded", 0) == 3

    await workers.eventually(done, 30, "taken over and finished")
    samples = scrape(port)
    redelivered = await redis.hget(keys.BatchKeys(batch.uid).counts("draft"), "redelivered")
    assert value(samples, "analysis_worker_redeliveries_total", stage="draft", source="expired_lease") == 3
    assert int(redelivered) == 3
    assert value(samples, "analysis_worker_redeliveries_total", stage="draft", source="own_pending") == 0
    assert value(samples, "analysis_worker_items_total", stage="draft", outcome="succeeded") == 3
    assert "analysis_worker_leases_lost_total" in names(samples)
