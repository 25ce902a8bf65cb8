"""The built-in deterministic provider (``type: offline``): plausible answers without a key or a network.

The worker builds an ``OfflineProvider`` from the ``OfflineOptions`` (seed,
latency, rejection rate) that the plan carries for a provider of type
``offline``; the examples, the demo and the tests run whole pipelines on it.
Every answer comes from ``answer()``, a pure function of the seed and the
request's stage, item and round, so a test can predict exactly what a worker
will produce and a rerun of a batch gives the same results.

A ``mode: Batch`` stage gets simulated provider batches
(``batches.BatchProvider``): a batch ends ``batch_turnaround_seconds`` after
it was submitted, and each request's answer is the one a call would get. The
batches live in the worker's memory: a restarted worker finds none of them,
as if the provider had lost them, and submits their items again.

It deliberately ignores the prompt, the system text, the attempt number and the
clock: an answer that changed on a retry would make retries look like they fix
things, and one that followed the prompt would be a (bad) language model. It
never fails on its own: fault injection belongs to the tests that need it. It
knows nothing of Redis, queues or the worker loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Sequence
from json.encoder import encode_basestring_ascii as _json_string  # json.dumps's own string encoder (C)
from typing import Any

from analysis_core import errors
from analysis_core.api import v1alpha1
from analysis_worker.providers import base, batches

# An item's last path segment that already is a ticker ("MU", "BRK.B"): the report keeps it.
_TICKER_SEGMENT = re.compile(r"^[A-Z]{1,5}([.-][A-Z]{1,2})?$")
# Fan-out fields whose values should be tickers rather than phrases.
_TICKERISH_FIELD = re.compile(r"ticker|symbol|stock", re.IGNORECASE)
# Schema properties that hold prose rather than a short label.
_PROSE_FIELD = re.compile(
    r"thesis|summary|analysis|description|text|reason|why|feedback|rationale|explanation|comment|note|body",
    re.IGNORECASE,
)

# Word lists. Sizes matter only loosely: they keep answers of different items
# and rounds distinct, and each phrase reads well in every template using it.
_ASSESSMENTS = (
    "well positioned for steady growth",
    "exposed to a cyclical downturn",
    "priced for more than it can deliver",
    "undervalued relative to its peers",
    "gaining share in a crowded market",
    "facing margin pressure from rising costs",
    "benefiting from a durable demand tailwind",
    "dependent on a few large customers",
    "in the middle of a costly transition",
    "better capitalised than most competitors",
)
_DRIVERS = (
    "pricing power",
    "a strong balance sheet",
    "recurring revenue",
    "a new product cycle",
    "operating leverage",
    "disciplined capital allocation",
    "a widening technology lead",
    "long-term supply contracts",
)
_SUPPORTS = ("supports", "underpins", "strengthens", "brightens")
_RISKS = (
    "customer concentration",
    "regulatory scrutiny",
    "an inventory build-up",
    "currency swings",
    "rising input costs",
    "competition from larger rivals",
    "export restrictions",
    "a stretched valuation",
    "key-person dependence",
    "slowing end demand",
)
# Modal verbs, so they agree with singular and plural risks alike.
_RISK_EFFECTS = (
    "could weigh on margins",
    "could cap the upside",
    "may delay the recovery",
    "will need close monitoring",
)
_METRICS = ("gross margin", "free cash flow", "the order backlog", "unit volumes", "net debt", "customer churn")
_HORIZONS = ("two quarters", "year", "few reporting periods", "eighteen months")
_STANCES = ("constructive", "neutral", "cautious", "mixed", "favourable")
_CONFIDENCE = ("moderate", "high", "limited")
_SOURCES = ("recent filings", "peer comparisons", "management commentary", "industry surveys", "channel checks")
_SOURCE_VERBS = ("supports", "partly supports", "complicates", "reinforces")
_FLAWS = (
    "does not quantify its main risks",
    "leans on a single quarter of results",
    "omits a comparison with close peers",
    "asserts a valuation without showing the inputs",
    "ignores the balance sheet",
    "never says what would change the view",
    "treats management guidance as fact",
    "mixes short-term and long-term arguments",
)
_FIXES = (
    "add numbers for a downside scenario",
    "cover at least three years of history",
    "compare margins with the two closest peers",
    "show the multiple and the earnings it is applied to",
    "discuss debt maturities and liquidity",
    "state the signals that would break the thesis",
    "separate guidance from independent evidence",
    "give the time horizon of each argument",
)
_PRAISE = (
    "Clear, well supported and balanced.",
    "Solid analysis; the risks are well covered.",
    "Approved: specific, sourced and concise.",
    "Good structure and a clear thesis.",
    "Convincing and well argued.",
    "Thorough and easy to follow.",
)
# Fan-out names are "<qualifier> <area>": valid item ids (single spaces, no "/") for any domain.
_QUALIFIERS = (
    "advanced",
    "automotive",
    "consumer",
    "core",
    "emerging",
    "enterprise",
    "industrial",
    "integrated",
    "regional",
    "specialty",
    "wireless",
    "cloud",
)
_AREAS = (
    "analytics",
    "components",
    "devices",
    "equipment",
    "logistics",
    "materials",
    "networks",
    "platforms",
    "services",
    "software",
    "storage",
    "sensors",
)
_CONSONANTS = "BCDFGHKLMNPRSTVWXZ"
_VOWELS = "AEIOUY"
_FORMATS = {
    "date": "2025-01-15",
    "date-time": "2025-01-15T12:00:00Z",
    "time": "12:00:00Z",
    "email": "analyst@example.com",
    "uri": "https://example.com/offline",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class OfflineProvider:
    """A ``base.Provider`` whose answers come from ``answer()``; optionally slow, never failing."""

    def __init__(self, options: v1alpha1.OfflineOptions, *, model: str) -> None:
        _check_rate(options.rejection_rate)
        if options.latency_milliseconds < 0:
            raise ValueError(f"latency_milliseconds must be >= 0, got {options.latency_milliseconds}")
        self._seed = options.seed
        self._latency_milliseconds = options.latency_milliseconds
        self._rejection_rate = options.rejection_rate
        self._model = model
        self._turnaround_s = float(options.batch_turnaround_seconds)
        self._batches: dict[str, _Simulated] = {}
        self._numbers = itertools.count(1)

    @property
    def model(self) -> str:
        return self._model

    async def complete(self, request: base.Request) -> base.Completion:
        if self._latency_milliseconds > 0:
            # A plain sleep: a timeout or a worker shutdown cancels it like a real network call.
            await asyncio.sleep(self._latency_milliseconds / 1000)
        return self._completion(request)

    def _completion(self, request: base.Request) -> base.Completion:
        text = answer(request, seed=self._seed, rejection_rate=self._rejection_rate)
        return base.Completion(
            text=text,
            input_tokens=max(1, math.ceil(len(request.prompt) / 4)),
            output_tokens=max(1, math.ceil(len(text) / 4)),
            model=self._model,
            request_id=request_id(request, seed=self._seed),
            rate_limit=None,
        )

    async def aclose(self) -> None:
        # Nothing to release; present because the worker closes every provider the same way.
        return None

    # ---------------------------------------------------------------- simulated provider batches

    async def submit_batch(self, requests: Sequence[tuple[str, base.Request]], tag: str) -> str:
        batch_id = f"offline_batch_{next(self._numbers)}_{_key(tag)[:12]}"
        ends = time.monotonic() + self._turnaround_s
        self._batches[batch_id] = _Simulated(tag, ends, list(requests))
        return batch_id

    async def find_batch(self, tag: str) -> str | None:
        return next((batch_id for batch_id, b in self._batches.items() if b.tag == tag), None)

    async def forget_unsubmitted(self, tag: str) -> None:
        return None

    def _simulated(self, batch_id: str) -> _Simulated:
        found = self._batches.get(batch_id)
        if found is None:
            raise errors.ProviderError(
                errors.ErrorClass.INVALID_REQUEST,
                f"no provider batch {batch_id}: the offline provider keeps its batches in the worker's memory",
                status=404,
            )
        return found

    async def batch_progress(self, batch_id: str) -> batches.Progress:
        simulated = self._simulated(batch_id)
        ended = simulated.canceled or time.monotonic() >= simulated.ends_at
        total = len(simulated.requests)
        return batches.Progress(batch_id, "ended" if ended else "in_progress", ended, total, total if ended else 0)

    async def batch_results(self, batch_id: str) -> AsyncIterator[batches.Result]:
        simulated = self._simulated(batch_id)
        for custom_id, request in simulated.requests:
            if simulated.canceled:
                yield batches.canceled(custom_id)
            else:
                yield batches.Result(custom_id, completion=self._completion(request))

    async def cancel_batch(self, batch_id: str) -> None:
        self._simulated(batch_id).canceled = True

    async def forget_batch(self, batch_id: str) -> None:
        self._batches.pop(batch_id, None)


@dataclasses.dataclass
class _Simulated:
    tag: str
    ends_at: float  # time.monotonic()
    requests: list[tuple[str, base.Request]]
    canceled: bool = False


def answer(request: base.Request, *, seed: int, rejection_rate: float) -> str:
    """The text ``OfflineProvider.complete`` returns for ``request``: a function of seed, stage, item and round only."""
    _check_rate(rejection_rate)
    rng = _rng(seed, request, str(request.output))
    if request.output == base.OutputKind.VERDICT:
        return _dump(_verdict(rng, request, rejection_rate))
    if request.output == base.OutputKind.JSON:
        if request.fan_out is not None:
            return _dump(_fan_out(rng, request, request.fan_out))
        if request.json_schema is not None:
            return _dump(_from_schema(rng, request, request.json_schema, ""))
        return _dump({"item": request.item, "stage": request.stage, "summary": _paragraph(rng, request)})
    return _paragraph(rng, request)


def request_id(request: base.Request, *, seed: int) -> str:
    """``offline-<12 hex>``; unlike the answer it includes the attempt, so each call has its own id."""
    key = _key(seed, request.stage, request.item, request.round, request.attempt)
    return "offline-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _check_rate(rejection_rate: float) -> None:
    if not 0 <= rejection_rate <= 1:  # also refuses NaN
        raise ValueError(f"rejection_rate must be between 0 and 1, got {rejection_rate}")


def _rng(seed: int, request: base.Request, purpose: str) -> random.Random:
    # JSON encoding keeps the key unambiguous whatever characters stage and item contain;
    # sha256, not hash(), which is salted per process: every worker pod must draw the same answer.
    key = _key(seed, request.stage, request.item, request.round, purpose)
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _key(*parts: object) -> str:
    """``json.dumps(list(parts))``, byte for byte, without building an encoder per call (a worker calls it per item)."""
    encoded = []
    for part in parts:
        if isinstance(part, str):
            encoded.append(_json_string(part))
        elif type(part) is int:
            encoded.append(str(part))
        else:
            encoded.append(json.dumps(part))
    return "[" + ", ".join(encoded) + "]"


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _item(request: base.Request) -> str:
    return request.item or "the item"


def _stage(request: base.Request) -> str:
    return request.stage or "analysis"


# ---------------------------------------------------------------- prose


def _paragraph(rng: random.Random, request: base.Request) -> str:
    """Two to four sentences; the first names the item and the stage."""
    item, stage = _item(request), _stage(request)
    if rng.random() < 0.5:
        first = f"The {stage} stage finds {item} {rng.choice(_ASSESSMENTS)}."
    else:
        first = f"In the {stage} stage, {item} is {rng.choice(_ASSESSMENTS)}."
    # Which of the other sentences, then only those are drawn: a busy offline worker writes thousands a second.
    chosen = rng.sample(_SENTENCES, rng.randint(1, 3))
    return " ".join([first, *(sentence(rng) for sentence in chosen)])


def _outlook(rng: random.Random) -> str:
    return (
        f"{rng.choice(_DRIVERS).capitalize()} {rng.choice(_SUPPORTS)} the outlook, "
        f"while {rng.choice(_RISKS)} {rng.choice(_RISK_EFFECTS)}."
    )


def _watch(rng: random.Random) -> str:
    return f"Watch {rng.choice(_METRICS)} over the next {rng.choice(_HORIZONS)}."


def _balance(rng: random.Random) -> str:
    return f"On balance the case is {rng.choice(_STANCES)}, with {rng.choice(_CONFIDENCE)} confidence."


def _evidence(rng: random.Random) -> str:
    return f"Evidence from {rng.choice(_SOURCES)} {rng.choice(_SOURCE_VERBS)} this view."


_SENTENCES = (_outlook, _watch, _balance, _evidence)


def _risk(rng: random.Random) -> str:
    return f"{rng.choice(_RISKS).capitalize()} {rng.choice(_RISK_EFFECTS)}"


def _reason(rng: random.Random, key: str) -> str:
    first, second = rng.sample(_DRIVERS, 2)
    return f"{first.capitalize()} and {second} make {key} worth a closer look."


# ---------------------------------------------------------------- verdicts


def _verdict(rng: random.Random, request: base.Request, rejection_rate: float) -> dict[str, Any]:
    # The first draw decides, so the rejection rate is honoured exactly per (seed, stage, item, round);
    # random() is in [0, 1), so a rate of 0 never rejects and a rate of 1 always does.
    rejected = rng.random() < rejection_rate
    if rejected:
        feedback = f"The analysis of {_item(request)} {rng.choice(_FLAWS)}; {rng.choice(_FIXES)}."
        score = round(rng.uniform(0.1, 0.6), 2)
    else:
        feedback = rng.choice(_PRAISE)
        score = round(rng.uniform(0.7, 1.0), 2)
    return {"approved": not rejected, "feedback": feedback, "score": score}


# ---------------------------------------------------------------- fan-out


def _fan_out(rng: random.Random, request: base.Request, hint: base.FanOutHint) -> Any:
    """A list of 3 to 8 elements, placed at ``hint.path``."""
    count = rng.randint(3, 8)
    segments = [s for s in hint.path.lstrip("$").split(".") if s]
    field = hint.key if hint.key is not None else (segments[-1] if segments else "")
    tickerish = bool(_TICKERISH_FIELD.search(field))
    keys = _tickers(rng, count) if tickerish else _names(rng, count)
    elements: list[Any]
    if hint.key is None and hint.sort_by is None:
        elements = list(keys)
    else:
        # Without a key the children are keyed by position, but a sort field still needs objects.
        key_field = hint.key if hint.key is not None else "name"
        # "reason" for picks, "why" for topics, as the example prompts ask; never a field already used.
        preferred = ("reason", "why", "note") if tickerish else ("why", "reason", "note")
        note_field = next(f for f in preferred if f not in (key_field, hint.sort_by))
        elements = []
        for key in keys:
            element: dict[str, Any] = {note_field: _reason(rng, key)}
            if hint.sort_by is not None:
                element[hint.sort_by] = round(rng.random(), 2)
            element[key_field] = key  # last: the key wins if sortBy names the same field
            elements.append(element)
    value: Any = elements
    for segment in reversed(segments):
        value = {segment: value}
    return value


def _names(rng: random.Random, count: int) -> list[str]:
    pairs = rng.sample([(q, a) for q in _QUALIFIERS for a in _AREAS], count)
    return [f"{q} {a}" for q, a in pairs]


def _ticker(rng: random.Random) -> str:
    """Two to five capitals, mostly alternating consonants and vowels, so they read like tickers."""
    letters = [rng.choice(_CONSONANTS)]
    for _ in range(rng.randint(1, 4)):
        vowel = letters[-1] in _CONSONANTS and rng.random() < 0.7
        letters.append(rng.choice(_VOWELS if vowel else _CONSONANTS))
    return "".join(letters)


def _tickers(rng: random.Random, count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        ticker = _ticker(rng)
        if ticker not in found:
            found.append(ticker)
    return found


# ---------------------------------------------------------------- JSON Schema


def _from_schema(rng: random.Random, request: base.Request, schema: Any, name: str) -> Any:
    """A value valid against ``schema``; ``name`` is the property it fills, which picks plausible words.

    Covers type (one or a list), const, enum, anyOf/oneOf (the first option), properties and required,
    items, minItems/maxItems/uniqueItems, minimum/maximum and their exclusive forms, minLength/maxLength
    and common formats. Not $ref, pattern, multipleOf or allOf: pipeline schemas for reports rarely need them.
    """
    if not isinstance(schema, dict):  # true or a malformed subschema: anything goes
        return _string(rng, request, {}, name)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            return _from_schema(rng, request, options[0], name)
    kind = _schema_type(schema)
    if kind == "object":
        return _object(rng, request, schema)
    if kind == "array":
        return _array(rng, request, schema, name)
    if kind == "integer":
        return _integer(rng, schema)
    if kind == "number":
        return _number(rng, schema)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(rng, request, schema, name)


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _object(rng: random.Random, request: base.Request, schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = list(properties) + [r for r in (required if isinstance(required, list) else []) if r not in properties]
    return {str(n): _from_schema(rng, request, properties.get(n, {}), str(n)) for n in names}


def _array(rng: random.Random, request: base.Request, schema: dict[str, Any], name: str) -> list[Any]:
    items = schema.get("items", {})
    low = _int(schema.get("minItems"), 0)
    high = max(low, _int(schema.get("maxItems"), max(low, 4)))
    start = min(max(low, 2), high)
    count = rng.randint(start, min(high, start + 2))
    values: list[Any] = []
    # uniqueItems: redraw a few times, then give up (a const or a one-value enum cannot be unique).
    for _ in range(count * 10):
        if len(values) == count:
            break
        value = _from_schema(rng, request, items, name)
        if not schema.get("uniqueItems") or value not in values:
            values.append(value)
    return values


def _string(rng: random.Random, request: base.Request, schema: dict[str, Any], name: str) -> str:
    lowered = name.lower()
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        text = _FORMATS[fmt]
    elif lowered in ("ticker", "symbol"):
        segment = request.item.rsplit("/", 1)[-1]
        text = segment if _TICKER_SEGMENT.match(segment) else _ticker(rng)
    elif lowered in ("item", "id"):
        text = _item(request)
    elif lowered == "stage":
        text = _stage(request)
    elif lowered.startswith("risk"):
        text = _risk(rng)
    elif _PROSE_FIELD.search(lowered):
        text = _paragraph(rng, request)
    else:
        q, a = rng.choice(_QUALIFIERS), rng.choice(_AREAS)
        text = f"{q} {a}"
    min_length = _int(schema.get("minLength"), 0)
    while len(text) < min_length:
        text = f"{text} {rng.choice(_DRIVERS)}"
    max_length = schema.get("maxLength")
    if isinstance(max_length, int) and len(text) > max_length:
        text = text[:max_length]
    return text


def _int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _bound(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _range(schema: dict[str, Any]) -> tuple[float | None, float | None, bool, bool]:
    """(low, high, low is exclusive, high is exclusive); None where the schema sets no bound."""
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    ex_low, ex_high = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    low_exclusive = ex_low is not None and (low is None or ex_low >= low)
    high_exclusive = ex_high is not None and (high is None or ex_high <= high)
    return (ex_low if low_exclusive else low), (ex_high if high_exclusive else high), low_exclusive, high_exclusive


def _number(rng: random.Random, schema: dict[str, Any]) -> float:
    low, high, low_ex, high_ex = _range(schema)
    lo = low if low is not None else (high - 100 if high is not None else 0.0)
    hi = high if high is not None else lo + 100
    if hi <= lo:
        return lo
    value = round(rng.uniform(lo, hi), 2)
    # Rounding (or an exclusive bound) can leave the range; the midpoint never does.
    if value < lo or value > hi or (low_ex and value == lo) or (high_ex and value == hi):
        value = (lo + hi) / 2
    return value


def _integer(rng: random.Random, schema: dict[str, Any]) -> int:
    low, high, low_ex, high_ex = _range(schema)
    lo = (math.floor(low) + 1 if low_ex else math.ceil(low)) if low is not None else None
    hi = (math.ceil(high) - 1 if high_ex else math.floor(high)) if high is not None else None
    first = lo if lo is not None else (hi - 100 if hi is not None else 0)
    last = hi if hi is not None else first + 100
    return rng.randint(first, last) if last >= first else first
