"""How kstatus reads a batch, checked with the real library: the ``kstatus`` tool (tools/kstatus) runs
``status.Compute`` of sigs.k8s.io/cli-utils, the function Flux's kustomize-controller (``wait: true``,
``healthChecks``), kpt and cli-utils' appliers use.

kstatus's rules for a custom resource (pkg/kstatus/status/generic.go and status.go) are, in order:
``metadata.deletionTimestamp`` set means Terminating; ``status.observedGeneration`` behind
``metadata.generation`` means InProgress; ``Reconciling=True`` means InProgress and ``Stalled=True`` means Failed;
after that the ``Ready`` condition decides (True: Current, False: InProgress); with none of these the
resource is Current.

What the operator decides (``analysis_operator.status``): work it can still do by itself reads InProgress; a
problem someone must fix reads Failed; and Current means the batch has done all its spec allows. That is
the case when it is Complete, and also when it is settled: suspended by ``spec.suspend``, or with items held
at an approval stage and nothing else to do. The next move is then a person's edit of the spec, and that
edit raises the generation, so the batch reads InProgress again until the operator has acted on it.

The statuses come from two places:

- the operator itself (``test_what_the_operator_writes_reads_as_decided``), running as a process against
  the session's control plane and Redis, read back with kubectl. There is no node, so the pods of the worker
  Jobs stay Pending, and worker processes started here with the plan the operator published do the work;
- ``status.compute`` of observations built as the reconciler builds them, for states a running operator
  passes through too fast to catch (seeding), or that need Redis to go away.

A missing binary fails the tests; ``make kstatus`` builds it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_core import env, plan, queue, wire
from analysis_core.api import v1alpha1
from analysis_devcluster import binaries, cluster
from analysis_operator import builders, completion, producer, status
from analysis_worker import ratelimit

pytestmark = pytest.mark.integration

OPERATOR = Path(sys.executable).parent / "analysis-operator"
CURRENT, IN_PROGRESS, FAILED, TERMINATING = "Current", "InProgress", "Failed", "Terminating"
HOLD = "test.analysis.dev/hold"  # a finalizer of the test's own: keeps a deleted batch readable


# ---------------------------------------------------------------- the kstatus tool


def kstatus_binary() -> Path:
    """The built tool, found as the control-plane tools are; missing, it fails the test (never a skip)."""
    try:
        return binaries.find("kstatus")
    except binaries.MissingBinaryError:
        pytest.fail(f"kstatus not found in {binaries.bin_dir()}: run `make kstatus` (tools/kstatus/build.sh)")


def readings(*objects: dict[str, Any], as_yaml: bool = False) -> list[dict[str, str]]:
    """kstatus's reading of each object: ``{"name", "status", "message"}``, one per object, in order."""
    if as_yaml:
        text = yaml.safe_dump_all(objects, sort_keys=False)
    else:
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    result = subprocess.run(
        [str(kstatus_binary())], input=text, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(objects), result.stdout
    return lines


def reading(obj: dict[str, Any]) -> str:
    return readings(obj)[0]["status"]


def test_the_tool_reads_yaml_documents_and_lists_and_names_each_object() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "research"}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "research",
            "generation": 1,
            "deletionTimestamp": "2026-11-22T12:00:00Z",
        },
    }
    for as_yaml in (False, True):
        got = readings(config_map, pod, as_yaml=as_yaml)
        assert got == [
            {"name": "research/a", "status": CURRENT, "message": "Resource is always ready"},
            {"name": "research/p", "status": TERMINATING, "message": "Resource scheduled for deletion"},
        ]
    empty = subprocess.run([str(kstatus_binary())], input="", capture_output=True, text=True, timeout=30, check=False)
    assert empty.returncode == 1
    assert "no object" in empty.stderr


# ---------------------------------------------------------------- statuses from status.compute

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
SPEC: dict[str, Any] = {
    "items": ["NVDA", "AMD", "TSM"],
    "providers": {"local": {"type": "offline"}},
    "budget": {"maxTokens": 50000},
    "stages": [
        {"name": "draft", "provider": "local", "prompt": "Deep analysis of {{ item }}."},
        {"name": "gate", "type": "approval"},
        {"name": "review", "type": "judge", "provider": "local", "reviews": "draft"},
    ],
}
PLAN = plan.compile_plan("4f6b2a4e-7d1c-4a53-9a57-0c3f51d2e8a1", v1alpha1.AnalysisBatchSpec.model_validate(SPEC))


def counts(ready: int = 0, running: int = 0, **counters: int) -> queue.StageCounts:
    return queue.StageCounts(ready, running, 0, dict(counters))


def snapshot(
    sealed: tuple[str, ...] = (), flags: dict[str, str] | None = None, **stages: queue.StageCounts
) -> producer.Snapshot:
    every = {s.name: stages.get(s.name, counts()) for s in PLAN.stages}
    return producer.Snapshot(every, frozenset(sealed), True, {"input_tokens": 900, "output_tokens": 300}, flags or {})


def observe(snap: producer.Snapshot | None, **kw: Any) -> status.Observation:
    """An observation as ``Reconciler._drive`` builds it: the plan, the snapshot and the state derived from it."""
    state = completion.state(PLAN, snap, 0) if snap is not None else None
    return status.Observation(**{"generation": 1, "now": NOW, "plan": PLAN, "snapshot": snap, "state": state, **kw})


def batch(st: dict[str, Any] | None, generation: int = 1, **metadata: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": "semis-q3", "namespace": "research", "generation": generation, **metadata},
        "spec": SPEC,
    }
    if st is not None:
        obj["status"] = json.loads(json.dumps(st))  # as the API server hands it out: plain JSON
    return obj


RUNNING = snapshot(draft=counts(ready=1, running=2))
HELD = snapshot(("draft",), draft=counts(succeeded=3), gate=counts(ready=3))
DONE = snapshot(
    ("draft", "gate", "review"),
    draft=counts(succeeded=3),
    gate=counts(succeeded=3),
    review=counts(succeeded=3, approved=3),
)
AWAY = status.Problem("RedisUnavailable", "Redis cannot be reached: Connection refused", stalled=False)
OVER = {wire.FLAG_BUDGET_EXCEEDED: "52000 tokens used, budget.maxTokens is 50000"}


BROKEN = status.Observation(
    generation=1,
    now=NOW,
    problems=[
        status.Problem("ConfigMapNotFound", "spec.itemsFrom.configMapKeyRef: ConfigMap research/tickers not found")
    ],
)
QUOTA = status.Problem(
    "ProviderQuotaExhausted",
    "spec.providers.local (anthropic, model m) refuses calls for quota or billing since 2026-11-22T11:58:00Z: "
    "Your credit balance is too low to access the Anthropic API. Stage draft is paused and probes the provider "
    "every 40s (doubling while it refuses); it resumes by itself once a probe passes",
)
FAILED_ITEM = snapshot(("draft",), draft=counts(succeeded=2, failed=1))
OVER_BUDGET = snapshot(flags=OVER, draft=counts(ready=1))
HELD_WHILE_BUSY = snapshot(draft=counts(ready=1, running=1), gate=counts(ready=1))


def first(obs: status.Observation) -> Callable[[], dict[str, Any]]:
    """The status the reconciler writes for ``obs`` on its first visit."""
    return lambda: status.compute(obs, None)


def away(settled: status.Observation) -> Callable[[], dict[str, Any]]:
    """The status once Redis stops answering after ``settled``: the reconciler's observation has no snapshot."""
    return lambda: status.compute(
        observe(None, problems=[AWAY], suspended=settled.suspended), status.compute(settled, None)
    )


COMPUTED: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "seeding": (first(observe(None)), IN_PROGRESS),
    "running": (first(observe(RUNNING, workers={"draft": 3})), IN_PROGRESS),
    "held while a stage still works": (first(observe(HELD_WHILE_BUSY, held={"gate": 1})), IN_PROGRESS),
    "waiting for approval": (first(observe(HELD, held={"gate": 3})), CURRENT),
    "suspended": (first(observe(RUNNING, suspended=True)), CURRENT),
    "suspended, Redis away": (away(observe(RUNNING, suspended=True)), IN_PROGRESS),
    "waiting for approval, Redis away": (away(observe(HELD, held={"gate": 3})), IN_PROGRESS),
    "running, Redis away": (away(observe(RUNNING)), IN_PROGRESS),
    "complete": (first(observe(DONE)), CURRENT),
    "complete while suspended": (first(observe(DONE, suspended=True)), CURRENT),
    "failed": (first(observe(FAILED_ITEM)), FAILED),
    "budget exceeded": (first(observe(OVER_BUDGET)), FAILED),
    "budget exceeded while suspended": (first(observe(OVER_BUDGET, suspended=True)), FAILED),
    "broken reference": (first(BROKEN), FAILED),
    "provider refuses for quota": (first(observe(RUNNING, problems=[QUOTA])), FAILED),
}


def test_each_computed_state_reads_as_decided() -> None:
    names = list(COMPUTED)
    objects = [batch(COMPUTED[name][0]()) for name in names]
    got = {name: r["status"] for name, r in zip(names, readings(*objects), strict=True)}
    assert got == {name: expected for name, (_, expected) in COMPUTED.items()}


def test_a_status_behind_the_spec_reads_in_progress_whatever_it_says() -> None:
    for name in ("waiting for approval", "suspended", "complete", "failed"):
        stale = batch(COMPUTED[name][0](), generation=2)  # the status describes generation 1
        got = readings(stale)[0]
        assert got["status"] == IN_PROGRESS, name
        assert got["message"] == "AnalysisBatch generation is 2, but latest observed generation is 1"


def test_a_batch_being_deleted_reads_terminating_and_one_without_status_reads_current() -> None:
    deleting = batch(COMPUTED["running"][0](), deletionTimestamp="2026-11-22T12:05:00Z")
    assert reading(deleting) == TERMINATING
    # kstatus's blind spot: before the operator's first write nothing says the batch is not done.
    assert readings(batch(None))[0] == {
        "name": "research/semis-q3",
        "status": CURRENT,
        "message": "Resource is current",
    }


def test_what_kstatus_says_of_a_settled_batch_names_the_wait() -> None:
    """Current comes from Ready=True; Reconciling and Stalled are False with the same reason."""
    for name, reason in (("waiting for approval", "WaitingForApproval"), ("suspended", "Suspended")):
        st = COMPUTED[name][0]()
        conditions = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
        assert (conditions["Ready"], conditions["Reconciling"], conditions["Stalled"]) == (
            ("True", reason),
            ("False", reason),
            ("False", reason),
        )
        assert readings(batch(st))[0]["message"] == "Resource is Ready"


# ---------------------------------------------------------------- statuses the operator writes


class Operator:
    """``analysis-operator --namespace=NS`` against the session's control plane and Redis, logging to a file."""

    def __init__(self, dev: cluster.DevCluster, namespace: str, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(OPERATOR), f"--namespace={namespace}"],
                env={
                    "PATH": f"{OPERATOR.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}",
                    # Passed through, as the worker harness does: a checkout run against another's virtualenv
                    # tests its own operator code.
                    **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ},
                    "HOME": os.environ.get("HOME", "/tmp"),
                    "KUBECONFIG": str(dev.kubeconfig),
                    "ANALYSIS_OPERATOR_REDIS_URL": dev.redis_url,
                    "ANALYSIS_OPERATOR_METRICS_PORT": "0",
                    "ANALYSIS_OPERATOR_STATUS_INTERVAL": "0.2",
                    "ANALYSIS_OPERATOR_RESULTS_INTERVAL": "1",
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture
def operator(
    devcluster: cluster.DevCluster, crds_installed: Path, namespace: str, tmp_path: Path
) -> Iterator[Operator]:
    running = Operator(devcluster, namespace, tmp_path / "operator.log")
    try:
        yield running
    finally:
        running.stop()


class Batches:
    """The test namespace's batches, through the pinned kubectl."""

    def __init__(self, dev: cluster.DevCluster, namespace: str, op: Operator, workers: Any, tmp_path: Path) -> None:
        self.dev, self.namespace, self.op, self.workers, self.tmp_path = dev, namespace, op, workers, tmp_path

    def kubectl(self, *args: str, input: str | None = None) -> str:  # noqa: A002 (mirrors subprocess.run)
        return self.dev.kubectl("-n", self.namespace, *args, input=input).stdout

    def create(self, name: str, spec: dict[str, Any]) -> None:
        manifest = {
            "apiVersion": "analysis.dev/v1alpha1",
            "kind": "AnalysisBatch",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": spec,
        }
        self.kubectl("create", "-f", "-", input=json.dumps(manifest))

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.kubectl("get", "analysisbatch", name, "-o", "json"))
        return obj

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.kubectl("patch", "analysisbatch", name, "--type=merge", "-p", json.dumps(patch))

    def settle(self, name: str, phase: str, within_s: float = 30, *, condition: str | None = None) -> dict[str, Any]:
        """The batch once the operator reports ``phase`` for its current generation (and ``condition`` True)."""
        deadline = time.monotonic() + within_s
        while True:
            obj = self.get(name)
            st = obj.get("status") or {}
            true = {c["type"] for c in st.get("conditions") or [] if c["status"] == "True"}
            if (
                st.get("observedGeneration") == obj["metadata"]["generation"]
                and st.get("phase") == phase
                and (condition is None or condition in true)
            ):
                return obj
            if self.op.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"{name} not {phase} within {within_s:g}s; its status: {json.dumps(st)[:1500]}\n"
                    f"the operator's log:\n{self.op.tail()}"
                )
            time.sleep(0.2)

    def torn_down(self, name: str, within_s: float = 30) -> None:
        """Wait until the operator has dropped its finalizer from the deleted batch ``name``."""
        deadline = time.monotonic() + within_s
        while self.get(name)["metadata"].get("finalizers") != [HOLD]:
            if time.monotonic() > deadline:
                pytest.fail(f"the operator did not tear {name} down within {within_s:g}s:\n{self.op.tail()}")
            time.sleep(0.2)

    def start_workers(self, name: str, *stages: str, **extra: str) -> None:
        """Worker processes for ``stages``, on the plan the operator published for the batch (no node runs pods)."""
        obj = self.get(name)
        meta = obj["metadata"]
        child = builders.child_name(builders.Batch(meta["name"], meta["namespace"], meta["uid"]), "plan")
        plan_cm = json.loads(self.kubectl("get", "configmap", child, "-o", "json"))
        path = self.tmp_path / f"plan-{name}.json"
        path.write_text(plan_cm["data"][builders.PLAN_KEY], encoding="utf-8")
        for stage in stages:
            self.workers.start(types.SimpleNamespace(uid=meta["uid"], plan_path=path), stage, **extra)


@pytest.fixture
def batches(
    devcluster: cluster.DevCluster, namespace: str, operator: Operator, workers: Any, tmp_path: Path
) -> Iterator[Batches]:
    harness = Batches(devcluster, namespace, operator, workers, tmp_path)
    try:
        yield harness
    finally:  # while the operator still runs: it removes each batch's Redis keys and its finalizer
        devcluster.kubectl(
            "delete", "analysisbatches", "--all", "-n", namespace, "--timeout=60s", timeout=90, check=False
        )


OFFLINE = {"local": {"type": "offline"}}
DRAFT = {"name": "draft", "provider": "local", "prompt": "Deep analysis of {{ item }}."}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_what_the_operator_writes_reads_as_decided(batches: Batches) -> None:
    read: dict[str, tuple[str, dict[str, Any]]] = {}  # state -> (expected reading, the batch as read back)

    def record(state: str, expected: str, obj: dict[str, Any]) -> None:
        read[state] = (expected, obj)

    # Four batches at once: one walks through run, suspend, resume, approval gate and completion;
    # the others end Failed by a rejected item, by a used-up budget and by a missing ConfigMap.
    batches.create(
        "gated",
        {"items": ["NVDA", "AMD"], "providers": OFFLINE, "stages": [DRAFT, {"name": "gate", "type": "approval"}]},
    )
    batches.create(
        "rejected",
        {
            "items": ["NVDA"],
            "providers": {"local": {"type": "offline", "offline": {"rejectionRate": 1}}},
            "stages": [
                DRAFT,
                {"name": "review", "type": "judge", "provider": "local", "reviews": "draft", "maxRejections": 0},
            ],
        },
    )
    batches.create(
        "over-budget",
        {"items": ["NVDA", "AMD", "TSM"], "providers": OFFLINE, "budget": {"maxTokens": 1}, "stages": [DRAFT]},
    )
    batches.create(
        "broken",
        {"itemsFrom": {"configMapKeyRef": {"name": "tickers", "key": "list"}}, "providers": OFFLINE, "stages": [DRAFT]},
    )

    # Seeded, with its Job's pods Pending (no node) and no worker yet: running.
    record("running", IN_PROGRESS, batches.settle("gated", "Running"))
    batches.patch("gated", {"spec": {"suspend": True}})
    record("suspended", CURRENT, batches.settle("gated", "Suspended"))
    batches.patch("gated", {"spec": {"suspend": False}})
    record("resumed", IN_PROGRESS, batches.settle("gated", "Running"))
    batches.start_workers("gated", "draft")
    record("waiting for approval", CURRENT, batches.settle("gated", "WaitingForApproval"))
    batches.patch("gated", {"spec": {"approvals": [{"stage": "gate"}]}})
    record("complete", CURRENT, batches.settle("gated", "Complete"))

    batches.start_workers("rejected", "draft", "review")
    record("failed", FAILED, batches.settle("rejected", "Failed"))
    # One item at a time, so the budget is found used up before the next claim, with items left.
    batches.start_workers("over-budget", "draft", **{env.CONCURRENCY: "1"})
    record("budget exceeded", FAILED, batches.settle("over-budget", "Running", condition="BudgetExceeded"))
    record("broken reference", FAILED, batches.settle("broken", "Pending", condition="Stalled"))

    # Deleting: the operator tears down and drops its finalizer; the test's own keeps the batch readable.
    batches.patch("broken", {"metadata": {"finalizers": [*batches.get("broken")["metadata"]["finalizers"], HOLD]}})
    batches.kubectl("delete", "analysisbatch", "broken", "--wait=false")
    try:
        record("being deleted", TERMINATING, batches.get("broken"))
        batches.torn_down("broken")
    finally:
        batches.patch("broken", {"metadata": {"finalizers": None}})

    # A status the operator has not caught up with: the spec moved on (generation 2), the status says 1.
    stale = json.loads(json.dumps(read["complete"][1]))
    stale["metadata"]["generation"] += 1
    record("a status behind the spec", IN_PROGRESS, stale)

    states = list(read)
    got = {state: r["status"] for state, r in zip(states, readings(*(read[s][1] for s in states)), strict=True)}
    assert got == {state: expected for state, (expected, _) in read.items()}
    # And what each one says, for the two settled states: the condition that moved it, the wait in its message.
    for state, reason in (("suspended", "Suspended"), ("waiting for approval", "WaitingForApproval")):
        conditions = {c["type"]: c for c in read[state][1]["status"]["conditions"]}
        assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", reason), state
        assert (conditions["Reconciling"]["status"], conditions["Stalled"]["status"]) == ("False", "False"), state
    held = {c["type"]: c for c in read["waiting for approval"][1]["status"]["conditions"]}
    assert re.fullmatch(r"2 items wait at gate \(\S+, \S+\): approve them in spec\.approvals", held["Ready"]["message"])
    assert held["Complete"]["status"] == "False"


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_provider_refusing_for_quota_reads_failed_until_a_probe_passes(
    batches: Batches, redis: queue.Redis
) -> None:
    batches.create("quota", {"items": ["NVDA", "AMD"], "providers": OFFLINE, "stages": [DRAFT]})
    uid = batches.settle("quota", "Running")["metadata"]["uid"]
    # What a worker of the stage does when the provider refuses its call for quota (no worker runs here: the
    # items wait in the stream, so the stage has work that the pause holds).
    limiter = ratelimit.Limiter(
        redis, uid, "draft", requests_per_window=None, tokens_per_window=None, window_s=60, probe_s=0.2, probe_lease_s=5
    )
    words = "Your credit balance is too low to access the Anthropic API."
    await limiter.refused(await limiter.acquire(1), words, None)

    stalled = batches.settle("quota", "Running", condition="Stalled")
    conditions = {c["type"]: c for c in stalled["status"]["conditions"]}
    assert conditions["Stalled"]["reason"] == "ProviderQuotaExhausted"
    assert conditions["Stalled"]["message"].startswith("spec.providers.local (offline, model offline) refuses calls ")
    assert words in conditions["Stalled"]["message"]
    assert (conditions["Reconciling"]["status"], conditions["Ready"]["status"]) == ("False", "False")
    assert reading(stalled) == FAILED

    # A probe passes: the pause ends, and so does the condition.
    probe = await asyncio.wait_for(limiter.acquire(1), timeout=10)
    assert probe.probe
    assert await limiter.probed(probe, answered=True)
    deadline = time.monotonic() + 30
    while True:
        obj = batches.get("quota")
        conditions = {c["type"]: c for c in obj["status"]["conditions"]}
        if conditions["Stalled"]["status"] == "False":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the condition stayed: {conditions['Stalled']}\n{batches.op.tail()}")
        await asyncio.sleep(0.2)
    assert (obj["status"]["phase"], conditions["Reconciling"]["status"]) == ("Running", "True")
    assert reading(obj) == IN_PROGRESS
