"""Run one pod's containers as local processes and report its status the way a kubelet does.

Called by :mod:`analysis_devcluster.node`, which creates one :class:`PodRuntime`
per pod bound to the node, feeds it every newer version of the pod object
(:meth:`PodRuntime.update`) and tells it when the object is gone
(:meth:`PodRuntime.vanish`).

A pod's life here: materialise its volumes (retrying while a source is
missing: ContainerCreating), run its init containers one after the other to
completion, start its containers in order (each one's env is resolved at
every start, so a missing Secret gives CreateContainerConfigError until it
appears), restart them as ``restartPolicy`` says with an exponential back-off
(CrashLoopBackOff), run exec probes, and patch ``pods/status`` after every
change. When the pod gets a deletionTimestamp: SIGTERM to each container's
process group, SIGKILL after the grace period, report the terminal status,
then delete the object with ``gracePeriodSeconds=0``. A pod object that
vanishes gets the kubelet's minimum grace of 2 s.

Every process runs in its own session (so its own process group), with
``PR_SET_PDEATHSIG=SIGKILL``, its stdout and stderr a pipe that the node
drains into ``<pods dir>/<namespace>_<pod>_<uid>/<container>.log`` (every
run appended) and the run and arrival-time files beside it
(:mod:`analysis_devcluster.podlogs`), which :meth:`PodRuntime.log_source`
serves to the kubelet endpoint. A :class:`Watchdog`
process holds the list of live process groups and SIGKILLs them all when the
node dies, however it dies, so grandchildren do not outlive it either.

It deliberately does not implement postStart hooks, sidecar init containers
(reported as waiting, reason ``Unsupported``), HTTP/TCP/gRPC probes (treated
as passing), pod ``activeDeadlineSeconds`` or resource limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from analysis_devcluster import kubeapi, podlogs, podspec, processes

Obj = dict[str, Any]
log = logging.getLogger("analysis_devcluster.node")

MIN_GRACE_S = 2.0  # the kubelet's minimum grace for a pod whose object vanished
DEFAULT_GRACE_S = 30.0
_RETRY_FIRST_S = 0.25  # config and mount errors: first retry, doubled up to _RETRY_MAX_S
_RETRY_MAX_S = 1.0
_BACKOFF_RESET_S = 60.0  # a container that ran this long restarts with the first back-off again
_TERMINAL = ("Succeeded", "Failed")

_WATCHDOG_SOURCE = """# analysis_devcluster node watchdog: SIGKILLs the pods' process groups when the node goes
import os, signal, sys
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line[:1] == "+":
        groups.add(int(line[1:]))
    elif line[:1] == "-":
        groups.discard(int(line[1:]))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


def now() -> str:
    """The current time as the API's ``metav1.Time`` (RFC 3339, seconds)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_dir(pods_dir: Path, namespace: str, name: str, uid: str) -> Path:
    """``<pods dir>/<namespace>_<pod>_<uid>``: the pod's logs, volumes and home."""
    return pods_dir / f"{namespace}_{name}_{uid}"


# ------------------------------------------------------------------ processes


class Watchdog:
    """A helper process that SIGKILLs every registered process group once our pipe to it closes.

    The pipe closes when the node exits in any way, SIGKILL included, so pod
    processes and their children never outlive the node.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._stdin: IO[bytes] | None = None

    def start(self) -> None:
        # Its own session, so a signal to the node's process group does not stop it first.
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._stdin = self._process.stdin

    def _send(self, line: str) -> None:
        if self._stdin is None:
            return
        try:
            self._stdin.write(line.encode())
            self._stdin.flush()
        except (BrokenPipeError, ValueError):
            log.warning("the process watchdog is gone; pod processes may outlive the node")
            self._stdin = None

    def add(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def stop(self) -> None:
        """Close the pipe (the watchdog kills what is still registered) and reap it."""
        if self._stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._stdin.close()
            self._stdin = None
        if self._process is not None:
            self._process.wait()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _resolve_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def exit_code(returncode: int) -> int:
    """A shell-style exit code: 128 + n for death by signal n, as container runtimes report."""
    return returncode if returncode >= 0 else 128 - returncode


def spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, output: int | None, watchdog: Watchdog
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, stdout and stderr to the file descriptor ``output`` (or discarded).

    It is killed if the node dies. Raises OSError (FileNotFoundError,
    PermissionError, ...) when it cannot be executed.
    """
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if output is None else output,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
        # Safe despite threads: the hook only calls prctl, getppid and kill.
        preexec_fn=processes.die_with_parent(os.getpid()),  # noqa: PLW1509
    )
    watchdog.add(process.pid)
    return process


async def wait_exit(process: subprocess.Popen[bytes], watchdog: Watchdog) -> int:
    """Wait for ``process`` to exit (a pidfd, no thread, no polling), kill what is left of its group, reap it."""
    if process.returncode is None:
        loop = asyncio.get_running_loop()
        fd = os.pidfd_open(process.pid)
        exited: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve_once, exited)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        if process.returncode is None:
            # The leader is a zombie until reaped, so its pgid cannot have been reused yet.
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            watchdog.remove(process.pid)
    return exit_code(process.returncode)


async def terminate(process: subprocess.Popen[bytes], grace: float, watchdog: Watchdog) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; the exit code."""
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(wait_exit(process, watchdog), grace)
        except TimeoutError:
            if process.returncode is None:  # not reaped meanwhile by another waiter
                _signal_group(process.pid, signal.SIGKILL)
    return await wait_exit(process, watchdog)


# ------------------------------------------------------------------ node context


@dataclasses.dataclass(frozen=True)
class NodeContext:
    """What every pod runtime needs from the node."""

    client: kubeapi.Client
    placement: podspec.Placement
    images: Mapping[str, Sequence[str]]
    search_path: str  # PATH of every container: the running interpreter's directory first
    pods_dir: Path
    claims_dir: Path
    watchdog: Watchdog
    server: str = ""  # the apiserver's URL, for in-cluster access from pods
    ca_pem: bytes | None = None  # the cluster's CA, when a token volume brings no ca.crt
    backoff_s: tuple[float, float] = (1.0, 30.0)  # first and longest restart back-off


@dataclasses.dataclass(frozen=True)
class Launch:
    """Everything needed to start one container process."""

    argv: list[str]
    env: dict[str, str]  # the full environment: base variables plus the spec's, translated
    spec_env: dict[str, str]  # the spec's variables alone (for $(VAR) in probe commands)
    cwd: Path
    mounts: list[tuple[str, Path]]


# ------------------------------------------------------------------ one container


class Container:
    """The state of one container as its containerStatus reports it, and its current process."""

    def __init__(self, spec: Obj, *, init: bool) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.state: Obj = {"waiting": {"reason": "PodInitializing" if init else "ContainerCreating"}}
        self.last_state: Obj = {}
        self.restart_count = 0
        self.ready = False
        self.started = False
        self.ran = False
        self.process: subprocess.Popen[bytes] | None = None
        self.output: podlogs.Output | None = None  # of the current or last run
        self.container_id = ""
        self.attempted = asyncio.Event()  # set once its first start was tried (containers start in order)

    @property
    def restart_policy(self) -> str:
        return str(self.spec.get("restartPolicy", ""))

    def waiting(self, reason: str, message: str = "") -> None:
        waiting = {"reason": reason, **({"message": message} if message else {})}
        if self.state.get("terminated") is not None:
            self.last_state = self.state
        self.state = {"waiting": waiting}
        self.ready = False

    def running(self, process: subprocess.Popen[bytes]) -> None:
        if self.state.get("terminated") is not None:
            self.last_state = self.state
        self.process = process
        self.container_id = f"devcluster://{process.pid}"
        self.state = {"running": {"startedAt": now()}}
        self.ran = True
        self.started = not self.spec.get("startupProbe")
        self.ready = self.started and not self.spec.get("readinessProbe") and not self.init

    def terminated(self, code: int, reason: str | None = None, message: str = "") -> None:
        started_at = (self.state.get("running") or {}).get("startedAt")
        if self.state.get("terminated") is not None:
            self.last_state = self.state
        terminated: Obj = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": started_at or now(),
            "finishedAt": now(),
        }
        if message:
            terminated["message"] = message
        if self.container_id:
            terminated["containerID"] = self.container_id
        self.state = {"terminated": terminated}
        self.ready = False
        self.started = False

    def status(self, terminal: bool) -> Obj:
        state, last_state = self.state, self.last_state
        if terminal and "waiting" in state and last_state.get("terminated") is not None:
            state, last_state = last_state, {}  # waiting to restart: its last run is its end
        elif terminal and "waiting" in state:
            # What the kubelet reports for a container that never ran in a pod that is gone.
            state = {
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "finishedAt": now(),
                }
            }
        image = self.spec.get("image", "")
        status: Obj = {
            "name": self.name,
            "image": image,
            "imageID": f"devcluster://{podspec.image_repository(image)}" if self.ran else "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def pod_phase(containers: Sequence[Container], restart_policy: str, *, terminal: bool) -> str:
    """The kubelet's getPhase over the (initialised) containers."""
    waiting = running = stopped = succeeded = 0
    for container in containers:
        state = container.state
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"]["exitCode"] == 0
        elif container.last_state.get("terminated") is not None:
            stopped += 1
            succeeded += container.last_state["terminated"]["exitCode"] == 0
        else:
            waiting += 1
    if terminal:
        return "Succeeded" if stopped == succeeded == len(containers) else "Failed"
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if stopped == 0:
        return "Pending"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


# ------------------------------------------------------------------ one pod


class PodRuntime:
    """One pod bound to the node: its containers, its status reports, its deletion."""

    def __init__(self, node: NodeContext, pod: Obj) -> None:
        self.node = node
        self.pod = pod
        metadata, spec = pod["metadata"], pod["spec"]
        self.namespace: str = metadata["namespace"]
        self.name: str = metadata["name"]
        self.uid: str = metadata["uid"]
        self.key = f"{self.namespace}/{self.name}"
        self.dir = pod_dir(node.pods_dir, self.namespace, self.name, self.uid)
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.init_containers = [Container(c, init=True) for c in spec.get("initContainers", [])]
        self.containers = [Container(c, init=False) for c in spec["containers"]]
        if self.init_containers:
            for container in self.containers:
                container.waiting("PodInitializing")
        status = pod.get("status", {})
        # A pod that is already over (e.g. found after a node restart) is only deleted, never run.
        self.passive = status.get("phase") in _TERMINAL
        self.start_time: str | None = status.get("startTime")
        self.initialized = not self.init_containers
        self.init_failed = False
        self.sandbox_ready = False
        self.terminal = False
        self.task: asyncio.Task[None] | None = None
        self._volumes: dict[str, Path] = {}
        # Condition type -> (status, lastTransitionTime), seeded from what the pod reports already.
        self._transitions: dict[str, tuple[str, str]] = {
            c["type"]: (c["status"], c.get("lastTransitionTime") or now()) for c in status.get("conditions", [])
        }
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._gone = asyncio.Event()
        self._sent: Obj | None = None
        self._send_lock = asyncio.Lock()
        self._deleted = False
        self._background: set[asyncio.Task[int]] = set()
        self.update(pod)

    # ------------------------------------------------------------ events from the node

    def update(self, pod: Obj) -> None:
        """A newer version of the pod object."""
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._stop.set()
        if pod["spec"].get("readinessGates"):
            self.changed()

    def vanish(self) -> None:
        """The pod object is gone: stop everything now."""
        self._gone.set()
        self._stop.set()

    def background(self, work: Coroutine[Any, Any, int]) -> None:
        """Run ``work`` (a probe's kill) on its own, keeping a reference until it is done."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"pod {self.key}")
        return self.task

    async def shutdown(self, grace: float) -> None:
        """The node is stopping: stop the pod's processes, leave its object alone."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self._stop_containers(grace)

    # ------------------------------------------------------------ the life of the pod

    async def run(self) -> None:
        """The pod on this node, from binding until its object is gone."""
        reporter = asyncio.create_task(self._report_loop())
        life = None if self.passive else asyncio.create_task(self._live_or_report())
        try:
            await self._stop.wait()
            await _cancel(life)
            await self._stop_containers(self._grace())
            if not self._gone.is_set():
                self.terminal = True
                await self._final_report()
            if not self._gone.is_set():
                await self._delete()
            await self._gone.wait()
        finally:
            await _cancel(life)
            await _cancel(reporter)

    def _grace(self) -> float:
        if self._gone.is_set():
            return MIN_GRACE_S
        grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        return float(grace)

    async def _live_or_report(self) -> None:
        """:meth:`_live`, reporting an unexpected failure in the containers' status rather than hiding it."""
        try:
            await self._live()
        except Exception as error:
            log.exception("%s: the node failed to run the pod", self.key)
            for container in [*self.init_containers, *self.containers]:
                if "running" not in container.state:
                    container.waiting("RunContainerError", f"the devcluster node failed: {error}")
            self.changed()

    async def _live(self) -> None:
        if self.start_time is None:
            self.start_time = now()
        self.changed()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "home").mkdir(exist_ok=True)
        await self._prepare_volumes()
        self.sandbox_ready = True
        self.changed()
        if not await self._run_init_containers():
            return
        self.initialized = True
        for container in self.containers:
            container.waiting("ContainerCreating")
        self.changed()
        previous: asyncio.Event | None = None
        tasks = []
        for container in self.containers:
            tasks.append(asyncio.create_task(self._keep_running(container, previous)))
            previous = container.attempted
        await asyncio.gather(*tasks)

    async def _prepare_volumes(self) -> None:
        """Materialise the pod's volumes, retrying while a source is missing (ContainerCreating)."""
        delay = _RETRY_FIRST_S
        while True:
            try:
                sources = await self._fetch(volumes=True)
                self._volumes = podspec.materialise(
                    self.pod, self.dir / "volumes", self.node.claims_dir, sources, self.node.placement
                )
                return
            except podspec.MountError as error:
                log.info("%s: %s", self.key, error)
                for container in [*self.init_containers, *self.containers]:
                    container.waiting("ContainerCreating", str(error))
                self.changed()
            except kubeapi.FAILURES as error:
                log.warning("%s: fetching volume sources: %s", self.key, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    async def _run_init_containers(self) -> bool:
        """Run the init containers to completion in order; False if the pod cannot go on."""
        for container in self.init_containers:
            if container.restart_policy == "Always":
                container.waiting("Unsupported", "sidecar init containers are not supported by the devcluster node")
                self.changed()
                return False
            while True:
                code = await self._start_and_wait(container)
                if code is None:
                    return False
                if code == 0:
                    break
                if self.restart_policy == "Never":
                    self.init_failed = True
                    self.changed()
                    return False
                await self._back_off(container)
        return True

    async def _keep_running(self, container: Container, previous: asyncio.Event | None) -> None:
        """Start the container (after the one before it), and restart it as restartPolicy says."""
        if previous is not None:
            await previous.wait()
        while True:
            code = await self._start_and_wait(container)
            if code is None:
                return
            if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0):
                return
            await self._back_off(container)

    async def _back_off(self, container: Container) -> None:
        first, longest = self.node.backoff_s
        delay = min(first * 2 ** max(container.restart_count, 0), longest)
        last = container.state.get("terminated") or {}
        if _ran_for(last) >= _BACKOFF_RESET_S:
            delay = first
        container.waiting(
            "CrashLoopBackOff",
            f"back-off {delay:g}s restarting failed container={container.name} pod={self.name}_{self.namespace}"
            f"({self.uid})",
        )
        self.changed()
        await asyncio.sleep(delay)

    async def _start_and_wait(self, container: Container) -> int | None:
        """One run of the container: its exit code, or None if it can never start (unknown image)."""
        launch = await self._launch(container)
        container.attempted.set()
        if launch is None:
            return None
        if container.ran:
            container.restart_count += 1
        output = podlogs.Output(self.dir / f"{container.name}.log")
        try:
            if not launch.cwd.is_dir():
                raise NotADirectoryError(
                    0, f"workingDir {launch.cwd} does not exist on this host (only volumeMounts are translated)"
                )
            process = spawn(launch.argv, launch.env, launch.cwd, output.write_fd, self.node.watchdog)
        except OSError as error:
            output.abandon()
            message = f"exec: {launch.argv[0]!r}: {error.strerror or error}"
            container.ran = True
            container.terminated(128, "StartError", message)
            log.info("%s: container %s could not start: %s", self.key, container.name, message)
            self.changed()
            return 128
        container.running(process)
        container.output = output
        output.start(container.container_id)
        log.info("%s: container %s started, pid %d: %s", self.key, container.name, process.pid, launch.argv[0])
        self.changed()
        probes = [asyncio.create_task(coro) for coro in _Prober(self, container, launch).loops()]
        try:
            code = await wait_exit(process, self.node.watchdog)
        finally:
            for probe in probes:
                probe.cancel()
        # Cancelled before this point, the output stays open: a process being stopped may still write.
        await output.drained()
        container.terminated(code)
        log.info("%s: container %s exited with %d", self.key, container.name, code)
        self.changed()
        return code

    async def _launch(self, container: Container) -> Launch | None:
        """Resolve argv, env and working directory; retry config errors; None for an unknown image."""
        delay = _RETRY_FIRST_S
        while True:
            try:
                sources = await self._fetch(env=True)
                return self._resolve(container, sources)
            except podspec.ConfigError as error:
                container.waiting("CreateContainerConfigError", str(error))
                container.attempted.set()
                self.changed()
            except _UnknownImage as error:
                container.waiting("ImageNotLocal", str(error))
                self.changed()
                return None
            except kubeapi.FAILURES as error:
                log.warning("%s: fetching env sources: %s", self.key, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def _resolve(self, container: Container, sources: podspec.Sources) -> Launch:
        spec = container.spec
        pairs = podspec.mounts(spec, self._volumes)
        spec_env = podspec.container_env(self.pod, spec, sources, self.node.placement)
        spec_env = {name: podspec.translate(value, pairs) for name, value in spec_env.items()}
        command = podspec.argv(spec, self.node.images, spec_env, lambda part: podspec.translate(part, pairs))
        if command is None:
            image = spec.get("image", "")
            known = ", ".join(sorted(self.node.images)) or "none"
            raise _UnknownImage(
                f"container {container.name!r} has no command and image {image!r} "
                f"(repository {podspec.image_repository(image)!r}) is not one the devcluster node can run; "
                f"known images: {known}"
            )
        home = self.dir / "home"
        env = {"PATH": self.node.search_path, "HOME": str(home), "LANG": "C.UTF-8"}
        tmp = podspec.translate("/tmp", pairs)
        if tmp != "/tmp":
            env["TMPDIR"] = tmp
        if self.node.server:
            env.update(podspec.kubernetes_service_env(self.node.server))
            if "KUBECONFIG" not in spec_env:
                kubeconfig = self._in_cluster_kubeconfig(container, pairs)
                if kubeconfig is not None:
                    env["KUBECONFIG"] = str(kubeconfig)
        env.update(spec_env)
        working_dir = spec.get("workingDir")
        cwd = Path(podspec.translate(working_dir, pairs)) if working_dir else home
        if working_dir and str(cwd) != working_dir:
            cwd.mkdir(parents=True, exist_ok=True)  # inside a volume: create it, as a runtime would
        return Launch(argv=command, env=env, spec_env=spec_env, cwd=cwd, mounts=pairs)

    def _in_cluster_kubeconfig(self, container: Container, pairs: Sequence[tuple[str, Path]]) -> Path | None:
        """Write ``<pod dir>/<container>.kubeconfig`` for its mounted service-account token; None without one.

        A kubelet needs none of this: the process would read the fixed
        in-cluster path, which here is only a directory of the node's.
        """
        directory = podspec.service_account_dir(pairs)
        if directory is None or not (directory / "token").is_file():
            return None
        ca_file = directory / "ca.crt"
        config = podspec.in_cluster_kubeconfig(
            server=self.node.server,
            namespace=self.namespace,
            account=self.pod["spec"].get("serviceAccountName") or "default",
            token_file=directory / "token",
            token=(directory / "token").read_text().strip(),
            ca_file=ca_file if ca_file.is_file() else None,
            ca_pem=self.node.ca_pem,
        )
        path = self.dir / f"{container.name}.kubeconfig"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the token
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle)  # JSON is YAML too, and a hundred times faster to write than PyYAML's
        return path

    # ------------------------------------------------------------ logs

    def has_container(self, name: str) -> bool:
        return any(c.name == name for c in [*self.init_containers, *self.containers])

    def log_source(self, name: str, *, previous: bool) -> tuple[Path, str, podlogs.Output | None]:
        """The log file, the ID of the run to read and that container's latest output, for ``containerLogs``.

        Which run follows the kubelet (the running one, else the last that
        ran; ``previous`` the one before); raises podlogs.LogError with its
        message when there is none.
        """
        container = next(c for c in [*self.init_containers, *self.containers] if c.name == name)
        if self.passive:  # never run by this node process: the status the apiserver has
            status = self.pod.get("status", {})
            reported = [*status.get("containerStatuses", []), *status.get("initContainerStatuses", [])]
            found = next((s for s in reported if s.get("name") == name), None)
        else:
            found = container.status(self.terminal)
        container_id = podlogs.log_container_id(found, name, self.name, previous=previous)
        return self.dir / f"{name}.log", container_id, container.output

    # ------------------------------------------------------------ API reads

    async def _fetch(self, *, volumes: bool = False, env: bool = False) -> podspec.Sources:
        """The Secrets, ConfigMaps (and tokens, for volumes) the pod refers to, concurrently."""
        secrets, config_maps = podspec.referenced_objects(self.pod, volumes=volumes, env=env)
        tokens = podspec.token_sources(self.pod) if volumes else []
        secret_names, map_names = sorted(secrets), sorted(config_maps)
        found, token_values = await asyncio.gather(
            asyncio.gather(
                *(self._get("secrets", name) for name in secret_names),
                *(self._get("configmaps", name) for name in map_names),
            ),
            asyncio.gather(*(self._token(audience, seconds) for audience, seconds in tokens)),
        )
        return podspec.Sources(
            secrets=dict(zip(secret_names, found[: len(secret_names)], strict=True)),
            config_maps=dict(zip(map_names, found[len(secret_names) :], strict=True)),
            tokens={key: value for key, value in zip(tokens, token_values, strict=True) if value is not None},
        )

    async def _get(self, resource: str, name: str) -> Obj | None:
        try:
            return await self.node.client.request("GET", f"/api/v1/namespaces/{self.namespace}/{resource}/{name}")
        except kubeapi.ApiError as error:
            if error.status == 404:
                return None
            raise

    async def _token(self, audience: str, seconds: int) -> str | None:
        """A service-account token bound to this pod (TokenRequest), or None if the account is missing."""
        account = self.pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token"
        try:
            answer = await self.node.client.request("POST", path, body=body)
        except kubeapi.ApiError as error:
            if error.status == 404:
                return None
            raise
        token: str = answer.get("status", {}).get("token", "")
        return token

    # ------------------------------------------------------------ stopping

    async def _stop_containers(self, grace: float) -> None:
        """SIGTERM every running container (after its exec preStop hook), SIGKILL after ``grace``."""
        await asyncio.gather(*(self._stop_one(c, grace) for c in [*self.init_containers, *self.containers]))

    async def _stop_one(self, container: Container, grace: float) -> None:
        process = container.process
        if process is None or "running" not in container.state:
            return
        deadline = asyncio.get_running_loop().time() + grace
        hook = ((container.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
        if hook and process.returncode is None and grace > 0:
            await self._run_hook(container, hook.get("command", []), grace)
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
        code = await terminate(process, remaining, self.node.watchdog)
        if container.output is not None:
            await container.output.drained()
        container.terminated(code)
        log.info("%s: container %s stopped with %d", self.key, container.name, code)
        self.changed()

    async def _run_hook(self, container: Container, command: list[str], limit_s: float) -> None:
        try:
            sources = await self._fetch(env=True)
            launch = self._resolve(container, sources)
        except (podspec.ConfigError, _UnknownImage, *kubeapi.FAILURES) as error:
            log.warning("%s: preStop hook of %s not run: %s", self.key, container.name, error)
            return
        await run_exec(command, launch, limit_s, self.node.watchdog)

    async def _final_report(self) -> None:
        """Report the terminal status before deleting, retrying while the apiserver is away."""
        for _ in range(20):
            try:
                await self._flush_status()
                return
            except kubeapi.ApiError as error:
                if error.status == 404:  # a terminal pod's deletion is immediate
                    self._gone.set()
                else:
                    log.warning("%s: final status: %s", self.key, error)
                return
            except kubeapi.TRANSIENT as error:
                log.warning("%s: final status: %s", self.key, error)
                await asyncio.sleep(0.5)

    async def _delete(self) -> None:
        """Delete the pod object at once (its processes are stopped), as the kubelet does."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"
        while not self._deleted:
            try:
                await self.node.client.request("DELETE", path, body=body)
                self._deleted = True
            except kubeapi.ApiError as error:
                if error.status in (404, 409):
                    self._gone.set()
                    return
                log.warning("%s: delete: %s", self.key, error)
                await asyncio.sleep(0.5)
            except kubeapi.TRANSIENT as error:
                log.warning("%s: delete: %s", self.key, error)
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------ status

    def changed(self) -> None:
        """Something in the status changed: report it soon."""
        self._changed.set()

    async def _report_loop(self) -> None:
        """Patch the status after each change; while the apiserver is away, retry with a back-off."""
        delay = _RETRY_FIRST_S
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._flush_status()
                delay = _RETRY_FIRST_S
            except kubeapi.ApiError as error:
                if error.status == 404:
                    self.vanish()
                    return
                log.warning("%s: status: %s", self.key, error)
            except kubeapi.TRANSIENT as error:
                if delay == _RETRY_FIRST_S:
                    log.warning("%s: status: %s; retrying", self.key, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self.changed()

    async def _flush_status(self) -> None:
        """Patch pods/status with the current status, unless it is what we sent last."""
        if self.passive:
            return
        async with self._send_lock:
            status = self.status()
            if status == self._sent:
                return
            path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
            try:
                await self.node.client.request("PATCH", path, body={"status": status}, patch="strategic")
            except kubeapi.ApiError as error:
                if error.status == 422:
                    log.error("%s: status rejected: %s", self.key, error)
                    self._sent = status
                    return
                raise
            self._sent = status

    def status(self) -> Obj:
        """The pod status as a kubelet would report it now."""
        phase = self._phase()
        ip = self.node.placement.pod_ip
        host_ip = self.node.placement.host_ip
        status: Obj = {
            "phase": phase,
            "conditions": self._conditions(phase),
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status(self.terminal) for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status(self.terminal) for c in self.init_containers]
        return status

    def _phase(self) -> str:
        if self.init_failed:
            return "Failed"
        if not self.initialized:
            return "Failed" if self.terminal else "Pending"
        return pod_phase(self.containers, self.restart_policy, terminal=self.terminal)

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != status:
            self._transitions[kind] = (status, now())
        # reason and message are always sent: under a strategic merge patch, null removes a stale one.
        return {
            "type": kind,
            "status": status,
            "reason": reason if not ok and reason else None,
            "message": message if not ok and reason and message else None,
            "lastProbeTime": None,
            "lastTransitionTime": self._transitions[kind][1],
        }

    def _conditions(self, phase: str) -> list[Obj]:
        unready = [c.name for c in self.containers if not c.ready]
        incomplete = [c.name for c in self.init_containers if "terminated" not in c.state or not self.initialized]
        gates = [gate["conditionType"] for gate in self.pod["spec"].get("readinessGates", [])]
        present = {c["type"]: c["status"] for c in self.pod.get("status", {}).get("conditions", [])}
        gates_open = all(present.get(gate) == "True" for gate in gates)
        done = phase in _TERMINAL
        ready_reason = "PodCompleted" if done else "ContainersNotReady"
        ready_message = "" if done else f"containers with unready status: [{' '.join(unready)}]"
        ready = not unready and not done
        return [
            self._condition("PodReadyToStartContainers", self.sandbox_ready and not self.terminal),
            self._condition(
                "Initialized",
                self.initialized,
                "PodCompleted" if done else "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(incomplete)}]",
            ),
            self._condition(
                "Ready",
                ready and gates_open,
                ready_reason if not ready else "ReadinessGatesNotReady",
                ready_message if not ready else "corresponding condition of pod readiness gate is not true",
            ),
            self._condition("ContainersReady", ready, ready_reason, ready_message),
            self._condition("PodScheduled", True),
        ]


class _UnknownImage(Exception):
    """A container without command whose image is not in the node's image table."""


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished."""
    if task is not None and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _ran_for(terminated: Obj) -> float:
    """Seconds between startedAt and finishedAt of a terminated state (0 if unknown)."""
    try:
        started = datetime.datetime.fromisoformat(terminated["startedAt"])
        finished = datetime.datetime.fromisoformat(terminated["finishedAt"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return (finished - started).total_seconds()


# ------------------------------------------------------------------ probes


async def run_exec(command: Sequence[str], launch: Launch, limit_s: float, watchdog: Watchdog) -> bool:
    """Run an exec probe or hook command in the container's environment; True if it exits 0 within ``limit_s``."""
    argv = [podspec.translate(podspec.expand(str(part), launch.spec_env), launch.mounts) for part in command]
    if not argv:
        return False
    try:
        process = spawn(argv, launch.env, launch.cwd, None, watchdog)
    except OSError:
        return False
    try:
        return await asyncio.wait_for(wait_exit(process, watchdog), limit_s) == 0
    except TimeoutError:
        await terminate(process, 0, watchdog)
        return False
    except asyncio.CancelledError:
        await asyncio.shield(terminate(process, 0, watchdog))
        raise


class _Prober:
    """The exec startup, readiness and liveness probes of one running container."""

    def __init__(self, pod: PodRuntime, container: Container, launch: Launch) -> None:
        self.pod = pod
        self.container = container
        self.launch = launch
        self.started = asyncio.Event()

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        spec = self.container.spec
        if not spec.get("startupProbe"):
            self.started.set()
        handlers = {"startupProbe": self._startup, "readinessProbe": self._readiness, "livenessProbe": self._liveness}
        return [self._loop(kind, spec[kind], handler) for kind, handler in handlers.items() if spec.get(kind)]

    async def _loop(self, kind: str, probe: Obj, on_result: Callable[[bool, bool], bool]) -> None:
        """Probe every periodSeconds; ``on_result(ok, threshold_reached)`` returns False to stop."""
        if kind != "startupProbe":
            await self.started.wait()
        if "exec" not in probe:
            on_result(True, True)  # HTTP, TCP and gRPC probes are not run: they pass
            return
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        successes = failures = 0
        while True:
            ok = await run_exec(
                probe["exec"].get("command", []),
                self.launch,
                float(probe.get("timeoutSeconds", 1)),
                self.pod.node.watchdog,
            )
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            needed = int(probe.get("successThreshold", 1)) if ok else int(probe.get("failureThreshold", 3))
            if not on_result(ok, (successes if ok else failures) >= needed):
                return
            await asyncio.sleep(float(probe.get("periodSeconds", 10)))

    def _startup(self, ok: bool, reached: bool) -> bool:
        if ok and reached:
            self.container.started = True
            self.container.ready = not self.container.spec.get("readinessProbe") and not self.container.init
            self.started.set()
            self.pod.changed()
            return False
        if not ok and reached:
            self._kill("startup")
            return False
        return True

    def _readiness(self, ok: bool, reached: bool) -> bool:
        if reached and self.container.ready != ok:
            self.container.ready = ok
            self.pod.changed()
        return True

    def _liveness(self, ok: bool, reached: bool) -> bool:
        if not ok and reached:
            self._kill("liveness")
            return False
        return True

    def _kill(self, kind: str) -> None:
        """A failed startup or liveness probe: stop the process; its exit then follows restartPolicy."""
        process = self.container.process
        if process is None:
            return
        log.info("%s: container %s failed its %s probe; stopping it", self.pod.key, self.container.name, kind)
        probe = self.container.spec.get(f"{kind}Probe", {})
        grace = probe.get("terminationGracePeriodSeconds") or self.pod.pod["spec"].get(
            "terminationGracePeriodSeconds", DEFAULT_GRACE_S
        )
        self.pod.background(terminate(process, float(grace), self.pod.node.watchdog))
