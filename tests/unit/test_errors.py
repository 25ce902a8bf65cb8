"""The error taxonomy's decisions and the backoff arithmetic."""

import pytest

from analysis_core import errors

pytestmark = pytest.mark.unit

E = errors.ErrorClass
BACKOFF = errors.Backoff(initial_seconds=2, factor=2, max_seconds=10, jitter=0)
POLICY = errors.RetryPolicy(max_attempts=3, backoff=BACKOFF)


def decide(
    cls: errors.ErrorClass,
    attempt: int = 1,
    elapsed_s: float = 0.0,
    retry_after_s: float | None = None,
    policy: errors.RetryPolicy = POLICY,
) -> errors.Decision:
    error = errors.ProviderError(cls, "boom", retry_after_s=retry_after_s)
    return errors.decide(error, policy, attempt=attempt, elapsed_s=elapsed_s, rand=lambda: 0.5)


@pytest.mark.parametrize("cls", [E.AUTH, E.INVALID_REQUEST, E.JUDGE_REJECTED])
def test_classes_that_retrying_cannot_fix_fail_at_once(cls: errors.ErrorClass) -> None:
    decision = decide(cls)
    assert decision.action is errors.Action.FAIL


@pytest.mark.parametrize("cls", [E.OVERLOADED, E.TIMEOUT, E.NETWORK, E.BAD_OUTPUT, E.UNKNOWN])
def test_transient_classes_back_off_and_use_attempts(cls: errors.ErrorClass) -> None:
    assert decide(cls, attempt=1) == errors.Decision(errors.Action.RETRY, 2.0, True, str(cls))
    assert decide(cls, attempt=2).delay_s == 4.0
    assert decide(cls, attempt=3).action is errors.Action.FAIL  # the third of three attempts


def test_rate_limits_wait_as_told_and_keep_the_attempt() -> None:
    decision = decide(E.RATE_LIMITED, attempt=3, retry_after_s=7)
    assert decision == errors.Decision(errors.Action.RETRY, 7, False, "RateLimited")
    # Without a retry-after it backs off, still without using an attempt.
    assert decide(E.RATE_LIMITED, attempt=1).uses_attempt is False


def test_a_retry_after_longer_than_the_backoff_is_honoured_for_other_classes_too() -> None:
    assert decide(E.OVERLOADED, retry_after_s=30).delay_s == 30


def test_the_total_deadline_ends_retries() -> None:
    backoff = errors.Backoff(initial_seconds=2, factor=2, max_seconds=60, jitter=0)
    policy = errors.RetryPolicy(max_attempts=10, backoff=backoff, deadline_seconds=10)
    assert decide(E.TIMEOUT, attempt=2, elapsed_s=5, policy=policy).action is errors.Action.RETRY  # 5 + 4 <= 10
    late = decide(E.TIMEOUT, attempt=2, elapsed_s=7, policy=policy)  # 7 + 4 > 10
    assert late.action is errors.Action.FAIL
    assert "deadline" in late.reason
    assert decide(E.RATE_LIMITED, elapsed_s=9, retry_after_s=5, policy=policy).action is errors.Action.FAIL


def test_backoff_is_capped_and_jittered_within_bounds() -> None:
    backoff = errors.Backoff(initial_seconds=1, factor=3, max_seconds=20, jitter=0.2)
    policy = errors.RetryPolicy(max_attempts=3, backoff=backoff)
    assert errors.backoff_s(policy, 1, rand=lambda: 0.5) == 1
    assert errors.backoff_s(policy, 3, rand=lambda: 0.5) == 9
    assert errors.backoff_s(policy, 10, rand=lambda: 0.5) == 20
    assert errors.backoff_s(policy, 3, rand=lambda: 0.0) == pytest.approx(9 * 0.8)
    assert errors.backoff_s(policy, 3, rand=lambda: 1.0) == pytest.approx(9 * 1.2)
    assert errors.backoff_s(policy, 10, rand=lambda: 1.0) == 20  # jitter never passes the cap


def test_error_text_names_class_and_status() -> None:
    assert str(errors.ProviderError(E.AUTH, "invalid key", status=401)) == "Auth (HTTP 401): invalid key"


def test_quota_refusals_wait_for_the_next_probe_and_keep_the_attempt() -> None:
    decision = decide(E.QUOTA_EXHAUSTED, attempt=3, retry_after_s=40)
    assert decision == errors.Decision(errors.Action.RETRY, 40, False, "QuotaExhausted")
    assert decide(E.QUOTA_EXHAUSTED, attempt=1).uses_attempt is False


@pytest.mark.parametrize("cls", [E.RATE_LIMITED, E.QUOTA_EXHAUSTED])
def test_waits_on_the_providers_limits_end_at_a_default_deadline(cls: errors.ErrorClass) -> None:
    deadline = errors.LIMITED_WAIT_DEADLINE_S
    assert decide(cls, elapsed_s=deadline - 60, retry_after_s=30).action is errors.Action.RETRY
    late = decide(cls, elapsed_s=deadline - 60, retry_after_s=90)
    assert late.action is errors.Action.FAIL
    assert late.reason.startswith("waited too long on the provider's limits: 3540s since the first attempt")
    # retry.deadlineSeconds, when the stage sets it, is the bound instead, longer or shorter.
    longer = errors.RetryPolicy(max_attempts=3, backoff=BACKOFF, deadline_seconds=2 * deadline)
    assert decide(cls, elapsed_s=deadline, retry_after_s=90, policy=longer).action is errors.Action.RETRY
    assert errors.limited_wait_deadline_s(longer) == 2 * deadline
    assert errors.limited_wait_deadline_s(POLICY) == deadline
    # Other classes keep having no deadline unless the stage sets one.
    assert decide(E.TIMEOUT, elapsed_s=10 * deadline).action is errors.Action.RETRY
