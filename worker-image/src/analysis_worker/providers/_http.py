"""Header arithmetic and error classification shared by the Anthropic and OpenAI providers.

``anthropic_provider`` and ``openai_provider`` call these on the headers of a
response (success or error) to learn how long to wait (``Retry-After``,
``retry-after-ms``, the providers' rate-limit reset headers), how much quota
is left, and which ``ErrorClass`` an HTTP status belongs to; and on an error
body's fields, to tell a refusal for quota or billing (``QuotaExhausted``)
from the rate limit, bad request or permission error its status alone would
say.

Everything here is pure: headers and fields in, numbers and classes out; the clock is a parameter.
It deliberately imports no SDK (so unit tests need none) and never raises on
a malformed header: a header it cannot read counts as absent, because a bad
hint must not turn a classified failure into an unclassified one.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import math
import re
import types
from collections.abc import Mapping

from analysis_core import errors
from analysis_worker.providers import base

# Header lookups assume a case-insensitive mapping (httpx2.Headers) or lowercase keys.
Headers = Mapping[str, str]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_STATUS_CLASSES = {
    429: errors.ErrorClass.RATE_LIMITED,
    503: errors.ErrorClass.OVERLOADED,
    529: errors.ErrorClass.OVERLOADED,  # Anthropic's "overloaded_error"
    401: errors.ErrorClass.AUTH,
    403: errors.ErrorClass.AUTH,
    400: errors.ErrorClass.INVALID_REQUEST,
    404: errors.ErrorClass.INVALID_REQUEST,
    413: errors.ErrorClass.INVALID_REQUEST,
    422: errors.ErrorClass.INVALID_REQUEST,
}


# OpenAI's codes (and types) for an account that cannot pay: ``insufficient_quota`` (a 429, "You exceeded your
# current quota, please check your plan and billing details"), and the other billing codes.
OPENAI_QUOTA_CODES = frozenset(
    {"insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached", "billing_not_active"}
)
# Anthropic answers a low credit balance ("Your credit balance is too low to access the Anthropic API. Please go
# to Plans & Billing to upgrade or purchase credits.") and a spend limit the organisation set ("You have reached
# your specified API usage limits. You will regain access on ...") as a 400 invalid_request_error: only the
# wording tells them from a bad request, so the match is loose, in case the wording moves.
ANTHROPIC_LOW_CREDIT = re.compile(
    r"credit balance|purchase credits|plans\s*&\s*billing|usage limits|spend limit", re.IGNORECASE
)
# Anthropic's structured billing refusals: the error type, and the codes of spend limits (429s, which waiting
# out a retry-after does not lift).
ANTHROPIC_BILLING_TYPE = "billing_error"
ANTHROPIC_SPEND_LIMIT_CODES = frozenset({"contract_spend_limit_reached", "enforced_spend_limit_reached"})
# Anthropic's 403: "Your API key does not have permission to use the specified resource". A Messages call names
# one resource, its model, so the refusal is taken to concern the model (another model may still be allowed).
ANTHROPIC_PERMISSION_TYPE = "permission_error"
_MENTIONS_MODEL = re.compile(r"\bmodels?\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class QuotaRefusal:
    """An error response that refuses for quota or billing (``ErrorClass.QUOTA_EXHAUSTED``)."""

    model: str | None = None  # the refusal concerns this model only (a 403 for it); None: the whole account


def _about_model(message: str, model: str) -> bool:
    return bool(_MENTIONS_MODEL.search(message)) or (bool(model) and model in message)


def anthropic_quota(
    status: int, error_type: str | None, error_code: str | None, message: str, model: str
) -> QuotaRefusal | None:
    """Whether an Anthropic error response refuses for quota or billing, and for what.

    The account: a 400 ``invalid_request_error`` about the credit balance or
    a spend limit, a 402 or ``billing_error``, a 429 with a spend limit's
    code. The model only: a 403 ``permission_error``, or another 403 whose
    message is about a model (any other 403 stays ``Auth``).
    """
    if status == 400 and error_type in (None, "invalid_request_error") and ANTHROPIC_LOW_CREDIT.search(message):
        return QuotaRefusal()
    if status == 402 or error_type == ANTHROPIC_BILLING_TYPE or error_code in ANTHROPIC_SPEND_LIMIT_CODES:
        return QuotaRefusal()
    if status == 403 and (error_type == ANTHROPIC_PERMISSION_TYPE or _about_model(message, model)):
        return QuotaRefusal(model=model)
    return None


def openai_quota(
    status: int, error_type: str | None, error_code: str | None, message: str, model: str
) -> QuotaRefusal | None:
    """Whether an OpenAI error response refuses for quota or billing, and for what.

    The account: ``insufficient_quota`` (as the code or the type; older
    answers left the code null) and the billing codes, whatever the status. The
    model only: a 403 about a model ("Project ... does not have access to model
    ...", code ``model_not_found``); another 403 stays ``Auth``.
    """
    if error_code in OPENAI_QUOTA_CODES or error_type in OPENAI_QUOTA_CODES:
        return QuotaRefusal()
    if status == 403 and (error_code == "model_not_found" or _about_model(message, model)):
        return QuotaRefusal(model=model)
    return None


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def _finite(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    # float() happily reads "nan" and "inf"; neither is a usable delay.
    return max(0.0, number) if math.isfinite(number) else None


def _seconds_until(moment: datetime.datetime, now: datetime.datetime | None) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0.0, (moment - _now(now)).total_seconds())


def parse_int(value: str | None) -> int | None:
    """A non-negative integer header such as ``...-remaining``; None if absent or unreadable."""
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset durations (``6m0s``, ``1m30s``, ``12ms``, ``1h2m3.5s``; a bare number is seconds)."""
    if value is None:
        return None
    text = value.strip()
    if _DURATION.fullmatch(text):
        return sum(float(amount) * _UNIT_S[unit] for amount, unit in _DURATION_PART.findall(text))
    return _finite(text)


def parse_rfc3339_delay(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """Seconds from ``now`` until an RFC 3339 timestamp (Anthropic's ``...-reset``); 0 if it has passed."""
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return _seconds_until(moment, now)


def parse_retry_after(headers: Headers, now: datetime.datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date); None if neither.

    The same precedence the SDKs use, so the queue waits exactly as long as
    the SDK itself would have.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        delay = _finite(millis)
        if delay is not None:
            return delay / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    delay = _finite(value)
    if delay is not None:
        return delay
    try:
        moment = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return _seconds_until(moment, now)


def rate_limit_state(
    *,
    requests_remaining: int | None,
    tokens_remaining: int | None,
    requests_reset_s: float | None,
    tokens_reset_s: float | None,
) -> base.RateLimitState | None:
    """Combine the per-quota numbers; None when the response carried none of them.

    ``reset_after_s`` is the longest reset among exhausted quotas (both must
    refill before the next call can pass); with nothing exhausted it is the
    requests reset, else the tokens reset, as a hint only.
    """
    if requests_remaining is None and tokens_remaining is None and requests_reset_s is None and tokens_reset_s is None:
        return None
    exhausted = [
        reset
        for remaining, reset in ((requests_remaining, requests_reset_s), (tokens_remaining, tokens_reset_s))
        if remaining == 0 and reset is not None
    ]
    if exhausted:
        reset_after_s: float | None = max(exhausted)
    else:
        reset_after_s = requests_reset_s if requests_reset_s is not None else tokens_reset_s
    return base.RateLimitState(
        requests_remaining=requests_remaining, tokens_remaining=tokens_remaining, reset_after_s=reset_after_s
    )


def anthropic_rate_limit(headers: Headers, now: datetime.datetime | None = None) -> base.RateLimitState | None:
    """``anthropic-ratelimit-{requests,tokens}-{remaining,reset}``; resets are RFC 3339 timestamps."""
    return rate_limit_state(
        requests_remaining=parse_int(headers.get("anthropic-ratelimit-requests-remaining")),
        tokens_remaining=parse_int(headers.get("anthropic-ratelimit-tokens-remaining")),
        requests_reset_s=parse_rfc3339_delay(headers.get("anthropic-ratelimit-requests-reset"), now),
        tokens_reset_s=parse_rfc3339_delay(headers.get("anthropic-ratelimit-tokens-reset"), now),
    )


def openai_rate_limit(headers: Headers) -> base.RateLimitState | None:
    """``x-ratelimit-remaining-{requests,tokens}`` and ``x-ratelimit-reset-{requests,tokens}`` (durations)."""
    return rate_limit_state(
        requests_remaining=parse_int(headers.get("x-ratelimit-remaining-requests")),
        tokens_remaining=parse_int(headers.get("x-ratelimit-remaining-tokens")),
        requests_reset_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        tokens_reset_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def error_class_for_status(status: int) -> errors.ErrorClass:
    """The taxonomy's class for an HTTP error status; other 4xx and 5xx are UNKNOWN (backed off, retried)."""
    return _STATUS_CLASSES.get(status, errors.ErrorClass.UNKNOWN)


def redact(message: str, secret: str) -> str:
    """``message`` with every occurrence of ``secret`` masked, and capped in length.

    Error bodies are echoed into SDK messages, and some APIs quote the key
    they rejected; the worker logs and stores these messages.
    """
    if secret:
        message = message.replace(secret, "<redacted>")
    return message if len(message) <= 500 else message[:497] + "..."


def status_error(
    status: int,
    headers: Headers,
    *,
    message: str,
    request_id: str | None,
    rate_limit: base.RateLimitState | None,
    quota: QuotaRefusal | None = None,
) -> errors.ProviderError:
    """A ``ProviderError`` for an HTTP error response; ``quota`` (from the body) overrides the status's class.

    A 429 without ``Retry-After`` falls back on the reset of the exhausted
    quota: waiting that long is what the provider's own headers promise will
    work. A quota refusal carries no delay: the stage's probes decide when to
    call again, since no header says when an account will pay.
    """
    if quota is not None:
        return errors.ProviderError(
            errors.ErrorClass.QUOTA_EXHAUSTED, message, status=status, request_id=request_id, model=quota.model
        )
    error_class = error_class_for_status(status)
    retry_after_s = parse_retry_after(headers)
    if retry_after_s is None and error_class is errors.ErrorClass.RATE_LIMITED and rate_limit is not None:
        retry_after_s = rate_limit.reset_after_s
    return errors.ProviderError(error_class, message, retry_after_s=retry_after_s, status=status, request_id=request_id)


def transport_error(
    exc: Exception, sdk: types.ModuleType, *, api_key: str, request_id_header: str
) -> errors.ProviderError:
    """Classify an SDK failure that is not an HTTP status: a response that failed validation, a timeout,
    a connection failure, or anything else. Both SDKs name these classes alike, so ``sdk`` is the module."""
    message = describe(exc, api_key)
    if isinstance(exc, sdk.APIResponseValidationError):
        return errors.ProviderError(
            errors.ErrorClass.BAD_OUTPUT,
            message,
            status=exc.status_code,
            request_id=exc.response.headers.get(request_id_header),
        )
    # APITimeoutError subclasses APIConnectionError, so it must be tested first.
    if isinstance(exc, sdk.APITimeoutError):
        return errors.ProviderError(errors.ErrorClass.TIMEOUT, message)
    if isinstance(exc, sdk.APIConnectionError):
        return errors.ProviderError(errors.ErrorClass.NETWORK, _with_cause(exc, message, api_key))
    return errors.ProviderError(errors.ErrorClass.UNKNOWN, message)


def _with_cause(exc: BaseException, message: str, api_key: str) -> str:
    """``message`` and the operating system's reason for a connection failure, when the message does not say it.

    The OpenAI SDK's connection error is only "Connection error.", whether DNS, a refused connection or an
    untrusted certificate (a gateway's CA missing from the account's ``egress.caBundle``) was the cause. Only an
    ``OSError`` of the chain is quoted (``ssl.SSLError`` is one): other errors' text can quote the request.
    """
    seen: set[int] = set()
    error = exc.__cause__ or exc.__context__
    while error is not None and id(error) not in seen and not isinstance(error, OSError):
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    if not isinstance(error, OSError) or not str(error) or str(error) in message:
        return message
    return redact(f"{message} ({describe(error, api_key)})", api_key)


def describe(exc: BaseException, api_key: str) -> str:
    """``Class: message`` with the API key masked."""
    return redact(f"{type(exc).__name__}: {exc}", api_key)
