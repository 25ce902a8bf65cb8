"""The operator's Kubernetes client (``analysis_operator.kube``) against a real kube-apiserver.

Every verb the reconciler, the teardown and the TTL expiry use, on the
children ``builders`` make: server-side apply owned by ``analysis-operator``
and forced over another manager's fields, the status subresource of a batch,
result chunks created and replaced under ``resourceVersion`` preconditions,
deletes that tolerate what is already gone, an AnalysisProvider's claim by one
install at a time, and the errors callers branch on.
The credentials come from ``KUBECONFIG``, as when the operator runs outside a
cluster.
"""

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from analysis_core import api, plan
from analysis_core.api import v1alpha1, wellknown
from analysis_devcluster.cluster import DevCluster
from analysis_operator import accounts, builders, export, kube, results

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crds_installed")]

SETTINGS = builders.WorkerSettings(image="analysis-worker:0.1.0", redis_url="redis://redis:6379/0")
SPEC = {
    "items": ["NVDA"],
    "providers": {"local": {"type": "offline"}},
    "stages": [{"name": "analyze", "provider": "local", "prompt": "{{ item }}"}],
}


@pytest.fixture
async def client(devcluster: DevCluster, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[kube.Kube]:
    monkeypatch.setenv("KUBECONFIG", str(devcluster.kubeconfig))
    made = kube.Kube(timeout_s=10)
    try:
        yield made
    finally:
        await made.close()


def created_batch(devcluster: DevCluster, namespace: str, name: str) -> builders.Batch:
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name, "namespace": namespace},
        "spec": SPEC,
    }
    made = json.loads(devcluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(manifest)).stdout)
    return builders.Batch(name, namespace, made["metadata"]["uid"])


def kubectl_json(devcluster: DevCluster, namespace: str, *args: str) -> Any:
    return json.loads(devcluster.kubectl("-n", namespace, "get", *args, "-o", "json", "--show-managed-fields").stdout)


def managers(obj: dict[str, Any]) -> set[str]:
    return {entry["manager"] for entry in obj["metadata"].get("managedFields") or []}


async def test_apply_creates_updates_and_takes_fields_over_as_the_operator(
    client: kube.Kube, devcluster: DevCluster, namespace: str
) -> None:
    batch = builders.Batch("chips", namespace, "6f1f7d4e-2f7e-4f7a-9c55-0a4b8f0e1d21")
    compiled = plan.compile_plan(batch.uid, v1alpha1.AnalysisBatchSpec.model_validate(SPEC))
    job = builders.workload(batch, compiled, compiled.stage("analyze"), SETTINGS, size=1)
    name = job["metadata"]["name"]
    await client.apply(job)
    await client.apply(job)  # a replayed reconcile: nothing changes
    first = kubectl_json(devcluster, namespace, "job", name)
    assert first["spec"]["parallelism"] == 1
    assert managers(first) >= {kube.FIELD_MANAGER}
    # Someone else sets a field the operator owns; the next apply takes it back (force), without a conflict.
    devcluster.kubectl("-n", namespace, "patch", "job", name, "--type=merge", "-p", '{"spec": {"parallelism": 5}}')
    job["spec"]["parallelism"] = 2
    await client.apply(job)
    again = kubectl_json(devcluster, namespace, "job", name)
    assert again["spec"]["parallelism"] == 2
    # A field the controller set (the selector) stays: apply sends only what the builder made.
    assert again["spec"]["selector"] == first["spec"]["selector"]

    account = builders.service_account(batch)
    await client.apply(account)
    read = await client.get(kube.SERVICEACCOUNTS, namespace, account["metadata"]["name"])
    assert read is not None
    assert read.automountServiceAccountToken is False
    assert await client.get(kube.CONFIGMAPS, namespace, "no-such-configmap") is None


async def test_list_selects_by_label_and_delete_labelled_removes_only_those(
    client: kube.Kube, devcluster: DevCluster, namespace: str
) -> None:
    mine = builders.Batch("mine", namespace, "00000000-0000-4000-8000-000000000001")
    other = builders.Batch("other", namespace, "00000000-0000-4000-8000-000000000002")
    for batch in (mine, other):
        for index in range(2):
            await client.create(export.results_configmap(batch, index, [json.dumps({"item": str(index)})]))
    listed = await client.list(kube.CONFIGMAPS, namespace, results.labels(mine.uid))
    assert sorted(c.metadata.name for c in listed if c.metadata) == [export.chunk_name(mine, i) for i in (0, 1)]
    assert results.exported([c.to_dict() for c in listed]) == 2
    assert await client.delete_labelled(kube.CONFIGMAPS, namespace, {wellknown.LABEL_BATCH_UID: mine.uid}) == 2
    assert await client.list(kube.CONFIGMAPS, namespace, results.labels(mine.uid)) == []
    assert len(await client.list(kube.CONFIGMAPS, namespace, results.labels(other.uid))) == 2
    assert await client.delete(kube.CONFIGMAPS, namespace, export.chunk_name(other, 0)) is True
    assert await client.delete(kube.CONFIGMAPS, namespace, export.chunk_name(other, 0)) is False


async def test_result_chunks_are_written_under_preconditions(
    client: kube.Kube, devcluster: DevCluster, namespace: str
) -> None:
    batch = builders.Batch("rows", namespace, "00000000-0000-4000-8000-000000000003")
    chunk = export.results_configmap(batch, 0, ['{"item": "a"}'])
    await client.create(chunk)
    with pytest.raises(kube.ApiError) as exists:
        await client.create(chunk)
    assert kube.is_conflict(exists.value)
    assert exists.value.status.reason == "AlreadyExists"
    (stored,) = [c.to_dict() for c in await client.list(kube.CONFIGMAPS, namespace, results.labels(batch.uid))]
    (planned,) = export.plan_export(batch, [stored], [{"item": "b"}])
    assert planned["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    await client.replace(planned)
    assert (
        results.exported(
            [c.to_dict() for c in await client.list(kube.CONFIGMAPS, namespace, results.labels(batch.uid))]
        )
        == 2
    )
    with pytest.raises(kube.ApiError) as stale:
        await client.replace(planned)  # planned from a version that is no longer current
    assert kube.is_conflict(stale.value)
    assert kube.describe(stale.value).startswith("409 Conflict: ")


async def test_status_subresource_pod_patch_and_batch_delete(
    client: kube.Kube, devcluster: DevCluster, namespace: str
) -> None:
    batch = created_batch(devcluster, namespace, "status-target")
    await client.merge_patch(kube.BATCHES.Status, namespace, batch.name, {"status": {"phase": "Running"}})
    stored = kubectl_json(devcluster, namespace, "analysisbatch", batch.name)
    assert stored["status"]["phase"] == "Running"
    assert stored["metadata"]["generation"] == 1  # the status subresource, not the object
    await client.merge_patch(kube.BATCHES.Status, namespace, batch.name, {"status": {"phase": None}})
    assert "phase" not in (kubectl_json(devcluster, namespace, "analysisbatch", batch.name).get("status") or {})

    with pytest.raises(kube.ApiError) as invalid:
        await client.apply(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_A_Name", "namespace": namespace}}
        )
    assert invalid.value.status.code == 422
    assert kube.describe(invalid.value).startswith("422 Invalid: ")

    assert await client.delete(kube.BATCHES, namespace, batch.name) is True
    assert await client.delete(kube.BATCHES, namespace, batch.name) is False


def test_several_kubeconfig_files_merge_as_kubectl_merges_them(
    devcluster: DevCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file to name the current context wins; an unrelated file before it changes nothing."""
    unrelated = tmp_path / "other.yaml"
    unrelated.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [],
                "contexts": [],
                "users": [{"name": "someone", "user": {"token": "x"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", f"{unrelated}:{devcluster.kubeconfig}")
    single = kube.config().get()
    assert single is not None
    assert single.cluster.server == devcluster.server_url


def iso(seconds_ago: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


async def test_one_install_at_a_time_holds_an_account(client: kube.Kube, devcluster: DevCluster) -> None:
    """Two installs claim the account they both read: one wins, the other gets a conflict and sees the claim; only
    the holder's status writes land; once its claim lapses, the other takes the account over."""
    name = f"test-claim-{uuid.uuid4().hex[:8]}"
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisProvider",
        "metadata": {"name": name},
        "spec": {"type": "openai", "limits": {"requestsPerMinute": 60}, "namespaces": [{"name": "*"}]},
    }
    created = json.loads(devcluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(manifest)).stdout)

    def read() -> dict[str, Any]:
        got = devcluster.kubectl("get", api.PROVIDER_PLURAL, name, "-o", "json").stdout
        return dict(json.loads(got))

    try:
        seen = created["metadata"]["resourceVersion"]
        assert await client.claim_provider(name, "team-a-install", iso(), seen)
        assert not await client.claim_provider(name, "team-b-install", iso(), seen)  # read before a's claim
        now = read()
        assert now["status"]["servedBy"] == "team-a-install"
        now_ms = int(time.time() * 1000)
        assert accounts.held_elsewhere(now["status"], "team-b-install", now_ms) == "team-a-install"
        assert accounts.held_elsewhere(now["status"], "team-a-install", now_ms) is None

        # The holder's writes land (nulls left out); another install's are refused whole.
        status = {"servedBy": "team-a-install", "renewTime": iso(), "batches": 2, "pausedUntil": None}
        assert await client.patch_provider_status(name, status, holder="team-a-install")
        assert not await client.patch_provider_status(name, {**status, "batches": 7}, holder="team-b-install")
        assert read()["status"]["batches"] == 2
        assert "pausedUntil" not in read()["status"]

        # a stops renewing: past the lease, b may claim, and then a's writes are refused.
        stale = {**status, "renewTime": iso(accounts.CLAIM_LEASE_S + 5)}
        assert await client.patch_provider_status(name, stale, holder="team-a-install")
        lapsed = read()
        assert accounts.held_elsewhere(lapsed["status"], "team-b-install", int(time.time() * 1000)) is None
        assert await client.claim_provider(name, "team-b-install", iso(), lapsed["metadata"]["resourceVersion"])
        assert not await client.patch_provider_status(name, status, holder="team-a-install")
        assert read()["status"]["servedBy"] == "team-b-install"
    finally:
        devcluster.kubectl("delete", api.PROVIDER_PLURAL, name, "--ignore-not-found")
