"""Hatch's metadata hook for the analysis-operator distribution: a wheel declares only the commands it can run.

The wheel carries the packages listed in ``[tool.hatch.build.targets.wheel]``
that exist in the tree being built. ``pip wheel .`` on the repository gives
all of them (the runtime wheel: core, operator and worker); each image's
Dockerfile copies only its own side's packages into its build, so its wheel
holds ``analysis_core`` and ``analysis_operator``, or ``analysis_core`` and
``analysis_worker``. This hook does the same for the console scripts, which
hatch would otherwise declare whether or not their package is there: the
scripts are listed in ``[tool.hatch.metadata.hooks.custom.scripts]``, and a
wheel declares those whose top-level package it holds. The operator image
thus has no ``analysis-worker`` command that could only fail, and the worker
image no ``kubectl-analysis``.

The dev cluster is not in this distribution at all: ``tools/devcluster`` is a
development-only one, installed editable by ``make install``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface


class ScriptsOfPresentPackages(MetadataHookInterface):
    def update(self, metadata: dict[str, Any]) -> None:
        root = Path(self.root)
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
        packages = {Path(path).name: root / path for path in wheel["packages"]}
        scripts: dict[str, str] = {}
        for name, target in self.config["scripts"].items():
            package = target.split(":")[0].split(".")[0]
            if package not in packages:
                raise ValueError(f"script {name} runs {target}, from {package}, which is not a package of the wheel")
            if (packages[package] / "__init__.py").is_file():
                scripts[name] = target
        metadata["scripts"] = scripts
