"""Fair shares of a provider account (analysis_operator.fairshare): who gets the next call when several wait."""

import collections

import pytest

from analysis_operator import fairshare

pytestmark = pytest.mark.unit


def run(
    shares: fairshare.Shares, claims: list[fairshare.Claim], rounds: int, per_round: int = 1
) -> collections.Counter[str]:
    """Grants per namespace over ``rounds`` grants of ``per_round`` calls, every claim waiting throughout."""
    by_key = {c.key: c.namespace for c in claims}
    got: collections.Counter[str] = collections.Counter()
    for _ in range(rounds):
        for key, n in shares.split(claims, fairshare.Capacity(requests=per_round)).items():
            got[by_key[key]] += n
    return got


def claim(key: str, namespace: str, calls: int, weight: int = 1, **tokens: int) -> fairshare.Claim:
    return fairshare.Claim(key, namespace, weight, calls, **tokens)


def test_unequal_demand_splits_equally_between_namespaces() -> None:
    claims = [claim("a", "a", 80), claim("b", "b", 20), claim("c", "c", 10)]
    got = run(fairshare.Shares(), claims, 300)
    assert got == {"a": 100, "b": 100, "c": 100}


def test_weights_split_in_proportion() -> None:
    claims = [claim("a", "a", 80, weight=2), claim("b", "b", 20), claim("c", "c", 10)]
    got = run(fairshare.Shares(), claims, 400, per_round=3)
    assert got == {"a": 600, "b": 300, "c": 300}


def test_a_namespace_gains_nothing_by_splitting_its_work_into_batches() -> None:
    claims = [claim(f"m{i}", "many", 5) for i in range(10)] + [claim("o", "one", 5)]
    got = run(fairshare.Shares(), claims, 200)
    assert got == {"many": 100, "one": 100}


def test_batches_of_one_namespace_share_it_equally() -> None:
    shares = fairshare.Shares()
    claims = [claim("x", "ns", 50), claim("y", "ns", 1)]
    per_batch: collections.Counter[str] = collections.Counter()
    for _ in range(40):
        per_batch.update(shares.split(claims, fairshare.Capacity(requests=1)))
    assert per_batch == {"x": 20, "y": 20}


def test_a_newcomer_gets_its_share_at_once_and_banks_no_credit_while_idle() -> None:
    shares = fairshare.Shares()
    big = claim("big", "big", 1000)
    run(shares, [big], 500)  # alone for a long time: every call is its
    small = claim("small", "small", 1000)
    got = run(shares, [big, small], 20)
    assert got == {"big": 10, "small": 10}  # from the first grant on, not after "catching up" 500
    # Idle for a while, then back: no credit for the time away.
    run(shares, [big], 100)
    assert run(shares, [big, small], 20) == {"big": 10, "small": 10}


def test_an_idle_share_goes_to_whoever_waits() -> None:
    shares = fairshare.Shares()
    claims = [claim("a", "a", 100), claim("b", "b", 0)]
    assert shares.split(claims, fairshare.Capacity(requests=10)) == {"a": 10}


def test_nobody_gets_more_than_it_waits_for_or_the_account_has() -> None:
    shares = fairshare.Shares()
    claims = [claim("a", "a", 2), claim("b", "b", 3)]
    assert shares.split(claims, fairshare.Capacity(requests=100)) == {"a": 2, "b": 3}
    assert sum(shares.split(claims, fairshare.Capacity(requests=4)).values()) == 4
    assert shares.split(claims, fairshare.Capacity(requests=100, in_flight=1)) in ({"a": 1}, {"b": 1})


def test_unspent_calls_given_back_restore_the_share() -> None:
    shares = fairshare.Shares()
    a, b = claim("a", "a", 10), claim("b", "b", 10)
    assert shares.split([a, b], fairshare.Capacity(requests=10)) == {"a": 5, "b": 5}
    shares.refund(a, 5)  # a spent none of its five
    assert shares.split([a, b], fairshare.Capacity(requests=5)) == {"a": 5}


def test_a_large_call_at_the_head_of_the_line_is_not_overtaken() -> None:
    shares = fairshare.Shares()
    big = claim("big", "big", 5, input=900)
    small = claim("small", "small", 5, input=100)
    run(shares, [small], 1)  # small is ahead by one: big is next
    granted = shares.split([big, small], fairshare.Capacity(requests=10, input=500))
    assert granted == {}  # big does not fit yet, and small may not pass it
    assert shares.split([big, small], fairshare.Capacity(requests=10, input=1000)) == {"big": 1, "small": 1}


def test_a_capped_namespace_stops_at_its_cap_and_the_rest_goes_to_others() -> None:
    shares = fairshare.Shares()
    claims = [claim("a", "a", 10), claim("b", "b", 10)]
    assert shares.split(claims, fairshare.Capacity(requests=10), {"a": 2, "b": -1}) == {"a": 2, "b": 8}
    assert shares.split(claims, fairshare.Capacity(requests=10), {"a": 0, "b": -1}) == {"b": 10}
