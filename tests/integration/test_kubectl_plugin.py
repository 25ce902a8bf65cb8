"""The pinned kubectl finds ``kubectl-analysis`` on PATH and runs it as ``kubectl analysis``.

``kubectl analysis results`` runs against the test cluster with only a
KUBECONFIG, as a user would: the plugin finds the pinned kubectl first on
PATH (ahead of any unrelated one) and reads the result ConfigMaps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import analysis_core
from analysis_core import queue
from analysis_devcluster import binaries
from analysis_devcluster.cluster import DevCluster
from analysis_operator import builders, results

pytestmark = pytest.mark.integration


def run_kubectl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    venv_bin = Path(sys.executable).parent
    kubectl = binaries.find("kubectl")
    path = os.pathsep.join([str(venv_bin), str(kubectl.parent), os.environ.get("PATH", "")])
    return subprocess.run(
        [str(kubectl), *args], capture_output=True, text=True, env={**os.environ, "PATH": path, **env}, timeout=30,
        check=False,
    )  # fmt: skip


def test_kubectl_discovers_the_plugin() -> None:
    result = run_kubectl("plugin", "list", "--name-only")
    assert result.returncode == 0, result.stderr
    assert "kubectl-analysis" in result.stdout.split()


def test_kubectl_analysis_runs_the_plugin() -> None:
    result = run_kubectl("analysis", "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kubectl-analysis {analysis_core.__version__}"


def batch_manifest(name: str) -> str:
    return json.dumps({
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name},
        "spec": {
            "items": ["NVDA", "AMD", "TSM"],
            "providers": {"local": {"type": "offline"}},
            "stages": [{"name": "report", "provider": "local", "prompt": "Report on {{ item }}"}],
        },
    })  # fmt: skip


def create_chunks(devcluster: DevCluster, batch: builders.Batch, records: list[queue.FinalRecord]) -> int:
    """Export ``records`` as the operator would, in small chunks; returns how many ConfigMaps that made."""
    chunks: list[dict[str, Any]] = []
    for record in records:  # one at a time, as finals arrive
        for cm in results.plan_export(batch, chunks, [results.row(record)], chunk_bytes=300):
            verb = "replace" if cm["metadata"].get("resourceVersion") else "create"
            written = devcluster.kubectl(verb, "-o", "json", "-f", "-", input=json.dumps(cm))
            chunks = [c for c in chunks if c["metadata"]["name"] != cm["metadata"]["name"]]
            chunks.append(json.loads(written.stdout))
    return len(chunks)


def record(uid: str, item: str, status: Any, attempt: int = 1, **more: Any) -> queue.FinalRecord:
    return queue.FinalRecord(item=item, stage="report", status=status, round=0, attempt=attempt,
                             idem=f"{uid}/report/{item}/0/{attempt}", **more)  # fmt: skip


def test_kubectl_analysis_results_prints_the_latest_result_of_each_item(
    devcluster: DevCluster, crds_installed: Path, namespace: str
) -> None:
    name = "semis-q3"
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=batch_manifest(name))
    uid = devcluster.kubectl("get", "analysisbatch", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    batch = builders.Batch(name, namespace, uid)
    made = create_chunks(devcluster, batch, [
        record(uid, "NVDA", "succeeded", output='{"rating": "buy", "thesis": "Data-centre demand keeps growing."}'),
        record(uid, "AMD", "failed", error="stand-in server_error", error_class="Unknown"),
        record(uid, "TSM", "succeeded", output="Capacity is sold out well into next year. " * 3),
        record(uid, "AMD", "succeeded", attempt=2, output="Recovered on the re-run."),  # a re-run: the latest wins
    ])  # fmt: skip
    assert made >= 2  # the rows span chunks
    # An earlier batch of the same name left results behind (not yet garbage-collected): selected by uid,
    # they never mix in, though they carry the batch's name.
    earlier = results.results_configmap(builders.Batch(name, namespace, "0-earlier-uid"), 7, [
        results.encode(results.row(record("0-earlier-uid", "INTC", "succeeded", output="old")))
    ])  # fmt: skip
    devcluster.kubectl("create", "-f", "-", input=json.dumps(earlier))
    kubeconfig = str(devcluster.kubeconfig)

    jsonl = run_kubectl("analysis", "results", name, "-n", namespace, KUBECONFIG=kubeconfig)
    assert jsonl.returncode == 0, jsonl.stderr
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [(r["item"], r["status"], r["attempt"]) for r in rows] == [
        ("AMD", "succeeded", 2), ("NVDA", "succeeded", 1), ("TSM", "succeeded", 1),
    ]  # fmt: skip
    assert rows[1]["output"] == {"rating": "buy", "thesis": "Data-centre demand keeps growing."}
    assert rows[0]["output"] == "Recovered on the re-run."

    as_json = run_kubectl("analysis", "results", name, "--namespace", namespace, "-o", "json", KUBECONFIG=kubeconfig)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == rows

    table = run_kubectl("analysis", "results", name, "-n", namespace, "-o", "table", KUBECONFIG=kubeconfig,
                        COLUMNS="60")  # fmt: skip
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["ITEM", "STAGE", "STATUS"], ["AMD", "report", "succeeded"], ["NVDA", "report", "succeeded"],
        ["TSM", "report", "succeeded"],
    ]  # fmt: skip
    assert lines[1].endswith("Recovered on the re-run.")
    assert all(len(line) <= 60 for line in lines)
    assert lines[3].endswith("…")

    # --kubeconfig works as well as KUBECONFIG.
    flagged = run_kubectl("analysis", "results", name, "-n", namespace, "--kubeconfig", kubeconfig)
    assert flagged.returncode == 0, flagged.stderr
    assert flagged.stdout == jsonl.stdout


def test_kubectl_analysis_results_says_when_there_is_nothing_to_print(
    devcluster: DevCluster, crds_installed: Path, namespace: str
) -> None:
    kubeconfig = str(devcluster.kubeconfig)
    missing = run_kubectl("analysis", "results", "no-such-batch", "-n", namespace, KUBECONFIG=kubeconfig)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.strip() == f'error: analysisbatch "no-such-batch" not found in namespace "{namespace}"'
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=batch_manifest("fresh"))
    empty = run_kubectl("analysis", "results", "fresh", "-n", namespace, "-o", "table", KUBECONFIG=kubeconfig)
    assert empty.returncode == 3
    assert empty.stdout == ""
    assert empty.stderr.startswith('error: analysisbatch "fresh" has no results yet')
    usage = run_kubectl("analysis", "results", "fresh", "-o", "yaml", KUBECONFIG=kubeconfig)
    assert usage.returncode == 2
    assert "invalid choice: 'yaml'" in usage.stderr
