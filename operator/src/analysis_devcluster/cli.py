"""``analysis-devcluster``: run a dev cluster in the background for interactive work.

Called as the ``analysis-devcluster`` console script or ``python -m
analysis_devcluster``. Verbs:

* ``up``: start a detached supervisor (``run``) and return once the cluster
  is ready; says so and exits 0 if one is already running. The cluster
  includes a node (:mod:`analysis_devcluster.node`: kubelet and containerd,
  so pods run as containers of the project's images; it needs root), unless
  ``--no-node``.
* ``down``: stop the supervisor (SIGTERM, then SIGKILL) and with it the cluster.
* ``status``: whether it runs, and its environment.
* ``run``: the supervisor itself, in the foreground; Ctrl-C stops cleanly.

Layout under ``--home`` (default ``<repo>/.devcluster``): ``state/`` (the
cluster's state directory), ``kubeconfig`` and ``env`` (the contract other
tools rely on; present only while a cluster runs), ``supervisor.json``
(pid, ports, URLs, node name and the node components' log directory),
``ready`` (marker), ``supervisor.log``, ``lock``. Pod logs: ``kubectl logs``.

A running supervisor holds an exclusive flock on ``lock``; that, not a pid in
a file, is what "running" means, so a stale pid can never be mistaken for a
live cluster. Tests do not use this module; they use
:class:`analysis_devcluster.cluster.DevCluster` directly. It deliberately
keeps no history and never restarts a dead component: the supervisor stops
everything and exits instead, so ``status`` stays truthful.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import analysis_core
from analysis_devcluster import binaries, cluster, processes

_UP_TIMEOUT = 180.0
_DOWN_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class Home:
    """The files of one background dev cluster."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def env(self) -> Path:
        return self.root / "env"

    @property
    def info(self) -> Path:
        return self.root / "supervisor.json"

    @property
    def ready(self) -> Path:
        return self.root / "ready"

    @property
    def log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def display(self, path: Path) -> str:
        """``path`` relative to the working directory when it is below it (for short hints)."""
        with contextlib.suppress(ValueError):
            return str(path.relative_to(Path.cwd()))
        return str(path)


class _Stop(Exception):
    """Raised by the supervisor's signal handler to unwind into a clean stop."""


# ------------------------------------------------------------------ supervisor state


def _supervisor_running(home: Home) -> bool:
    """Whether some process holds the home's lock, i.e. a supervisor is alive."""
    if not home.lock.exists():
        return False
    with home.lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def _read_info(home: Home) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads(home.info.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return info


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def _remove_runtime_files(home: Home) -> None:
    # kubeconfig and env go too: they hold credentials for, and point at, a cluster that is gone.
    for path in (home.ready, home.info, home.kubeconfig, home.env):
        path.unlink(missing_ok=True)


def _print_env(home: Home) -> None:
    print(f"KUBECONFIG={home.kubeconfig}")
    info = _read_info(home)
    if "redis_url" in info:
        print(f"REDIS_URL={info['redis_url']}")
    # Plain KEY=value lines are not exported by `source` alone; set -a exports them.
    print(f"load it with: set -a; source {home.display(home.env)}; set +a")


# ------------------------------------------------------------------ run (the supervisor)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _ignore_stop_signals() -> None:
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # Only the first signal unwinds; stopping must not itself be interrupted.
    _ignore_stop_signals()
    raise _Stop(signal.Signals(signum).name)


def _serve(home: Home, dev: cluster.DevCluster) -> int:
    """Start the cluster, publish it, and wait for a signal or a dead component."""
    dev.start()
    ports = dev.ports
    _write_json(
        home.info,
        {
            "pid": os.getpid(),
            "state": "ready",
            "state_dir": str(dev.state_dir),
            "kubeconfig": str(dev.kubeconfig),
            "env": str(dev.env_file),
            "server_url": dev.server_url,
            "redis_url": dev.redis_url,
            "ports": dataclasses.asdict(ports) if ports else {},
            "pids": dev.pids,
            "ready_seconds": round(dev.ready_seconds or 0.0, 3),
            "timings": dev.timings,
            "node": dev.node_name if dev.node else None,
            "node_logs": str(dev.node_state_dir / "logs") if dev.node else None,
        },
    )
    home.ready.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    print(f"ready in {dev.ready_seconds:.1f}s: {dev.server_url} {dev.redis_url}", flush=True)
    while True:
        dead = dev.dead_components()
        if dead:
            print(f"{', '.join(dead)} exited; stopping the dev cluster", flush=True)
            return 1
        time.sleep(1.0)


def _run(home: Home, node: bool) -> int:
    home.root.mkdir(parents=True, exist_ok=True)
    with home.lock.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"a dev cluster supervisor already runs for {home.root}", file=sys.stderr)
            return 1
        _remove_runtime_files(home)
        _write_json(home.info, {"pid": os.getpid(), "state": "starting"})
        try:
            dev = cluster.DevCluster(home.state, kubeconfig_path=home.kubeconfig, env_path=home.env, node=node)
        except binaries.MissingBinaryError as error:
            print(error, file=sys.stderr)
            home.info.unlink(missing_ok=True)
            return 1
        previous = {sig: signal.signal(sig, _raise_stop) for sig in _STOP_SIGNALS}
        status = 1
        try:
            status = _serve(home, dev)
        except _Stop as stop:
            print(f"{stop}: stopping the dev cluster", flush=True)
            status = 0
        except (cluster.StartupError, binaries.MissingBinaryError) as error:
            print(error, file=sys.stderr, flush=True)
        finally:
            _ignore_stop_signals()
            dev.stop()
            _remove_runtime_files(home)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        print("stopped", flush=True)
        return status


# ------------------------------------------------------------------ up / down / status


def _spawn_supervisor(home: Home, node: bool) -> int:
    home.root.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "analysis_devcluster", "--home", str(home.root), "run"]
    if not node:
        argv.append("--no-node")
    # posix_spawn rather than Popen: the supervisor must outlive us, and a
    # Popen object dropped while its child runs warns (ResourceWarning). No
    # PDEATHSIG here, for the same reason; setsid detaches it from our
    # terminal so Ctrl-C in this shell later does not reach it.
    return os.posix_spawn(
        sys.executable,
        argv,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(home.log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )


def _up(home: Home, timeout: float, node: bool) -> int:
    started = time.monotonic()
    if _supervisor_running(home) and home.ready.exists():
        info = _read_info(home)
        print(f"already running (supervisor pid {info.get('pid')})")
        _print_env(home)
        return 0
    if _supervisor_running(home):
        pid = int(_read_info(home).get("pid", 0))
        print(f"already starting (supervisor pid {pid}); waiting")
    else:
        _remove_runtime_files(home)
        pid = _spawn_supervisor(home, node)
    deadline = started + timeout
    while not home.ready.exists():
        if not processes.pid_alive(pid):
            print(f"the supervisor (pid {pid}) exited; last lines of {home.log}:", file=sys.stderr)
            print(processes.tail(home.log), file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"not ready after {timeout:.0f}s; stopping it; see {home.log}", file=sys.stderr)
            _terminate(pid, _DOWN_TIMEOUT)
            return 1
        time.sleep(0.1)
    info = _read_info(home)
    print(f"ready in {time.monotonic() - started:.1f}s (cluster {info.get('ready_seconds')}s, supervisor pid {pid})")
    print(f"server {info.get('server_url')}")
    if info.get("node"):
        print(f"node {info['node']}: kubelet and containerd; their logs in {info.get('node_logs')}")
    _print_env(home)
    return 0


def _terminate(pid: int, timeout: float) -> bool:
    """SIGTERM ``pid``, then SIGKILL after ``timeout``; True if it stopped gracefully."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while processes.pid_alive(pid):
        if time.monotonic() > deadline:
            # Its components carry PDEATHSIG, so they die with it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while processes.pid_alive(pid):
                time.sleep(0.05)
            return False
        time.sleep(0.05)
    return True


def _down(home: Home, timeout: float) -> int:
    started = time.monotonic()
    if not _supervisor_running(home):
        _remove_runtime_files(home)
        print("not running")
        return 0
    pid = int(_read_info(home).get("pid", 0))
    if pid <= 0:
        print(f"a supervisor holds {home.lock} but {home.info} names no pid", file=sys.stderr)
        return 1
    graceful = _terminate(pid, timeout)
    _remove_runtime_files(home)
    how = "stopped" if graceful else f"killed after {timeout:.0f}s"
    print(f"{how} in {time.monotonic() - started:.1f}s (supervisor pid {pid})")
    return 0


def _status(home: Home) -> int:
    if not _supervisor_running(home):
        print("not running")
        return 3  # LSB: program is not running
    info = _read_info(home)
    if not home.ready.exists():
        print(f"starting (supervisor pid {info.get('pid')})")
        return 0
    print(f"running (supervisor pid {info.get('pid')})")
    print(f"server {info.get('server_url')}")
    _print_env(home)
    return 0


# ------------------------------------------------------------------ entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analysis-devcluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"analysis-devcluster {analysis_core.__version__}")
    parser.add_argument("--home", type=Path, help="where state, kubeconfig and env live (default <repo>/.devcluster)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="start in the background; return when ready")
    up.add_argument("--timeout", type=float, default=_UP_TIMEOUT)
    up.add_argument("--no-node", dest="node", action="store_false", help="no node: pods stay Pending")
    down = verbs.add_parser("down", help="stop the background cluster")
    down.add_argument("--timeout", type=float, default=_DOWN_TIMEOUT)
    verbs.add_parser("status", help="whether it runs, and its environment")
    run = verbs.add_parser("run", help="run in the foreground (the supervisor); Ctrl-C stops")
    run.add_argument("--no-node", dest="node", action="store_false", help="no node: pods stay Pending")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        root: Path = args.home if args.home is not None else binaries.repo_root() / ".devcluster"
    except RuntimeError as error:
        print(error, file=sys.stderr)
        return 1
    home = Home(root.absolute())
    if args.verb == "up":
        return _up(home, args.timeout, args.node)
    if args.verb == "down":
        return _down(home, args.timeout)
    if args.verb == "status":
        return _status(home)
    return _run(home, args.node)
