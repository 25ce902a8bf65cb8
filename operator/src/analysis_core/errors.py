"""The error taxonomy of docs/design.md#retries-timeouts-and-the-error-taxonomy, and what each class decides.

Providers (in the worker) turn whatever their SDK raises into one
``ProviderError`` with an ``ErrorClass``; ``decide()`` then says what happens
to the item: retry after a delay (and whether that uses up an attempt), or
fail it for good. The backoff arithmetic lives here too, so the worker, the
tests and later the operator's status agree on it.

This module is pure: no Redis, no SDK, no clock of its own (callers pass
``now`` and a random source), so every decision is testable as a function.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Callable


class ErrorClass(enum.StrEnum):
    RATE_LIMITED = "RateLimited"  # 429: wait as told; does not use up an attempt
    # The account cannot pay or may not use the model (OpenAI insufficient_quota, Anthropic's low credit, a 403 for
    # the model): the stage pauses until a probe passes; does not use up an attempt.
    QUOTA_EXHAUSTED = "QuotaExhausted"
    OVERLOADED = "Overloaded"  # 529 / 503: the provider is busy; back off
    TIMEOUT = "Timeout"  # the stage's deadline or the HTTP timeout passed
    NETWORK = "Network"  # connection refused or reset, DNS, TLS
    AUTH = "Auth"  # 401 / 403: retrying cannot help
    INVALID_REQUEST = "InvalidRequest"  # 400 / 404 / 413 / 422: the request itself is wrong
    BAD_OUTPUT = "BadOutput"  # the answer does not parse or does not match its schema
    JUDGE_REJECTED = "JudgeRejected"  # not a failure of the call: the judge loop decides
    UNKNOWN = "Unknown"  # anything else, including 5xx: back off


class Action(enum.StrEnum):
    RETRY = "Retry"
    FAIL = "Fail"


# Retryable classes back off exponentially; RATE_LIMITED waits as the provider
# says and QUOTA_EXHAUSTED until the stage's next probe, both keeping their
# attempt; AUTH and INVALID_REQUEST fail at once.
RETRYABLE = frozenset(
    {
        ErrorClass.RATE_LIMITED,
        ErrorClass.QUOTA_EXHAUSTED,
        ErrorClass.OVERLOADED,
        ErrorClass.TIMEOUT,
        ErrorClass.NETWORK,
        ErrorClass.BAD_OUTPUT,
        ErrorClass.UNKNOWN,
    }
)
# Waits on the provider's limits: they use no attempt, so a deadline bounds them instead.
KEEPS_ATTEMPT = frozenset({ErrorClass.RATE_LIMITED, ErrorClass.QUOTA_EXHAUSTED})
# How long an item may wait on the provider's limits (the classes above), counted from its first attempt in the
# stage and round, when the stage sets no ``retry.deadlineSeconds`` (which bounds these waits too when set).
# Without it an account that cannot pay would hold its items for ever.
LIMITED_WAIT_DEADLINE_S = 3600.0


class ProviderError(Exception):
    """A failed provider call, classified. The SDK's exception is chained as ``__cause__``."""

    def __init__(
        self,
        error_class: ErrorClass,
        message: str,
        *,
        retry_after_s: float | None = None,
        status: int | None = None,
        request_id: str | None = None,
        model: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.retry_after_s = retry_after_s
        self.status = status
        self.request_id = request_id
        # QUOTA_EXHAUSTED for this model only (a 403 refusing it); None: the refusal concerns the whole account.
        self.model = model

    def __str__(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.error_class}{status}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Backoff:
    """The delay between attempts, ``spec.stages[].retry.backoff`` by the same names."""

    initial_seconds: float
    factor: float
    max_seconds: float
    jitter: float


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """A stage's retry settings, ``spec.stages[].retry`` by the same names, resolved by the plan compiler.

    No field has a default of its own: the API models hold the defaults
    (``v1alpha1.Retry``, ``v1alpha1.Backoff``). ``deadline_seconds`` None
    means no deadline.
    """

    max_attempts: int
    backoff: Backoff
    deadline_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    uses_attempt: bool = True
    reason: str = ""


def backoff_s(policy: RetryPolicy, attempt: int, rand: Callable[[], float] = random.random) -> float:
    """Delay before attempt ``attempt + 1``: initial * factor^(attempt-1), capped, spread by +-jitter."""
    backoff = policy.backoff
    base = min(backoff.max_seconds, backoff.initial_seconds * backoff.factor ** max(0, attempt - 1))
    spread = base * backoff.jitter * (2 * rand() - 1)
    return max(0.0, min(backoff.max_seconds, base + spread))


def limited_wait_deadline_s(policy: RetryPolicy) -> float:
    """How long after its first attempt an item may still wait on the provider's limits (``KEEPS_ATTEMPT``)."""
    return policy.deadline_seconds if policy.deadline_seconds is not None else LIMITED_WAIT_DEADLINE_S


def decide(
    error: ProviderError,
    policy: RetryPolicy,
    *,
    attempt: int,
    elapsed_s: float,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """What to do after ``attempt`` (1-based) failed with ``error``, ``elapsed_s`` after the first attempt."""
    cls = error.error_class
    if cls not in RETRYABLE:
        return Decision(Action.FAIL, reason=f"{cls} is not retried")
    if cls in KEEPS_ATTEMPT:
        delay = error.retry_after_s if error.retry_after_s is not None else backoff_s(policy, attempt, rand)
        deadline = limited_wait_deadline_s(policy)
        if elapsed_s + delay > deadline:
            return Decision(
                Action.FAIL,
                reason=f"waited too long on the provider's limits: {elapsed_s:.0f}s since the first attempt, "
                f"and waiting {delay:g}s more would pass the {deadline:g}s deadline",
            )
        return Decision(Action.RETRY, delay_s=delay, uses_attempt=False, reason=str(cls))
    if attempt >= policy.max_attempts:
        return Decision(Action.FAIL, reason=f"{cls} after {attempt} of {policy.max_attempts} attempts")
    delay = backoff_s(policy, attempt, rand)
    if error.retry_after_s is not None:
        delay = max(delay, error.retry_after_s)
    if policy.deadline_seconds is not None and elapsed_s + delay > policy.deadline_seconds:
        return Decision(Action.FAIL, reason=f"{cls}: retrying would pass the {policy.deadline_seconds:g}s deadline")
    return Decision(Action.RETRY, delay_s=delay, uses_attempt=True, reason=str(cls))
