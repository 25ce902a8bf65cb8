"""The providers' header arithmetic: Retry-After in its three spellings, reset durations and timestamps.

Pure functions of ``analysis_worker.providers._http`` with a fixed clock; the
end-to-end behaviour against the real SDKs is in
``tests/integration/test_standin_providers.py``.
"""

import datetime

import pytest

from analysis_core import errors
from analysis_worker.providers import _http, base

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 2, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "300"}, 0.3),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # ms wins, as in the SDKs
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # an unreadable ms falls through
        ({"retry-after": "Mon, 02 Nov 2026 12:00:30 GMT"}, 30.0),
        ({"retry-after": "Mon, 02 Nov 2026 11:59:00 GMT"}, 0.0),  # already past
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "whenever"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert _http.parse_retry_after(headers, NOW) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("6m0s", 360.0),
        ("1m30s", 90.0),
        ("12ms", 0.012),
        ("1.5s", 1.5),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("20", 20.0),
        ("6 minutes", None),
        ("", None),
        (None, None),
    ],
)
def test_openai_duration(value: str | None, expected: float | None) -> None:
    assert _http.parse_duration(value) == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-02T12:00:42Z", 42.0),
        ("2026-11-02T12:00:00.250Z", 0.25),
        ("2026-11-02T13:00:05+01:00", 5.0),
        ("2026-11-02T11:00:00Z", 0.0),
        ("tomorrow", None),
        (None, None),
    ],
)
def test_anthropic_rfc3339_reset(value: str | None, expected: float | None) -> None:
    assert _http.parse_rfc3339_delay(value, NOW) == (pytest.approx(expected) if expected is not None else None)


def test_anthropic_rate_limit_state_reports_the_exhausted_quota_reset() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "17",
        "anthropic-ratelimit-requests-reset": "2026-11-02T12:00:05Z",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-11-02T12:00:40Z",
    }
    assert _http.anthropic_rate_limit(headers, NOW) == base.RateLimitState(
        requests_remaining=17, tokens_remaining=0, reset_after_s=40.0
    )


def test_openai_rate_limit_state_without_exhaustion_uses_the_requests_reset() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "1200",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert _http.openai_rate_limit(headers) == base.RateLimitState(
        requests_remaining=59, tokens_remaining=1200, reset_after_s=1.0
    )


def test_no_rate_limit_headers_means_no_state() -> None:
    assert _http.openai_rate_limit({}) is None
    assert _http.anthropic_rate_limit({"anthropic-ratelimit-requests-remaining": "lots"}, NOW) is None


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (429, errors.ErrorClass.RATE_LIMITED),
        (529, errors.ErrorClass.OVERLOADED),
        (503, errors.ErrorClass.OVERLOADED),
        (401, errors.ErrorClass.AUTH),
        (403, errors.ErrorClass.AUTH),
        (400, errors.ErrorClass.INVALID_REQUEST),
        (404, errors.ErrorClass.INVALID_REQUEST),
        (413, errors.ErrorClass.INVALID_REQUEST),
        (422, errors.ErrorClass.INVALID_REQUEST),
        (409, errors.ErrorClass.UNKNOWN),
        (500, errors.ErrorClass.UNKNOWN),
        (504, errors.ErrorClass.UNKNOWN),
    ],
)
def test_status_classes(status: int, error_class: errors.ErrorClass) -> None:
    assert _http.error_class_for_status(status) is error_class


def test_a_429_without_retry_after_falls_back_on_the_reset() -> None:
    limits = base.RateLimitState(requests_remaining=0, reset_after_s=12.0)
    error = _http.status_error(429, {}, message="slow down", request_id="req_1", rate_limit=limits)
    assert (error.error_class, error.retry_after_s, error.status, error.request_id) == (
        errors.ErrorClass.RATE_LIMITED,
        12.0,
        429,
        "req_1",
    )


def test_redact_masks_the_key_and_caps_the_length() -> None:
    assert _http.redact("bad key sk-secret-1 given", "sk-secret-1") == "bad key <redacted> given"
    assert len(_http.redact("x" * 2000, "sk")) == 500
