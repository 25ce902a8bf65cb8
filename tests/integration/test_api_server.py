"""The AnalysisBatch and AnalysisProvider APIs as the real kube-apiserver serves them.

Every example is admitted; every manifest of the invalid corpora (batches in
``invalid_batches/``, provider accounts in ``invalid_providers/``) is rejected
at apply time with a message naming the offending field (the ``# expect:``
lines of each file); ``kubectl explain`` teaches the API; ``kubectl get``
prints the columns of docs/design.md#printer-columns, and of the accounts.
"""

import datetime
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml

from analysis_core import api
from analysis_devcluster.cluster import DevCluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crds_installed")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "invalid_batches").glob("*.yaml"))
INVALID_PROVIDERS = sorted((Path(__file__).parent / "invalid_providers").glob("*.yaml"))
PROVIDER_EXAMPLE = ROOT / "examples" / "provider-account.yaml"


def patch_status(
    devcluster: DevCluster, namespace: str | None, name: str, status: object, resource: str = "ab"
) -> CompletedProcess[str]:
    """Write ``status`` through the status subresource, as the operator will (no namespace: a cluster-scoped one)."""
    scope = ["-n", namespace] if namespace else []
    return devcluster.kubectl(
        "patch",
        resource,
        name,
        *scope,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
        check=False,
    )


def expectations(path: Path) -> list[str]:
    return re.findall(r"^# expect: (.+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)


def test_the_invalid_corpus_is_large_and_every_case_says_what_to_expect() -> None:
    assert len(INVALID) >= 25
    assert len(INVALID_PROVIDERS) >= 15
    for path in INVALID + INVALID_PROVIDERS:
        assert expectations(path), f"{path.parent.name}/{path.name} has no '# expect:' line"
    kinds = {yaml.safe_load(path.read_text(encoding="utf-8"))["kind"] for path in INVALID_PROVIDERS}
    assert kinds == {api.PROVIDER_KIND}


@pytest.fixture
def account(devcluster: DevCluster) -> Iterator[dict[str, Any]]:
    """examples/provider-account.yaml under a fresh name; deleted afterwards, as no namespace takes it along."""
    manifest = yaml.safe_load(PROVIDER_EXAMPLE.read_text(encoding="utf-8"))
    manifest["metadata"]["name"] = f"test-{uuid.uuid4().hex[:8]}"
    try:
        yield manifest
    finally:
        devcluster.kubectl("delete", api.PROVIDER_PLURAL, manifest["metadata"]["name"], "--ignore-not-found")


def test_the_provider_example_is_accepted_with_its_defaults(devcluster: DevCluster, account: dict[str, Any]) -> None:
    created = devcluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(account), check=False)
    assert created.returncode == 0, created.stderr
    stored = json.loads(created.stdout)
    assert "namespace" not in stored["metadata"]
    # The API server applied the schema's defaults.
    assert stored["spec"]["limits"]["windowSeconds"] == 60
    assert [(n["name"], n["weight"]) for n in stored["spec"]["namespaces"]] == [
        ("research", 2),
        ("marketing", 1),
        ("support", 1),
    ]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_accepted(devcluster: DevCluster, namespace: str, path: Path) -> None:
    source = yaml.safe_load(path.read_text(encoding="utf-8"))
    dry = devcluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert dry.returncode == 0, dry.stderr
    if source["kind"] == api.PROVIDER_KIND:
        # Cluster-scoped, so not created here: the test above creates it under a name of its own.
        assert "(server dry run)" in dry.stdout
        return
    created = devcluster.kubectl("create", "-n", namespace, "-f", str(path), "-o", "json", check=False)
    assert created.returncode == 0, created.stderr
    stored = json.loads(created.stdout)
    assert stored["metadata"]["name"] == source["metadata"]["name"]
    # The API server applied the schema's defaults to every stage.
    for stage in stored["spec"]["stages"]:
        assert stage["type"] in ("generate", "judge", "approval")
        assert stage["executor"] == "Job"
        assert stage["retry"]["backoff"]["jitter"] == 0.2
        assert stage["retry"]["maxAttempts"] >= 1
    assert stored["spec"]["suspend"] is False
    assert stored["spec"]["failurePolicy"]["maxFailedItems"] >= 0


def assert_rejected_naming_the_field(result: CompletedProcess[str], path: Path) -> None:
    assert result.returncode != 0, f"{path.name} was accepted"
    for expected in expectations(path):
        assert expected in result.stderr, f"{path.name}: {expected!r} not in {result.stderr!r}"
    # A rule that failed to evaluate (a field it reads is absent) leaks CEL's own error before the right message.
    for leak in ("no such key", "evaluating rule", "no such overload"):
        assert leak not in result.stderr, f"{path.name}: a CEL rule did not evaluate: {result.stderr!r}"


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_naming_the_field(devcluster: DevCluster, namespace: str, path: Path) -> None:
    result = devcluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert_rejected_naming_the_field(result, path)


@pytest.mark.parametrize("path", INVALID_PROVIDERS, ids=lambda p: p.stem)
def test_invalid_provider_is_rejected_naming_the_field(devcluster: DevCluster, path: Path) -> None:
    result = devcluster.kubectl("apply", "--dry-run=server", "-f", str(path), check=False)
    assert_rejected_naming_the_field(result, path)


def test_invalid_manifest_is_rejected_by_a_real_create_too(devcluster: DevCluster, namespace: str) -> None:
    path = next(p for p in INVALID if "unknown-provider" in p.name and "type" not in p.name)
    result = devcluster.kubectl("create", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0
    assert "provider gpt is not defined in spec.providers" in result.stderr
    missing = devcluster.kubectl("get", "analysisbatch", "-n", namespace, "unknown-provider", check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


def test_explain_teaches_the_stages(devcluster: DevCluster) -> None:
    result = devcluster.kubectl("explain", "analysisbatch.spec.stages", check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "One step of the pipeline" in out
    for field in ("fanOut", "collect", "reviews", "maxRejections", "onExhausted", "rateLimit", "retry", "executor"):
        assert re.search(rf"^\s+{field}\s", out, flags=re.MULTILINE), f"{field} missing from explain"
    deep = devcluster.kubectl("explain", "analysisbatch.spec.stages.fanOut.sortBy", check=False)
    assert deep.returncode == 0, deep.stderr
    assert "sort by before max is applied" in deep.stdout


def test_get_prints_the_columns(devcluster: DevCluster, namespace: str) -> None:
    example = ROOT / "examples" / "ticker-summary.yaml"
    assert devcluster.kubectl("create", "-n", namespace, "-f", str(example), check=False).returncode == 0
    status = {
        "phase": "Running",
        "currentStage": "summarize",
        "progress": "2/3",
        "percent": 66,
        "retries": 1,
        "judge": {"approved": 2, "rejected": 1, "summary": "2✓ 1✗"},
        "usage": {"totalTokens": 48000, "costUSD": "0.61", "tokensSummary": "48k", "costSummary": "$0.61"},
        "message": "summarize: 1 item in flight",
    }
    patched = patch_status(devcluster, namespace, "ticker-summary", status)
    assert patched.returncode == 0, patched.stderr
    table = devcluster.kubectl("get", "analysisbatches", "-n", namespace, check=False)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "STAGE", "PROGRESS", "RETRIES", "JUDGE", "TOKENS", "COST", "AGE"]
    assert row.split()[:9] == ["ticker-summary", "Running", "summarize", "2/3", "1", "2✓", "1✗", "48k", "$0.61"]
    wide = devcluster.kubectl("get", "ab", "-n", namespace, "-o", "wide", check=False)
    assert wide.stdout.splitlines()[0].split()[-1] == "MESSAGE"
    assert "summarize: 1 item in flight" in wide.stdout


def test_status_is_a_subresource(devcluster: DevCluster, namespace: str) -> None:
    example = ROOT / "examples" / "ticker-summary.yaml"
    assert devcluster.kubectl("create", "-n", namespace, "-f", str(example), check=False).returncode == 0
    # A write to the main resource cannot set status, so users and GitOps tools never clobber it.
    devcluster.kubectl(
        "patch", "ab", "ticker-summary", "-n", namespace, "--type=merge", "-p", '{"status": {"phase": "Failed"}}'
    )
    got = json.loads(devcluster.kubectl("get", "ab", "ticker-summary", "-n", namespace, "-o", "json").stdout)
    assert got.get("status", {}).get("phase") != "Failed"
    # And the status schema is enforced on the status subresource.
    bad = patch_status(devcluster, namespace, "ticker-summary", {"phase": "Exploded"})
    assert bad.returncode != 0
    assert "status.phase" in bad.stderr


def test_a_spec_too_large_for_kopfs_annotation_is_rejected(devcluster: DevCluster, namespace: str) -> None:
    # Three stages with 32 KiB prompts: each prompt is within its own bound, together they are not.
    stages = [{"name": f"step-{n}", "provider": "main", "prompt": "x" * 32768} for n in range(3)]
    batch = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": "too-large"},
        "spec": {"items": ["NVDA"], "providers": {"main": {"type": "offline"}}, "stages": stages},
    }
    result = devcluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(batch), check=False
    )
    assert result.returncode != 0
    assert "spec: Invalid value" in result.stderr
    assert "inline items and prompts exceed 96 KiB: move them to ConfigMaps with itemsFrom and promptFrom" in (
        result.stderr
    )
    # Just under the limit is fine.
    stages[2]["prompt"] = "x" * (96 * 1024 - 2 * 32768 - len("NVDA"))
    accepted = devcluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(batch), check=False
    )
    assert accepted.returncode == 0, accepted.stderr


# ---------------------------------------------------------------- AnalysisProvider, and batches on one


def test_a_provider_on_an_account_leaves_model_and_key_to_the_plan_compiler(
    devcluster: DevCluster, namespace: str
) -> None:
    """Only the account knows whether it is offline (no model or key needed), so the API server cannot require them."""
    batch = yaml.safe_load((ROOT / "examples" / "team-batch-on-account.yaml").read_text(encoding="utf-8"))
    claude = batch["spec"]["providers"]["claude"]
    del claude["model"], claude["apiKeySecretRef"]
    accepted = devcluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(batch), check=False
    )
    assert accepted.returncode == 0, accepted.stderr
    # An inline provider of a real type still needs both, at apply time.
    del claude["providerRef"]
    claude["type"] = "anthropic"
    refused = devcluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(batch), check=False
    )
    assert refused.returncode != 0
    assert "spec.providers[claude].model: Required value: model is required for anthropic and openai" in (
        refused.stderr
    )
    assert "apiKeySecretRef is required for anthropic and openai providers" in refused.stderr


def test_explain_teaches_the_weights(devcluster: DevCluster) -> None:
    result = devcluster.kubectl("explain", f"{api.PROVIDER_PLURAL}.spec.namespaces", check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "fair-share weight" in out
    for field in ("name", "weight", "requestsPerMinute", "maxInFlight"):
        assert re.search(rf"^\s+{field}\s", out, flags=re.MULTILINE), f"{field} missing from explain"
    weight = devcluster.kubectl("explain", f"{api.PROVIDER_PLURAL}.spec.namespaces.weight", check=False)
    assert weight.returncode == 0, weight.stderr
    assert "capacity is split in proportion to the weights of the namespaces waiting" in " ".join(weight.stdout.split())


def test_get_prints_the_provider_columns(devcluster: DevCluster, account: dict[str, Any]) -> None:
    name = account["metadata"]["name"]
    devcluster.kubectl("create", "-f", "-", input=json.dumps(account))
    # A pause lies ahead while it lasts: the column shows when it ends (a date column would print "<invalid>").
    paused_until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "pausedUntil": paused_until,
        "windowSeconds": 60,
        "requests": 45,
        "requestsSummary": "45/400",
        "inFlight": 7,
        "batches": 3,
        "waitingBatches": 1,
        "waitingNamespaces": ["research"],
        "quotaExhausted": "Your credit balance is too low",
    }
    patched = patch_status(devcluster, None, name, status, resource=api.PROVIDER_PLURAL)
    assert patched.returncode == 0, patched.stderr
    table = devcluster.kubectl("get", api.PROVIDER_PLURAL, name, check=False)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "TYPE", "REQUESTS", "IN-FLIGHT", "BATCHES", "WAITING", "PAUSED-UNTIL", "AGE"]
    assert row.split()[:7] == [name, "anthropic", "45/400", "7", "3", "1", paused_until]
    wide = devcluster.kubectl("get", "ap", name, "-o", "wide", check=False)
    assert wide.stdout.splitlines()[0].split()[-2:] == ["QUOTA", "SERVED-BY"]
    assert "Your credit balance is too low" in wide.stdout


def test_provider_status_is_a_subresource(devcluster: DevCluster, account: dict[str, Any]) -> None:
    name = account["metadata"]["name"]
    devcluster.kubectl("create", "-f", "-", input=json.dumps(account))
    devcluster.kubectl("patch", api.PROVIDER_PLURAL, name, "--type=merge", "-p", '{"status": {"batches": 9}}')
    got = json.loads(devcluster.kubectl("get", api.PROVIDER_PLURAL, name, "-o", "json").stdout)
    assert got.get("status", {}).get("batches") != 9
    bad = patch_status(devcluster, None, name, {"inFlight": -1}, resource=api.PROVIDER_PLURAL)
    assert bad.returncode != 0
    assert "status.inFlight" in bad.stderr
