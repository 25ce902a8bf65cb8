"""What each wheel carries, built with the real build backend (hatchling) from the real trees.

The runtime wheel holds the operator, the worker and their core, and no test
tooling; each image's wheel, built from exactly what its Dockerfile's builder
stage copies, holds its own side only and declares only the commands it can
run (``hatch_build.py``); the dev cluster is a distribution of its own whose
editable install points at the source rather than copying it. The images
themselves are built and inspected in ``test_images.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {"analysis_core", "analysis_operator", "analysis_worker"}
COMMANDS = {
    "analysis-operator": "analysis_operator",
    "kubectl-analysis": "analysis_operator",
    "analysis-worker": "analysis_worker",
}


def build(project: Path, out: Path, kind: str = "wheel") -> Path:
    """``hatchling.build.build_<kind>`` run in ``project``, as pip's PEP 517 call would (without isolation)."""
    code = f"from hatchling.build import build_{kind}; print(build_{kind}({str(out)!r}))"
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120, check=False
    )
    assert ran.returncode == 0, ran.stderr
    return out / ran.stdout.strip().splitlines()[-1]


def contents(wheel: Path) -> tuple[set[str], dict[str, str], list[str]]:
    """Top-level packages, console scripts (name to target) and every file name of a wheel."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
        text = archive.read(entry_points).decode() if entry_points else ""
    packages = {n.split("/")[0] for n in names if "/" in n and ".dist-info/" not in n}
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", text, flags=re.MULTILINE))
    return packages, scripts, names


def builder_copies(dockerfile: Path) -> list[str]:
    """The sources the builder stage copies from the context (``COPY <src>... <dest>`` without ``--from``)."""
    copied: list[str] = []
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            copied += words[1:-1]
    return copied


def test_the_runtime_wheel_carries_the_runtime_packages_and_no_test_tooling(tmp_path: Path) -> None:
    packages, scripts, names = contents(build(ROOT, tmp_path))
    assert packages == RUNTIME
    assert {name: target.split(".")[0] for name, target in scripts.items()} == COMMANDS
    assert not [n for n in names if "devcluster" in n or "__pycache__" in n]


def test_the_sdist_leaves_the_dev_cluster_out_and_builds_the_same_wheel(tmp_path: Path) -> None:
    sdist = build(ROOT, tmp_path / "sdist", "sdist")
    shutil.unpack_archive(sdist, tmp_path / "unpacked")
    (tree,) = (tmp_path / "unpacked").iterdir()
    assert not (tree / "operator/src/analysis_devcluster").exists()
    packages, scripts, _ = contents(build(tree, tmp_path / "wheel"))
    assert packages == RUNTIME
    assert set(scripts) == set(COMMANDS)


@pytest.mark.parametrize(
    ("dockerfile", "side"),
    [
        ("Dockerfile", {"analysis_core", "analysis_operator"}),
        ("worker-image/Dockerfile", {"analysis_core", "analysis_worker"}),
    ],
    ids=["operator", "worker"],
)
def test_an_images_wheel_holds_its_side_and_only_the_commands_it_can_run(
    tmp_path: Path, dockerfile: str, side: set[str]
) -> None:
    tree = tmp_path / "src"
    for source in builder_copies(ROOT / dockerfile):
        target = tree / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / source, target)
    packages, scripts, names = contents(build(tree, tmp_path / "wheel"))
    assert packages == side
    assert {name for name, package in COMMANDS.items() if package in side} == set(scripts)
    # Both sides carry the whole Lua library: the operator loads it, workers call it by its name's digest.
    lua = sorted(p.name for p in (ROOT / "operator/src/analysis_core/lua").glob("*.lua"))
    assert lua
    assert sorted(n.rsplit("/", 1)[-1] for n in names if n.startswith("analysis_core/lua/")) == lua


def test_the_dev_cluster_wheel_copies_its_package_and_its_editable_install_points_at_the_source(
    tmp_path: Path,
) -> None:
    project = ROOT / "tools/devcluster"
    packages, scripts, names = contents(build(project, tmp_path / "wheel"))
    assert packages == {"analysis_devcluster"}
    assert scripts == {"analysis-devcluster": "analysis_devcluster.cli:main"}
    assert "analysis_devcluster/cli.py" in names
    editable = build(project, tmp_path / "editable", "editable")
    packages, scripts, names = contents(editable)
    assert packages == set(), "a copy in site-packages would shadow the source being edited"
    (pth,) = [n for n in names if n.endswith(".pth")]
    with zipfile.ZipFile(editable) as archive:
        assert Path(archive.read(pth).decode().strip()) == ROOT / "operator/src"
    assert set(scripts) == {"analysis-devcluster"}
