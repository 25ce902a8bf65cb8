"""The generated CRD: in sync with the models, structural, and fully described."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from analysis_core.api import crd, v1alpha1

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / crd.FILE_NAME


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return crd.openapi_schema()


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == crd.render(), "crds/ is stale: run `make crds`"


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    (tmp_path / crd.FILE_NAME).write_text(crd.render().replace("maximum: 20", "maximum: 21"), encoding="utf-8")
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 1
    assert crd.main(["--write", "--dir", str(tmp_path)]) == 0
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 0


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in walk(schema):
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert "oneOf" not in node, path
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path
            assert "minimum" in node, path


def test_every_field_is_described(schema: dict[str, Any]) -> None:
    # List elements and map values are described by their field; metadata is
    # the API server's and may carry no schema of ours.
    fields = [(path, node) for path, node in walk(schema) if path and not path.endswith(("[]", "{}"))]
    undocumented = [path for path, node in fields if path != ".metadata" and not node.get("description")]
    assert undocumented == []
    assert len(fields) > 100


def test_an_undocumented_field_fails_generation() -> None:
    class Careless(pydantic.BaseModel):
        documented: int = pydantic.Field(description="fine")
        forgotten: int = 0

    with pytest.raises(crd.SchemaError, match=r"Careless\.forgotten has no description"):
        crd.structural(Careless)


def test_defaults_bounds_and_enums_reach_the_schema(schema: dict[str, Any]) -> None:
    stage = schema["properties"]["spec"]["properties"]["stages"]["items"]
    props = stage["properties"]
    assert props["type"]["enum"] == ["generate", "judge", "approval"]
    assert props["type"]["default"] == "generate"
    assert props["executor"]["enum"] == ["Job", "Deployment"]
    assert props["concurrency"] == {**props["concurrency"], "default": 4, "minimum": 1, "maximum": 1000}
    # No schema default: unset means the operator's setting, which the description quotes.
    assert props["callsPerPod"] == {**props["callsPerPod"], "minimum": 1, "maximum": v1alpha1.MAX_CALLS_PER_POD}
    assert "default" not in props["callsPerPod"]
    assert f"default {v1alpha1.DEFAULT_CALLS_PER_POD}" in props["callsPerPod"]["description"]
    assert props["retry"]["default"] == {}
    assert props["retry"]["properties"]["backoff"]["default"] == {}
    assert props["retry"]["properties"]["backoff"]["properties"]["initialSeconds"]["exclusiveMinimum"] is True
    assert props["jsonSchema"]["x-kubernetes-preserve-unknown-fields"] is True
    spec = schema["properties"]["spec"]["properties"]
    assert spec["providers"]["additionalProperties"]["properties"]["baseURL"]["pattern"].startswith("^https?://")
    assert "maxCostUSD" in spec["budget"]["properties"]
    assert spec["stages"]["x-kubernetes-list-type"] == "map"
    assert spec["items"]["x-kubernetes-list-type"] == "set"


def test_resource_names_subresources_and_columns() -> None:
    doc = yaml.safe_load(crd.render())
    assert doc["metadata"]["name"] == "analysisbatches.analysis.dev"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("AnalysisBatch", "analysisbatches", ["ab"])
    (version,) = doc["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"], c.get("priority", 0)) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Phase", 0),
        ("Stage", 0),
        ("Progress", 0),
        ("Retries", 0),
        ("Judge", 0),
        ("Tokens", 0),
        ("Cost", 0),
        ("Age", 0),
        ("Message", 1),
    ]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] == "status":
            node = {"properties": status}
            for part in path[1:]:
                node = node["properties"][part]


def test_cel_rules_are_attached_where_the_fields_are(schema: dict[str, Any]) -> None:
    rules = {path: [r["rule"] for r in node.get("x-kubernetes-validations", [])] for path, node in walk(schema)}
    assert any("exists_one" in r for r in rules[".spec"])
    assert any("j < i" in r for r in rules[".spec"])
    assert any("fanOut" in r for r in rules[".spec.stages[]"])
    assert any("apiKeySecretRef" in r for r in rules[".spec.providers{}"])
    (backoff_rule,) = rules[".spec.stages[].retry.backoff"]
    assert backoff_rule.endswith("self.maxSeconds >= self.initialSeconds")
    # Every rule that names a field path points at a field that exists beside it.
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            if "fieldPath" in rule:
                field = rule["fieldPath"].lstrip(".")
                assert field in node["properties"], f"{path}: fieldPath {rule['fieldPath']} names no field"


def test_models_and_schema_agree_on_wire_names() -> None:
    provider = v1alpha1.Provider.model_validate(
        {
            "type": "openai",
            "model": "gpt-4.1",
            "baseURL": "https://gw.example/v1",
            "apiKeySecretRef": {"name": "k", "key": "openai"},
        }
    )
    assert provider.base_url == "https://gw.example/v1"
    dumped = provider.model_dump(exclude_none=True)
    assert dumped["baseURL"] == "https://gw.example/v1"
    assert dumped["apiKeySecretRef"] == {"name": "k", "key": "openai"}
