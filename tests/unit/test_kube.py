"""What ``analysis_operator.kube`` adds to lightkube without a cluster: merging kubeconfigs, reading errors."""

from pathlib import Path

import pytest
from lightkube.models.meta_v1 import Status

from analysis_operator import builders, export, kube, results

pytestmark = pytest.mark.unit


def config(cluster: str, user: str, *, server: str = "https://a:6443", ca: str | None = None) -> dict[str, object]:
    return {
        "current-context": cluster,
        "clusters": [{"name": cluster, "cluster": {"server": server, **({"certificate-authority": ca} if ca else {})}}],
        "users": [{"name": user, "user": {"client-certificate": "client.crt", "client-key": "/abs/client.key"}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
    }


def test_the_first_file_to_name_an_entry_or_the_current_context_wins() -> None:
    first = config("dev", "admin", server="https://first:6443")
    second = config("dev", "admin", server="https://second:6443") | {"current-context": "other"}
    second["clusters"].append({"name": "prod", "cluster": {"server": "https://prod:6443"}})  # type: ignore[attr-defined]
    merged = kube.merge_kubeconfigs([(Path("/a/one"), first), (Path("/b/two"), second)])
    assert merged["current-context"] == "dev"
    assert {c["name"]: c["cluster"]["server"] for c in merged["clusters"]} == {
        "dev": "https://first:6443",
        "prod": "https://prod:6443",
    }
    assert [u["name"] for u in merged["users"]] == ["admin"]


def test_a_file_without_a_current_context_leaves_it_to_a_later_one() -> None:
    first = {"users": [{"name": "someone", "user": {"token": "t"}}]}
    merged = kube.merge_kubeconfigs([(Path("/a/one"), first), (Path("/b/two"), config("dev", "admin"))])
    assert merged["current-context"] == "dev"
    assert [u["name"] for u in merged["users"]] == ["someone", "admin"]


def test_relative_files_are_read_from_the_file_that_names_them() -> None:
    merged = kube.merge_kubeconfigs(
        [(Path("/a/one"), {}), (Path("/home/me/.kube/config"), config("dev", "admin", ca="pki/ca.crt"))]
    )
    (cluster,) = merged["clusters"]
    (user,) = merged["users"]
    assert cluster["cluster"]["certificate-authority"] == "/home/me/.kube/pki/ca.crt"
    assert user["user"]["client-certificate"] == "/home/me/.kube/client.crt"
    assert user["user"]["client-key"] == "/abs/client.key"


def test_api_errors_read_as_code_reason_and_message() -> None:
    conflict = kube.ApiError(status=Status(code=409, reason="Conflict", message="the object has been modified"))
    assert kube.is_conflict(conflict)
    assert kube.describe(conflict) == "409 Conflict: the object has been modified"
    gone = kube.ApiError(status=Status(code=404, reason="NotFound", message="x not found"))
    assert not kube.is_conflict(gone)
    assert kube.describe(ValueError("plain")) == "plain"
    assert kube.describe(TimeoutError()) == "TimeoutError"


def test_every_child_the_builders_make_has_a_kind_in_the_client() -> None:
    batch = builders.Batch("b", "ns", "00000000-0000-4000-8000-000000000000")
    for child in (
        builders.service_account(batch),
        builders.redis_secret(batch, "analysis-batch-x", "pw"),
        export.results_configmap(batch, 0, []),
    ):
        assert kube.kind_of(child).__name__ == child["kind"]


def test_the_results_selector_is_the_labels_the_reconciler_lists_by() -> None:
    labels = results.labels("u-1")
    assert results.selector("u-1") == ",".join(f"{key}={value}" for key, value in labels.items())
    chunk = export.results_configmap(builders.Batch("b", "ns", "u-1"), 0, [])
    assert labels.items() <= chunk["metadata"]["labels"].items()
