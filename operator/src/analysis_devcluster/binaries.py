"""Find the executables the dev cluster runs.

Called by :mod:`analysis_devcluster.cluster` before anything is started, and
by tests that check the error message. The Go-built tools (etcd,
kube-apiserver, kube-controller-manager, kubectl; the node's kubelet,
kube-proxy, kube-scheduler and coredns; helm; and kstatus, which only
tests run) come from one directory:
``$ANALYSIS_DEVCLUSTER_BIN`` or ``<repo root>/.devcluster/bin``;
``redis-server`` comes from ``PATH``.

It deliberately does not build, download or version-check anything, and it
never falls back to a kubectl or etcd found on ``PATH``: those are often a
different version than the pinned build, and mixing them gives confusing
failures much later.
"""

import os
import shutil
from pathlib import Path

BIN_ENV = "ANALYSIS_DEVCLUSTER_BIN"
CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")


class MissingBinaryError(RuntimeError):
    """A required executable is absent; the message is one line naming the fix."""


def repo_root() -> Path:
    """The repository root: the nearest ancestor holding pyproject.toml and tools/controlplane.

    The working directory is tried first so that a checkout used from a
    different venv still finds its own binaries; this file's location is the
    fallback for an editable install run from elsewhere.
    """
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for candidate in (start, *start.parents):
            if (candidate / "pyproject.toml").is_file() and (candidate / "tools" / "controlplane").is_dir():
                return candidate
    raise RuntimeError(
        f"repository root not found above {Path.cwd()} or {Path(__file__).parent}: "
        f"run from the checkout or set {BIN_ENV}"
    )


def bin_dir() -> Path:
    """The directory holding the control-plane tools."""
    configured = os.environ.get(BIN_ENV)
    if configured:
        return Path(configured).resolve()
    return repo_root() / ".devcluster" / "bin"


def find(tool: str) -> Path:
    """The path of one control-plane tool, or a MissingBinaryError telling how to build it."""
    directory = bin_dir()
    path = directory / tool
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MissingBinaryError(
            f"{tool} not found in {directory}: run `make controlplane` (tools/controlplane/build.sh)"
        )
    return path


def weed() -> Path:
    """SeaweedFS's ``weed`` (the S3-compatible results store of the tests), or a MissingBinaryError naming the fix."""
    path = bin_dir() / "weed"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise MissingBinaryError(f"weed not found in {bin_dir()}: run `make seaweedfs` (tools/seaweedfs/build.sh)")
    return path


def redis_server() -> Path:
    """The path of redis-server on PATH, or a MissingBinaryError telling how to install it."""
    found = shutil.which("redis-server")
    if found is None:
        raise MissingBinaryError("redis-server not found on PATH: run `apt-get install redis-server`")
    return Path(found)


def check_all() -> None:
    """Fail fast, before spawning anything, if any executable is missing."""
    for tool in CONTROL_PLANE_TOOLS:
        find(tool)
    redis_server()
