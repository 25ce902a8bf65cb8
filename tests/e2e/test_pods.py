"""Pods carry many calls: sizing by calls per pod, the stage-wide cap, and a Job's scale-in, on the real node.

A stage's ``concurrency`` is its calls in flight, all pods together: at 100
with 16 calls per pod (the operator's default) the stage runs ceil(100 / 16)
= 7 pods, and the stand-in (which counts the requests it holds at once)
sees exactly 100 at the peak, never the 112 the pods could run. A Job-mode
stage that shrinks while some pods still hold items lets only idle pods go:
the Job controller deletes active pods of its own choosing, so the operator
never lowers parallelism below the pods at work; it retires idle pods
(they can no longer claim), deletes them and lowers parallelism by as many.
"""

import json
import os
import re
import subprocess
import time
from typing import Any

import pytest

from analysis_core import env
from analysis_devcluster import binaries, standin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_KEY = "sk-test-pods"


def batch_on(server: standin.StandIn, batches: Any, name: str, items: list[str], **stage: Any) -> dict[str, Any]:
    batches.kubectl("create", "secret", "generic", "llm-keys", f"--from-literal=openai={API_KEY}")
    return {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name},
        "spec": server.batch_spec("openai", items, **stage),
    }


def following_logs(batches: Any, name: str) -> subprocess.Popen[str]:
    """``kubectl analysis logs NAME -f``: every worker pod's lines as they come, pods deleted since included."""
    return subprocess.Popen(
        [str(binaries.find("kubectl")), "analysis", "logs", name, "-f", "-n", batches.namespace],
        env={**os.environ, "KUBECONFIG": str(batches.dev.kubeconfig)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Watch:
    """The batch's Jobs and pods, polled until it is Complete: most parallelism, most pods running, the sizes seen."""

    def __init__(self) -> None:
        self.parallelism: list[int] = []
        self.most_running = 0
        self.templates: list[dict[str, Any]] = []

    def follow(self, batches: Any, name: str, uid: str, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            listed = json.loads(
                batches.kubectl("get", "jobs,pods", "-l", f"analysis.dev/batch-uid={uid}", "-o", "json").stdout
            )
            jobs = [o for o in listed["items"] if o["kind"] == "Job"]
            pods = [o for o in listed["items"] if o["kind"] == "Pod"]
            for job in jobs:
                size = int(job["spec"].get("parallelism") or 0)
                if not self.parallelism or self.parallelism[-1] != size:
                    self.parallelism.append(size)
                self.templates.append(job["spec"]["template"])
            running = [
                p for p in pods if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
            ]
            self.most_running = max(self.most_running, len(running))
            if (batches.get(name).get("status") or {}).get("phase") == "Complete":
                return
            time.sleep(0.5)
        pytest.fail(f"{name} not Complete within {within_s}s; parallelism seen: {self.parallelism}")


@pytest.mark.timeout(420)
def test_a_stage_at_concurrency_100_runs_7_pods_and_has_100_calls_in_flight_at_the_stand_in(batches: Any) -> None:
    with standin.StandIn(api_key=API_KEY, host=batches.dev.host) as server:
        server.set_plan([{"kind": "ok", "delay_s": 3, "times": 10_000}])
        items = [f"W{i:03d}" for i in range(700)]  # 7 rounds of 100 calls of 3 s: the stage is full for a while
        batches.apply(batch_on(server, batches, "wide", items, concurrency=100))
        uid = batches.eventually(lambda: batches.get("wide")["metadata"].get("uid"), 30, "the batch")
        watch = Watch()
        watch.follow(batches, "wide", uid, within_s=360)
        # ceil(100 / 16) pods, each running 16 calls at once (the operator's default), ...
        assert max(watch.parallelism) == 7, watch.parallelism
        assert watch.most_running == 7
        worker_env = {e["name"]: e.get("value") for e in watch.templates[0]["spec"]["containers"][0]["env"]}
        assert worker_env[env.CONCURRENCY] == "16"
        # ... and together never more calls than the stage's concurrency: exactly that many at the peak.
        assert server.concurrency()["peak"] == 100
        prompts = sorted(call["prompt"] for call in server.requests())
        assert prompts == sorted(f"Analyze {item}" for item in items)  # each item called once
    st = batches.get("wide")["status"]
    assert st["items"]["succeeded"] == len(items)


@pytest.mark.timeout(300)
def test_scaling_a_job_stage_in_never_stops_a_pod_that_holds_an_item(batches: Any) -> None:
    with standin.StandIn(api_key=API_KEY, host=batches.dev.host) as server:
        # Two long calls hold two pods while the short ones drain through the other two; then the stage wants
        # two pods where four run, and has to shrink around the two at work.
        server.set_plan([{"kind": "ok", "delay_s": 25, "match": "LONG", "times": 2}])
        items = ["LONG0", "LONG1", *(f"S{i:02d}" for i in range(12))]
        batches.apply(batch_on(server, batches, "narrow", items, concurrency=4, callsPerPod=1, executor="Job"))
        uid = batches.eventually(lambda: batches.get("narrow")["metadata"].get("uid"), 30, "the batch")
        following = following_logs(batches, "narrow")
        try:
            watch = Watch()
            watch.follow(batches, "narrow", uid, within_s=240)
            followed, errors = following.communicate(timeout=90)
        finally:
            following.kill()
        assert following.returncode == 0, errors
        prompts = sorted(call["prompt"] for call in server.requests())
        assert prompts == sorted(f"Analyze {item}" for item in items)  # nothing was handed back and called again
    # The Job did shrink while the long calls ran, ...
    assert max(watch.parallelism) == 4, watch.parallelism
    assert min(watch.parallelism[watch.parallelism.index(4) :]) < 4, watch.parallelism
    # ... and every pod stopped on the way (SIGTERM: "stopping") held nothing then.
    stops = []
    for line in followed.splitlines():
        match = re.fullmatch(r"\[(\S+) (\S+)\] (\{.*\})", line)
        if match and json.loads(match.group(3)).get("msg") == "stopping: no new claims":
            stops.append((match.group(2), json.loads(match.group(3))["in_flight"]))
    assert stops, followed[-3000:]
    assert all(in_flight == 0 for _pod, in_flight in stops), stops
    st = batches.get("narrow")["status"]
    assert st["items"]["succeeded"] == len(items)
