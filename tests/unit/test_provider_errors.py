"""How the providers classify the SDKs' error exceptions, refusals for quota and billing above all.

Each case is a real-shaped HTTP error response turned into the SDK's own
exception by the SDK's own code (the client's ``_make_status_error_from_response``,
the path every failed request takes), then classified by the provider. The
bodies are the providers' real ones: OpenAI's 429 ``insufficient_quota``,
Anthropic's 400 about the credit balance, the 403s for a model.
No request is sent.
"""

import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from analysis_core import errors
from analysis_worker.providers import _http, anthropic_provider, openai_provider

pytestmark = pytest.mark.unit

E = errors.ErrorClass
MODEL = "model-x"
LOW_CREDIT = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or "
    "purchase credits."
)
INSUFFICIENT_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)


@pytest.fixture
async def claude() -> AsyncIterator[anthropic_provider.AnthropicProvider]:
    provider = anthropic_provider.AnthropicProvider(model=MODEL, api_key="sk-ant-test")
    try:
        yield provider
    finally:
        await provider.aclose()


@pytest.fixture
async def gpt() -> AsyncIterator[openai_provider.OpenAIProvider]:
    provider = openai_provider.OpenAIProvider(model=MODEL, api_key="sk-test")
    try:
        yield provider
    finally:
        await provider.aclose()


def _response(status: int, body: dict[str, Any], url: str, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, json=body, headers=headers, request=httpx2.Request("POST", url))


def anthropic_error(
    provider: anthropic_provider.AnthropicProvider, status: int, error: dict[str, Any], headers: dict[str, str]
) -> Exception:
    body = {"type": "error", "error": error, "request_id": headers["request-id"]}
    response = _response(status, body, "https://api.anthropic.com/v1/messages", headers)
    return provider._client._make_status_error_from_response(response)


def openai_error(
    provider: openai_provider.OpenAIProvider, status: int, error: dict[str, Any], headers: dict[str, str]
) -> Exception:
    response = _response(status, {"error": error}, "https://api.openai.com/v1/chat/completions", headers)
    return provider._client._make_status_error_from_response(response)


def _openai_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": None, "code": code}


# (status, body's error, the SDK's exception class, our class, the model a refusal concerns)
ANTHROPIC_CASES = {
    "low-credit": (
        400,
        {"type": "invalid_request_error", "message": LOW_CREDIT},
        anthropic.BadRequestError,
        E.QUOTA_EXHAUSTED,
        None,
    ),
    "spend-limit-set-by-the-organisation": (
        400,
        {
            "type": "invalid_request_error",
            "message": "You have reached your specified API usage limits. You will regain access on 2026-04-01 at "
            "00:00 UTC.",
        },
        anthropic.BadRequestError,
        E.QUOTA_EXHAUSTED,
        None,
    ),
    "a-bad-request-stays-one": (
        400,
        {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        anthropic.BadRequestError,
        E.INVALID_REQUEST,
        None,
    ),
    "billing-error": (
        402,
        {"type": "billing_error", "message": "Billing is not set up for this organization."},
        anthropic.PaymentRequiredError,
        E.QUOTA_EXHAUSTED,
        None,
    ),
    "enforced-spend-limit": (
        429,
        {
            "type": "rate_limit_error",
            "message": "Your organization has reached its monthly usage limit.",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
        anthropic.RateLimitError,
        E.QUOTA_EXHAUSTED,
        None,
    ),
    "rate-limit-stays-one": (
        429,
        {"type": "rate_limit_error", "message": "This request would exceed your account's rate limit."},
        anthropic.RateLimitError,
        E.RATE_LIMITED,
        None,
    ),
    "permission-error-for-the-model": (
        403,
        {"type": "permission_error", "message": "Your API key does not have permission to use the specified resource."},
        anthropic.PermissionDeniedError,
        E.QUOTA_EXHAUSTED,
        MODEL,
    ),
    "bad-key-stays-auth": (
        401,
        {"type": "authentication_error", "message": "invalid x-api-key"},
        anthropic.AuthenticationError,
        E.AUTH,
        None,
    ),
}

OPENAI_CASES = {
    "insufficient-quota": (
        429,
        _openai_body(INSUFFICIENT_QUOTA, "insufficient_quota", "insufficient_quota"),
        openai.RateLimitError,
        E.QUOTA_EXHAUSTED,
        None,
    ),
    "insufficient-quota-without-a-code": (
        429,
        _openai_body(INSUFFICIENT_QUOTA, "insufficient_quota", None),
        openai.RateLimitError,
        E.QUOTA_EXHAUSTED,
        None,
    ),
    "rate-limit-stays-one": (
        429,
        _openai_body("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        openai.RateLimitError,
        E.RATE_LIMITED,
        None,
    ),
    "no-access-to-the-model": (
        403,
        _openai_body(
            f"Project `proj_abc` does not have access to model `{MODEL}`", "invalid_request_error", "model_not_found"
        ),
        openai.PermissionDeniedError,
        E.QUOTA_EXHAUSTED,
        MODEL,
    ),
    "unsupported-region-stays-auth": (
        403,
        _openai_body(
            "Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"
        ),
        openai.PermissionDeniedError,
        E.AUTH,
        None,
    ),
    "a-bad-request-stays-one": (
        400,
        _openai_body("Unsupported parameter: 'max_tokens'", "invalid_request_error", "unsupported_parameter"),
        openai.BadRequestError,
        E.INVALID_REQUEST,
        None,
    ),
}


@pytest.mark.parametrize(
    ("status", "error", "sdk_class", "cls", "model"), ANTHROPIC_CASES.values(), ids=ANTHROPIC_CASES
)
async def test_anthropic_errors(
    claude: anthropic_provider.AnthropicProvider,
    status: int,
    error: dict[str, Any],
    sdk_class: type[Exception],
    cls: errors.ErrorClass,
    model: str | None,
) -> None:
    exc = anthropic_error(claude, status, error, {"request-id": "req_011test"})
    assert isinstance(exc, sdk_class)
    assert isinstance(exc, anthropic.APIStatusError)
    classified = claude._error(exc)
    assert (classified.error_class, classified.model, classified.status) == (cls, model, status)
    assert error["message"] in classified.message
    assert classified.request_id == "req_011test"


@pytest.mark.parametrize(("status", "error", "sdk_class", "cls", "model"), OPENAI_CASES.values(), ids=OPENAI_CASES)
async def test_openai_errors(
    gpt: openai_provider.OpenAIProvider,
    status: int,
    error: dict[str, Any],
    sdk_class: type[Exception],
    cls: errors.ErrorClass,
    model: str | None,
) -> None:
    exc = openai_error(gpt, status, error, {"x-request-id": "req_test"})
    assert isinstance(exc, sdk_class)
    assert isinstance(exc, openai.APIStatusError)
    classified = gpt._error(exc)
    assert (classified.error_class, classified.model, classified.status) == (cls, model, status)
    assert error["message"] in classified.message
    assert classified.request_id == "req_test"


async def test_a_quota_refusal_carries_no_wait_of_its_own(gpt: openai_provider.OpenAIProvider) -> None:
    # Whatever headers come with it: the stage's probes decide when to call again, not a retry-after.
    exc = openai_error(
        gpt, 429, _openai_body(INSUFFICIENT_QUOTA, "insufficient_quota", "insufficient_quota"), {"retry-after": "2"}
    )
    classified = gpt._error(exc)
    assert (classified.error_class, classified.retry_after_s) == (E.QUOTA_EXHAUSTED, None)


@pytest.mark.parametrize(
    "message",
    [
        LOW_CREDIT,
        LOW_CREDIT.upper(),
        "Your credit balance is too low to access the Claude API.",
        "Please go to Plans &  Billing to purchase credits.",
    ],
)
def test_the_low_credit_wording_is_matched_loosely(message: str) -> None:
    assert _http.anthropic_quota(400, "invalid_request_error", None, message, MODEL) == _http.QuotaRefusal()
    # The same words as another kind of error are that error.
    assert _http.anthropic_quota(400, "not_found_error", None, message, MODEL) is None


CERT_FAILURE = (
    "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)"
)


def connection_failure(cause: Exception, make: Callable[[httpx2.Request, Exception], Exception]) -> Exception:
    """The SDK's connection error for ``cause``, chained as the SDKs chain it (``raise ... from``), through
    httpx2's ConnectError when the cause is the operating system's."""
    request = httpx2.Request("POST", "https://llm-gateway.example/v1/messages")
    err = cause
    if isinstance(cause, OSError):
        err = httpx2.ConnectError(str(cause), request=request)
        err.__cause__ = cause
    exc = make(request, err)
    exc.__cause__ = err
    return exc


async def test_a_connection_failure_says_what_failed_in_both_sdks(
    gpt: openai_provider.OpenAIProvider, claude: anthropic_provider.AnthropicProvider
) -> None:
    # An untrusted certificate (a gateway's CA missing from the account's caBundle): OpenAI's SDK says only
    # "Connection error.", so the worker adds the reason; Anthropic's says it already, and it is not repeated.
    untrusted = ssl.SSLCertVerificationError(1, CERT_FAILURE)
    from_openai = gpt._error(
        connection_failure(untrusted, lambda request, _: openai.APIConnectionError(request=request))
    )
    from_anthropic = claude._error(connection_failure(untrusted, claude._client._make_connection_error))
    for classified in (from_openai, from_anthropic):
        assert classified.error_class is E.NETWORK
        assert classified.message.count(CERT_FAILURE) == 1
    assert from_openai.message == f"APIConnectionError: Connection error. (SSLCertVerificationError: {CERT_FAILURE})"


async def test_a_connection_failure_quotes_no_other_error(gpt: openai_provider.OpenAIProvider) -> None:
    # h11 quotes a header value it rejects: only the operating system's reasons are added to the message.
    rejected = httpx2.LocalProtocolError("Illegal header value b'Bearer not-the-key-but-secret'")
    classified = gpt._error(connection_failure(rejected, lambda request, _: openai.APIConnectionError(request=request)))
    assert (classified.error_class, classified.message) == (E.NETWORK, "APIConnectionError: Connection error.")
