"""The real SDKs' batch APIs against the stand-in: Anthropic Message Batches, OpenAI Batch with its files.

Clients run with strict response validation, so an answer that drifted from
the SDKs' schemas fails here. Each test reads what a batch-mode worker will
rely on: submission, the states a batch goes through, results matched by
custom_id, per-request faults (errored, expired), faults of a whole batch
(slow, expired, failed), cancellation, deletion of files, the providers'
limits, the prompt cache inside a batch, and the count of submissions per
custom_id that shows a request sent twice.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from analysis_devcluster import promptcache, standin

pytestmark = pytest.mark.integration

API_KEY = "sk-standin-batches-3e9d"
RUBRIC = "Score the company against each rule of the rubric. " * 120  # about 1,500 tokens


@pytest.fixture
async def claude(batch_stand_in: standin.StandIn) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        api_key=API_KEY, base_url=batch_stand_in.anthropic_base_url, max_retries=0, _strict_response_validation=True
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def gpt(batch_stand_in: standin.StandIn) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(
        api_key=API_KEY, base_url=batch_stand_in.openai_base_url, max_retries=0, _strict_response_validation=True
    )
    try:
        yield client
    finally:
        await client.close()


def message(prompt: str, *, cached_prefix: str = "") -> dict[str, Any]:
    content: Any = prompt
    if cached_prefix:
        content = [
            {"type": "text", "text": cached_prefix, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": prompt},
        ]
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": content}]}


async def ended(claude: anthropic.AsyncAnthropic, batch_id: str) -> Any:
    for _ in range(100):
        batch = await claude.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        await asyncio.sleep(0.05)
    pytest.fail(f"batch {batch_id} did not end")


async def settled(gpt: openai.AsyncOpenAI, batch_id: str) -> Any:
    for _ in range(100):
        batch = await gpt.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        await asyncio.sleep(0.05)
    pytest.fail(f"batch {batch_id} did not settle")


async def test_an_anthropic_batch_runs_and_its_results_come_back_by_custom_id(
    batch_stand_in: standin.StandIn, claude: anthropic.AsyncAnthropic
) -> None:
    batch_stand_in.set_plan([{"match": "FLAKY", "kind": "server_error"}, {"match": "LATE", "kind": "expired"}])
    requests = [{"custom_id": f"r-{name}", "params": message(f"Analyze {name}")} for name in ("OK", "FLAKY", "LATE")]
    created = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 3
    assert created.results_url is None
    done = await ended(claude, created.id)
    assert (done.request_counts.succeeded, done.request_counts.errored, done.request_counts.expired) == (1, 1, 1)
    results = {r.custom_id: r.result async for r in await claude.messages.batches.results(created.id)}
    assert results["r-OK"].type == "succeeded"
    assert results["r-OK"].message.content[0].text == "stand-in answer: Analyze OK"  # type: ignore[union-attr]
    assert results["r-FLAKY"].type == "errored"
    assert results["r-FLAKY"].error.error.type == "api_error"  # type: ignore[union-attr]
    assert results["r-LATE"].type == "expired"
    listed = [b.id async for b in claude.messages.batches.list()]
    assert listed == [created.id]
    await claude.messages.batches.delete(created.id)
    assert batch_stand_in.batch_submissions() == {"r-OK": 1, "r-FLAKY": 1, "r-LATE": 1}
    # Its times outlive it (the benchmark's timeline reads them): created, due, answered at the first look after.
    (timeline,) = batch_stand_in.batch_timeline()
    assert timeline["ended"] is not None
    assert timeline["created"] < timeline["ready_at"] <= timeline["ended"]


async def test_an_anthropic_batch_canceled_before_it_ran_ends_with_every_request_canceled(
    batch_stand_in: standin.StandIn, claude: anthropic.AsyncAnthropic
) -> None:
    batch_stand_in.batch_turnaround(30)
    created = await claude.messages.batches.create(requests=[{"custom_id": "a", "params": message("A")}])  # type: ignore[list-item]
    canceling = await claude.messages.batches.cancel(created.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    done = await ended(claude, created.id)
    assert done.request_counts.canceled == 1
    assert [r.result.type async for r in await claude.messages.batches.results(created.id)] == ["canceled"]


async def test_anthropics_limits_and_a_failing_batch_are_refused_at_create(
    batch_stand_in: standin.StandIn, claude: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        await claude.messages.batches.create(requests=[{"custom_id": "has/slash", "params": message("A")}])  # type: ignore[list-item]
    twice = [{"custom_id": "same", "params": message("A")}, {"custom_id": "same", "params": message("B")}]
    with pytest.raises(anthropic.BadRequestError, match="duplicate"):
        await claude.messages.batches.create(requests=twice)  # type: ignore[arg-type]
    batch_stand_in.set_plan([{"match": "DOOMED", "kind": "batch_failed"}])
    with pytest.raises(anthropic.InternalServerError):
        await claude.messages.batches.create(requests=[{"custom_id": "d", "params": message("DOOMED")}])  # type: ignore[list-item]
    assert batch_stand_in.provider_batches() == []


async def test_the_prompt_cache_works_inside_a_batch_and_a_slow_batch_takes_its_time(
    batch_stand_in: standin.StandIn, claude: anthropic.AsyncAnthropic
) -> None:
    batch_stand_in.set_plan([{"match": "item-0", "kind": "batch_slow", "delay_s": 1.0}])
    requests = [{"custom_id": f"c{n}", "params": message(f"item-{n}", cached_prefix=RUBRIC)} for n in range(4)]
    created = await claude.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    await asyncio.sleep(0.5)
    assert (await claude.messages.batches.retrieve(created.id)).processing_status == "in_progress"
    await ended(claude, created.id)
    usage = {r.custom_id: r.result.message.usage async for r in await claude.messages.batches.results(created.id)}  # type: ignore[union-attr]
    prefix = promptcache.tokens(RUBRIC)
    assert usage["c0"].cache_creation_input_tokens == prefix
    assert [usage[f"c{n}"].cache_read_input_tokens for n in range(1, 4)] == [prefix] * 3


async def test_an_openai_batch_reads_its_input_file_and_writes_output_and_error_files(
    batch_stand_in: standin.StandIn, gpt: openai.AsyncOpenAI
) -> None:
    batch_stand_in.set_plan([{"match": "FLAKY", "kind": "server_error"}])
    lines = [
        {
            "custom_id": f"r-{name}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"Analyze {name}"}]},
        }
        for name in ("OK", "FLAKY")
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = await gpt.files.create(file=("input.jsonl", data), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes) == ("batch", len(data))
    created = await gpt.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert created.status == "validating"
    done = await settled(gpt, created.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (2, 1, 1)
    assert done.output_file_id is not None
    assert done.error_file_id is not None
    output = [json.loads(line) for line in (await gpt.files.content(done.output_file_id)).text.splitlines()]
    assert [(o["custom_id"], o["response"]["status_code"]) for o in output] == [("r-OK", 200)]
    assert output[0]["response"]["body"]["choices"][0]["message"]["content"] == "stand-in answer: Analyze OK"
    failed = [json.loads(line) for line in (await gpt.files.content(done.error_file_id)).text.splitlines()]
    assert [(f["custom_id"], f["response"]["status_code"]) for f in failed] == [("r-FLAKY", 500)]
    for file_id in (uploaded.id, done.output_file_id, done.error_file_id):
        assert (await gpt.files.delete(file_id)).deleted
    held, deleted = batch_stand_in.files()
    assert held == []
    assert sorted(deleted) == sorted([uploaded.id, done.output_file_id, done.error_file_id])
    assert [b.id async for b in gpt.batches.list()] == [created.id]


async def test_openai_refuses_another_window_fails_a_duplicate_and_expires_or_cancels_a_batch(
    batch_stand_in: standin.StandIn, gpt: openai.AsyncOpenAI
) -> None:
    def upload(*names: str) -> bytes:
        return "".join(
            json.dumps(
                {
                    "custom_id": name,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": f"Analyze {name}"}]},
                }
            )
            + "\n"
            for name in names
        ).encode()

    single = await gpt.files.create(file=("a.jsonl", upload("a")), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="24h"):
        await gpt.batches.create(input_file_id=single.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    twice = await gpt.files.create(file=("b.jsonl", upload("b", "b")), purpose="batch")
    failed = await settled(
        gpt,
        (await gpt.batches.create(input_file_id=twice.id, endpoint="/v1/chat/completions", completion_window="24h")).id,
    )
    assert failed.status == "failed"
    assert failed.errors is not None
    assert failed.errors.data is not None
    assert failed.errors.data[0].code == "duplicate_custom_id"
    batch_stand_in.set_plan([{"match": "Analyze a", "kind": "batch_expired"}])
    expired = await settled(
        gpt,
        (
            await gpt.batches.create(input_file_id=single.id, endpoint="/v1/chat/completions", completion_window="24h")
        ).id,
    )
    assert expired.status == "expired"
    assert expired.error_file_id is not None
    [line] = (await gpt.files.content(expired.error_file_id)).text.splitlines()
    assert json.loads(line)["error"]["code"] == "batch_expired"
    batch_stand_in.batch_turnaround(30)
    slow = await gpt.batches.create(input_file_id=single.id, endpoint="/v1/chat/completions", completion_window="24h")
    await gpt.batches.retrieve(slow.id)  # validated: in progress
    assert (await gpt.batches.cancel(slow.id)).status == "cancelling"
    assert (await settled(gpt, slow.id)).status == "cancelled"
    # The same custom_id went out in two batches (the refused create sent nothing): counted twice.
    assert batch_stand_in.batch_submissions()["a"] == 2
