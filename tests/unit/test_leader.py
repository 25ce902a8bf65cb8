"""The leader election's decision and the standby's liveness address: pure parts of ``analysis_operator.leader``."""

import pytest

from analysis_operator import leader
from analysis_operator.leader import HOLD, TAKE, WAIT, Seen

pytestmark = pytest.mark.unit


def held_by(holder: str) -> Seen:
    return Seen(holder=holder, renewed="2026-12-06T20:00:00.000000+00:00", duration_s=10)


def test_a_missing_or_given_up_lease_is_taken_at_once() -> None:
    assert leader.decide(None, "me", unchanged_since=100.0, now=100.0) == TAKE
    assert leader.decide(held_by(""), "me", unchanged_since=100.0, now=100.0) == TAKE


def test_a_holder_renews_its_own_lease_whatever_the_time() -> None:
    assert leader.decide(held_by("me"), "me", unchanged_since=0.0, now=1e6) == HOLD


def test_another_holders_lease_is_taken_only_once_unchanged_for_its_whole_duration_on_our_clock() -> None:
    other = held_by("other")
    assert leader.decide(other, "me", unchanged_since=100.0, now=100.0) == WAIT
    assert leader.decide(other, "me", unchanged_since=100.0, now=109.9) == WAIT
    assert leader.decide(other, "me", unchanged_since=100.0, now=110.0) == TAKE


def test_the_timing_leaves_the_old_leader_gone_before_a_standby_may_take_over() -> None:
    # The leader gives up after DEADLINE_S without a renewal; a standby waits LEASE_S after the last one it saw.
    assert leader.RENEW_S * 3 <= leader.DEADLINE_S < leader.LEASE_S <= 10


@pytest.mark.parametrize(
    ("args", "address"),
    [
        (["--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"], ("0.0.0.0", 8081)),
        (["--liveness", "http://127.0.0.1:9000/healthz", "-v"], ("127.0.0.1", 9000)),
        (["--all-namespaces"], None),
        (["--liveness=http://localhost/healthz"], None),  # no port: nothing to stand in for
    ],
)
def test_the_standby_answers_where_kopf_will(args: list[str], address: tuple[str, int] | None) -> None:
    assert leader.liveness_address(args) == address
