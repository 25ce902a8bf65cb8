"""The local node's reading of a container spec: its argv, with paths translated only where the spec gave them."""

from pathlib import Path

import pytest

from analysis_devcluster import podspec

pytestmark = pytest.mark.unit

PAIRS = [("/tmp", Path("/state/pods/p/volumes/tmp")), ("/etc/analysis", Path("/state/pods/p/volumes/plan"))]


def translate(part: str) -> str:
    return podspec.translate(part, PAIRS)


def test_an_image_entrypoint_is_a_host_path_and_is_not_translated() -> None:
    # A checkout under /tmp (as CI clones it) must not be rewritten into the pod's /tmp emptyDir.
    images = {"python": ["/tmp/ci/main/.venv/bin/python3"]}
    container = {"image": "python:3.12-slim", "args": ["-c", "x", "/etc/analysis/plan.json"]}
    assert podspec.argv(container, images, {}, translate) == [
        "/tmp/ci/main/.venv/bin/python3", "-c", "x", "/state/pods/p/volumes/plan/plan.json",
    ]  # fmt: skip


def test_a_spec_command_is_translated_and_expanded() -> None:
    container = {"image": "any", "command": ["/tmp/tool", "$(WHERE)"], "args": ["/etc/analysis"]}
    assert podspec.argv(container, {}, {"WHERE": "/tmp/out"}, translate) == [
        "/state/pods/p/volumes/tmp/tool", "/state/pods/p/volumes/tmp/out", "/state/pods/p/volumes/plan",
    ]  # fmt: skip


def test_an_unknown_image_without_a_command_has_no_argv() -> None:
    assert podspec.argv({"image": "ghcr.io/x/unknown:1"}, {"python": ["/usr/bin/python3"]}, {}, translate) is None
