"""The real anthropic and openai SDKs, through our providers, against the stand-in server.

One ``StandIn`` serves the whole module (reset before each test); both
providers run with ``strict_validation=True`` so a stand-in answer that
drifted from the SDKs' schemas fails here instead of passing leniently.
Each fault of the plan must come out as the right ``ErrorClass`` after
exactly one HTTP request (the SDKs' own retries are off).
"""

import asyncio
import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from analysis_core import errors
from analysis_devcluster import standin
from analysis_worker.providers import anthropic_provider, base, openai_provider

pytestmark = pytest.mark.integration

KEY = "sk-standin-test-6f1c2a9e4b7d"
MODELS = {"anthropic": "claude-standin-1", "openai": "gpt-standin-1"}
SDK_ERRORS: dict[str, type[Exception]] = {"anthropic": anthropic.AnthropicError, "openai": openai.OpenAIError}
EC = errors.ErrorClass


def _provider(api: str, base_url: str, key: str = KEY) -> base.Provider:
    if api == "anthropic":
        return anthropic_provider.AnthropicProvider(
            model=MODELS[api], api_key=key, base_url=base_url, strict_validation=True
        )
    return openai_provider.OpenAIProvider(model=MODELS[api], api_key=key, base_url=base_url, strict_validation=True)


def _base_url(server: standin.StandIn, api: str) -> str:
    return server.anthropic_base_url if api == "anthropic" else server.openai_base_url


def _request(prompt: str = "hello there", **fields: Any) -> base.Request:
    return base.Request(
        prompt=prompt,
        max_tokens=fields.pop("max_tokens", 64),
        timeout_seconds=fields.pop("timeout_seconds", 5.0),
        **fields,
    )


async def _failure(provider: base.Provider, request: base.Request | None = None) -> errors.ProviderError:
    with pytest.raises(errors.ProviderError) as raised:
        await provider.complete(request or _request())
    return raised.value


@pytest.fixture(scope="module")
def server() -> Iterator[standin.StandIn]:
    with standin.StandIn(api_key=KEY) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_plan(server: standin.StandIn) -> None:
    server.reset()


@pytest.fixture(params=["anthropic", "openai"])
def api(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def provider(server: standin.StandIn, api: str) -> AsyncIterator[base.Provider]:
    client = _provider(api, _base_url(server, api))
    try:
        yield client
    finally:
        await client.aclose()


async def test_success_maps_text_usage_model_request_id_and_rate_limits(
    provider: base.Provider, server: standin.StandIn, api: str
) -> None:
    prompt = "Summarise the quarterly report in one line."
    done = await provider.complete(_request(prompt, system="Be brief.", temperature=0.2, max_tokens=77))
    expected_text = "stand-in answer: " + prompt
    assert done.text == expected_text
    # The whole prompt counts, the system prompt with it (a token per 4 characters, as the stand-in counts).
    whole = "Be brief." + prompt
    assert (done.input_tokens, done.output_tokens) == (math.ceil(len(whole) / 4), math.ceil(len(expected_text) / 4))
    assert (done.cache_write_tokens, done.cache_read_tokens) == (0, 0)  # far below either provider's minimum
    assert done.model == MODELS[api]
    assert done.request_id is not None
    assert done.request_id.startswith("req_standin_")
    assert done.rate_limit is not None
    assert done.rate_limit.requests_remaining == 999
    assert done.rate_limit.reset_after_s == pytest.approx(60.0, abs=1.0)

    [seen] = server.requests()
    assert seen["api"] == api
    assert seen["path"] == ("/v1/messages" if api == "anthropic" else "/v1/chat/completions")
    assert (seen["model"], seen["prompt"], seen["system"]) == (MODELS[api], prompt, "Be brief.")
    # Anthropic's current API version refuses sampling parameters, so that provider drops temperature.
    assert (seen["max_tokens"], seen["temperature"]) == (77, None if api == "anthropic" else 0.2)
    # OpenAI's max_tokens is deprecated (its reasoning models refuse it): the cap goes as max_completion_tokens.
    assert seen["max_tokens_field"] == ("max_tokens" if api == "anthropic" else "max_completion_tokens")
    assert seen["key_matched"] is True
    assert seen["retry_count"] == 0
    assert KEY not in json.dumps(server.requests())


async def test_a_caller_sending_more_than_a_thousand_calls_raises_the_advertised_quota(api: str) -> None:
    # At 0 remaining a worker pauses its stage (and a shared account) for the advertised reset: a benchmark that
    # sends thousands of calls between resets advertises a larger quota.
    with standin.StandIn(api_key=KEY, advertised_requests=5000) as server:
        client = _provider(api, _base_url(server, api))
        try:
            done = await client.complete(_request())
        finally:
            await client.aclose()
    assert done.rate_limit is not None
    assert done.rate_limit.requests_remaining == 4999


async def test_custom_ok_step_returns_its_text_and_usage(provider: base.Provider, server: standin.StandIn) -> None:
    server.set_plan([{"kind": "ok", "text": '{"items": [1, 2]}', "input_tokens": 11, "output_tokens": 7}])
    done = await provider.complete(_request())
    assert (done.text, done.input_tokens, done.output_tokens) == ('{"items": [1, 2]}', 11, 7)


STATUS = {"anthropic": {"overloaded": 529}, "openai": {"overloaded": 503}}
# What each SDK raises for each fault: the providers classify by status, but these pin the SDKs' behaviour.
SDK_CLASSES: dict[str, dict[str, type[Exception]]] = {
    "anthropic": {
        "rate_limit": anthropic.RateLimitError,
        "server_error": anthropic.InternalServerError,
        "overloaded": anthropic.OverloadedError,
        "unauthorized": anthropic.AuthenticationError,
        "bad_request": anthropic.BadRequestError,
    },
    "openai": {
        "rate_limit": openai.RateLimitError,
        "server_error": openai.InternalServerError,
        "overloaded": openai.InternalServerError,  # openai has no 503 class of its own
        "unauthorized": openai.AuthenticationError,
        "bad_request": openai.BadRequestError,
    },
}


@pytest.mark.parametrize(
    ("step", "error_class", "status", "retry_after_s"),
    [
        pytest.param({"kind": "rate_limit", "retry_after_s": 7}, EC.RATE_LIMITED, 429, 7.0, id="429-retry-after"),
        pytest.param({"kind": "rate_limit", "retry_after_ms": 300}, EC.RATE_LIMITED, 429, 0.3, id="429-retry-after-ms"),
        pytest.param({"kind": "server_error"}, EC.UNKNOWN, 500, None, id="500"),
        pytest.param({"kind": "overloaded"}, EC.OVERLOADED, "overloaded", None, id="overloaded"),
        pytest.param(
            {"kind": "overloaded", "retry_after_s": 3}, EC.OVERLOADED, "overloaded", 3.0, id="overloaded-hint"
        ),
        pytest.param({"kind": "unauthorized"}, EC.AUTH, 401, None, id="401"),
        pytest.param({"kind": "bad_request"}, EC.INVALID_REQUEST, 400, None, id="400"),
        pytest.param({"kind": "malformed"}, EC.BAD_OUTPUT, 200, None, id="malformed"),
        pytest.param({"kind": "truncated"}, EC.BAD_OUTPUT, 200, None, id="truncated"),
        pytest.param({"kind": "ok", "text": ""}, EC.BAD_OUTPUT, 200, None, id="no-text"),
    ],
)
async def test_fault_is_classified_after_exactly_one_request(
    provider: base.Provider,
    server: standin.StandIn,
    api: str,
    step: dict[str, Any],
    error_class: errors.ErrorClass,
    status: int | str,
    retry_after_s: float | None,
) -> None:
    server.set_plan([step])
    error = await _failure(provider)
    assert error.error_class is error_class
    assert error.status == (STATUS[api][status] if isinstance(status, str) else status)
    assert error.retry_after_s == (pytest.approx(retry_after_s) if retry_after_s is not None else None)
    assert error.request_id is not None
    assert error.request_id.startswith("req_standin_")
    if step["kind"] in ("malformed", "truncated"):
        assert isinstance(error.__cause__, ValueError)  # json.loads fails inside parse(), not as an SDK error
    elif step["kind"] == "ok":
        assert error.__cause__ is None  # the SDK accepted it; the provider found no text
    else:
        assert type(error.__cause__) is SDK_CLASSES[api][step["kind"]]
    assert [seen["retry_count"] for seen in server.requests()] == [0]
    # The plan is used up: the next call succeeds.
    assert (await provider.complete(_request())).text.startswith("stand-in answer: ")


# The refusals for quota and billing: (status, the SDK's exception class, the provider's words) per API.
REFUSALS: dict[str, dict[str, tuple[int, type[Exception], str]]] = {
    "anthropic": {
        "low_credit": (400, anthropic.BadRequestError, standin.ANTHROPIC_LOW_CREDIT),
        "insufficient_quota": (400, anthropic.BadRequestError, standin.ANTHROPIC_LOW_CREDIT),
        "model_forbidden": (403, anthropic.PermissionDeniedError, standin.ANTHROPIC_FORBIDDEN),
    },
    "openai": {
        "low_credit": (429, openai.RateLimitError, standin.OPENAI_INSUFFICIENT_QUOTA),
        "insufficient_quota": (429, openai.RateLimitError, standin.OPENAI_INSUFFICIENT_QUOTA),
        "model_forbidden": (403, openai.PermissionDeniedError, f"does not have access to model `{MODELS['openai']}`"),
    },
}


@pytest.mark.parametrize("kind", ["insufficient_quota", "low_credit", "model_forbidden"])
async def test_refusals_for_quota_are_their_own_class_in_the_providers_words(
    provider: base.Provider, server: standin.StandIn, api: str, kind: str
) -> None:
    server.set_plan([{"kind": kind, "retry_after_s": 1}])
    error = await _failure(provider)
    status, sdk_class, words = REFUSALS[api][kind]
    assert (error.error_class, error.status, type(error.__cause__)) == (EC.QUOTA_EXHAUSTED, status, sdk_class)
    assert words in error.message
    # The account as a whole, or only the model that was asked for; either way no wait of its own.
    assert error.model == (MODELS[api] if kind == "model_forbidden" else None)
    assert error.retry_after_s is None
    [seen] = server.requests()
    assert (seen["kind"], seen["retry_count"]) == (kind, 0)


async def test_rate_limit_without_retry_after_waits_for_the_quota_reset(
    provider: base.Provider, server: standin.StandIn
) -> None:
    server.set_plan([{"kind": "rate_limit", "reset_s": 2.5}])
    error = await _failure(provider)
    assert error.error_class is EC.RATE_LIMITED
    assert error.retry_after_s == pytest.approx(2.5, abs=0.3)


async def test_wrong_key_is_auth_and_never_echoed(server: standin.StandIn, api: str) -> None:
    wrong = "sk-wrong-key-7788990011aabb"
    client = _provider(api, _base_url(server, api), key=wrong)
    try:
        error = await _failure(client)
    finally:
        await client.aclose()
    assert (error.error_class, error.status) == (EC.AUTH, 401)
    for text in (str(error), repr(error), error.message):
        assert wrong not in text
        assert KEY not in text
    [seen] = server.requests()
    assert seen["key_matched"] is False
    assert wrong not in json.dumps(server.requests())


async def test_slow_answer_is_timeout(provider: base.Provider, server: standin.StandIn) -> None:
    server.set_plan([{"kind": "timeout", "delay_s": 3}])
    started = time.monotonic()
    error = await _failure(provider, _request(timeout_seconds=0.3))
    assert error.error_class is EC.TIMEOUT
    assert time.monotonic() - started < 2.0
    assert len(server.requests()) == 1


async def test_closed_port_is_network(api: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = _provider(api, f"http://127.0.0.1:{port}" + ("/v1" if api == "openai" else ""))
    try:
        error = await _failure(client, _request(timeout_seconds=2.0))
    finally:
        await client.aclose()
    assert error.error_class is EC.NETWORK
    assert isinstance(error.__cause__, SDK_ERRORS[api])


async def test_match_api_and_times_select_the_requests_a_step_applies_to(
    provider: base.Provider, server: standin.StandIn, api: str
) -> None:
    other = "openai" if api == "anthropic" else "anthropic"
    server.set_plan(
        [
            {"kind": "bad_request", "api": other},
            {"kind": "server_error", "match": "poison", "times": 2},
        ]
    )
    assert (await provider.complete(_request("a clean prompt"))).text == "stand-in answer: a clean prompt"
    for prompt in ("first poison pill", "second poison pill"):
        assert (await _failure(provider, _request(prompt))).error_class is EC.UNKNOWN
    assert (await provider.complete(_request("third poison pill"))).text.endswith("third poison pill")
    assert [seen["prompt"] for seen in server.requests()] == [
        "a clean prompt",
        "first poison pill",
        "second poison pill",
        "third poison pill",
    ]


async def test_http_control_api_sets_plans_and_reports_requests(server: standin.StandIn) -> None:
    client = _provider("openai", server.openai_base_url)
    try:
        async with aiohttp.ClientSession(server.url) as http:
            async with http.put("/_standin/plan", json=[{"kind": "wobble"}]) as bad:
                assert bad.status == 400
                assert "unknown step kind 'wobble'" in (await bad.json())["error"]
            async with http.put("/_standin/plan", json=[{"kind": "overloaded", "match": "busy"}]) as put:
                assert (put.status, await put.json()) == (200, {"steps": 1})
            assert (await _failure(client, _request("are you busy?"))).error_class is EC.OVERLOADED
            async with http.post("/v1/messages", json={"model": "m", "messages": []}) as keyless:
                assert keyless.status == 401
                assert (await keyless.json())["error"]["type"] == "authentication_error"
            async with http.get("/_standin/requests") as got:
                seen = await got.json()
            assert [(s["api"], s["prompt"], s["key_matched"]) for s in seen] == [
                ("openai", "are you busy?", True),
                ("anthropic", "", False),
            ]
            async with http.post("/_standin/reset") as reset:
                assert reset.status == 200
            assert server.requests() == []
    finally:
        await client.aclose()


async def test_without_an_expected_key_any_non_empty_key_is_accepted(api: str) -> None:
    with standin.StandIn() as open_server:
        client = _provider(api, _base_url(open_server, api), key="whatever-key")
        try:
            done = await client.complete(_request("hi"))
        finally:
            await client.aclose()
        assert done.text == "stand-in answer: hi"
        assert open_server.requests()[0]["key_matched"] is True


def test_plan_steps_are_validated(server: standin.StandIn) -> None:
    with pytest.raises(ValueError, match="unknown step kind 'explode'"):
        server.set_plan([{"kind": "explode"}])
    with pytest.raises(ValueError, match="unknown step keys"):
        server.set_plan([{"kind": "ok", "txt": "typo"}])
    with pytest.raises(ValueError, match="times must be a positive integer"):
        server.set_plan([{"kind": "ok", "times": 0}])
    with pytest.raises(ValueError, match="api must be one of"):
        server.set_plan([{"kind": "ok", "api": "gemini"}])


def test_module_runs_in_the_foreground_and_prints_its_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "analysis_devcluster.standin", "--port", "0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("stand-in listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize("model", ["gpt-5", "o3-mini", "o1"])
async def test_openai_reasoning_models_get_no_max_tokens_and_no_sampling(server: standin.StandIn, model: str) -> None:
    """The stand-in refuses what those models refuse (max_tokens, a non-default temperature); the provider sends neither."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    request = urllib.request.Request(
        f"{server.openai_base_url}/chat/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"]["code"] == "unsupported_parameter"

    client = openai_provider.OpenAIProvider(
        model=model, api_key=KEY, base_url=server.openai_base_url, strict_validation=True
    )
    try:
        done = await client.complete(_request("Rank these three.", temperature=0.2, max_tokens=500))
    finally:
        await client.aclose()
    assert done.text == "stand-in answer: Rank these three."
    seen = server.requests()[-1]
    assert (seen["max_tokens_field"], seen["max_tokens"], seen["temperature"]) == ("max_completion_tokens", 500, None)
    assert openai_provider.refuses_sampling(model)
    assert not openai_provider.refuses_sampling("gpt-4.1")
    assert not openai_provider.refuses_sampling("omni-moderation")
