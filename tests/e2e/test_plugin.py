"""``kubectl analysis`` against real batches: the operator, worker pods on the node, Redis, the stand-in.

Every verb runs as a user runs it, ``kubectl analysis <verb>`` through the
pinned kubectl with only a KUBECONFIG: ``status`` once and following a batch
to its end (through a suspend and a resume, and through a failure and a
retry-failed), ``get`` and ``list`` across namespaces, ``approve`` releasing
held items, and ``logs`` of the batch's worker pods (by uid, by stage,
following).
"""

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_devcluster import binaries

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKER_IMAGE_PREFIX = "analysis-worker:"


def ticker_summary(items: list[str] | None = None, latency_ms: int = 0, concurrency: int = 3) -> dict[str, Any]:
    manifest = yaml.safe_load((EXAMPLES / "ticker-summary.yaml").read_text(encoding="utf-8"))
    if items is not None:
        manifest["spec"]["items"] = items
    manifest["spec"]["providers"]["summarizer"]["offline"]["latencyMilliseconds"] = latency_ms
    manifest["spec"]["stages"][0]["concurrency"] = concurrency
    return dict(manifest)


def two_stages(name: str, *, gate: bool = False, latency_ms: int = 0) -> dict[str, Any]:
    """draft -> (gate, an approval stage) -> polish, over A, B and C, on the offline provider."""
    stages: list[dict[str, Any]] = [{"name": "draft", "provider": "m", "prompt": "Draft a note on {{ item }}."}]
    if gate:
        stages.append({"name": "gate", "type": "approval"})
    stages.append({"name": "polish", "provider": "m", "prompt": "Polish: {{ input }}"})
    return {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name},
        "spec": {
            "items": ["A", "B", "C"],
            "stages": stages,
            "providers": {"m": {"type": "offline", "offline": {"seed": 3, "latencyMilliseconds": latency_ms}}},
        },
    }


def plugin(batches: Any, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``kubectl analysis <args> -n <the test's namespace>``, as a user runs it."""
    return subprocess.run(
        [str(binaries.find("kubectl")), "analysis", *args, "-n", batches.namespace],
        env={**batches.reader_env(), "KUBECONFIG": str(batches.dev.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def plugin_in_background(batches: Any, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(binaries.find("kubectl")), "analysis", *args, "-n", batches.namespace],
        env={**batches.reader_env(), "KUBECONFIG": str(batches.dev.kubeconfig)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


def snapshots(text: str) -> list[list[str]]:
    """The snapshots ``status`` appended (blank-line separated), each as its lines."""
    return [block.splitlines() for block in text.strip().split("\n\n")]


def stage_row(snapshot: list[str], stage: str) -> list[str]:
    rows = [line.split() for line in snapshot if line.startswith(f"  {stage} ")]
    assert len(rows) == 1, snapshot
    return rows[0]


def status_items(batches: Any, name: str) -> dict[str, Any]:
    return dict((batches.get(name).get("status") or {}).get("items") or {})


def stage_status(batches: Any, name: str, stage: str) -> dict[str, Any]:
    stages = (batches.get(name).get("status") or {}).get("stages") or []
    return next((dict(s) for s in stages if s["name"] == stage), {})


@pytest.mark.timeout(300)
def test_status_follows_a_batch_through_suspend_and_resume_to_its_end(batches: Any) -> None:
    manifest = ticker_summary([f"T{i}" for i in range(16)], latency_ms=1500, concurrency=2)  # about 12 s of work
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    batches.eventually(lambda: status_items(batches, name).get("done", 0) >= 1, 90, "an item done")

    running = snapshots(ok(plugin(batches, "status", name, "--once")))
    assert len(running) == 1
    header, items_line = running[0][:2]
    assert header.startswith(f"analysisbatch {batches.namespace}/{name}   Running   age ")
    assert re.search(r"   \d+/16 \(\d+%\)   \d+ succeeded, 0 failed   avg \d+\.\d/min$", items_line), items_line
    row = stage_row(running[0], "summarize")
    assert row[:2] == ["summarize", "generate"]
    assert row[-1] == "-"  # one observation: no stage rate yet

    assert ok(plugin(batches, "suspend", name)).startswith(f"analysisbatch.analysis.dev/{name} suspended")
    assert batches.get(name)["spec"]["suspend"] is True
    batches.wait(name, "Suspended", timeout_s=30)
    suspended = ok(plugin(batches, "status", name, "--once")).splitlines()
    assert suspended[0].split("   ")[1] == "Suspended"
    assert "Suspended: SuspendedBySpec: spec.suspend is true: no new claims; in-flight items finish" in suspended
    assert not plugin_outcome_reached(batches, name)

    assert ok(plugin(batches, "resume", name)) == f"analysisbatch.analysis.dev/{name} resumed\n"
    followed = plugin(batches, "status", name, "--interval", "0.5", timeout=240)
    assert followed.returncode == 0, followed.stderr
    shown = snapshots(followed.stdout)
    assert len(shown) >= 3  # appended as the batch moved, not redrawn: this is not a terminal
    assert not any("\x1b[" in line for snapshot in shown for line in snapshot)
    done_counts = [int(re.search(r"   (\d+)/16 \(", s[1]).group(1)) for s in shown]  # type: ignore[union-attr]
    assert done_counts == sorted(done_counts)
    assert done_counts[-1] == 16
    rates = [float(m.group(1)) for s in shown if (m := re.search(r"rate (\d+\.\d)/min$", s[1]))]
    assert any(rate > 0 for rate in rates), [s[1] for s in shown]
    last = shown[-1]
    assert last[0].split("   ")[1] == "Complete"
    assert "16/16 (100%)" in last[1]
    assert stage_row(last, "summarize")[2:5] == ["[████████████████████]", "100%", "16/16"]
    assert last[-1] == "Complete: 16 items finished, 0 failed"

    after = ok(plugin(batches, "status", name, "--once")).splitlines()
    assert after[0].split("   ")[1] == "Complete"
    assert after[0].split("   ")[3].startswith("ran ")
    usage = batches.get(name)["status"]["usage"]
    assert f"tokens {usage['tokensSummary']} (" in after[-2]
    assert after[-2].endswith(f"cost {usage['costSummary']}")


def plugin_outcome_reached(batches: Any, name: str) -> bool:
    st = batches.get(name).get("status") or {}
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in st.get("conditions") or [])


@pytest.fixture
def second_namespace(batches: Any) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    batches.dev.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        batches.dev.kubectl("delete", "analysisbatches", "--all", "-n", name, "--wait=false", check=False)
        batches.dev.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.mark.timeout(180)
def test_get_and_list_show_batches_across_namespaces(batches: Any, second_namespace: str) -> None:
    manifest = ticker_summary()
    name = manifest["metadata"]["name"]
    batches.apply(manifest)
    batches.dev.kubectl("-n", second_namespace, "apply", "-f", "-", input=yaml.safe_dump(manifest))
    batches.wait(name, "Complete", timeout_s=90)
    batch = batches.get(name)
    st = batch["status"]

    header, row = ok(plugin(batches, "get", name)).splitlines()
    assert header.split() == [
        "NAME",
        "PHASE",
        "STAGE",
        "STAGES",
        "PROGRESS",
        "FAILED",
        "RETRIES",
        "JUDGE",
        "TOKENS",
        "COST",
        "DURATION",
        "AGE",
    ]
    assert row.split()[:6] == [name, "Complete", "-", "1/1", "3/3", "(100%)"]
    assert row.split()[6:11] == ["0", str(st["retries"]), "-", st["usage"]["tokensSummary"], st["usage"]["costSummary"]]
    assert all(re.fullmatch(r"\d+s", cell) for cell in row.split()[-2:])  # DURATION and AGE
    wide_header, wide_row = ok(plugin(batches, "get", name, "-o", "wide")).splitlines()
    assert wide_header.split()[-2:] == ["WORKERS", "MESSAGE"]
    assert wide_row.endswith(" ".join(st["message"].split()))

    as_json = json.loads(ok(plugin(batches, "get", name, "-o", "json")))
    assert (as_json["metadata"]["uid"], as_json["status"]["phase"]) == (batch["metadata"]["uid"], "Complete")
    as_yaml = yaml.safe_load(ok(plugin(batches, "get", name, "-o", "yaml")))
    assert as_yaml["metadata"]["uid"] == batch["metadata"]["uid"]
    assert ok(plugin(batches, "get", name, "-o", "name")) == f"analysisbatch.analysis.dev/{name}\n"

    here = ok(plugin(batches, "list")).splitlines()
    assert [line.split()[:2] for line in here] == [["NAME", "PHASE"], [name, "Complete"]]
    everywhere = ok(plugin(batches, "list", "-A")).splitlines()
    assert everywhere[0].split()[:3] == ["NAMESPACE", "NAME", "PHASE"]
    ours = sorted(
        line.split()[0] for line in everywhere[1:] if line.split()[0] in (batches.namespace, second_namespace)
    )
    assert ours == sorted([batches.namespace, second_namespace])
    listed = json.loads(ok(plugin(batches, "list", "-A", "-o", "json")))
    assert listed["kind"] == "List"
    assert {(b["metadata"]["namespace"], b["metadata"]["name"]) for b in listed["items"]} >= {
        (batches.namespace, name),
        (second_namespace, name),
    }


@pytest.mark.timeout(240)
def test_approve_releases_held_items_and_the_batch_completes(batches: Any) -> None:
    manifest = two_stages("gated", gate=True)
    batches.apply(manifest)
    batches.wait("gated", "WaitingForApproval", timeout_s=60)
    waiting = ok(plugin(batches, "status", "gated", "--once")).splitlines()
    # The gate names what it holds (oldest first: the order the drafts finished in).
    named = next(line for line in waiting if line.startswith("WaitingForApproval: ItemsHeld: 3 items wait at gate ("))
    assert named.endswith("): approve them in spec.approvals"), named
    listed = next(line for line in waiting if line.startswith("waiting at gate: "))
    assert sorted(listed.removeprefix("waiting at gate: ").split(", ")) == ["A", "B", "C"], waiting
    refused = plugin(batches, "approve", "gated", "--stage", "gate", "--items", "A,NOPE")
    assert refused.returncode == 2
    assert 'not waiting at stage "gate" of analysisbatch "gated": NOPE' in refused.stderr
    assert stage_row(waiting, "gate")[4:6] == ["0/3", "3"]  # done/total, pending

    refused = plugin(batches, "approve", "gated", "--stage", "draft")
    assert refused.returncode == 2
    assert "is of type generate, not approval (its approval stages: gate)" in refused.stderr

    assert "approved: stage gate, items A, B" in ok(
        plugin(batches, "approve", "gated", "--stage", "gate", "--items", "A,B")
    )
    batches.eventually(lambda: stage_status(batches, "gated", "polish").get("succeeded") == 2, 90, "A and B polished")
    assert stage_status(batches, "gated", "gate")["pending"] == 1  # C still waits
    # A partial approval leaves the batch waiting for the rest.
    batches.eventually(
        lambda: batches.conditions("gated").get("WaitingForApproval", {}).get("message", "").startswith("1 item waits"),
        30,
        "WaitingForApproval naming the one held item",
    )
    assert batches.conditions("gated")["WaitingForApproval"]["status"] == "True"
    assert not plugin_outcome_reached(batches, "gated")

    ok(plugin(batches, "approve", "gated", "--stage", "gate", "--items", "C"))
    assert batches.get("gated")["spec"]["approvals"] == [{"stage": "gate", "items": ["A", "B", "C"]}]
    followed = plugin(batches, "status", "gated", "--interval", "0.5", timeout=150)
    assert followed.returncode == 0, followed.stderr
    assert snapshots(followed.stdout)[-1][0].split("   ")[1] == "Complete"
    rows = [json.loads(line) for line in ok(plugin(batches, "results", "gated")).splitlines()]
    assert [(r["item"], r["stage"], r["status"]) for r in rows] == [
        ("A", "polish", "succeeded"),
        ("B", "polish", "succeeded"),
        ("C", "polish", "succeeded"),
    ]


@pytest.mark.timeout(240)
def test_retry_failed_reruns_the_failed_item_and_status_exits_by_the_outcome(batches: Any) -> None:
    from analysis_devcluster import standin

    with standin.StandIn(api_key="sk-test", host=batches.dev.host) as server:
        # The first call about BAD fails with a 500; with one attempt, BAD fails for good and the batch with it.
        server.set_plan([{"kind": "server_error", "match": "BAD", "times": 1}])
        manifest = ticker_summary(["GOOD", "BAD", "FINE"])
        manifest["spec"]["providers"] = {
            "summarizer": {
                "type": "openai",
                "model": "gpt-4.1",
                "baseURL": server.openai_base_url,
                "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
            }
        }
        manifest["spec"]["stages"][0]["retry"] = {"maxAttempts": 1}
        batches.kubectl("create", "secret", "generic", "llm-keys", "--from-literal=openai=sk-test")
        batches.apply(manifest)
        name = manifest["metadata"]["name"]

        failed = plugin(batches, "status", name, "--interval", "0.5", timeout=150)
        assert failed.returncode == 5, failed.stderr
        last = snapshots(failed.stdout)[-1]
        assert last[0].split("   ")[1] == "Failed"
        assert re.search(r"2 succeeded, 1 failed", last[1]), last[1]
        assert any(line.startswith("Failed: TooManyFailedItems: ") and "BAD" in line for line in last), last
        assert plugin(batches, "status", name, "--once").returncode == 5
        calls = len(server.requests())

        retried = ok(plugin(batches, "retry-failed", name))
        assert retried.startswith(
            f"analysisbatch.analysis.dev/{name}: retry of failed and dead-lettered items "
            "requested (1 in the last status; token "
        )
        # Right away the status still says Failed; following waits for the operator to act on the new token.
        followed = plugin(batches, "status", name, "--interval", "0.5", timeout=150)
        assert followed.returncode == 0, followed.stdout + followed.stderr
        last = snapshots(followed.stdout)[-1]
        assert last[0].split("   ")[1] == "Complete"
        assert "3/3 (100%)   3 succeeded, 0 failed" in last[1]
        again = server.requests()[calls:]
        assert len(again) == 1  # only BAD ran again
        assert "BAD" in json.dumps(again[0])
        assert "sk-test" not in followed.stdout + failed.stdout


@pytest.mark.timeout(240)
def test_logs_gathers_the_batchs_worker_logs_by_uid_and_stage(batches: Any) -> None:
    manifest = two_stages("noted", latency_ms=300)
    batches.apply(manifest)
    uid = batches.get("noted")["metadata"]["uid"]
    # A pod of an earlier batch of the same name (another uid): it must never mix in. (Restricted, as every
    # namespace of the cluster enforces.)
    labels = {
        "analysis.dev/batch": "noted",
        "analysis.dev/batch-uid": "0-an-earlier-batch",
        "analysis.dev/stage": "draft",
    }
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "name": "worker",
        "image": batches.operator.env()["ANALYSIS_OPERATOR_WORKER_IMAGE"],
        "command": ["analysis-worker"],
        "securityContext": restricted,
    }
    batches.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "noted-draft-old", "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        }
    )
    following = plugin_in_background(batches, "logs", "noted", "-f")
    try:
        batches.wait("noted", "Complete", timeout_s=120)
        followed_out, followed_err = following.communicate(timeout=90)
    finally:
        following.kill()
    assert following.returncode == 0, followed_err
    listed = json.loads(batches.kubectl("get", "pods", "-l", f"analysis.dev/batch-uid={uid}", "-o", "json").stdout)
    stages = {p["metadata"]["name"]: p["metadata"]["labels"]["analysis.dev/stage"] for p in listed["items"]}
    pods = sorted(stages)
    assert set(stages.values()) == {"draft", "polish"}

    def parsed(text: str) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        for line in text.splitlines():
            match = re.fullmatch(r"\[(\S+) (\S+)\] (.*)", line)
            assert match, line
            body = json.loads(match.group(3)) if match.group(3).startswith("{") else {}
            out.append((match.group(1), match.group(2), body))
        return out

    def succeeded_items(lines: list[tuple[str, str, dict[str, Any]]], stage: str) -> list[str]:
        return sorted(b["item"] for s, _pod, b in lines if s == stage and b.get("msg") == "succeeded")

    # Following picked up the polish pods, started after it began, and ended by itself once the batch was done.
    # (It may also have seen a pod that is gone by now: an idle pod the operator retired to scale a Job in. Never the
    # earlier batch's pod, though; and never a pod that held an item, whose lines would be missing below.)
    live = parsed(followed_out)
    seen = {pod for _stage, pod, _body in live}
    assert set(pods) <= seen, (pods, seen)
    assert "noted-draft-old" not in seen
    assert all(pod.startswith(f"noted-{stage}-") for stage, pod, _body in live), seen
    assert (succeeded_items(live, "draft"), succeeded_items(live, "polish")) == (["A", "B", "C"], ["A", "B", "C"])

    everything = parsed(ok(plugin(batches, "logs", "noted")))
    assert {pod: stage for stage, pod, _body in everything} == stages
    assert all(body.get("batch", uid) == uid for _stage, _pod, body in everything)
    assert all(body.get("stage", stage) == stage for stage, _pod, body in everything)
    first_polish = next(i for i, (stage, _pod, _body) in enumerate(everything) if stage == "polish")
    assert all(stage == "polish" for stage, _pod, _body in everything[first_polish:])  # stage order
    assert (succeeded_items(everything, "draft"), succeeded_items(everything, "polish")) == (
        ["A", "B", "C"],
        ["A", "B", "C"],
    )

    polish = parsed(ok(plugin(batches, "logs", "noted", "--stage", "polish")))
    assert {stage for stage, _pod, _body in polish} == {"polish"}
    assert {pod for _stage, pod, _body in polish} == {pod for pod, stage in stages.items() if stage == "polish"}
    tails = parsed(ok(plugin(batches, "logs", "noted", "--tail", "1")))
    assert sorted(pod for _stage, pod, _body in tails) == sorted(pods)  # one line per pod
