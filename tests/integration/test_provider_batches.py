"""The worker's adapters for the providers' batch APIs (``providers.batches``), on the real SDKs and the stand-in.

Per provider: three requests in one batch, one answered, one errored, one
expired; the progress until it ended; results matched by custom_id, each a
``Completion`` (with the cache's share of the prompt) or a ``ProviderError``
of the class a call would have had; a batch found again by its tag (OpenAI's
metadata; Anthropic keeps none); the provider's copies deleted.
"""

import asyncio
from collections.abc import AsyncIterator

import pytest

from analysis_core import errors
from analysis_devcluster import promptcache, standin
from analysis_worker.providers import anthropic_provider, base, batches, openai_provider

pytestmark = pytest.mark.integration

API_KEY = "sk-standin-provider-batches-2b71"
RUBRIC = "Weigh every criterion of the rubric before you answer. " * 110  # about 1,500 tokens
EC = errors.ErrorClass


@pytest.fixture(params=["anthropic", "openai"])
async def provider(
    request: pytest.FixtureRequest, batch_stand_in: standin.StandIn
) -> AsyncIterator[anthropic_provider.AnthropicProvider | openai_provider.OpenAIProvider]:
    made: anthropic_provider.AnthropicProvider | openai_provider.OpenAIProvider
    if request.param == "anthropic":
        made = anthropic_provider.AnthropicProvider(
            model="claude-sonnet-4-5",
            api_key=API_KEY,
            base_url=batch_stand_in.anthropic_base_url,
            strict_validation=True,
        )
    else:
        made = openai_provider.OpenAIProvider(
            model="gpt-4.1", api_key=API_KEY, base_url=batch_stand_in.openai_base_url, strict_validation=True
        )
    try:
        yield made
    finally:
        await made.aclose()


def ask(name: str) -> base.Request:
    prompt = RUBRIC + f"Company: {name}"
    return base.Request(prompt=prompt, max_tokens=64, timeout_seconds=5, cache_prefix=len(RUBRIC))


async def ended(provider: batches.BatchProvider, batch_id: str) -> batches.Progress:
    for _ in range(100):
        progress = await provider.batch_progress(batch_id)
        if progress.ended:
            return progress
        await asyncio.sleep(0.05)
    pytest.fail(f"{batch_id} did not end")


def test_a_custom_id_is_short_stable_and_within_both_providers_rules() -> None:
    one = batches.custom_id("uid-1/analyze/NVDA/0/1")
    assert one == batches.custom_id("uid-1/analyze/NVDA/0/1")
    assert one != batches.custom_id("uid-1/analyze/NVDA/0/2")
    assert standin.standin_batches.ANTHROPIC_CUSTOM_ID.match(one)
    assert len(one) == batches.CUSTOM_ID_LENGTH


async def test_a_provider_batch_goes_out_and_its_results_come_back_by_custom_id(
    provider: anthropic_provider.AnthropicProvider | openai_provider.OpenAIProvider, batch_stand_in: standin.StandIn
) -> None:
    batch_stand_in.set_plan([{"match": "FLAKY", "kind": "server_error"}, {"match": "LATE", "kind": "expired"}])
    ids = {name: batches.custom_id(f"uid/analyze/{name}/0/1") for name in ("OK", "WARM", "FLAKY", "LATE")}
    batch_id = await provider.submit_batch([(ids[name], ask(name)) for name in ids], tag="uid/analyze/1")
    progress = await ended(provider, batch_id)
    assert (progress.total, progress.done) == (4, 4)
    results = {r.custom_id: r async for r in provider.batch_results(batch_id)}
    assert set(results) == set(ids.values())
    ok, warm = results[ids["OK"]].completion, results[ids["WARM"]].completion
    assert ok is not None
    assert warm is not None
    assert ok.text.startswith("stand-in answer: ")
    # Inside the batch the prompt cache works as outside: the first request wrote the rubric, the next read it.
    rubric = promptcache.tokens(RUBRIC)
    assert ok.cache_read_tokens == 0
    assert warm.cache_read_tokens >= 0.9 * rubric
    assert warm.input_tokens == ok.input_tokens  # every prompt token counts as input, cached or not
    flaky, late = results[ids["FLAKY"]].error, results[ids["LATE"]].error
    assert flaky is not None
    assert late is not None
    assert flaky.error_class is EC.UNKNOWN  # a 500, as a call's would be: backed off and retried
    assert late.error_class is EC.TIMEOUT
    assert batch_stand_in.batch_submissions() == dict.fromkeys(ids.values(), 1)
    await provider.forget_batch(batch_id)
    if isinstance(provider, openai_provider.OpenAIProvider):
        held, deleted = batch_stand_in.files()
        assert held == []  # the input, output and error files: prompts and answers leave the provider
        assert len(deleted) == 3
    else:
        assert batch_stand_in.provider_batches() == []


async def test_a_batch_is_found_again_by_its_tag_where_the_provider_keeps_one(
    provider: anthropic_provider.AnthropicProvider | openai_provider.OpenAIProvider,
) -> None:
    batch_id = await provider.submit_batch([(batches.custom_id("k"), ask("OK"))], tag="uid/analyze/7")
    found = await provider.find_batch("uid/analyze/7")
    if isinstance(provider, openai_provider.OpenAIProvider):
        assert found == batch_id
        assert await provider.find_batch("uid/analyze/8") is None
    else:
        assert found is None  # a message batch keeps no metadata: a lost id means submitting again


async def test_a_canceled_batch_ends_with_its_requests_canceled(
    provider: anthropic_provider.AnthropicProvider | openai_provider.OpenAIProvider, batch_stand_in: standin.StandIn
) -> None:
    batch_stand_in.batch_turnaround(30)
    batch_id = await provider.submit_batch([(batches.custom_id("c"), ask("OK"))], tag="uid/analyze/9")
    await provider.batch_progress(batch_id)
    await provider.cancel_batch(batch_id)
    progress = await ended(provider, batch_id)
    assert progress.status in ("ended", "cancelled")
    [result] = [r async for r in provider.batch_results(batch_id)]
    assert result.error is not None
    assert result.error.error_class is EC.UNKNOWN
