"""The stand-in's model of the providers' prompt caches, and the worker's primer (pure parts: no server)."""

import asyncio

import pytest

from analysis_devcluster import promptcache
from analysis_worker import priming

pytestmark = pytest.mark.unit

RUBRIC = "Judge strictly by the rubric. " * 500  # 15,000 characters: 3,750 tokens
KEY, SONNET, HAIKU = "sk-a", "claude-sonnet-4-5", "claude-haiku-4-5"


def anthropic(cache: promptcache.PromptCache, item: str, model: str = SONNET) -> promptcache.Usage:
    usage, pending = cache.anthropic(KEY, model, [(RUBRIC, True), (f"Item: {item}", False)])
    pending.commit()
    return usage


def test_anthropic_writes_a_marked_prefix_once_and_later_calls_read_it() -> None:
    cache = promptcache.PromptCache()
    prefix = promptcache.tokens(RUBRIC)
    first = anthropic(cache, "NVDA")
    assert (first.cache_write, first.cache_read) == (prefix, 0)
    second = anthropic(cache, "AMD")
    assert (second.cache_write, second.cache_read) == (0, prefix)
    whole = promptcache.tokens(RUBRIC + "Item: AMD")
    assert second.input + second.cache_read + second.cache_write == whole
    # Another key, another model: another cache.
    assert cache.anthropic("sk-b", SONNET, [(RUBRIC, True), ("x", False)])[0].cache_read == 0
    assert cache.anthropic(KEY, "claude-opus-4-1", [(RUBRIC, True), ("x", False)])[0].cache_read == 0


def test_a_write_is_readable_only_once_its_call_has_answered() -> None:
    cache = promptcache.PromptCache()
    _, writing = cache.anthropic(KEY, SONNET, [(RUBRIC, True), ("A", False)])
    meanwhile, _ = cache.anthropic(KEY, SONNET, [(RUBRIC, True), ("B", False)])
    assert meanwhile.cache_read == 0  # it started before the first answered
    assert meanwhile.cache_write > 0
    writing.commit()
    assert cache.anthropic(KEY, SONNET, [(RUBRIC, True), ("C", False)])[0].cache_read > 0


def test_below_the_models_minimum_nothing_is_cached_and_unmarked_prompts_never_are() -> None:
    cache = promptcache.PromptCache()
    short = "Rules. " * 700  # 1,225 tokens: enough for Sonnet (1,024), not for Haiku (2,048)
    for _ in range(2):
        usage, pending = cache.anthropic(KEY, HAIKU, [(short, True), ("x", False)])
        pending.commit()
        assert (usage.cache_write, usage.cache_read) == (0, 0)
    assert promptcache.anthropic_minimum(HAIKU) == 2048
    assert promptcache.anthropic_minimum(SONNET) == 1024
    for _ in range(2):
        usage, pending = cache.anthropic(KEY, SONNET, [(RUBRIC + "x", False)])
        pending.commit()
        assert (usage.cache_write, usage.cache_read) == (0, 0)


def test_openai_caches_every_long_prompt_and_reads_the_shared_prefix_in_steps_of_128_tokens() -> None:
    cache = promptcache.PromptCache()
    first, pending = cache.openai(KEY, "gpt-4.1", RUBRIC + "Item: NVDA")
    assert (first.cache_read, first.cache_write) == (0, 0)  # OpenAI reports no writes
    pending.commit()
    second, _ = cache.openai(KEY, "gpt-4.1", RUBRIC + "Item: AMD")
    shared_tokens = len(RUBRIC) // promptcache.CHARS_PER_TOKEN
    assert second.cache_read % promptcache.OPENAI_STEP == 0
    assert shared_tokens - promptcache.OPENAI_STEP < second.cache_read <= shared_tokens
    assert second.input + second.cache_read == promptcache.tokens(RUBRIC + "Item: AMD")
    _, pending = cache.openai(KEY, "gpt-4.1", "short prompt")
    pending.commit()
    assert cache.openai(KEY, "gpt-4.1", "short prompt")[0].cache_read == 0  # under 1,024 tokens: never cached


def test_an_entry_expires_after_its_ttl_without_a_read() -> None:
    cache = promptcache.PromptCache(ttl_s=0.0)
    anthropic(cache, "A")
    assert anthropic(cache, "B").cache_read == 0


async def test_the_primer_sends_one_call_alone_then_the_rest_together() -> None:
    primer = priming.Primer()
    running, most, order = 0, 0, []

    async def call(name: str, *, fail: bool = False) -> None:
        nonlocal running, most
        async with primer.turn(shared=True):
            running += 1
            most = max(most, running)
            order.append(name)
            await asyncio.sleep(0.01)
            running -= 1
            if fail:
                raise RuntimeError("the priming call failed")

    results = await asyncio.gather(call("first", fail=True), *(call(f"c{n}") for n in range(5)), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert order[0] == "first"
    assert primer.primed
    # The first failed: the next primed alone; then the other four ran together.
    assert most == 4
    async with primer.turn(shared=False):  # a call without the shared prefix never waits
        pass
