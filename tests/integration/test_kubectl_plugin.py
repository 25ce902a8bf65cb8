"""The pinned kubectl finds ``kubectl-analysis`` on PATH and runs it as ``kubectl analysis``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import analysis_core
from analysis_devcluster import binaries

pytestmark = pytest.mark.integration


def run_kubectl(*args: str) -> subprocess.CompletedProcess[str]:
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(binaries.find("kubectl")), *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def test_kubectl_discovers_the_plugin() -> None:
    result = run_kubectl("plugin", "list", "--name-only")
    assert result.returncode == 0, result.stderr
    assert "kubectl-analysis" in result.stdout.split()


def test_kubectl_analysis_runs_the_plugin() -> None:
    result = run_kubectl("analysis", "version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"kubectl-analysis {analysis_core.__version__}"
