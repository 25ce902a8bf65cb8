"""Running real worker processes against the session's Redis.

``workers`` is a factory: ``workers.batch(spec)`` compiles a spec into a plan
file and returns the batch (seed it with ``batch.seed()``); ``workers.start``
runs ``analysis-worker`` for a stage as a separate process with the
environment an operator would give it, logging to a file under the test's
temporary directory. Every process still running at the end of the test is
killed, so a failing test leaves nothing behind.
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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis_core import env, plan, queue
from analysis_core.api import v1alpha1

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
            await queue.seed(client, self.uid, [s.name for s in self.plan.stages], self.items)
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

    def batch(self, spec: dict[str, Any], **plan_overrides: Any) -> Batch:
        parsed = v1alpha1.AnalysisBatchSpec.model_validate(spec)
        uid = str(uuid.uuid4())
        compiled = plan.compile_plan(uid, parsed)
        stage_overrides = plan_overrides.pop("stages", {})
        if stage_overrides:
            stages = [s.model_copy(update=stage_overrides.get(s.name, {})) for s in compiled.stages]
            compiled = compiled.model_copy(update={"stages": stages})
        compiled = compiled.model_copy(update=plan_overrides)
        path = self.tmp_path / f"plan-{uid}.json"
        path.write_text(compiled.dumps(), encoding="utf-8")
        return Batch(uid, compiled, path, list(parsed.items or []), self.redis_url)

    def env(self, batch: Batch, stage: str, pod: str, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin"),
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
                [str(WORKER)], env=self.env(batch, stage, pod, **extra), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
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


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[queue.Redis]:
    client = queue.connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
