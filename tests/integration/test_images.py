"""The images, built for real with buildah from the repository's Dockerfiles on the dev cluster's Debian base.

``analysis_devcluster.images`` builds them (or finds them in its cache) as
the node does before it imports them into containerd. These tests read what
was built: each image's configuration (user, entrypoint, labels, no
HEALTHCHECK), and its contents, by running the image with ``buildah run``:
every module of its packages imports, its commands are its side's only, and
what it must not carry (the other side's package and dependencies, the dev
cluster, pip) is absent. The
pods of the e2e tier run the same images on the real node. A rebuild after a
change of the project's source reuses the dependency layer (buildah's layer
cache), which is what keeps a warm build at seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import analysis_core
from analysis_devcluster import images

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_DIR = "/opt/venv"
NONROOT = "65532"  # builders.WORKER_UID; the chart runs the operator as the same user


@dataclasses.dataclass(frozen=True)
class Image:
    spec: images.Spec
    packages: tuple[str, ...]  # every module of these must import
    present: tuple[str, ...]
    absent: tuple[str, ...]  # what the image must not carry
    commands: tuple[str, ...]  # the console scripts the project's distribution installs there


OPERATOR = Image(
    images.OPERATOR,
    ("analysis_core", "analysis_operator"),
    ("kopf", "aiohttp", "lightkube", "prometheus_client"),
    ("analysis_worker", "analysis_devcluster", "anthropic", "openai", "pip"),
    ("analysis-operator", "kubectl-analysis"),
)
WORKER = Image(
    images.WORKER,
    ("analysis_core", "analysis_worker"),
    ("anthropic", "openai", "prometheus_client"),
    ("analysis_operator", "analysis_devcluster", "kopf", "lightkube", "pip"),
    ("analysis-worker",),
)
IMAGES = [pytest.param(OPERATOR, id="operator"), pytest.param(WORKER, id="worker")]


@pytest.fixture(scope="module")
def built() -> dict[str, images.Built]:
    """What the node imports: the pause image and the project's images on the Debian base."""
    return {b.name: b for b in images.build_all()}


def buildah(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"buildah {' '.join(args)}: {result.stderr}"
    return result.stdout


def config(name: str) -> dict[str, Any]:
    """The OCI image configuration of a built image (``buildah inspect``)."""
    inspected = json.loads(buildah("inspect", "--type=image", f"localhost/{name}"))
    return dict(inspected["OCIv1"]["config"]) | {"Docker": inspected["Docker"]["config"]}


@contextlib.contextmanager
def working_container(name: str) -> Iterator[str]:
    container = buildah("from", "--quiet", "--pull=never", f"localhost/{name}").strip()
    try:
        yield container
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def run_in(container: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` in the image, as its user, with no network at all."""
    return subprocess.run(
        ["buildah", "run", "--network=none", container, "--", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("image", IMAGES)
def test_image_configuration(built: dict[str, images.Built], image: Image) -> None:
    """Non-root, the entrypoint on the venv's PATH, OCI labels with the version, no HEALTHCHECK."""
    name = image.spec.name()
    assert name in built
    seen = config(name)
    assert seen["User"] == f"{NONROOT}:{NONROOT}"
    assert seen["Entrypoint"] == [image.spec.entrypoint]
    assert any(env.startswith(f"PATH={VENV_DIR}/bin:") for env in seen["Env"])
    assert "PYTHONDONTWRITEBYTECODE=1" in seen["Env"]
    assert not seen["Docker"].get("Healthcheck")
    labels = seen["Labels"]
    assert labels["org.opencontainers.image.title"] == image.spec.repository
    assert labels["org.opencontainers.image.version"] == analysis_core.__version__
    assert labels["org.opencontainers.image.base.name"].startswith(images.BASE_REPOSITORY)


IMPORT_EVERY_MODULE = """
import importlib, importlib.metadata, importlib.util, json, pkgutil, sys
tops, present, absent = (arg.split(",") for arg in sys.argv[1:4])
failures, files = {}, {}
for top in tops:
    package = importlib.import_module(top)
    files[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line on import
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failures[info.name] = f"{type(exc).__name__}: {exc}"
missing = [name for name in present if importlib.util.find_spec(name) is None]
found = [name for name in absent if importlib.util.find_spec(name) is not None]
commands = sorted(ep.name for ep in importlib.metadata.distribution("analysis-operator").entry_points)
print(json.dumps({"failures": failures, "files": files, "missing": missing, "found": found,
                  "executable": sys.executable, "commands": commands}))
"""


@pytest.mark.parametrize("image", IMAGES)
def test_image_imports_all_its_code_and_carries_nothing_it_must_not(
    built: dict[str, images.Built], image: Image
) -> None:
    with working_container(image.spec.name()) as container:
        lists = (",".join(names) for names in (image.packages, image.present, image.absent))
        ran = run_in(container, "python", "-c", IMPORT_EVERY_MODULE, *lists)
        assert ran.returncode == 0, ran.stderr
        report = json.loads(ran.stdout)
        # Every module, including the ones imported lazily (each provider SDK only when a stage uses it).
        assert report["failures"] == {}
        assert report["executable"] == f"{VENV_DIR}/bin/python"
        for package, file in report["files"].items():
            assert file.startswith(f"{VENV_DIR}/lib/"), f"{package} came from {file}, not from the image's venv"
        assert report["missing"] == [], f"the {image.spec.repository} image lacks {report['missing']}"
        assert report["found"] == [], f"the {image.spec.repository} image must not carry {report['found']}"
        # Only the commands of its own side: none that would fail for a package it does not carry.
        assert report["commands"] == sorted(image.commands)
        # The base's own Python carries no pip either: nothing in the image can install more.
        assert run_in(container, "python3", "-m", "pip", "--version").returncode != 0
        # The entrypoint answers as itself.
        helped = run_in(container, image.spec.entrypoint, "--help")
        assert helped.returncode == 0, helped.stderr
        assert image.spec.entrypoint in helped.stdout


def test_the_redis_image_serves_as_the_charts_redis(built: dict[str, images.Built]) -> None:
    """Debian's redis-server and redis-cli on PATH, sh for the chart's probes, the official image's uid, /data."""
    name = images.REDIS.name()
    seen = config(name)
    assert seen["User"] == "999:999"
    assert seen["WorkingDir"] == "/data"
    with working_container(name) as container:
        ran = run_in(
            container, "sh", "-c", "id -u; id -g; redis-server --version; command -v redis-cli; stat -c %U /data"
        )
        assert ran.returncode == 0, ran.stderr
        uid, gid, version, cli, owner = ran.stdout.splitlines()
        assert (uid, gid, owner) == ("999", "999", "redis")
        assert re.match(r"Redis server v=7\.", version), version
        assert cli.endswith("/redis-cli")


def test_the_pause_image_is_a_static_binary(built: dict[str, images.Built]) -> None:
    pause = built[images.PAUSE_IMAGE]
    assert pause.archive.stat().st_size < 2_000_000
    seen = json.loads(buildah("inspect", "--type=image", images.PAUSE_IMAGE))["OCIv1"]["config"]
    assert seen["Entrypoint"] == ["/pause"]
    assert seen["User"] == "65535:65535"


def test_build_context_keeps_out_everything_but_the_sources() -> None:
    """.devcluster holds private keys and kubeconfigs; .venv and .git are large: none may reach a build context."""
    rules = images.IgnoreRules.read(REPO_ROOT / ".dockerignore")
    for secret in (
        ".devcluster/kubeconfig",
        ".devcluster/state/pki/ca.key",
        ".venv/bin/python",
        ".git/config",
        ".env",
        "bench/results/x.json",
        "tests/conftest.py",
        "charts/analysis-operator/values.yaml",
        "operator/src/analysis_devcluster/cli.py",
        "tools/devcluster/pyproject.toml",
    ):
        assert rules.ignored(secret), f"{secret} would be sent to the builder"
    for needed in (
        "pyproject.toml",
        "README.md",
        "hatch_build.py",
        "operator/src/analysis_core/__init__.py",
        "operator/src/analysis_core/lua/seed.lua",
        "operator/src/analysis_operator/kube.py",
        "worker-image/src/analysis_worker/cli.py",
    ):
        assert not rules.ignored(needed), f"{needed} is needed by the build"
    assert rules.ignored("operator/src/analysis_core/__pycache__/keys.cpython-311.pyc")
    context = images.context_files(REPO_ROOT)
    assert "pyproject.toml" in context
    assert not [
        path
        for path in context
        if path.startswith((".devcluster/", ".venv/", ".git/", "tests/", "operator/src/analysis_devcluster/"))
    ]


def test_a_source_change_rebuilds_on_the_cached_dependency_layer(
    built: dict[str, images.Built], tmp_path: Path
) -> None:
    """The dependency install is keyed on the dependency list: a source change reuses it and rebuilds the rest.

    Only the builder stage is built (the final stage would store another copy of the venv per run).
    """
    context = tmp_path / "context"
    for relative in images.context_files(REPO_ROOT):
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, target)
    for dockerfile in ("Dockerfile", "worker-image/Dockerfile"):
        (context / dockerfile).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / dockerfile, context / dockerfile)
    (context / ".dockerignore").write_text((REPO_ROOT / ".dockerignore").read_text())
    changed = context / "worker-image/src/analysis_worker/cli.py"
    # A change never built before (a build of the same change would find its layers cached too).
    changed.write_text(changed.read_text() + f"\n# a change of the project's source: {uuid.uuid4()}\n")
    spec = dataclasses.replace(images.WORKER, repository="analysis-worker-layer-test")
    base = images.base_image().name
    output = subprocess.run(
        [
            "buildah",
            "bud",
            "--layers",
            "--network=host",
            f"--cni-config-dir={tmp_path}",
            f"--build-arg=BASE_IMAGE={base}",
            "--target=builder",
            "-f",
            str(context / spec.dockerfile),
            "-t",
            spec.name(),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        assert output.returncode == 0, output.stderr[-3000:]
        steps = re.split(r"\n(?=\[\d/\d\] STEP )", output.stdout)
        install = next(s for s in steps if "pip install -r /tmp/requirements.txt" in s)
        assert "Using cache" in install, install
        project = next(s for s in steps if "pip wheel --no-deps" in s)
        assert "Using cache" not in project, project
    finally:
        subprocess.run(["buildah", "rmi", f"localhost/{spec.name()}"], capture_output=True, check=False)
