"""A request Kopf retries logs at WARNING; the one it gives up on stays an ERROR."""

from __future__ import annotations

import io
import logging

import pytest

from analysis_operator import logfilters

pytestmark = pytest.mark.unit

STORAGE = (
    "APITooManyRequestsError('storage is (re)initializing', {'code': 429, 'reason': 'TooManyRequests'}, status=429)"
)


def _logged(logger_name: str, level: int, message: str) -> str:
    """What a handler prints once the filter is installed on it, as the operator installs it on the root's."""
    logger = logging.getLogger(logger_name)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        logfilters.install(logger)
        logfilters.install(logger)  # twice: still one filter
        assert len(handler.filters) == 1
        logger.log(level, message)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    return out.getvalue()


def test_a_retried_request_attempt_is_a_warning() -> None:
    line = _logged(
        "kopf._cogs.clients.watching",
        logging.ERROR,
        f"Request attempt #1/9 failed; will retry: GET https://127.0.0.1:6443/apis/analysis.dev/v1alpha1 -> {STORAGE}",
    )
    assert line.startswith("WARNING "), line


def test_the_attempt_kopf_gives_up_on_stays_an_error() -> None:
    line = _logged(
        "kopf._cogs.clients.api", logging.ERROR, f"Request attempt #9/9 failed; escalating: GET / -> {STORAGE}"
    )
    assert line.startswith("ERROR "), line


def test_other_errors_keep_their_level() -> None:
    assert _logged("kopf.objects", logging.ERROR, "Handler 'reconcile' failed with an exception").startswith("ERROR ")
    assert _logged("analysis_operator", logging.ERROR, "Request attempt #1/9 failed; will retry: ours").startswith(
        "ERROR "
    )
