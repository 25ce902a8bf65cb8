"""Shared fixtures: one private dev cluster per test session, plus per-test namespaces.

The cluster (real etcd, kube-apiserver, kube-controller-manager and
redis-server, see ``analysis_devcluster.cluster``) starts lazily, on the first
test that asks for it, in a pytest temporary directory, and stops at the end
of the session. Unit tests never touch it.

These fixtures never skip: a missing binary or a failed start raises, so the
test errors and CI fails instead of passing vacuously. Build the binaries
with ``make controlplane``.

Predictions (``simulate``): the outcomes a plan must record, from the offline
provider's answers (a function of seed, stage, item and round) and the
routing rules, without Redis; runs by real workers are compared with it.

Worker processes (``workers``, ``make_workers``): ``workers.batch(spec)``
compiles a spec into a plan file and returns the batch (seed it with
``batch.seed()``); ``workers.start`` runs ``analysis-worker`` for a stage as a
separate process with the environment an operator would give it, logging to
a file under the test's temporary directory. Every process still running at
the end of the test is killed.
"""

import asyncio
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from analysis_core import env, keys, plan, queue, wire
from analysis_core.api import v1alpha1
from analysis_devcluster import cluster
from analysis_operator import completion, producer
from analysis_worker import routing
from analysis_worker.providers import base, offline

REPO_ROOT = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO_ROOT / "crds"
TIERS = ("unit", "integration", "e2e")
TIER_SECONDS: Counter[str] = Counter()  # setup + call + teardown of each tier's tests, summed


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test carries exactly one tier marker, and it is the tier of its folder.

    So ``-m unit`` really selects the tests that need no cluster, and a test
    cannot drift into a tier whose fixtures it does not expect.
    """
    tests_dir = Path(__file__).resolve().parent
    wrong = []
    for item in items:
        tiers = [mark.name for mark in item.iter_markers() if mark.name in TIERS]
        folder = item.path.resolve().relative_to(tests_dir).parts[0]
        if tiers != [folder]:
            wrong.append(f"{item.nodeid}: tier markers {tiers}, folder {folder!r}")
    if wrong:
        raise pytest.UsageError("tests must carry the one tier marker of their folder:\n" + "\n".join(wrong))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    parts = report.nodeid.split("/", 2)
    if len(parts) == 3 and parts[0] == "tests" and parts[1] in TIERS:
        TIER_SECONDS[parts[1]] += report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The time of each tier, so that a run's budget can be read from its output (the components a tier
    starts for itself, such as the cluster, count in the first of its tests that needs them)."""
    if TIER_SECONDS:
        terminalreporter.write_sep("=", "time per tier")
        for tier in (t for t in TIERS if t in TIER_SECONDS):
            terminalreporter.write_line(f"{tier}: {TIER_SECONDS[tier]:.0f} s")


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster.DevCluster]:
    """A running dev cluster for the whole session; ``devcluster.kubectl("get", "ns")`` talks to it."""
    dev = cluster.DevCluster(tmp_path_factory.mktemp("devcluster"))
    with dev:
        yield dev


@pytest.fixture(scope="session")
def crds_installed(devcluster: cluster.DevCluster) -> Path:
    """The repository's CRDs, applied and Established; returns the directory they came from."""
    devcluster.install_crds(CRDS_DIR)
    return CRDS_DIR


@pytest.fixture
def namespace(devcluster: cluster.DevCluster) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists; deleted (without waiting) afterwards.

    Waiting for the ServiceAccount matters: the ServiceAccount admission plugin
    rejects Pods (and so Jobs' Pods) in a namespace that does not have it yet.
    """
    name = f"test-{uuid.uuid4().hex[:8]}"
    devcluster.kubectl("create", "namespace", name)
    try:
        devcluster.kubectl("wait", "--for", "create", "--timeout=30s", "-n", name, "serviceaccount/default", timeout=45)
        yield name
    finally:
        devcluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def redis_url(devcluster: cluster.DevCluster) -> str:
    """``redis://127.0.0.1:<port>/0`` of the session's redis-server."""
    return devcluster.redis_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on an emptied Redis (FLUSHALL before the test), closed afterwards."""
    client = cluster.redis_client(redis_url, timeout=5.0)
    try:
        client.flushall()
        yield client
    finally:
        client.close()


WORKER = Path(sys.executable).parent / "analysis-worker"


@dataclasses.dataclass
class Batch:
    uid: str
    plan: plan.Plan
    plan_path: Path
    items: list[str]
    redis_url: str

    async def seed(self) -> None:
        client = queue.connect(self.redis_url)
        try:
            await producer.seed(client, self.uid, [s.name for s in self.plan.stages], self.items)
        finally:
            await client.aclose()


@dataclasses.dataclass
class WorkerProcess:
    pod: str
    stage: str
    process: subprocess.Popen[bytes]
    log: Path

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


class Workers:
    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.started: list[WorkerProcess] = []
        self._names = itertools.count()

    def batch(
        self,
        spec: dict[str, Any],
        *,
        accounts: dict[str, v1alpha1.AnalysisProviderSpec] | None = None,
        **plan_overrides: Any,
    ) -> Batch:
        parsed = v1alpha1.AnalysisBatchSpec.model_validate(spec)
        uid = str(uuid.uuid4())
        compiled = plan.compile_plan(uid, parsed, accounts=accounts)
        stage_overrides = plan_overrides.pop("stages", {})
        if stage_overrides:
            stages = [s.model_copy(update=stage_overrides.get(s.name, {})) for s in compiled.stages]
            compiled = compiled.model_copy(update={"stages": stages})
        compiled = compiled.model_copy(update=plan_overrides)
        path = self.tmp_path / f"plan-{uid}.json"
        path.write_text(compiled.dumps(), encoding="utf-8")
        return Batch(uid, compiled, path, list(parsed.items or []), self.redis_url)

    def env(self, batch: Batch, stage: str, pod: str, **extra: str) -> dict[str, str]:
        # PYTHONPATH passes through: a checkout run against another's virtualenv tests its own worker code.
        passed = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
        return {
            "PATH": "/usr/bin",
            **passed,
            env.REDIS_URL: self.redis_url,
            env.BATCH_UID: batch.uid,
            env.STAGE: stage,
            env.PLAN_PATH: str(batch.plan_path),
            env.POD_NAME: pod,
            env.MODE: "deployment",
            env.GRACE_SECONDS: "5",
            env.HEALTH_TTL_SECONDS: "2",
            **extra,
        }

    def start(self, batch: Batch, stage: str, *, pod: str | None = None, **extra: str) -> WorkerProcess:
        pod = pod or f"{stage}-{next(self._names)}"
        log = self.tmp_path / f"{pod}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(WORKER)],
                env=self.env(batch, stage, pod, **extra),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(pod, stage, process, log)
        self.started.append(worker)
        return worker

    @staticmethod
    async def eventually(check: Any, within_s: float, what: str, interval: float = 0.1) -> Any:
        """Poll the async ``check`` until it returns something truthy; fail after ``within_s`` seconds."""
        deadline = time.monotonic() + within_s
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"not {what} within {within_s:g}s (last: {value!r})")
            await asyncio.sleep(interval)

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()


@pytest.fixture
def make_workers(tmp_path: Path) -> Iterator[Callable[[str], Workers]]:
    """Harnesses on a Redis of the test's choosing (e.g. a private one it restarts)."""
    made: list[Workers] = []

    def make(redis_url: str) -> Workers:
        made.append(Workers(tmp_path, redis_url))
        return made[-1]

    try:
        yield make
    finally:
        for harness in made:
            harness.kill_all()


@pytest.fixture
def workers(make_workers: Callable[[str], Workers], redis_url: str) -> Workers:
    """A harness on the session's Redis."""
    return make_workers(redis_url)


@pytest.fixture(name="redis")
async def redis_async(redis_url: str) -> AsyncIterator[queue.Redis]:
    """An asyncio client (the queue module's settings) on the session's Redis."""
    client = queue.connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@dataclasses.dataclass
class Prediction:
    outcomes: dict[str, str]  # idempotency key -> status
    counters: dict[str, int]  # summed increments (rejected, exhausted, children, ...)


def _offline_answer(the_plan: plan.Plan, stage: plan.StagePlan, message: queue.Message) -> str:
    provider = the_plan.providers[stage.provider or ""]
    options = provider.offline
    assert options is not None, "the plan carries an offline provider's options"
    if stage.type is v1alpha1.StageType.JUDGE:
        kind = base.OutputKind.VERDICT
    else:
        kind = base.OutputKind.JSON if stage.output is v1alpha1.OutputFormat.JSON else base.OutputKind.TEXT
    fan = stage.fan_out
    request = base.Request(
        prompt="",
        max_tokens=1,
        timeout_seconds=1,
        output=kind,
        item=message.item,
        stage=stage.name,
        round=message.round,
        json_schema=stage.json_schema,
        fan_out=None if fan is None else base.FanOutHint(fan.path, fan.key, fan.sort_by),
    )
    return offline.answer(request, seed=options.seed, rejection_rate=options.rejection_rate)


def simulate(the_plan: plan.Plan, items: list[str]) -> Prediction:
    """Run the pipeline's rules over the offline answers: every stage, gates opened by the plan, fan-in last."""
    k = keys.BatchKeys(the_plan.uid)
    todo: dict[str, Any] = {s.name: [] for s in the_plan.stages}
    gathered: dict[str, dict[str, str]] = {s.name: {} for s in the_plan.stages}
    todo[the_plan.stages[0].name].extend(queue.Message(item) for item in items)
    prediction = Prediction({}, {})
    inputs: dict[str, str] = {}
    while True:
        busy = next((s for s in the_plan.stages if todo[s.name]), None)
        if busy is None:
            waiting = next((s for s in the_plan.stages if gathered[s.name]), None)
            if waiting is None:
                return prediction
            combined = queue.Message(
                producer.collected_id(gathered[waiting.name]), input=f"{the_plan.uid}/{waiting.name}/collected"
            )
            todo[waiting.name].append(combined)
            gathered[waiting.name] = {}
            continue
        message = todo[busy.name].pop(0)
        idem = k.idem(busy.name, message.item, message.round, message.attempt)
        if busy.type is v1alpha1.StageType.APPROVAL:
            assert busy.name in the_plan.approvals, f"{busy.name} is never approved in this plan"
            routed = routing.Routed("succeeded", routing.onward(the_plan, busy, message), {}, {})
        else:
            output = routing.parse_output(busy, _offline_answer(the_plan, busy, message))
            routed = routing.after_success(
                the_plan, busy, message, idem, output, reviewed_input=inputs.get(message.input, "")
            )
        prediction.outcomes[idem] = routed.status
        for name, n in routed.increments.items():
            prediction.counters[name] = prediction.counters.get(name, 0) + n
        inputs[idem] = message.input
        for route in routed.routes:
            if route.gather:
                gathered[route.stage][route.message.item] = route.message.input
            else:
                todo[route.stage].append(route.message)


@pytest.fixture(name="simulate")
def simulate_fixture() -> Callable[[plan.Plan, list[str]], Prediction]:
    """``simulate(plan, items)``: the outcomes and counters a run of ``plan`` must record."""
    return simulate


def assert_recorded(raw: dict[str, str], expected: dict[str, str]) -> None:
    """Every predicted attempt recorded (the outcomes hash, attempt key -> value) with its predicted status, or
    spent: an earlier attempt of an item that ended with a success, whose outcome goes then (the key stays; a
    retried one keeps its status), which never hides a failure."""
    assert set(raw) == set(expected)
    for key, value in raw.items():
        if value == wire.OUTCOME_SPENT:
            assert expected[key] not in (wire.STATUS_FAILED, wire.STATUS_DEAD), key
        else:
            assert json.loads(value)[wire.OUTCOME_STATUS] == expected[key], key
    assert any(value != wire.OUTCOME_SPENT for value in raw.values())


@pytest.fixture(name="assert_recorded")
def assert_recorded_fixture() -> Callable[[dict[str, str], dict[str, str]], None]:
    """``assert_recorded(outcomes, expected)``: the batch's outcomes hash against a ``simulate`` prediction."""
    return assert_recorded


async def operate(client: queue.Redis, batch: Batch, *, max_failed_items: int = 1, within_s: float = 120) -> None:
    """Play the operator's part for ``batch`` until it is Complete: release approvals, collect, seal from atomic
    snapshots (workers run the stages). Fails the test if the batch fails or does not complete in time."""
    the_plan = batch.plan
    names = [s.name for s in the_plan.stages]
    deadline = time.monotonic() + within_s
    while True:
        snap = await producer.snapshot(client, batch.uid, names)
        for gate, approved in the_plan.approvals.items():
            after = the_plan.stage(gate).next
            gather = after is not None and the_plan.stage(after).collect
            await producer.release(client, batch.uid, gate, after, approved, gather=gather)
        for stage in completion.collectable(the_plan, snap):
            await producer.collect(client, batch.uid, stage)
        for stage in completion.sealable(the_plan, snap):
            await producer.seal(client, batch.uid, stage)
        state = completion.state(the_plan, snap, max_failed_items=max_failed_items)
        assert state.phase is not completion.Phase.FAILED, state.reason
        if state.phase is completion.Phase.COMPLETE:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"batch not Complete within {within_s:g}s: {state.phase} {state.reason}")
        await asyncio.sleep(0.05)


@pytest.fixture(name="operate")
def operate_fixture() -> Callable[..., Any]:
    """``await operate(redis, batch)``: the operator's part, until the batch is Complete."""
    return operate
