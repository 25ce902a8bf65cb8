"""The AnalysisBatch API as the real kube-apiserver serves it.

Every example is admitted; every manifest of the invalid corpus is rejected at
apply time with a message naming the offending field (the ``# expect:`` lines
of each file); ``kubectl explain`` teaches the API; ``kubectl get`` prints the
columns of docs/design.md#printer-columns.
"""

import json
import re
from pathlib import Path
from subprocess import CompletedProcess

import pytest
import yaml

from analysis_devcluster.cluster import DevCluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("crds_installed")]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((Path(__file__).parent / "invalid_batches").glob("*.yaml"))


def patch_status(devcluster: DevCluster, namespace: str, name: str, status: object) -> CompletedProcess[str]:
    """Write ``status`` through the status subresource, as the operator will."""
    return devcluster.kubectl(
        "patch",
        "ab",
        name,
        "-n",
        namespace,
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
    for path in INVALID:
        assert expectations(path), f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_accepted(devcluster: DevCluster, namespace: str, path: Path) -> None:
    dry = devcluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert dry.returncode == 0, dry.stderr
    created = devcluster.kubectl("create", "-n", namespace, "-f", str(path), "-o", "json", check=False)
    assert created.returncode == 0, created.stderr
    stored = json.loads(created.stdout)
    source = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert stored["metadata"]["name"] == source["metadata"]["name"]
    # The API server applied the schema's defaults to every stage.
    for stage in stored["spec"]["stages"]:
        assert stage["type"] in ("generate", "judge", "approval")
        assert stage["executor"] == "Job"
        assert stage["retry"]["backoff"]["jitter"] == 0.2
        assert stage["retry"]["maxAttempts"] >= 1
    assert stored["spec"]["suspend"] is False
    assert stored["spec"]["failurePolicy"]["maxFailedItems"] >= 0


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_naming_the_field(devcluster: DevCluster, namespace: str, path: Path) -> None:
    result = devcluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted"
    for expected in expectations(path):
        assert expected in result.stderr, f"{path.name}: {expected!r} not in {result.stderr!r}"
    # A rule that failed to evaluate (a field it reads is absent) leaks CEL's own error before the right message.
    for leak in ("no such key", "evaluating rule", "no such overload"):
        assert leak not in result.stderr, f"{path.name}: a CEL rule did not evaluate: {result.stderr!r}"


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
