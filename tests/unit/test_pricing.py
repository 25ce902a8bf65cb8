"""The price table: packaged defaults, longest-prefix names, overrides, exact decimals and display helpers."""

import ast
import importlib.resources
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from analysis_core import env, pricing

pytestmark = pytest.mark.unit

DEFAULTS = {
    "claude-opus-4-1": ("15", "75"),
    "claude-sonnet-4-5": ("3", "15"),
    "claude-haiku-4-5": ("1", "5"),
    "gpt-4.1": ("2", "8"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "gpt-4o": ("2.50", "10"),
    "gpt-4o-mini": ("0.15", "0.60"),
    "offline": ("0", "0"),
}


def price(input_usd: str, output_usd: str) -> tuple[Decimal, Decimal]:
    """A price's realtime input and output prices (``realtime``'s form)."""
    return Decimal(input_usd), Decimal(output_usd)


def realtime(found: pricing.Price | None) -> tuple[Decimal, Decimal] | None:
    return None if found is None else (found.input_per_mtok, found.output_per_mtok)


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(env.PRICES_PATH, raising=False)


# ---------------------------------------------------------------- defaults and names


def test_the_packaged_table_has_the_documented_defaults() -> None:
    table = pricing.PriceTable.default()
    assert set(table.models) == set(DEFAULTS)
    for model, (input_usd, output_usd) in DEFAULTS.items():
        assert realtime(table.price(model)) == price(input_usd, output_usd), model


def test_the_packaged_file_is_package_data_and_documents_the_override() -> None:
    text = importlib.resources.files("analysis_core").joinpath("prices.yaml").read_text(encoding="utf-8")
    assert text.startswith("#")
    assert env.PRICES_PATH in text


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("Claude-Haiku-4-5", "claude-haiku-4-5"),
        ("offline", "offline"),
    ],
)
def test_dated_and_suffixed_names_match_the_longest_prefix(model: str, expected: str) -> None:
    table = pricing.PriceTable.default()
    assert realtime(table.price(model)) == price(*DEFAULTS[expected])
    assert table.known(model)


@pytest.mark.parametrize("model", ["gpt-4.10", "gpt-4", "claude", "llama-3-70b", "", "xoffline", "claude-sonnet-4-50"])
def test_unknown_models_have_no_price_and_cost_nothing(model: str) -> None:
    table = pricing.PriceTable.default()
    assert table.price(model) is None
    assert not table.known(model)
    assert table.cost_usd(model, 1000, 1000) == Decimal(0)


# ---------------------------------------------------------------- arithmetic


def test_costs_are_exact_decimals() -> None:
    table = pricing.PriceTable.default()
    cost = table.cost_usd("claude-sonnet-4-5", 1234, 567)
    assert cost == Decimal("0.012207")
    assert str(cost) == "0.012207"
    # 3 * 0.15 / 1e6 is 4.4999...e-07 in binary floating point.
    assert table.cost_usd("gpt-4o-mini-2024-07-18", 3, 0) == Decimal("0.00000045")
    assert table.cost_usd("gpt-4.1-mini", 1_000_000, 1_000_000) == Decimal(2)
    assert table.cost_usd("claude-opus-4-1", 10**9, 10**9) == Decimal(90_000)
    assert table.cost_usd("offline", 10**6, 10**6) == 0


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="token counts"):
        pricing.PriceTable.default().cost_usd("gpt-4o", -1, 0)


@pytest.mark.parametrize(
    ("amount", "text"),
    [("0.012207", "0.012207"), ("0.00000045", "0.00000045"), ("1.5E-7", "0.00000015"), ("2.000", "2"), ("0E-6", "0")],
)
def test_plain_decimal_never_uses_an_exponent(amount: str, text: str) -> None:
    assert pricing.plain_decimal(Decimal(amount)) == text


# ---------------------------------------------------------------- overrides


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    return path


OVERRIDE = """
models:
  claude-sonnet-4-5: {input: 2.5, output: 12}
  my-model: {input: "0.10", output: 0.2}
  gpt-4.1-mini-2025-04-14: {input: 0.3, output: 1.2}
"""


def test_an_override_file_merges_over_the_defaults(tmp_path: Path) -> None:
    table = pricing.PriceTable.load(write(tmp_path, OVERRIDE))
    assert realtime(table.price("claude-sonnet-4-5-20250929")) == price("2.5", "12")
    assert realtime(table.price("my-model-v2")) == price("0.10", "0.2")
    assert realtime(table.price("gpt-4.1-mini-2025-04-14")) == price("0.3", "1.2")  # the exact entry wins
    assert realtime(table.price("gpt-4.1-mini")) == price(*DEFAULTS["gpt-4.1-mini"])
    assert realtime(table.price("claude-opus-4-1")) == price(*DEFAULTS["claude-opus-4-1"])
    assert set(table.models) == {*DEFAULTS, "my-model", "gpt-4.1-mini-2025-04-14"}
    # The packaged table is not changed by an override.
    assert realtime(pricing.PriceTable.default().price("claude-sonnet-4-5")) == price("3", "15")


def test_load_reads_the_file_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(env.PRICES_PATH, str(write(tmp_path, OVERRIDE)))
    assert pricing.PriceTable.load().known("my-model")
    monkeypatch.setenv(env.PRICES_PATH, "")
    assert not pricing.PriceTable.load().known("my-model")


@pytest.mark.usefixtures("no_override")
def test_load_without_a_file_is_the_default() -> None:
    assert pricing.PriceTable.load().models == pricing.PriceTable.default().models


@pytest.mark.parametrize("text", ["", "models:\n", "models: {}\n"])
def test_an_empty_override_changes_nothing(tmp_path: Path, text: str) -> None:
    assert pricing.PriceTable.load(write(tmp_path, text)).models == pricing.PriceTable.default().models


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: {a: {input: 1, output: 2}", "not valid YAML"),
        ("- a\n- b\n", "one key, models"),
        ("modles: {}\n", "one key, models"),
        ("models: [a, b]\n", "models must map"),
        ("models:\n  gpt-4o: {input: -1, output: 2}\n", "model gpt-4o: input price must not be negative"),
        ("models:\n  gpt-4o: {input: 1, output: -0.5}\n", "model gpt-4o: output price must not be negative"),
        ("models:\n  gpt-4o: {input: 1}\n", "model gpt-4o: expected the keys input and output"),
        ("models:\n  gpt-4o: {input: 1, output: 2, cached: 0.5}\n", "model gpt-4o: expected the keys input and output"),
        ("models:\n  gpt-4o: 3\n", "model gpt-4o: expected the keys input and output"),
        ("models:\n  gpt-4o: {input: cheap, output: 2}\n", "model gpt-4o: input price must be a number"),
        ("models:\n  gpt-4o: {input: true, output: 2}\n", "model gpt-4o: input price must be a number"),
        ("models:\n  gpt-4o: {input: .nan, output: 2}\n", "model gpt-4o: input price must be finite"),
        ("models:\n  12: {input: 1, output: 2}\n", "model name 12"),
    ],
)
def test_bad_override_files_name_the_file_and_the_model(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as caught:
        pricing.PriceTable.load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_missing_override_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ValueError, match="cannot read the price table") as caught:
        pricing.PriceTable.load(path)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------- display


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("0", "$0.00"),
        ("0.000001", "<$0.01"),
        ("0.0099", "<$0.01"),
        ("0.01", "$0.01"),
        ("0.614", "$0.61"),
        ("0.615", "$0.62"),
        ("12.4", "$12.40"),
        ("1234.5", "$1,234.50"),
        ("0.012207", "$0.01"),
    ],
)
def test_format_usd(amount: str, text: str) -> None:
    assert pricing.format_usd(Decimal(amount)) == text


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0"),
        (950, "950"),
        (999, "999"),
        (1000, "1k"),
        (1234, "1.2k"),
        (9960, "10k"),
        (48_000, "48k"),
        (48_499, "48k"),
        (999_499, "999k"),
        (999_500, "1M"),
        (1_234_567, "1.2M"),
        (12_345_678, "12M"),
        (2_500_000_000, "2.5B"),
        (5 * 10**12, "5000B"),
    ],
)
def test_format_tokens(count: int, text: str) -> None:
    assert pricing.format_tokens(count) == text


# ---------------------------------------------------------------- hygiene


def test_pricing_imports_only_the_stdlib_yaml_and_the_core() -> None:
    source = Path(pricing.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"yaml", "analysis_core", "__future__"} <= sys.stdlib_module_names


# ---------------------------------------------------------------- the prompt cache and the batch API


def test_cache_writes_and_reads_cost_their_own_prices() -> None:
    table = pricing.PriceTable.default()
    tokens = pricing.Tokens(input=1000, output=500, cache_write=3000, cache_read=0)
    # Sonnet 4.5: $3 in, $15 out, $3.75 to write the cache.
    assert table.cost_of("claude-sonnet-4-5", tokens) == Decimal("0.003") + Decimal("0.0075") + Decimal("0.01125")
    warm = pricing.Tokens(input=1000, output=500, cache_read=3000)
    assert table.cost_of("claude-sonnet-4-5", warm) == Decimal("0.003") + Decimal("0.0075") + Decimal("0.0009")
    # OpenAI writes its cache at no extra charge: a write costs the input price.
    assert table.cost_of("gpt-4.1", pricing.Tokens(0, 0, cache_write=10**6)) == Decimal(2)
    assert table.cost_of("gpt-4.1", pricing.Tokens(0, 0, cache_read=10**6)) == Decimal("0.5")
    assert pricing.Tokens(1, 2, 3, 4).prompt == 8


def test_the_batch_api_costs_half_and_its_discount_stacks_with_the_cache() -> None:
    table = pricing.PriceTable.default()
    tokens = pricing.Tokens(input=10**6, output=10**6, cache_write=10**6, cache_read=10**6)
    for model in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"):
        assert table.cost_of(model, tokens, batch=True) * 2 == table.cost_of(model, tokens), model
    for model in ("gpt-4.1", "gpt-4.1-mini", "gpt-4o", "gpt-4o-mini"):
        uncached = pricing.Tokens(input=10**6, output=10**6)
        assert table.cost_of(model, uncached, batch=True) * 2 == table.cost_of(model, uncached), model
        # No batch cache price is listed for OpenAI: cached tokens in a batch count at the batch input price.
        assert table.cost_of(model, pricing.Tokens(0, 0, cache_read=10**6), batch=True) == table.cost_of(
            model, pricing.Tokens(10**6, 0), batch=True
        )


def test_a_model_without_batch_prices_costs_the_realtime_price_in_a_batch(tmp_path: Path) -> None:
    override = tmp_path / "prices.yaml"
    override.write_text("models:\n  in-house: {input: 1, output: 2}\n", encoding="utf-8")
    table = pricing.PriceTable.load(override)
    tokens = pricing.Tokens(10**6, 10**6, cache_read=10**6)
    assert table.cost_of("in-house", tokens, batch=True) == table.cost_of("in-house", tokens) == Decimal(4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  m: {input: 1, output: 2, batch: {input: 1}}\n", "model m: batch: expected the keys input and"),
        ("models:\n  m: {input: 1, output: 2, batch: {input: 1, output: 1, batch: {}}}\n", "model m: batch:"),
        ("models:\n  m: {input: 1, output: 2, cacheRead: -1}\n", "model m: cacheRead price must not be negative"),
        ("models:\n  m: {input: 1, output: 2, cacheWrite: lots}\n", "model m: cacheWrite price must be a number"),
    ],
)
def test_bad_cache_and_batch_prices_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    override = tmp_path / "prices.yaml"
    override.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        pricing.PriceTable.load(override)
