"""Hatch's build hook for the analysis-devcluster distribution: its package lives outside this directory.

The code stays at ``operator/src/analysis_devcluster``, where the repository's
tools, tests and ``PYTHONPATH`` expect it. A wheel copies the package in; an
editable install (``make install``) does not, since its ``.pth`` file puts
the source root on ``sys.path`` (``dev-mode-dirs``) and a copy in
site-packages would shadow the source being edited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE = Path("..", "..", "operator", "src", "analysis_devcluster")


class PackageFromTheSourceTree(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "standard":
            build_data["force_include"][str((Path(self.root) / PACKAGE).resolve())] = PACKAGE.name
