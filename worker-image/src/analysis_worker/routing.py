"""Where an item goes after an attempt succeeded: the pipeline's routing rules.

The worker calls ``parse_output`` on a provider's answer (JSON stages: it must
parse and match the stage's JSON schema, or it is ``BadOutput``), then
``after_success`` to learn what completing the attempt means: the follow-up
messages (``consumer.Route``), extra results to store with it (each fanned-out
child's own input), the status this stage records, and counters. The worker
then hands all of it to ``consumer.StageQueue.complete`` as one atomic step.

Rules (docs/design.md#routing):

- a generate stage passes its output to the next stage; with ``fanOut`` the
  list at the path becomes child items ``<parent>/<key>``, sorted by
  ``sortBy`` and cut at ``max``, each with its element as input;
- into a ``collect`` stage, items are gathered rather than enqueued, until
  the operator combines them (``analysis_operator.producer.collect``, fan-in);
- a judge stage reads a verdict. Approved: the reviewed output goes on.
  Rejected: the item goes back to the reviewed stage, next round, with the
  feedback. Out of rejections: ``onExhausted`` fails it or passes the last
  output on.

Pure: no Redis, no clock; everything it needs comes in as arguments.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from analysis_core import keys, plan, queue, wire
from analysis_core.api import v1alpha1
from analysis_worker import consumer


class BadOutput(ValueError):
    """An answer that does not parse, does not match its schema, or lacks what routing needs."""


@dataclasses.dataclass(frozen=True)
class Routed:
    status: str  # what this stage records: wire.STATUS_SUCCEEDED, STATUS_REJECTED or STATUS_FAILED
    routes: list[consumer.Route]
    results: dict[str, str]  # more results to store with the attempt's own (fan-out inputs)
    increments: dict[str, int]  # wire.COUNT_* -> by how much
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Verdict:
    approved: bool
    feedback: str
    score: float | None


def parse_output(stage: plan.StagePlan, text: str) -> Any:
    """The answer as the stage promised it: text as is; JSON parsed and checked against the schema."""
    if stage.type is v1alpha1.StageType.JUDGE:
        return parse_verdict(text)
    if stage.output is not v1alpha1.OutputFormat.JSON:
        return text
    value = _json(text)
    if stage.json_schema:
        import jsonschema  # here: only stages with a schema pay for importing it, at their first item

        try:
            jsonschema.validate(value, stage.json_schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
            raise BadOutput(f"output does not match jsonSchema at {where}: {exc.message}") from exc
        except jsonschema.SchemaError as exc:
            raise BadOutput(f"the stage's jsonSchema is invalid: {exc.message}") from exc
    return value


def parse_verdict(text: str) -> Verdict:
    value = _json(text)
    if not isinstance(value, dict) or not isinstance(value.get("approved"), bool):
        raise BadOutput('a verdict must be a JSON object with a boolean "approved"')
    feedback = value.get("feedback", "")
    score = value.get("score")
    return Verdict(
        approved=value["approved"],
        feedback=feedback if isinstance(feedback, str) else json.dumps(feedback),
        score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
    )


def _json(text: str) -> Any:
    stripped = text.strip()
    # Models often wrap JSON in a Markdown fence; the content is what was asked for.
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", stripped, flags=re.DOTALL)
    try:
        return json.loads(fenced.group(1) if fenced else stripped)
    except ValueError as exc:
        raise BadOutput(f"output is not JSON: {exc}") from exc


def after_success(
    the_plan: plan.Plan,
    stage: plan.StagePlan,
    message: queue.Message,
    idem: str,
    output: Any,
    *,
    reviewed_input: str = "",
) -> Routed:
    """What completing ``message``'s attempt (key ``idem``) with ``output`` does.

    ``reviewed_input`` (judge stages) is the input the reviewed attempt had,
    which a rejected item takes back to the reviewed stage.
    """
    if stage.type is v1alpha1.StageType.JUDGE:
        assert isinstance(output, Verdict)
        return _judged(the_plan, stage, message, output, reviewed_input)
    if stage.fan_out is not None:
        return _fanned_out(the_plan, stage, message, idem, output)
    passed_on = onward(the_plan, stage, queue.Message(message.item, message.round, input=idem))
    return Routed(wire.STATUS_SUCCEEDED, passed_on, {}, {wire.COUNT_SUCCEEDED: 1})


def onward(the_plan: plan.Plan, stage: plan.StagePlan, message: queue.Message) -> list[consumer.Route]:
    """The route to the next stage, if any; into its gathering hash when it collects (fan-in).

    Also what an approval stage does with an item it releases.
    """
    if stage.next is None:
        return []
    return [consumer.Route(stage.next, message, gather=the_plan.stage(stage.next).collect)]


def _judged(
    the_plan: plan.Plan, stage: plan.StagePlan, message: queue.Message, verdict: Verdict, reviewed_input: str
) -> Routed:
    reviewed = message.input  # the reviewed attempt's result: what goes on when approved
    passed_on = onward(the_plan, stage, queue.Message(message.item, message.round, input=reviewed))
    if verdict.approved:
        approved = {wire.COUNT_SUCCEEDED: 1, wire.COUNT_APPROVED: 1, wire.approved_in_round(message.round): 1}
        return Routed(wire.STATUS_SUCCEEDED, passed_on, {}, approved, f"approved in round {message.round}")
    counts = {wire.COUNT_REJECTED: 1, wire.rejected_in_round(message.round): 1}
    if message.round < stage.max_rejections:
        assert stage.reviews is not None
        back = queue.Message(message.item, message.round + 1, input=reviewed_input, feedback=verdict.feedback)
        return Routed(
            wire.STATUS_REJECTED,
            [consumer.Route(stage.reviews, back)],
            {},
            counts,
            f"rejected in round {message.round}; back to {stage.reviews}",
        )
    counts[wire.COUNT_EXHAUSTED] = 1
    if stage.on_exhausted is v1alpha1.OnExhausted.ACCEPT_LAST:
        return Routed(
            wire.STATUS_SUCCEEDED,
            passed_on,
            {},
            {**counts, wire.COUNT_SUCCEEDED: 1},
            f"rejected {message.round + 1} times; the last answer goes on (AcceptLast)",
        )
    note = f"rejected {message.round + 1} times (onExhausted: Fail)"
    return Routed(wire.STATUS_FAILED, [], {}, {**counts, wire.COUNT_FAILED: 1}, note)


def _fanned_out(the_plan: plan.Plan, stage: plan.StagePlan, message: queue.Message, idem: str, output: Any) -> Routed:
    fan = stage.fan_out
    assert fan is not None
    elements = output
    for key in fan.path.split(".")[1:]:
        if not isinstance(elements, dict) or key not in elements:
            raise BadOutput(f"fanOut.path {fan.path}: no key {key!r} in the output")
        elements = elements[key]
    if not isinstance(elements, list):
        raise BadOutput(f"fanOut.path {fan.path} is a {type(elements).__name__} in the output, not a list")
    if fan.sort_by:
        # The plan compiler sets the order of every fan-out that sorts.
        elements = _sorted(elements, fan.sort_by, descending=fan.order is v1alpha1.SortOrder.DESCENDING)
    if fan.max is not None:
        elements = elements[: fan.max]
    routes, results, seen = [], {}, set()
    for position, element in enumerate(elements):
        key = _child_key(element, fan.key, position)
        while key in seen:  # duplicates keep every element, with a stable suffix
            key = f"{key}-{position}"
        seen.add(key)
        child_input = keys.child_input(idem, key)
        results[child_input] = element if isinstance(element, str) else json.dumps(element, sort_keys=True)
        routes.extend(onward(the_plan, stage, queue.Message(f"{message.item}/{key}", input=child_input)))
    increments = {wire.COUNT_SUCCEEDED: 1, wire.COUNT_CHILDREN: len(routes)}
    return Routed(wire.STATUS_SUCCEEDED, routes, results, increments, f"{len(routes)} children")


def _sorted(elements: list[Any], field: str, *, descending: bool) -> list[Any]:
    def score(element: Any) -> float:
        value = element.get(field) if isinstance(element, dict) else None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BadOutput(f"fanOut.sortBy {field!r}: an element has no number there: {json.dumps(element)[:200]}")
        return float(value)

    # sorted() is stable: equal scores keep the model's order.
    return sorted(elements, key=score, reverse=descending)


def _child_key(element: Any, key_field: str | None, position: int) -> str:
    if key_field is not None:
        if not isinstance(element, dict) or key_field not in element:
            raise BadOutput(f"fanOut.key {key_field!r}: an element has no such field: {json.dumps(element)[:200]}")
        raw = element[key_field]
    elif isinstance(element, str):
        raw = element
    else:
        raw = position
    # Child ids are words separated by single spaces and never contain "/" (the id separator).
    words = str(raw).replace("/", "-").split()
    return " ".join(words)[:100] or str(position)


def spent(the_plan: plan.Plan, message: queue.Message, stage: plan.StagePlan, keep: set[str]) -> list[str]:
    """The keys of the item's earlier attempts, which nothing needs once it ended with a success at ``stage``.

    Every stage up to ``stage``, every round up to the message's, the
    attempts the retry policy allows (or the message's own number, after a
    re-run), but the ones in ``keep`` (the ending attempt, and the answer it
    ends with). ``complete.lua`` turns their outcomes into ``OUTCOME_SPENT``
    and drops their results in the step that ends the item: what stays of a
    finished item is its end (finals, outcome, result) and one short field
    per attempt. Keys of attempts that never ran cost nothing to name.
    Fan-out children are items of their own: their parent's attempts (which
    siblings may still need) are never among them.
    """
    out = []
    k = keys.BatchKeys(the_plan.uid)
    for earlier in the_plan.stages[: stage.index + 1]:
        most = max(earlier.retry.max_attempts, message.attempt)
        for round_ in range(message.round + 1):
            for attempt in range(1, most + 1):
                idem = k.idem(earlier.name, message.item, round_, attempt)
                if idem not in keep:
                    out.append(idem)
    return out
