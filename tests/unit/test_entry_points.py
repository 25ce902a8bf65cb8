"""The console scripts exist and answer --version (run as real commands, from the venv)."""

import subprocess
import sys
from pathlib import Path

import pytest

import analysis_core

pytestmark = pytest.mark.unit

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", ["analysis-operator", "analysis-worker", "kubectl-analysis", "analysis-devcluster"])
def test_console_script_reports_its_version(command: str) -> None:
    result = subprocess.run([BIN / command, "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{command} {analysis_core.__version__}"


def test_operator_passes_its_arguments_to_kopf_run() -> None:
    result = subprocess.run(
        [BIN / "analysis-operator", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--standalone" in result.stdout
    assert "--liveness" in result.stdout


def test_worker_without_configuration_names_every_missing_variable() -> None:
    result = subprocess.run(
        [BIN / "analysis-worker"], capture_output=True, text=True, timeout=30, check=False, env={"PATH": "/usr/bin"}
    )
    assert result.returncode == 2
    for name in ("ANALYSIS_REDIS_URL", "ANALYSIS_BATCH_UID", "ANALYSIS_STAGE", "ANALYSIS_PLAN_PATH"):
        assert f"{name} is not set" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
