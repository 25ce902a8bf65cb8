"""Spawn, watch and stop the dev cluster's component processes.

Called by :mod:`analysis_devcluster.cluster` for each component (etcd,
kube-apiserver, kube-controller-manager, redis-server) and by the CLI for the
detached supervisor's liveness checks.

Each component runs in its own session and process group, writes stdout and
stderr to one log file, and carries ``PR_SET_PDEATHSIG=SIGKILL``: the kernel
kills it the moment the thread that spawned it dies, however that happens
(SIGKILL of pytest or of the supervisor included). That is the guarantee
against orphans; ``stop()`` and atexit are only the polite path.

Caveat that follows from the kernel semantics: the death signal fires when
the spawning *thread* exits, not the process, so spawn from a thread that
lives as long as the cluster (in practice the main thread), never from a
worker pool.

It deliberately does not restart anything, rotate logs or parse output.
"""

import contextlib
import ctypes
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (each socket is held until all are picked, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int, timeout: float = 0.2, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port (loopback by default)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def eventually(
    check: Callable[[], Any],
    within_s: float,
    what: str,
    *,
    interval: float = 0.05,
    details: Callable[[], str] | None = None,
) -> Any:
    """Call ``check`` until it returns something truthy, and return that; for tests of the dev cluster.

    After ``within_s`` seconds it raises AssertionError saying what did not
    happen, the last value, and ``details()`` (e.g. a log tail) if given.
    """
    deadline = time.monotonic() + within_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            raise AssertionError(f"not {what} within {within_s:g}s (last: {value!r}){extra}")
        time.sleep(interval)


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive SIGKILL when ``parent_pid``'s spawning thread dies."""

    # Looked up here, in the parent: loading libc in the child costs milliseconds per spawn.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(127)
        # The parent may have died between fork() and prctl(); then nobody
        # would ever deliver the death signal, so deliver it now.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead).

    Reaps it first if it is our own exited child, so callers that spawned it
    themselves get a truthful answer too.
    """
    with contextlib.suppress(ChildProcessError):
        reaped, _status = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state letter follows the parenthesised command name, which may itself contain ") ".
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


@dataclasses.dataclass
class Component:
    """One running child process and where its output goes."""

    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return tail(self.log, lines)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap the leader."""
        if self.process.returncode is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.process.wait()
        # Whatever the leader left behind in its group (redis forks for AOF
        # rewrites) goes too; ESRCH just means the group is already empty.
        _signal_group(self.pid, signal.SIGKILL)


class StartupError(RuntimeError):
    """A component did not become ready; the message ends with the tail of its log."""


def wait_until(
    component: Component, what: str, probe: Callable[[], bool], deadline: float, budget_s: float, interval: float = 0.1
) -> None:
    """Poll ``probe`` until it holds; StartupError if ``component`` exits first or ``deadline`` (monotonic) passes.

    ``budget_s`` is what the deadline allowed, for the message.
    """
    while not probe():
        if not component.running():
            raise StartupError(
                f"{component.name} exited with code {component.process.returncode} before it was {what}; "
                f"last lines of {component.log}:\n{component.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise StartupError(
                f"{component.name} not {what} within {budget_s:.0f}s of start; "
                f"last lines of {component.log}:\n{component.log_tail()}"
            )
        time.sleep(interval)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def spawn(
    name: str,
    argv: Sequence[str | os.PathLike[str]],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Component:
    """Start ``argv`` in its own process group, output appended to ``log``, killed if we die."""
    args = [os.fspath(arg) for arg in argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        output.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(args)}\n".encode())
        output.flush()
        # The child gets its own copy of the descriptor; ours closes on leaving the block.
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            # Safe despite threads: the hook only calls prctl, getppid and kill, no locks or allocation.
            preexec_fn=die_with_parent(os.getpid()),  # noqa: PLW1509
        )
    return Component(name=name, argv=args, log=log, process=process)
