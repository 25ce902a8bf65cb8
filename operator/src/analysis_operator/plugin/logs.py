"""``kubectl analysis logs``: the worker pods' logs of one batch, each line prefixed with its stage and pod.

Pods are selected by the batch's uid (label ``analysis.dev/batch-uid``), not
its name, so the pods of an earlier batch of the same name never mix in; a
stage narrows it with ``analysis.dev/stage``. Logs come through the pods/log
API (``kubectl logs``), so they need nothing but the user's credentials.
A pod's logs live as long as the pod: a Job's finished pods keep theirs
until the batch is deleted, a Deployment's pods are deleted when it scales
down, and with them their logs (as anywhere in Kubernetes).

Following (``-f``) runs one ``kubectl logs -f`` per container and re-lists
the pods every interval, so pods that a stage starts later, or that replace
others, are picked up too (``kubectl logs -f -l`` follows only the pods that
exist when it starts). It ends once the batch has finished and every stream
has ended, or after a grace period past the end.
"""

from __future__ import annotations

import dataclasses
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from analysis_core.api import wellknown
from analysis_operator.plugin.kubectl import EXIT_KUBECTL, Kubectl, PluginError

FINISH_GRACE_S = 15.0  # after the batch finished: how long streams may take to end by themselves


@dataclasses.dataclass(frozen=True)
class Stream:
    """One container's log: where it is, what to prefix its lines with, and whether it can be read yet."""

    pod: str
    container: str
    stage: str
    prefix: str
    started: bool  # the container ran or runs: there is a log to read
    restarts: int = 0


def selector(batch_uid: str, stage: str | None = None) -> str:
    """The label selector of the batch's worker pods, of one stage if given."""
    labels = f"{wellknown.LABEL_BATCH_UID}={batch_uid}"
    return labels + (f",{wellknown.LABEL_STAGE}={stage}" if stage else "")


def _started(status: Mapping[str, Any]) -> bool:
    state = status.get("state") or {}
    last = status.get("lastState") or {}
    return "running" in state or "terminated" in state or "terminated" in last


def streams(pods: Sequence[Mapping[str, Any]], stage_order: Sequence[str]) -> list[Stream]:
    """Every container of ``pods``, in stage order, then by creation time and name.

    The prefix names the stage and the pod (and the container when a pod has
    more than one), e.g. ``[analyze stock-research-analyze-x7k2p]``.
    """
    rank = {name: index for index, name in enumerate(stage_order)}

    def key(pod: Mapping[str, Any]) -> tuple[int, str, str]:
        metadata = pod.get("metadata") or {}
        stage = (metadata.get("labels") or {}).get(wellknown.LABEL_STAGE, "")
        return rank.get(stage, len(rank)), str(metadata.get("creationTimestamp", "")), str(metadata.get("name", ""))

    out = []
    for pod in sorted(pods, key=key):
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name", ""))
        stage = str((metadata.get("labels") or {}).get(wellknown.LABEL_STAGE, "?"))
        containers = [str(c.get("name", "")) for c in (pod.get("spec") or {}).get("containers") or []]
        statuses = {str(s.get("name")): s for s in (pod.get("status") or {}).get("containerStatuses") or []}
        for container in containers:
            status = statuses.get(container, {})
            prefix = f"[{stage} {name}" + (f"/{container}" if len(containers) > 1 else "") + "]"
            out.append(Stream(name, container, stage, prefix, _started(status), int(status.get("restartCount") or 0)))
    return out


def prefixed(prefix: str, text: str) -> str:
    """Each line of ``text`` behind ``prefix``, every line ending in a newline."""
    return "".join(f"{prefix} {line}\n" for line in text.splitlines())


def _logs_args(stream: Stream, tail: int | None, follow: bool = False) -> list[str]:
    args = ["logs", stream.pod, "-c", stream.container]
    if follow:
        args.append("-f")
    if tail is not None:
        args.append(f"--tail={tail}")
    return args


def print_logs(
    kubectl: Kubectl, namespace: str, found: Sequence[Stream], tail: int | None, out: TextIO, err: TextIO
) -> None:
    """The logs of every stream, one after the other; a stream that cannot be read is a warning, all of them exit 4."""
    read = 0
    problems: list[str] = []
    for stream in found:
        if not stream.started:
            err.write(f"warning: {stream.prefix} has not started yet\n")
            continue
        done = kubectl.run(*_logs_args(stream, tail), namespace=namespace)
        if done.returncode != 0:
            problem = done.stderr.strip().removeprefix("error: ") or f"kubectl logs exited with {done.returncode}"
            problems.append(problem)
            err.write(f"warning: {stream.prefix} {problem}\n")
            continue
        read += 1
        out.write(prefixed(stream.prefix, done.stdout))
        out.flush()
    if problems and not read:
        raise PluginError(f"no worker log could be read: {problems[-1]}", EXIT_KUBECTL)


class Follower:
    """``kubectl logs -f`` of one stream, its lines pumped into a shared queue by a thread."""

    def __init__(
        self, kubectl: Kubectl, namespace: str, stream: Stream, tail: int | None, sink: queue.Queue[str]
    ) -> None:
        self.stream = stream
        self.lines = 0
        self.error = ""
        self.process = kubectl.popen(*_logs_args(stream, tail, follow=True), namespace=namespace)
        self.thread = threading.Thread(target=self._pump, args=(sink,), daemon=True)
        self.thread.start()

    def _pump(self, sink: queue.Queue[str]) -> None:
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        for line in self.process.stdout:
            self.lines += 1
            sink.put(f"{self.stream.prefix} {line.rstrip(chr(10))}\n")
        self.error = self.process.stderr.read().strip().removeprefix("error: ")
        self.process.wait()

    @property
    def ended(self) -> bool:
        return not self.thread.is_alive()

    @property
    def failed(self) -> bool:
        """Ended without a line and with an error: the container could not be read (yet); try again later."""
        return self.ended and self.lines == 0 and self.process.returncode not in (0, None)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


@dataclasses.dataclass
class Follow:
    """What ``logs -f`` keeps between listings of the pods."""

    kubectl: Kubectl
    namespace: str
    tail: int | None
    out: TextIO = sys.stdout
    err: TextIO = sys.stderr
    followers: dict[tuple[str, str], Follower] = dataclasses.field(default_factory=dict)
    sink: queue.Queue[str] = dataclasses.field(default_factory=queue.Queue)
    warned: set[str] = dataclasses.field(default_factory=set)
    listings: int = 0

    def update(self, found: Sequence[Stream]) -> None:
        """Start following every readable stream not followed yet, or whose container restarted or failed to read."""
        for stream in found:
            key = (stream.pod, stream.container)
            current = self.followers.get(key)
            if not stream.started:
                continue
            if current is not None:
                if not current.ended:
                    continue
                self._warn(current)
                if not current.failed and stream.restarts <= current.stream.restarts:
                    continue  # read to its end; the container has not run again
            # --tail applies to what existed when following began; a later or restarted container shows whole.
            tail = self.tail if self.listings == 0 and current is None else None
            self.followers[key] = Follower(self.kubectl, self.namespace, stream, tail, self.sink)
        self.listings += 1

    def _warn(self, follower: Follower) -> None:
        if follower.failed and follower.error and follower.error not in self.warned:
            self.warned.add(follower.error)
            self.err.write(f"warning: {follower.stream.prefix} {follower.error}\n")

    def pump(self, seconds: float) -> None:
        """Print the lines that arrive within ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                line = self.sink.get(timeout=left)
            except queue.Empty:
                return
            self.out.write(line)
            self.out.flush()

    def all_ended(self) -> bool:
        return all(f.ended for f in self.followers.values())

    def stop(self) -> None:
        for follower in self.followers.values():
            follower.stop()
        while not self.sink.empty():  # what was read before stopping still gets printed
            self.out.write(self.sink.get_nowait())
        self.out.flush()


def follow(
    state: Follow,
    list_streams: Callable[[], list[Stream]],
    finished: Callable[[], bool],
    interval: float,
    grace: float = FINISH_GRACE_S,
) -> None:
    """Follow until the batch has finished and every stream ended (or ``grace`` seconds after it finished)."""
    finished_at: float | None = None
    try:
        while True:
            done = finished()
            state.update(list_streams())
            state.pump(interval)
            if done:
                finished_at = finished_at if finished_at is not None else time.monotonic()
                if state.all_ended() or time.monotonic() - finished_at > grace:
                    state.pump(0.2)
                    return
    finally:
        state.stop()
