"""Routing rules: fan-out, the judge loop, and output parsing (pure, no Redis)."""

import json
from typing import Any

import pytest

from analysis_core import plan, queue
from analysis_core.api import v1alpha1
from analysis_worker import consumer, routing

pytestmark = pytest.mark.unit


def compiled(*stages: dict[str, Any]) -> plan.Plan:
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {"items": ["semis"], "providers": {"m": {"type": "offline"}}, "stages": list(stages)}
    )
    return plan.compile_plan("uid", spec)


RANK = {
    "name": "rank",
    "provider": "m",
    "prompt": "x",
    "output": "json",
    "fanOut": {"path": "$.stocks", "key": "ticker", "sortBy": "score", "max": 2},
}
ANALYZE = {"name": "analyze", "provider": "m", "prompt": "{{ input }} {{ feedback }}"}
REVIEW = {"name": "review", "type": "judge", "provider": "m", "reviews": "analyze", "maxRejections": 2}
REPORT = {"name": "report", "provider": "m", "prompt": "{{ input }}"}


def test_fan_out_sorts_cuts_and_keys_children_under_their_parent() -> None:
    p = compiled(RANK, ANALYZE)
    output = {
        "stocks": [{"ticker": "AMD", "score": 0.7}, {"ticker": "NVDA", "score": 0.9}, {"ticker": "INTC", "score": 0.2}]
    }
    routed = routing.after_success(p, p.stage("rank"), queue.Message("semis"), "uid/rank/semis/0/1", output)
    assert [(r.stage, r.message.item) for r in routed.routes] == [("analyze", "semis/NVDA"), ("analyze", "semis/AMD")]
    first = routed.routes[0].message
    assert first.input == "uid/rank/semis/0/1#NVDA"
    assert json.loads(routed.results[first.input]) == {"ticker": "NVDA", "score": 0.9}
    assert routed.increments == {"succeeded": 1, "children": 2}


def test_fan_out_of_strings_at_the_top_level_and_unsafe_keys() -> None:
    fan = {**RANK, "fanOut": {"path": "$"}}
    p = compiled(fan, ANALYZE)
    output = ["AI chips", "Memory / storage", "AI chips", "  Foundry  services "]
    routed = routing.after_success(p, p.stage("rank"), queue.Message("semis"), "k", output)
    assert [r.message.item for r in routed.routes] == [
        "semis/AI chips",
        "semis/Memory - storage",
        "semis/AI chips-2",
        "semis/Foundry services",
    ]


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ({"tickers": []}, "no key 'stocks'"),
        ({"stocks": {"ticker": "A"}}, "is a dict in the output, not a list"),
        ({"stocks": [{"ticker": "A"}]}, "sortBy 'score': an element has no number"),
        ({"stocks": [{"name": "A", "score": 1}]}, "fanOut.key 'ticker': an element has no such field"),
    ],
)
def test_fan_out_output_that_routing_cannot_use_is_bad_output(output: Any, problem: str) -> None:
    p = compiled(RANK, ANALYZE)
    with pytest.raises(routing.BadOutput, match=problem):
        routing.after_success(p, p.stage("rank"), queue.Message("semis"), "k", output)


def test_a_plain_stage_passes_its_result_on_and_the_last_stage_ends_the_item() -> None:
    p = compiled(ANALYZE, REPORT)
    routed = routing.after_success(p, p.stage("analyze"), queue.Message("NVDA", 1), "uid/analyze/NVDA/1/2", "text")
    assert routed.routes == [consumer.Route("report", queue.Message("NVDA", 1, input="uid/analyze/NVDA/1/2"))]
    last = routing.after_success(p, p.stage("report"), queue.Message("NVDA"), "k", "done")
    assert (last.status, last.routes) == ("succeeded", [])


def judge(p: plan.Plan, round_: int, approved: bool) -> routing.Routed:
    verdict = routing.Verdict(approved, "cite sources", 0.4)
    message = queue.Message("NVDA", round_, input=f"uid/analyze/NVDA/{round_}/1")
    return routing.after_success(p, p.stage("review"), message, "k", verdict, reviewed_input="uid/rank/semis/0/1#NVDA")


def test_an_approved_item_takes_the_reviewed_output_on() -> None:
    routed = judge(compiled(ANALYZE, REVIEW, REPORT), 1, approved=True)
    assert routed.status == "succeeded"
    assert routed.routes == [consumer.Route("report", queue.Message("NVDA", 1, input="uid/analyze/NVDA/1/1"))]
    assert routed.increments == {"succeeded": 1, "approved": 1, "approved_round_1": 1}


def test_a_rejected_item_goes_back_with_feedback_and_the_next_round() -> None:
    routed = judge(compiled(ANALYZE, REVIEW, REPORT), 0, approved=False)
    assert routed.status == "rejected"
    (route,) = routed.routes
    assert route == consumer.Route(
        "analyze", queue.Message("NVDA", 1, input="uid/rank/semis/0/1#NVDA", feedback="cite sources")
    )
    assert routed.increments == {"rejected": 1, "rejected_round_0": 1}


def test_out_of_rejections_fail_or_accept_the_last_answer() -> None:
    failing = judge(compiled(ANALYZE, REVIEW, REPORT), 2, approved=False)
    assert (failing.status, failing.routes) == ("failed", [])
    assert failing.increments["exhausted"] == failing.increments["failed"] == 1
    accepting = judge(compiled(ANALYZE, {**REVIEW, "onExhausted": "AcceptLast"}, REPORT), 2, approved=False)
    assert accepting.status == "succeeded"
    assert accepting.routes == [consumer.Route("report", queue.Message("NVDA", 2, input="uid/analyze/NVDA/2/1"))]


def test_outputs_are_parsed_as_the_stage_promised() -> None:
    p = compiled(
        {
            "name": "a",
            "provider": "m",
            "prompt": "x",
            "output": "json",
            "jsonSchema": {
                "type": "object",
                "required": ["rating"],
                "properties": {"rating": {"enum": ["buy", "hold", "sell"]}},
            },
        },
        REVIEW | {"reviews": "a"},
    )
    assert routing.parse_output(p.stage("a"), '```json\n{"rating": "buy"}\n```') == {"rating": "buy"}
    with pytest.raises(routing.BadOutput, match="not JSON"):
        routing.parse_output(p.stage("a"), '{"rating": "buy"')
    with pytest.raises(routing.BadOutput, match="does not match jsonSchema at rating"):
        routing.parse_output(p.stage("a"), '{"rating": "strong buy"}')
    verdict = routing.parse_output(p.stage("review"), '{"approved": false, "feedback": "thin", "score": 0.3}')
    assert verdict == routing.Verdict(False, "thin", 0.3)
    with pytest.raises(routing.BadOutput, match='boolean "approved"'):
        routing.parse_output(p.stage("review"), '{"approved": "yes"}')
