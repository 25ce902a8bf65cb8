"""Shared fixtures: one private dev cluster per test session, plus per-test namespaces.

The cluster (real etcd, kube-apiserver, kube-controller-manager and
redis-server, see ``analysis_devcluster.cluster``) starts lazily, on the first
test that asks for it, in a pytest temporary directory, and stops at the end
of the session. Unit tests never touch it.

These fixtures never skip: a missing binary or a failed start raises, so the
test errors and CI fails instead of passing vacuously. Build the binaries
with ``make controlplane``.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from analysis_devcluster import cluster

REPO_ROOT = Path(__file__).resolve().parent.parent
CRDS_DIR = REPO_ROOT / "crds"
TIERS = ("unit", "integration", "e2e")


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
