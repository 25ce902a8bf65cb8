"""The pinned kubectl finds ``kubectl-analysis`` on PATH and runs it as ``kubectl analysis``.

``kubectl analysis results`` runs against the test cluster with only a
KUBECONFIG, as a user would: the plugin finds the pinned kubectl first on
PATH (ahead of any unrelated one) and reads the result ConfigMaps.

The other verbs' error paths and writes need no operator: a missing batch,
a stage that is not an approval stage, bad usage, and what approve, suspend,
resume and retry-failed write, including an approval that races another
writer. Running batches are in ``tests/e2e/test_plugin.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import analysis_core
from analysis_devcluster import binaries
from analysis_devcluster.cluster import DevCluster
from analysis_operator import builders, export, producer

pytestmark = pytest.mark.integration


def run_kubectl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    venv_bin = Path(sys.executable).parent
    kubectl = binaries.find("kubectl")
    path = os.pathsep.join([str(venv_bin), str(kubectl.parent), os.environ.get("PATH", "")])
    return subprocess.run(
        [str(kubectl), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path, **env},
        timeout=30,
        check=False,
    )


def test_kubectl_discovers_the_plugin() -> None:
    result = run_kubectl("plugin", "list", "--name-only")
    assert result.returncode == 0, result.stderr
    assert "kubectl-analysis" in result.stdout.split()


def test_kubectl_analysis_runs_the_plugin() -> None:
    result = run_kubectl("analysis", "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kubectl-analysis {analysis_core.__version__}"


def batch_manifest(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "analysis.dev/v1alpha1",
            "kind": "AnalysisBatch",
            "metadata": {"name": name},
            "spec": {
                "items": ["NVDA", "AMD", "TSM"],
                "providers": {"local": {"type": "offline"}},
                "stages": [{"name": "report", "provider": "local", "prompt": "Report on {{ item }}"}],
            },
        }
    )


def create_chunks(devcluster: DevCluster, batch: builders.Batch, records: list[producer.FinalRecord]) -> int:
    """Export ``records`` as the operator would, in small chunks; returns how many ConfigMaps that made."""
    chunks: list[dict[str, Any]] = []
    for record in records:  # one at a time, as finals arrive
        for cm in export.plan_export(batch, chunks, [export.row(record)], chunk_bytes=300):
            verb = "replace" if cm["metadata"].get("resourceVersion") else "create"
            written = devcluster.kubectl(verb, "-o", "json", "-f", "-", input=json.dumps(cm))
            chunks = [c for c in chunks if c["metadata"]["name"] != cm["metadata"]["name"]]
            chunks.append(json.loads(written.stdout))
    return len(chunks)


def record(uid: str, item: str, status: Any, attempt: int = 1, **more: Any) -> producer.FinalRecord:
    return producer.FinalRecord(
        item=item,
        stage="report",
        status=status,
        round=0,
        attempt=attempt,
        idem=f"{uid}/report/{item}/0/{attempt}",
        **more,
    )


def test_kubectl_analysis_results_prints_the_latest_result_of_each_item(
    devcluster: DevCluster, crds_installed: Path, namespace: str
) -> None:
    name = "semis-q3"
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=batch_manifest(name))
    uid = devcluster.kubectl("get", "analysisbatch", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    batch = builders.Batch(name, namespace, uid)
    made = create_chunks(
        devcluster,
        batch,
        [
            record(uid, "NVDA", "succeeded", output='{"rating": "buy", "thesis": "Data-centre demand keeps growing."}'),
            record(uid, "AMD", "failed", error="stand-in server_error", error_class="Unknown"),
            record(uid, "TSM", "succeeded", output="Capacity is sold out well into next year. " * 3),
            record(uid, "AMD", "succeeded", attempt=2, output="Recovered on the re-run."),  # a re-run: the latest wins
        ],
    )
    assert made >= 2  # the rows span chunks
    # An earlier batch of the same name left results behind (not yet garbage-collected): selected by uid,
    # they never mix in, though they carry the batch's name.
    earlier = export.results_configmap(
        builders.Batch(name, namespace, "0-earlier-uid"),
        7,
        [export.encode(export.row(record("0-earlier-uid", "INTC", "succeeded", output="old")))],
    )
    devcluster.kubectl("create", "-f", "-", input=json.dumps(earlier))
    kubeconfig = str(devcluster.kubeconfig)

    jsonl = run_kubectl("analysis", "results", name, "-n", namespace, KUBECONFIG=kubeconfig)
    assert jsonl.returncode == 0, jsonl.stderr
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [(r["item"], r["status"], r["attempt"]) for r in rows] == [
        ("AMD", "succeeded", 2),
        ("NVDA", "succeeded", 1),
        ("TSM", "succeeded", 1),
    ]
    assert rows[1]["output"] == {"rating": "buy", "thesis": "Data-centre demand keeps growing."}
    assert rows[0]["output"] == "Recovered on the re-run."

    as_json = run_kubectl("analysis", "results", name, "--namespace", namespace, "-o", "json", KUBECONFIG=kubeconfig)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == rows

    table = run_kubectl(
        "analysis", "results", name, "-n", namespace, "-o", "table", KUBECONFIG=kubeconfig, COLUMNS="60"
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["ITEM", "STAGE", "STATUS"],
        ["AMD", "report", "succeeded"],
        ["NVDA", "report", "succeeded"],
        ["TSM", "report", "succeeded"],
    ]
    assert lines[1].endswith("Recovered on the re-run.")
    assert all(len(line) <= 60 for line in lines)
    assert lines[3].endswith("…")

    # --kubeconfig works as well as KUBECONFIG.
    flagged = run_kubectl("analysis", "results", name, "-n", namespace, "--kubeconfig", kubeconfig)
    assert flagged.returncode == 0, flagged.stderr
    assert flagged.stdout == jsonl.stdout

    # Deleted, its results retained (spec.results.onDelete: Retain): found by the batch's name.
    devcluster.kubectl("delete", "configmap", earlier["metadata"]["name"], "-n", namespace)
    devcluster.kubectl("delete", "analysisbatch", name, "-n", namespace)
    retained = run_kubectl("analysis", "results", name, "-n", namespace, KUBECONFIG=kubeconfig)
    assert retained.returncode == 0, retained.stderr
    assert retained.stdout == jsonl.stdout


def test_kubectl_analysis_results_says_when_there_is_nothing_to_print(
    devcluster: DevCluster, crds_installed: Path, namespace: str
) -> None:
    kubeconfig = str(devcluster.kubeconfig)
    missing = run_kubectl("analysis", "results", "no-such-batch", "-n", namespace, KUBECONFIG=kubeconfig)
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.startswith(f'error: analysisbatch "no-such-batch" not found in namespace "{namespace}"; ')
    assert "--location" in missing.stderr  # where a deleted batch's results in object storage are read
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=batch_manifest("fresh"))
    empty = run_kubectl("analysis", "results", "fresh", "-n", namespace, "-o", "table", KUBECONFIG=kubeconfig)
    assert empty.returncode == 3
    assert empty.stdout == ""
    assert empty.stderr.startswith('error: analysisbatch "fresh" has no results yet')
    usage = run_kubectl("analysis", "results", "fresh", "-o", "yaml", KUBECONFIG=kubeconfig)
    assert usage.returncode == 2
    assert "invalid choice: 'yaml'" in usage.stderr


# ---------------------------------------------------------------- the other verbs: errors and writes


def gated_manifest(name: str) -> str:
    """A batch with an approval stage, never run (no operator here): the plugin only reads and writes its spec."""
    return json.dumps(
        {
            "apiVersion": "analysis.dev/v1alpha1",
            "kind": "AnalysisBatch",
            "metadata": {"name": name},
            "spec": {
                "items": ["A", "B", "C"],
                "providers": {"local": {"type": "offline"}},
                "stages": [
                    {"name": "draft", "provider": "local", "prompt": "Draft on {{ item }}"},
                    {"name": "gate", "type": "approval"},
                    {"name": "review", "type": "judge", "provider": "local", "reviews": "draft"},
                ],
            },
        }
    )


def hold(devcluster: DevCluster, namespace: str, name: str, items: list[str], pending: int | None = None) -> None:
    """Write the status an operator would: ``items`` wait at the stage ``gate`` (``pending`` of them in all)."""
    row = {"name": "gate", "pending": len(items) if pending is None else pending, "heldItems": items}
    devcluster.kubectl(
        "patch",
        "analysisbatch",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"stages": [row]}}),
    )


def spec_of(devcluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    got = devcluster.kubectl("get", "analysisbatch", name, "-n", namespace, "-o", "json")
    return dict(json.loads(got.stdout)["spec"])


@pytest.mark.parametrize(
    "verb",
    [
        ["status", "--once"],
        ["status"],
        ["get"],
        ["approve", "--stage", "gate"],
        ["retry-failed"],
        ["suspend"],
        ["resume"],
        ["logs"],
        ["logs", "-f"],
    ],
)
def test_every_verb_says_when_the_batch_does_not_exist(
    devcluster: DevCluster, crds_installed: Path, namespace: str, verb: list[str]
) -> None:
    result = run_kubectl(
        "analysis", verb[0], "no-such-batch", *verb[1:], "-n", namespace, KUBECONFIG=str(devcluster.kubeconfig)
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.strip() == f'error: analysisbatch "no-such-batch" not found in namespace "{namespace}"'


def test_kubectl_failing_is_exit_4_with_kubectls_own_message(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-kubeconfig")
    result = run_kubectl("analysis", "list", "--kubeconfig", missing)
    assert result.returncode == 4
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no-kubeconfig" in result.stderr


def test_approve_refuses_a_stage_that_is_not_an_approval_stage_and_changes_nothing(
    devcluster: DevCluster, crds_installed: Path, namespace: str
) -> None:
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=gated_manifest("gated"))
    kubeconfig = str(devcluster.kubeconfig)
    judge = run_kubectl("analysis", "approve", "gated", "-n", namespace, "--stage", "review", KUBECONFIG=kubeconfig)
    assert (judge.returncode, judge.stdout) == (2, "")
    assert judge.stderr.strip() == (
        'error: stage "review" of analysisbatch "gated" is of type judge, not approval (its approval stages: gate)'
    )
    unknown = run_kubectl("analysis", "approve", "gated", "-n", namespace, "--stage", "nope", KUBECONFIG=kubeconfig)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ('error: analysisbatch "gated" has no stage "nope" (stages: draft, gate, review)')
    no_stage = run_kubectl("analysis", "approve", "gated", "-n", namespace, KUBECONFIG=kubeconfig)
    assert no_stage.returncode == 2
    assert "--stage" in no_stage.stderr
    logs_of_gate = run_kubectl("analysis", "logs", "gated", "-n", namespace, "--stage", "gate", KUBECONFIG=kubeconfig)
    assert logs_of_gate.returncode == 2
    assert logs_of_gate.stderr.strip() == 'error: stage "gate" is an approval stage: it runs no worker pods'
    assert "approvals" not in spec_of(devcluster, namespace, "gated")


def test_approve_merges_with_what_the_spec_holds(devcluster: DevCluster, crds_installed: Path, namespace: str) -> None:
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=gated_manifest("merging"))
    hold(devcluster, namespace, "merging", ["A", "B", "C"])
    kubeconfig = str(devcluster.kubeconfig)

    def approve(*more: str) -> subprocess.CompletedProcess[str]:
        done = run_kubectl(
            "analysis", "approve", "merging", "-n", namespace, "--stage", "gate", *more, KUBECONFIG=kubeconfig
        )
        assert done.returncode == 0, done.stderr
        return done

    first = approve("--items", "A")
    assert first.stdout == "analysisbatch.analysis.dev/merging approved: stage gate, items A\n"
    second = approve("--items", "B,A")
    assert second.stdout == (
        "analysisbatch.analysis.dev/merging approved: stage gate, items B, A (the stage now releases items A, B)\n"
    )
    assert spec_of(devcluster, namespace, "merging")["approvals"] == [{"stage": "gate", "items": ["A", "B"]}]
    assert approve("--items", "B").stdout == (
        "analysisbatch.analysis.dev/merging: stage gate already approved for items A, B\n"
    )
    approve()
    assert spec_of(devcluster, namespace, "merging")["approvals"] == [{"stage": "gate"}]
    # Everything is released: approving items on top keeps it so.
    assert approve("--items", "C").stdout == (
        "analysisbatch.analysis.dev/merging: stage gate already approved for all items\n"
    )
    assert spec_of(devcluster, namespace, "merging")["approvals"] == [{"stage": "gate"}]
    managers = json.loads(
        devcluster.kubectl(
            "get", "analysisbatch", "merging", "-n", namespace, "-o", "json", "--show-managed-fields"
        ).stdout
    )["metadata"]["managedFields"]
    assert "kubectl-analysis" in {m["manager"] for m in managers}


def test_approve_refuses_items_that_are_not_waiting_and_names_them(
    devcluster: DevCluster, crds_installed: Path, namespace: str
) -> None:
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=gated_manifest("picky"))
    kubeconfig = str(devcluster.kubeconfig)

    def approve(*items: str) -> subprocess.CompletedProcess[str]:
        return run_kubectl(
            "analysis",
            "approve",
            "picky",
            "-n",
            namespace,
            "--stage",
            "gate",
            "--items",
            ",".join(items),
            KUBECONFIG=kubeconfig,
        )

    early = approve("A")  # nothing has arrived at the gate yet
    assert (early.returncode, early.stdout) == (2, "")
    assert 'not waiting at stage "gate" of analysisbatch "picky": A (waiting: none)' in early.stderr
    hold(devcluster, namespace, "picky", ["A", "B"])
    wrong = approve("A", "TYPO")
    assert wrong.returncode == 2
    assert 'not waiting at stage "gate" of analysisbatch "picky": TYPO (waiting: A, B)' in wrong.stderr
    assert "approvals" not in spec_of(devcluster, namespace, "picky")  # nothing written
    # A status that lists only the first of many waiting items cannot vouch for the rest: approved, with a warning.
    hold(devcluster, namespace, "picky", ["A", "B"], pending=80)
    far = approve("B", "Z")
    assert far.returncode == 0, far.stderr
    assert "not among them: Z" in far.stderr
    assert spec_of(devcluster, namespace, "picky")["approvals"] == [{"stage": "gate", "items": ["B", "Z"]}]


def test_an_approval_written_between_read_and_patch_is_kept(
    devcluster: DevCluster, crds_installed: Path, namespace: str, tmp_path: Path
) -> None:
    """Another writer approves between the plugin's read and its patch: the patch conflicts, is redone, and merges."""
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=gated_manifest("raced"))
    hold(devcluster, namespace, "raced", ["MINE", "OTHER"])
    real = binaries.find("kubectl")
    wrapper = tmp_path / "kubectl"
    wrapper.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" patch "*)\n'
        f'  if [ ! -e "{tmp_path}/raced" ]; then\n'
        f'    touch "{tmp_path}/raced"\n'
        f'    "{real}" patch analysisbatch raced -n {namespace} --type=merge '
        """-p '{"spec": {"approvals": [{"stage": "gate", "items": ["OTHER"]}]}}' >/dev/null || exit 99\n"""
        "  fi;;\n"
        "esac\n"
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    done = run_kubectl(
        "analysis",
        "approve",
        "raced",
        "-n",
        namespace,
        "--stage",
        "gate",
        "--items",
        "MINE",
        KUBECONFIG=str(devcluster.kubeconfig),
        KUBECTL=str(wrapper),
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "raced").exists()  # the other writer did write in between
    assert spec_of(devcluster, namespace, "raced")["approvals"] == [{"stage": "gate", "items": ["OTHER", "MINE"]}]


def test_concurrent_approvals_lose_no_item(devcluster: DevCluster, crds_installed: Path, namespace: str) -> None:
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=gated_manifest("crowded"))
    hold(devcluster, namespace, "crowded", ["A", "B", "C", "D"])
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "KUBECONFIG": str(devcluster.kubeconfig), "KUBECTL": str(binaries.find("kubectl"))}
    writers = [
        subprocess.Popen(
            [
                str(venv_bin / "kubectl-analysis"),
                "approve",
                "crowded",
                "-n",
                namespace,
                "--stage",
                "gate",
                "--items",
                item,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for item in ("A", "B", "C", "D")
    ]
    for writer in writers:
        _out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    approvals = spec_of(devcluster, namespace, "crowded")["approvals"]
    assert len(approvals) == 1
    assert sorted(approvals[0]["items"]) == ["A", "B", "C", "D"]


def test_suspend_resume_and_retry_failed_write_what_the_operator_reads(
    devcluster: DevCluster, crds_installed: Path, namespace: str
) -> None:
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=gated_manifest("steered"))
    kubeconfig = str(devcluster.kubeconfig)

    def plugin(*args: str) -> str:
        done = run_kubectl("analysis", *args, "steered", "-n", namespace, KUBECONFIG=kubeconfig)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert plugin("suspend") == "analysisbatch.analysis.dev/steered suspended: no new claims; in-flight items finish\n"
    assert spec_of(devcluster, namespace, "steered")["suspend"] is True
    assert plugin("suspend") == "analysisbatch.analysis.dev/steered is already suspended\n"
    assert plugin("resume") == "analysisbatch.analysis.dev/steered resumed\n"
    assert spec_of(devcluster, namespace, "steered")["suspend"] is False
    assert plugin("resume") == "analysisbatch.analysis.dev/steered is already not suspended\n"

    def token() -> str:
        got = devcluster.kubectl("get", "analysisbatch", "steered", "-n", namespace, "-o", "json")
        return str(json.loads(got.stdout)["metadata"]["annotations"]["analysis.dev/retry-failed"])

    assert "retry of failed and dead-lettered items requested" in plugin("retry-failed")
    first = token()
    plugin("retry-failed")
    assert token() != first  # each request is a new value, so the operator acts on each


def test_bad_usage_is_exit_2(devcluster: DevCluster) -> None:
    for args in (
        ["status", "b", "--interval", "0"],
        ["logs", "b", "--tail", "-1"],
        ["get", "b", "-o", "toml"],
        ["approve", "b", "--stage", "gate", "--items", " , "],
        ["frobnicate"],
    ):
        done = run_kubectl("analysis", *args, KUBECONFIG=str(devcluster.kubeconfig))
        assert done.returncode == 2, (args, done.stderr)
        assert done.stdout == ""
