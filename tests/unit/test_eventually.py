"""``processes.eventually``, the one polling helper the dev-cluster tests share."""

import itertools

import pytest

from analysis_devcluster import processes

pytestmark = pytest.mark.unit


def test_returns_the_first_truthy_value() -> None:
    calls = itertools.count()
    assert processes.eventually(lambda: next(calls) >= 3 and "ready", 5, "ready", interval=0.001) == "ready"


def test_says_what_did_not_happen_with_the_last_value_and_details() -> None:
    with pytest.raises(AssertionError, match=r"not answering within 0\.01s \(last: None\)\nlog tail") as caught:
        processes.eventually(lambda: None, 0.01, "answering", interval=0.001, details=lambda: "log tail")
    assert str(caught.value).count("\n") == 1
