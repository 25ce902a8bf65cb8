"""Token prices and cost arithmetic: what a batch's tokens cost, in exact decimal US dollars.

The price table ships as ``prices.yaml`` next to this module; operators
override or extend it with a file in the same format, named by the
``analysis_core.env.PRICES_PATH`` environment variable (a mounted ConfigMap
key). The operator uses ``PriceTable`` to turn the token counts it aggregates
into ``status.usage.costUSD`` and to enforce ``budget.maxCostUSD``; the status
columns show ``format_usd`` and ``format_tokens``.

It deliberately does no I/O beyond reading the table once when asked, keeps no
running totals (callers own those), and never guesses a price: a model it does
not know costs 0, and ``known()`` lets callers say so instead of pretending.
Stdlib, PyYAML and analysis_core only: it is part of the shared core.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import importlib.resources
import os
import pathlib
import types
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import yaml

from analysis_core import env

PER_TOKENS = 1_000_000  # prices are per million tokens
PACKAGED = "prices.yaml"
# What may follow a table name in a longer model name: "-20250929", "@20250929", ":beta".
# Not ".", so gpt-4 would never price gpt-4.1 by accident.
_SEPARATORS = "-@:_"
_CENT = Decimal("0.01")
RESOLVED_MAX = 1024  # model names whose price lookup a table remembers


@dataclasses.dataclass(frozen=True)
class Tokens:
    """What one call used, as the price table counts it.

    ``input`` is the prompt's tokens read at the full price: the ones neither
    written to nor read from the provider's prompt cache. Providers count
    differently (Anthropic's ``input_tokens`` leave the cached ones out,
    OpenAI's ``prompt_tokens`` include them); the providers' adapters
    normalize to this.
    """

    input: int
    output: int
    cache_write: int = 0  # prompt tokens written to the cache (Anthropic charges them above the input price)
    cache_read: int = 0  # prompt tokens read from the cache (at a fraction of the input price)

    def __post_init__(self) -> None:
        if min(self.input, self.output, self.cache_write, self.cache_read) < 0:
            raise ValueError(f"token counts must be >= 0, got {self}")

    @property
    def prompt(self) -> int:
        """Every prompt token, cached or not."""
        return self.input + self.cache_write + self.cache_read


@dataclasses.dataclass(frozen=True)
class Price:
    """US dollars per million tokens: input (prompt) and output (completion), and where known, prompt tokens
    written to or read from the cache, and the prices of the provider's batch API (``batch``).

    An unknown cache price is the input price (no discount assumed); an unknown batch price is the realtime one.
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_write_per_mtok: Decimal | None = None
    cache_read_per_mtok: Decimal | None = None
    batch: Price | None = None

    def cost_of(self, tokens: Tokens, *, batch: bool = False) -> Decimal:
        """The exact cost of ``tokens``, at the batch API's prices when ``batch``."""
        price = (self.batch or self) if batch else self
        write = price.input_per_mtok if price.cache_write_per_mtok is None else price.cache_write_per_mtok
        read = price.input_per_mtok if price.cache_read_per_mtok is None else price.cache_read_per_mtok
        # Integers times decimals, divided by a power of ten: exact at the default 28-digit precision.
        total = (
            tokens.input * price.input_per_mtok
            + tokens.output * price.output_per_mtok
            + tokens.cache_write * write
            + tokens.cache_read * read
        )
        return total / PER_TOKENS


class PriceTable:
    """Prices by model name; a name also prices its dated or suffixed variants, by longest prefix."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices: Mapping[str, Price] = types.MappingProxyType({k.lower(): v for k, v in prices.items()})
        # Longest first, so gpt-4.1-mini wins over gpt-4.1 for gpt-4.1-mini-2025-04-14.
        self._by_length = sorted(self._prices, key=len, reverse=True)
        self._resolved: dict[str, Price | None] = {}  # model name as called -> its price: a worker prices every call

    @classmethod
    def default(cls) -> PriceTable:
        """The packaged table, without overrides."""
        return cls(_packaged())

    @classmethod
    def load(cls, path: pathlib.Path | None = None) -> PriceTable:
        """The packaged table with the entries of ``path`` merged over it.

        Without ``path``, the file named by the ``PRICES_PATH`` environment
        variable, if set and non-empty. A file that cannot be read, is not valid
        YAML, or holds a malformed or negative price raises ``ValueError``
        naming the file (and the model).
        """
        if path is None:
            named = os.environ.get(env.PRICES_PATH, "").strip()
            if not named:
                return cls.default()
            path = pathlib.Path(named)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{path}: cannot read the price table: {e}") from e
        return cls({**_packaged(), **_parse(text, str(path))})

    @classmethod
    def from_text(cls, text: str | None, source: str) -> PriceTable:
        """The packaged table with the entries of ``text`` (a price file's contents, from ``source``) over it."""
        return cls.default() if text is None else cls({**_packaged(), **_parse(text, source)})

    @property
    def models(self) -> tuple[str, ...]:
        """The model names in the table, sorted."""
        return tuple(sorted(self._prices))

    def price(self, model: str) -> Price | None:
        try:
            return self._resolved[model]
        except KeyError:
            pass
        if len(self._resolved) >= RESOLVED_MAX:  # names come from plans and providers' answers: few, but unchecked
            self._resolved.clear()
        price = self._resolved[model] = self._lookup(model)
        return price

    def _lookup(self, model: str) -> Price | None:
        name = model.strip().lower()
        exact = self._prices.get(name)
        if exact is not None:
            return exact
        for known in self._by_length:
            if name.startswith(known) and name[len(known)] in _SEPARATORS:
                return self._prices[known]
        return None

    def known(self, model: str) -> bool:
        return self.price(model) is not None

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> Decimal:
        """The exact cost of a call without the cache; Decimal(0) for a model not in the table."""
        return self.cost_of(model, Tokens(input_tokens, output_tokens))

    def cost_of(self, model: str, tokens: Tokens, *, batch: bool = False) -> Decimal:
        """The exact cost of a call's ``tokens`` (at the batch API's prices when ``batch``); Decimal(0) for a model
        not in the table."""
        price = self.price(model)
        return Decimal(0) if price is None else price.cost_of(tokens, batch=batch)


@functools.cache
def _packaged() -> Mapping[str, Price]:
    text = importlib.resources.files("analysis_core").joinpath(PACKAGED).read_text(encoding="utf-8")
    return types.MappingProxyType(_parse(text, f"analysis_core/{PACKAGED}"))


def _parse(text: str, source: str) -> dict[str, Price]:
    """The ``models`` of one price file; ``source`` names the file in errors."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML: {e}") from e
    if document is None:  # an empty override overrides nothing
        return {}
    if not isinstance(document, dict) or set(document) - {"models"}:
        raise ValueError(f"{source}: expected a mapping with one key, models")
    models = document.get("models") or {}
    if not isinstance(models, dict):
        # ValueError, not TypeError: a wrong type in the file is bad content like any other.
        raise ValueError(f"{source}: models must map model names to {{input: ..., output: ...}}")  # noqa: TRY004
    prices: dict[str, Price] = {}
    for name, entry in models.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{source}: model name {name!r} is not a non-empty string")
        prices[name.strip()] = _price(entry, source, name, batch_allowed=True)
    return prices


_REQUIRED = frozenset({"input", "output"})
_CACHE = {"cacheWrite": "cache_write_per_mtok", "cacheRead": "cache_read_per_mtok"}


def _price(entry: Any, source: str, name: str, *, batch_allowed: bool) -> Price:
    """One model's entry: ``input`` and ``output``, optionally ``cacheWrite``, ``cacheRead`` and (at the top level)
    ``batch``, a mapping of the same keys for the provider's batch API."""
    where = f"{source}: model {name}" + ("" if batch_allowed else ": batch")
    allowed = _REQUIRED | set(_CACHE) | ({"batch"} if batch_allowed else set())
    if not isinstance(entry, dict) or not set(entry) >= _REQUIRED or set(entry) - allowed:
        raise ValueError(
            f"{where}: expected the keys input and output, and optionally {', '.join(sorted(allowed - _REQUIRED))}"
        )
    cache = {field: _amount(entry[key], source, name, key) for key, field in _CACHE.items() if key in entry}
    batch = _price(entry["batch"], source, name, batch_allowed=False) if "batch" in entry else None
    return Price(
        input_per_mtok=_amount(entry["input"], source, name, "input"),
        output_per_mtok=_amount(entry["output"], source, name, "output"),
        batch=batch,
        **cache,
    )


def _amount(value: Any, source: str, model: str, which: str) -> Decimal:
    where = f"{source}: model {model}: {which} price"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{where} must be a number, got {value!r}")  # noqa: TRY004 (as above)
    try:
        # str() first: YAML's 0.40 is the float 0.4, and Decimal(0.4) would carry its binary error.
        amount = Decimal(str(value).strip())
    except decimal.InvalidOperation as e:
        raise ValueError(f"{where} must be a number, got {value!r}") from e
    if not amount.is_finite():
        raise ValueError(f"{where} must be finite, got {value!r}")
    if amount < 0:
        raise ValueError(f"{where} must not be negative, got {value!r}")
    return amount


# ---------------------------------------------------------------- display


def format_usd(amount: Decimal) -> str:
    """Dollars for display: "$0.61", "$12.40", "$1,234.50"; "<$0.01" for a non-zero amount under a cent."""
    if 0 < amount < _CENT:
        return "<$0.01"
    cents = abs(amount).quantize(_CENT, rounding=decimal.ROUND_HALF_UP)
    return f"{'-' if amount < 0 else ''}${cents:,.2f}"


def format_tokens(count: int) -> str:
    """Token counts for display: "950", "1.2k", "48k", "1.2M", "3.4B"; one decimal only below 10 of a unit."""
    if count < 1000:
        return str(count)
    for unit, suffix in ((10**3, "k"), (10**6, "M"), (10**9, "B")):
        value = Decimal(count) / unit
        step = Decimal("0.1") if value < 10 else Decimal(1)
        shown = value.quantize(step, rounding=decimal.ROUND_HALF_UP)
        # 999,960 rounds to "1000k": show it as "1M" instead, unless there is no larger unit.
        if shown < 1000 or suffix == "B":
            text = format(shown, "f")
            return text.removesuffix(".0") + suffix
    raise AssertionError("unreachable")  # the loop returns at "B"


def plain_decimal(amount: Decimal) -> str:
    """A decimal without exponent or trailing zeros ("0.012207", "15"), as ``status.usage.costUSD`` wants."""
    text = format(amount, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text
