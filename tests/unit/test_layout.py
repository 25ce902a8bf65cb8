"""Guards of the repository layout that would otherwise break silently.

``operator/`` must never become a package: ``operator`` is a standard-library
module that ``collections`` (and so nearly everything) imports, and a package
of that name on ``sys.path`` shadows it on some interpreters and not others.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_operator_folder_is_not_a_package() -> None:
    assert (ROOT / "operator" / "src").is_dir()
    assert not (ROOT / "operator" / "__init__.py").exists(), "operator/ would shadow the stdlib module `operator`"


def test_no_module_or_folder_named_operator_anywhere_importable() -> None:
    offenders = [
        p.relative_to(ROOT)
        for top in ("operator/src", "worker-image/src", "tests")
        for p in (ROOT / top).rglob("operator*")
        if p.name in ("operator", "operator.py")
    ]
    assert offenders == []


def test_operator_resolves_to_the_standard_library_from_the_repo_root() -> None:
    code = "import operator, collections; print(operator.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    location = Path(result.stdout.strip())
    assert location.name == "operator.py"
    assert ROOT not in location.parents


def test_the_four_import_packages_live_where_the_design_says() -> None:
    import analysis_core
    import analysis_devcluster
    import analysis_operator
    import analysis_worker

    expected = {
        analysis_core: ROOT / "operator/src/analysis_core",
        analysis_operator: ROOT / "operator/src/analysis_operator",
        analysis_devcluster: ROOT / "operator/src/analysis_devcluster",
        analysis_worker: ROOT / "worker-image/src/analysis_worker",
    }
    for module, folder in expected.items():
        assert module.__file__ is not None
        assert Path(module.__file__).parent == folder
