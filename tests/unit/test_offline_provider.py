"""The offline provider answers deterministically, in the shape each stage asks for, and can drive the examples."""

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_core.api import v1alpha1
from analysis_worker.providers import base, offline

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ITEM_ID = re.compile(v1alpha1.ITEM_ID)
TICKER = re.compile(r"^[A-Z]{2,5}$")
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ticker", "thesis", "risks", "rating"],
    "properties": {
        "ticker": {"type": "string"},
        "thesis": {"type": "string"},
        "risks": {"type": "array", "items": {"type": "string"}},
        "rating": {"type": "string", "enum": ["buy", "hold", "sell"]},
    },
}


def request(**fields: Any) -> base.Request:
    defaults: dict[str, Any] = {"prompt": "Analyse this.", "max_tokens": 1000, "timeout_seconds": 30.0}
    return base.Request(**{**defaults, **fields})


def answer(req: base.Request, *, seed: int = 0, rejection_rate: float = 0.3) -> str:
    return offline.answer(req, seed=seed, rejection_rate=rejection_rate)


def provider(model: str = v1alpha1.OFFLINE_MODEL, **options: Any) -> offline.OfflineProvider:
    """The provider the worker builds for these ``spec.providers.<name>.offline`` options (the API's defaults)."""
    return offline.OfflineProvider(v1alpha1.OfflineOptions(**options), model=model)


def schema_errors(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """A tiny JSON Schema checker: the keywords the offline provider claims to honour."""
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds is not None and not any(TYPE_CHECKS[k](value) for k in kinds):
        return [f"{where}: {value!r} is not of type {kinds}"]
    errors: list[str] = []
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        errors += [f"{where}: missing {name}" for name in schema.get("required", []) if name not in value]
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += schema_errors(value[name], sub, f"{where}.{name}")
    if isinstance(value, list):
        errors += array_errors(value, schema, where)
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf):
        errors.append(f"{where}: length {len(value)}")
    if TYPE_CHECKS["number"](value):
        errors += number_errors(value, schema, where)
    return errors


TYPE_CHECKS: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def array_errors(value: list[Any], schema: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
        errors.append(f"{where}: {len(value)} items")
    if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) != len(value):
        errors.append(f"{where}: items not unique")
    for i, element in enumerate(value):
        errors += schema_errors(element, schema.get("items", {}), f"{where}[{i}]")
    return errors


def number_errors(value: float, schema: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    if not schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf):
        errors.append(f"{where}: {value} out of [minimum, maximum]")
    if not schema.get("exclusiveMinimum", -math.inf) < value < schema.get("exclusiveMaximum", math.inf):
        errors.append(f"{where}: {value} out of (exclusiveMinimum, exclusiveMaximum)")
    return errors


def dig(value: Any, path: str) -> Any:
    for segment in path.split(".")[1:]:
        assert isinstance(value, dict), f"no object at {segment} in {value!r}"
        assert set(value) == {segment}
        value = value[segment]
    return value


ALL_KINDS = [
    pytest.param({"output": base.OutputKind.TEXT}, id="text"),
    pytest.param({"output": base.OutputKind.JSON}, id="json"),
    pytest.param({"output": base.OutputKind.JSON, "json_schema": REPORT_SCHEMA}, id="schema"),
    pytest.param({"output": base.OutputKind.JSON, "fan_out": base.FanOutHint("$.x", "name", "score")}, id="fanout"),
    pytest.param({"output": base.OutputKind.VERDICT}, id="verdict"),
]

# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_same_seed_stage_item_and_round_give_the_same_answer(kind: dict[str, Any]) -> None:
    first = answer(request(item="semiconductors/MU", stage="analyze", round=2, **kind), seed=7)
    # Prompt, system text, attempt, limits and temperature do not matter.
    again = request(
        item="semiconductors/MU",
        stage="analyze",
        round=2,
        prompt="something else entirely",
        system="be brief",
        attempt=3,
        max_tokens=5,
        timeout_seconds=1.0,
        temperature=1.5,
        **kind,
    )
    assert answer(again, seed=7) == first


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("change", [{"round": 1}, {"stage": "other"}, {"item": "other"}, {"seed": 8}])
def test_changing_round_stage_item_or_seed_changes_most_answers(kind: dict[str, Any], change: dict[str, Any]) -> None:
    seed = change.get("seed", 7)
    changed = {k: v for k, v in change.items() if k != "seed"}
    differ = 0
    for i in range(50):
        fields = {"item": f"item-{i}", "stage": "analyze", "round": 0, **kind}
        differ += answer(request(**fields), seed=7) != answer(request(**{**fields, **changed}), seed=seed)
    assert differ >= 40


async def test_complete_returns_answer() -> None:
    req = request(item="AAPL", stage="analyze", output=base.OutputKind.JSON, json_schema=REPORT_SCHEMA)
    completion = await provider(seed=3, rejection_rate=0.5).complete(req)
    assert completion.text == offline.answer(req, seed=3, rejection_rate=0.5)


# ---------------------------------------------------------------- text and plain JSON


def test_text_names_the_item_and_the_stage_in_a_few_sentences() -> None:
    for i in range(30):
        text = answer(request(item=f"semiconductors/NV{i}", stage="analyze"))
        assert "semiconductors/NV" + str(i) in text
        assert "analyze" in text
        assert 2 <= text.count(". ") + 1 <= 4
        assert text.endswith(".")


def test_text_copes_with_an_empty_item_and_stage() -> None:
    assert answer(request())


def test_json_without_schema_or_fan_out_is_a_summary_object() -> None:
    value = json.loads(answer(request(item="x y", stage="s", output=base.OutputKind.JSON)))
    assert set(value) == {"item", "stage", "summary"}
    assert (value["item"], value["stage"]) == ("x y", "s")
    assert "x y" in value["summary"]


# ---------------------------------------------------------------- JSON Schema


@pytest.mark.parametrize("item", ["semiconductors/memory chips/MU", "AAPL", "BRK.B", "semiconductors", ""])
def test_report_schema_is_honoured_and_keeps_the_ticker(item: str) -> None:
    text = answer(request(item=item, stage="report", output=base.OutputKind.JSON, json_schema=REPORT_SCHEMA))
    value = json.loads(text)
    assert schema_errors(value, REPORT_SCHEMA) == []
    assert text == json.dumps(value, sort_keys=True)
    last = item.rsplit("/", 1)[-1]
    if last in ("MU", "AAPL", "BRK.B"):
        assert value["ticker"] == last
    else:
        assert TICKER.match(value["ticker"])
    assert value["thesis"]
    assert all(value["risks"])


RICH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "count", "weight", "flag", "tags", "nested", "kind", "fixed", "code", "maybe", "extra"],
    "properties": {
        "id": {"type": "string", "minLength": 200},
        "count": {"type": "integer", "minimum": 3, "maximum": 5},
        "weight": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.01},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 6, "maxItems": 7},
        "nested": {
            "type": "object",
            "properties": {"scores": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}}},
        },
        "kind": {"enum": ["a", "b", 3]},
        "fixed": {"const": {"v": 1}},
        "code": {"type": "integer", "exclusiveMinimum": 9.5, "exclusiveMaximum": 11},
        "maybe": {"type": ["null", "integer"], "minimum": -2, "maximum": -1},
        "extra": {"anyOf": [{"type": "boolean"}, {"type": "string"}]},
        "few": {"type": "array", "items": {"enum": ["x", "y"]}, "uniqueItems": True, "maxItems": 2},
        "none": {"type": "null"},
    },
}


def test_a_richer_schema_is_honoured_for_many_items() -> None:
    for i in range(100):
        value = json.loads(
            answer(request(item=f"i{i}", stage="s", output=base.OutputKind.JSON, json_schema=RICH_SCHEMA))
        )
        assert schema_errors(value, RICH_SCHEMA) == [], value
        assert set(value) == set(RICH_SCHEMA["properties"])


@pytest.mark.parametrize("schema", [{}, {"type": "string"}, {"$ref": "#/x"}, {"type": "array"}, {"type": "object"}])
def test_minimal_schemas_do_not_break_it(schema: dict[str, Any]) -> None:
    value = json.loads(answer(request(item="a", stage="s", output=base.OutputKind.JSON, json_schema=schema)))
    assert schema_errors(value, schema) == []


# ---------------------------------------------------------------- fan-out


def check_keys(keys: list[str], tickers: bool) -> None:
    assert 3 <= len(keys) <= 8
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert isinstance(key, str)
        assert ITEM_ID.match(key), key
        assert "/" not in key
        assert len(key) <= 60
        if tickers:
            assert TICKER.match(key), key


@pytest.mark.parametrize("path", ["$", "$.subSectors", "$.a.b"])
@pytest.mark.parametrize("key", [None, "name", "ticker"])
@pytest.mark.parametrize("sort_by", [None, "score"])
def test_fan_out_puts_a_list_of_unique_valid_keys_at_the_path(path: str, key: str | None, sort_by: str | None) -> None:
    counts = set()
    for i in range(40):
        hint = base.FanOutHint(path=path, key=key, sort_by=sort_by)
        text = answer(request(item=f"sector {i}", stage="rank", output=base.OutputKind.JSON, fan_out=hint))
        assert text == json.dumps(json.loads(text), sort_keys=True)
        elements = dig(json.loads(text), path)
        assert isinstance(elements, list)
        counts.add(len(elements))
        if key is None and sort_by is None:
            check_keys(elements, tickers=False)
            continue
        assert all(isinstance(e, dict) for e in elements)
        check_keys([e[key or "name"] for e in elements], tickers=key == "ticker")
        assert all(e.get("reason") or e.get("why") for e in elements)
        if sort_by is not None:
            for element in elements:
                score = element[sort_by]
                assert isinstance(score, float)
                assert 0 <= score <= 1
                assert round(score, 2) == score
    assert len(counts) >= 4  # the length varies between items


def test_fan_out_of_strings_named_like_tickers_gives_tickers() -> None:
    hint = base.FanOutHint(path="$.tickers")
    elements = dig(json.loads(answer(request(item="x", output=base.OutputKind.JSON, fan_out=hint))), "$.tickers")
    check_keys(elements, tickers=True)


@pytest.mark.parametrize(("key", "sort_by"), [("reason", None), ("why", "reason"), ("score", "score")])
def test_fan_out_key_wins_over_other_fields_of_the_same_name(key: str, sort_by: str | None) -> None:
    hint = base.FanOutHint(path="$", key=key, sort_by=sort_by)
    elements = json.loads(answer(request(item="x", output=base.OutputKind.JSON, fan_out=hint)))
    check_keys([e[key] for e in elements], tickers=False)


def test_fan_out_wins_over_a_schema() -> None:
    hint = base.FanOutHint(path="$.items", key="name")
    req = request(item="x", output=base.OutputKind.JSON, fan_out=hint, json_schema=REPORT_SCHEMA)
    assert isinstance(dig(json.loads(answer(req)), "$.items"), list)


# ---------------------------------------------------------------- verdicts


def verdict(item: str, *, judge_round: int = 0, rejection_rate: float = 0.3, seed: int = 0) -> dict[str, Any]:
    req = request(item=item, stage="review", round=judge_round, output=base.OutputKind.VERDICT)
    value: dict[str, Any] = json.loads(answer(req, seed=seed, rejection_rate=rejection_rate))
    return value


def test_verdicts_have_the_judge_shape() -> None:
    for i in range(100):
        value = verdict(f"sector/T{i}")
        assert set(value) == {"approved", "feedback", "score"}
        assert isinstance(value["approved"], bool)
        assert isinstance(value["score"], float)
        assert 0 <= value["score"] <= 1
        assert value["feedback"].strip()
        if not value["approved"]:
            assert f"sector/T{i}" in value["feedback"]  # specific: names what it reviewed


@pytest.mark.parametrize(("rate", "low", "high"), [(0.0, 0, 0), (0.3, 0.2, 0.4), (0.7, 0.6, 0.8), (1.0, 1, 1)])
def test_rejection_rate_is_honoured(rate: float, low: float, high: float) -> None:
    rejected = sum(not verdict(f"item {i}", rejection_rate=rate)["approved"] for i in range(500))
    assert low <= rejected / 500 <= high


def test_a_rejected_item_can_pass_in_a_later_round() -> None:
    outcomes = [verdict("AAPL", judge_round=r, rejection_rate=0.5)["approved"] for r in range(20)]
    assert True in outcomes
    assert False in outcomes


# ---------------------------------------------------------------- the provider


async def test_usage_model_and_request_id() -> None:
    named = provider(model="offline-test")
    assert named.model == "offline-test"
    completion = await named.complete(request(prompt="x" * 9, item="a", stage="s"))
    assert completion.input_tokens == 3
    assert completion.output_tokens == max(1, math.ceil(len(completion.text) / 4))
    assert completion.model == "offline-test"
    assert completion.rate_limit is None
    assert completion.request_id is not None
    assert re.fullmatch(r"offline-[0-9a-f]{12}", completion.request_id)
    assert (await named.complete(request(prompt="", item="a", stage="s"))).input_tokens == 1
    again = await named.complete(request(prompt="y", item="a", stage="s"))
    assert again.request_id == completion.request_id
    retry = await named.complete(request(prompt="y", item="a", stage="s", attempt=2))
    assert retry.request_id != completion.request_id
    assert retry.text == completion.text
    await named.aclose()


async def test_latency_is_honoured() -> None:
    slow = provider(latency_milliseconds=50)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await slow.complete(request())
    assert loop.time() - start >= 0.045


async def test_latency_is_cancellable() -> None:
    slow = provider(latency_milliseconds=60_000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await slow.complete(request())
    assert loop.time() - start < 5


@pytest.mark.parametrize(
    "options",
    [{"rejection_rate": -0.1}, {"rejection_rate": 1.01}, {"rejection_rate": math.nan}, {"latency_milliseconds": -1}],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    # Options that got past the API's bounds (a plan the operator did not write) are refused by the provider too.
    unchecked = v1alpha1.OfflineOptions.model_construct(**options)
    with pytest.raises(ValueError, match=r"rejection_rate|latency_milliseconds"):
        offline.OfflineProvider(unchecked, model=v1alpha1.OFFLINE_MODEL)


def test_answer_refuses_a_bad_rate() -> None:
    with pytest.raises(ValueError, match="rejection_rate"):
        offline.answer(request(), seed=0, rejection_rate=2)


# ---------------------------------------------------------------- the example pipeline


def hint(stage: v1alpha1.Stage) -> base.FanOutHint | None:
    if stage.fan_out is None:
        return None
    return base.FanOutHint(path=stage.fan_out.path, key=stage.fan_out.key, sort_by=stage.fan_out.sort_by)


def children(stage: v1alpha1.Stage, parent: str, text: str) -> list[str]:
    """What the operator makes of a fan-out answer: sorted, cut to max, keyed, prefixed with the parent."""
    fan_out = stage.fan_out
    assert fan_out is not None
    elements = dig(json.loads(text), fan_out.path)
    if fan_out.sort_by is not None:
        descending = fan_out.order != v1alpha1.SortOrder.ASCENDING
        elements = sorted(elements, key=lambda e: e[fan_out.sort_by], reverse=descending)
    elements = elements[: fan_out.max]
    keys = [e[fan_out.key] if fan_out.key else e for e in elements]
    assert all(ITEM_ID.match(key) for key in keys)
    return [f"{parent}/{key}" for key in keys]


def test_the_offline_provider_drives_stock_research_end_to_end() -> None:
    spec = v1alpha1.AnalysisBatch.model_validate(
        yaml.safe_load((EXAMPLES / "stock-research.yaml").read_text(encoding="utf-8"))
    ).spec
    options = {name: p.offline or v1alpha1.OfflineOptions() for name, p in spec.providers.items()}
    stages = {s.name: s for s in spec.stages}

    def call(stage: v1alpha1.Stage, item: str, judge_round: int = 0) -> str:
        assert stage.provider is not None
        kind = base.OutputKind.VERDICT if stage.type == v1alpha1.StageType.JUDGE else base.OutputKind(stage.output)
        req = request(
            item=item,
            stage=stage.name,
            round=judge_round,
            output=kind,
            json_schema=stage.json_schema,
            fan_out=hint(stage),
        )
        opts = options[stage.provider]
        return offline.answer(req, seed=opts.seed, rejection_rate=opts.rejection_rate)

    assert spec.items is not None
    (sector,) = spec.items
    sub_sectors = children(stages["research"], sector, call(stages["research"], sector))
    assert 3 <= len(sub_sectors) <= 4
    # rank collects every sub-sector into one call; its children hang off the sector.
    stocks = children(stages["rank"], sector, call(stages["rank"], sector))
    assert 3 <= len(stocks) <= 5
    review = stages["review"]
    assert review.max_rejections is not None
    for stock in stocks:
        for judge_round in range(review.max_rejections + 1):
            assert stock in call(stages["analyze"], stock, judge_round)
            if json.loads(call(review, stock, judge_round))["approved"]:
                break
        report = json.loads(call(stages["report"], stock))
        assert stages["report"].json_schema is not None
        assert schema_errors(report, stages["report"].json_schema) == []
        assert report["ticker"] == stock.rsplit("/", 1)[-1]


@pytest.mark.parametrize(
    "parts",
    [
        (0, "analyze", "semiconductors/MU", 2, "text"),
        (7, "", 'quote " and \\ back', 0, 1),
        (-3, None, "ünïcode ✓ \n\t", 10**20, "verdict"),
    ],
)
def test_answer_keys_encode_as_json_does(parts: tuple[object, ...]) -> None:
    # The answers are a function of these keys' bytes: a faster encoding must not change a single answer.
    assert offline._key(*parts) == json.dumps(list(parts))
