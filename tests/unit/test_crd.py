"""The generated CRDs (AnalysisBatch, AnalysisProvider): in sync with the models, structural, and fully described."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from analysis_core.api import crd, v1alpha1

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def provider_schema() -> dict[str, Any]:
    return dict(
        yaml.safe_load(crd.rendered()[crd.PROVIDER_FILE_NAME])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    )


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return crd.openapi_schema()


@pytest.fixture(scope="module", params=[crd.FILE_NAME, crd.PROVIDER_FILE_NAME])
def each_schema(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The schema of each CRD, as committed."""
    doc = yaml.safe_load((CRDS / request.param).read_text(encoding="utf-8"))
    return dict(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_every_committed_crd_matches_the_models() -> None:
    assert sorted(path.name for path in CRDS.glob("*.yaml")) == sorted(crd.rendered())
    for name, text in crd.rendered().items():
        assert (CRDS / name).read_text(encoding="utf-8") == text, f"crds/{name} is stale: run `make crds`"
    assert crd.rendered()[crd.FILE_NAME] == crd.render()


@pytest.mark.parametrize("name", [crd.FILE_NAME, crd.PROVIDER_FILE_NAME])
def test_check_mode_reports_drift_in_each_file(tmp_path: Path, name: str) -> None:
    assert crd.main(["--write", "--dir", str(tmp_path)]) == 0
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 0
    stale = (tmp_path / name).read_text(encoding="utf-8").replace("minimum: 1\n", "minimum: 0\n", 1)
    assert stale != crd.rendered()[name]
    (tmp_path / name).write_text(stale, encoding="utf-8")
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 1
    (tmp_path / name).unlink()
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 1
    assert crd.main(["--write", "--dir", str(tmp_path)]) == 0
    assert crd.main(["--check", "--dir", str(tmp_path)]) == 0


def test_schema_is_structural(each_schema: dict[str, Any]) -> None:
    for path, node in walk(each_schema):
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert "oneOf" not in node, path
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path
            assert "minimum" in node, path


def test_every_field_is_described(each_schema: dict[str, Any]) -> None:
    # List elements and map values are described by their field; metadata is
    # the API server's and may carry no schema of ours.
    fields = [(path, node) for path, node in walk(each_schema) if path and not path.endswith(("[]", "{}"))]
    undocumented = [path for path, node in fields if path != ".metadata" and not node.get("description")]
    assert undocumented == []
    assert len(fields) > 40


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


def test_the_provider_crd_is_cluster_scoped_with_its_own_names_and_columns() -> None:
    doc = yaml.safe_load(crd.rendered()[crd.PROVIDER_FILE_NAME])
    assert doc["metadata"]["name"] == "analysisproviders.analysis.dev"
    assert doc["spec"]["scope"] == "Cluster"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("AnalysisProvider", "analysisproviders", ["ap"])
    assert names["categories"] == ["analysis"]
    (version,) = doc["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [(name, c.get("priority", 0)) for name, c in columns.items()] == [
        ("Type", 0),
        ("Requests", 0),
        ("In-Flight", 0),
        ("Batches", 0),
        ("Waiting", 0),
        ("Paused-Until", 0),
        ("Age", 0),
        ("Quota", 1),
        ("Served-By", 1),
    ]
    # kubectl prints a date column as the time since it, "<invalid>" for one to come: a pause's end is to come.
    assert columns["Paused-Until"]["type"] == "string"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in columns.values():
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] == "status":
            assert path[1] in status, column


def test_cel_rules_are_attached_where_the_fields_are(schema: dict[str, Any]) -> None:
    rules = {path: [r["rule"] for r in node.get("x-kubernetes-validations", [])] for path, node in walk(schema)}
    assert any("exists_one" in r for r in rules[".spec"])
    assert any("j < i" in r for r in rules[".spec"])
    assert any("fanOut" in r for r in rules[".spec.stages[]"])
    assert any("apiKeySecretRef" in r for r in rules[".spec.providers{}"])
    (backoff_rule,) = rules[".spec.stages[].retry.backoff"]
    assert backoff_rule.endswith("self.maxSeconds >= self.initialSeconds")
    provider = provider_schema()
    provider_rules = {path: [r["rule"] for r in n.get("x-kubernetes-validations", [])] for path, n in walk(provider)}
    assert any("windowSeconds >= 60" in r for r in provider_rules[".spec.limits"])
    assert any("n.requestsPerMinute * self.limits.windowSeconds < 60" in r for r in provider_rules[".spec"])
    assert any("has(self.providerRef) ||" in r for r in rules[".spec.providers{}"])
    # Every rule that names a field path points at a field that exists beside it.
    for path, node in [*walk(schema), *walk(provider)]:
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
