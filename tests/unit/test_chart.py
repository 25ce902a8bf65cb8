"""The Helm chart's files, checked without helm or a cluster.

Versions in step with the code, the chart's CRD copy in step with ``crds/``,
a values schema that is strict everywhere, values and the ci/ files valid
against it (and the typical mistakes rejected with the key named), and every
value documented where values.yaml defines it. Rendering, lint and the API
server's view are in ``tests/integration/test_chart.py``.
"""

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import analysis_core

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "analysis-operator"
CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
# Kubernetes types the schema leaves open below their top level (affinity terms), and Helm's own `global`.
OPEN_OBJECTS = {".global", "#affinity.nodeAffinity", "#affinity.podAffinity", "#affinity.podAntiAffinity"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return dict(json.loads((CHART / "values.schema.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def defaults() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8")))


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of a values file over the defaults: maps merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def errors(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """Every schema violation as "<json path>: <message>"."""
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{error.json_path}: {error.message}" for error in validator.iter_errors(values))


def test_chart_versions_follow_the_code() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "analysis-operator"
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == analysis_core.__version__


def test_the_charts_crds_are_an_exact_copy_of_crds() -> None:
    generated = {path.name: path.read_bytes() for path in (ROOT / "crds").glob("*.yaml")}
    copied = {path.name: path.read_bytes() for path in (CHART / "files" / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert sorted(copied) == sorted(generated), "run `make chart-crds`"
    drifted = [name for name in generated if copied[name] != generated[name]]
    assert not drifted, f"{drifted} differ from crds/: run `make chart-crds`"


def objects(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every sub-schema that describes an object, with a dotted path."""
    if not isinstance(node, dict):
        return
    if node.get("type") == "object":
        yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from objects(child, f"{path}.{name}")
    for name, child in (node.get("definitions") or {}).items():
        yield from objects(child, f"#{name}")
    for key in ("items", "additionalProperties", "not", "if", "then", "else"):
        yield from objects(node.get(key), path)
    for key in ("allOf", "oneOf", "anyOf"):
        for child in node.get(key) or []:
            yield from objects(child, path)


def test_the_schema_is_valid_and_closed_everywhere(schema: dict[str, Any]) -> None:
    jsonschema.Draft7Validator.check_schema(schema)
    found = list(objects(schema))
    assert len(found) > 30
    open_ones = [path for path, node in found if "additionalProperties" not in node and path not in OPEN_OBJECTS]
    assert not open_ones, f"objects that accept any key: {open_ones}"
    allowed = [path for path, node in found if node.get("additionalProperties") is True]
    assert not allowed, f"additionalProperties: true at {allowed}"


@pytest.mark.parametrize("name", ["values.yaml", *(path.name for path in CI_FILES)])
def test_the_defaults_and_each_ci_file_are_valid(schema: dict[str, Any], defaults: dict[str, Any], name: str) -> None:
    override = {} if name == "values.yaml" else yaml.safe_load((CHART / "ci" / name).read_text(encoding="utf-8"))
    assert errors(schema, merged(defaults, override)) == []


def test_there_are_ci_files_for_each_mode() -> None:
    loaded = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in CI_FILES]
    watched = [doc.get("watch", {}).get("allNamespaces", True) for doc in loaded]
    bundled = [doc.get("redis", {}).get("bundled", {}).get("enabled", True) for doc in loaded]
    assert True in watched
    assert False in watched
    assert True in bundled
    assert False in bundled
    assert any(doc.get("serviceMonitor", {}).get("enabled") for doc in loaded)


BAD_VALUES = [
    ({"operator": {"logFromat": "json"}}, "$.operator", "'logFromat'"),
    ({"redis": {"bundeled": {"enabled": False}}}, "$.redis", "'bundeled'"),
    ({"operator": {"verbose": "yes"}}, "$.operator.verbose", "not of type 'boolean'"),
    ({"operator": {"statusInterval": "2s"}}, "$.operator.statusInterval", "not of type 'number'"),
    ({"operator": {"statusInterval": 0}}, "$.operator.statusInterval", "less than or equal to the minimum"),
    ({"operator": {"logFormat": "yaml"}}, "$.operator.logFormat", "is not one of"),
    ({"operator": {"metrics": {"port": 70000}}}, "$.operator.metrics.port", "maximum"),
    ({"worker": {"memoryLimit": "lots"}}, "$.worker.memoryLimit", "is not valid"),
    ({"watch": {"allNamespaces": False}}, "$.watch.namespaces", "should be non-empty"),
    ({"watch": {"namespaces": ["team-a"]}}, "$.watch.namespaces", "is expected to be empty"),
    ({"watch": {"allNamespaces": False, "namespaces": ["team-*"]}}, "$.watch.namespaces[0]", "does not match"),
    ({"redis": {"external": {"url": "redis://r:6379/0"}}}, "$.redis.external.url", "is expected to be empty"),
    ({"redis": {"bundled": {"enabled": False}}}, "$.redis.external.url", "should be non-empty"),
    ({"redis": {"bundled": {"appendfsync": "sometimes"}}}, "$.redis.bundled.appendfsync", "is not one of"),
    (
        {"redis": {"bundled": {"enabled": False}, "external": {"url": "redis+sentinel://s:26379"}}},
        "$.redis.external.url",
        "does not match",
    ),
    (
        {"redis": {"bundled": {"enabled": False}, "external": {"url": "redis+cluster://a:1,b:2"}}},
        "$.redis.external.url",
        "does not match",
    ),
    ({"redis": {"external": {"waitReplicas": -1}}}, "$.redis.external.waitReplicas", "minimum"),
    ({"prices": {"gpt-4.1": {"input": 2}}}, "$.prices['gpt-4.1']", "'output' is a required"),
    ({"operator": {"image": {"digest": "latest"}}}, "$.operator.image.digest", "does not match"),
]


@pytest.mark.parametrize(("override", "where", "what"), BAD_VALUES)
def test_typical_mistakes_are_rejected_naming_the_key(
    schema: dict[str, Any], defaults: dict[str, Any], override: dict[str, Any], where: str, what: str
) -> None:
    found = errors(schema, merged(defaults, override))
    assert any(line.startswith(f"{where}: ") and what in line for line in found), found


@pytest.mark.parametrize(
    "url",
    [
        "redis://r:6379/0",
        "rediss://r.example:6380",
        "redis+cluster://r-0.r:6379",
        "redis+sentinel://s-0:26379,s-1:26379,s-2:26379/primary",
        "rediss+sentinel://s:26379/primary/1",
    ],
)
def test_one_redis_a_cluster_and_a_sentinel_managed_primary_are_accepted(
    schema: dict[str, Any], defaults: dict[str, Any], url: str
) -> None:
    override = {"redis": {"bundled": {"enabled": False}, "external": {"url": url, "waitReplicas": 1}}}
    assert errors(schema, merged(defaults, override)) == []


def test_a_password_in_the_redis_url_is_rejected_without_echoing_it(
    schema: dict[str, Any], defaults: dict[str, Any]
) -> None:
    override = {"redis": {"bundled": {"enabled": False}, "external": {"url": "redis://:hunter2@r:6379/0"}}}
    validator = jsonschema.Draft7Validator(schema)
    found = list(validator.iter_errors(merged(defaults, override)))
    assert [e.json_path for e in found] == ["$.redis.external.url"]
    # The failing clause is the `not` one, whose message (in helm too) is "'not' failed", without the value.
    assert [e.validator for e in found] == ["not"]


# ------------------------------------------------------------------ documentation

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


def value_lines(text: str) -> Iterator[tuple[tuple[str, ...], bool, bool]]:
    """(key path, has a value on its own line, preceded by a comment) for every key line of a values file."""
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        match = _KEY.match(line)
        if match and not stripped.startswith("#"):
            indent = len(match["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match["key"]))
            rest = match["rest"].split(" #", 1)[0].strip()
            yield tuple(key for _, key in stack), bool(rest), previous.startswith("#")
        previous = stripped


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return resolve(schema, schema["definitions"][node["$ref"].rsplit("/", 1)[-1]])
    return node


def closed_property(schema: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Whether the key at ``path`` is a named property of the schema (not a key of a free-form map)."""
    node = schema
    for key in path:
        node = resolve(schema, node)
        properties = node.get("properties") or {}
        if key not in properties:
            return False
        node = properties[key]
    return True


def test_every_value_is_documented_where_it_is_defined(schema: dict[str, Any]) -> None:
    lines = list(value_lines((CHART / "values.yaml").read_text(encoding="utf-8")))
    leaves = [(path, commented) for path, has_value, commented in lines if has_value and closed_property(schema, path)]
    assert len(leaves) > 50
    undocumented = [".".join(path) for path, commented in leaves if not commented]
    assert not undocumented, f"values without a comment right above them: {undocumented}"


def test_values_yaml_defines_every_key_of_the_schema(schema: dict[str, Any], defaults: dict[str, Any]) -> None:
    def missing(node: dict[str, Any], values: Any, path: str) -> Iterator[str]:
        node = resolve(schema, node)
        for key, child in (node.get("properties") or {}).items():
            if key == "global":
                continue
            if not isinstance(values, dict) or key not in values:
                yield f"{path}.{key}"
            elif values[key] and "properties" in resolve(schema, child):  # {}: optional Kubernetes fields
                yield from missing(child, values[key], f"{path}.{key}")

    assert list(missing(schema, defaults, "")) == []
