"""How ``kubectl analysis`` talks to the cluster: by running kubectl, never a client library.

Running kubectl means the plugin uses exactly the user's kubeconfig, context,
credential plugins and proxy settings, as ``kubectl get`` would, with no
client library to keep in step with them. The kubectl it runs is
``$KUBECTL`` if set, else the one next to this plugin, else the first on
PATH; ``--kubeconfig`` and ``--context`` are passed on to every call
(``KUBECONFIG`` is honoured by kubectl itself).

Every failure becomes a :class:`PluginError` with the exit code the plugin
documents, so the verbs stay free of subprocess details.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from analysis_core import api

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_RESULTS = 3
EXIT_KUBECTL = 4
EXIT_BATCH_FAILED = 5
KUBECTL_TIMEOUT_S = 60
RESOURCE = f"{api.PLURAL}.{api.GROUP}"  # fully qualified: never mistaken for another group's kind
FIELD_MANAGER = "kubectl-analysis"  # who wrote a field, as managedFields shows it
CONFLICT_ATTEMPTS = 10


class PluginError(Exception):
    """A failure to report as one ``error: ...`` line and the exit code ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def find_kubectl() -> str:
    """``$KUBECTL``, else the kubectl next to this plugin, else the first on PATH."""
    override = os.environ.get("KUBECTL")
    if override:
        return override
    here = Path(sys.argv[0]).absolute().parent / "kubectl"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("kubectl")
    if found is None:
        raise PluginError("kubectl not found next to kubectl-analysis or on PATH (or set KUBECTL)", EXIT_KUBECTL)
    return found


def _kubectl_message(stderr: str, returncode: int) -> str:
    """kubectl's own error text, without its ``error: `` prefix (the plugin adds one)."""
    text = stderr.strip() or f"kubectl exited with code {returncode}"
    return text.removeprefix("error: ")


def is_not_found(stderr: str) -> bool:
    return "(NotFound)" in stderr or " not found" in stderr


def is_conflict(stderr: str) -> bool:
    """A write refused because the object changed since it was read (409 Conflict)."""
    return "(Conflict)" in stderr or "the object has been modified" in stderr


@dataclasses.dataclass(frozen=True)
class Kubectl:
    """kubectl with the user's global flags, and the namespace of ``-n`` (None: the context's)."""

    path: str
    flags: tuple[str, ...] = ()
    namespace: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Kubectl:
        flags: list[str] = []
        if getattr(args, "kubeconfig", None):
            flags += ["--kubeconfig", args.kubeconfig]
        if getattr(args, "context", None):
            flags += ["--context", args.context]
        return cls(find_kubectl(), tuple(flags), getattr(args, "namespace", None))

    def argv(self, *args: str, namespace: str | None = None) -> list[str]:
        """The command line: kubectl, global flags, ``args``, and the namespace (``namespace`` or ``-n``)."""
        where = namespace or self.namespace
        return [self.path, *self.flags, *args, *(["--namespace", where] if where else [])]

    def where(self) -> str:
        return f'namespace "{self.namespace}"' if self.namespace else "the current namespace"

    def run(
        self, *args: str, namespace: str | None = None, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args, namespace=namespace)
        try:
            return subprocess.run(
                argv, input=input_text, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S, check=False
            )
        except OSError as exc:
            raise PluginError(f"cannot run {self.path}: {exc}", EXIT_KUBECTL) from exc
        except subprocess.TimeoutExpired as exc:
            raise PluginError(
                f"kubectl {' '.join(args)} did not answer within {KUBECTL_TIMEOUT_S}s", EXIT_KUBECTL
            ) from exc

    def get_json(self, *args: str, namespace: str | None = None) -> tuple[dict[str, Any] | None, str]:
        """``kubectl <args> -o json``: the object, or None and kubectl's error text."""
        done = self.run(*args, "-o", "json", namespace=namespace)
        if done.returncode != 0:
            return None, done.stderr.strip() or f"kubectl exited with code {done.returncode}"
        return parse_object(done.stdout, " ".join(args)), ""

    def batch(self, name: str) -> dict[str, Any]:
        """The AnalysisBatch ``name``; exit 1 when it does not exist, 4 when kubectl fails otherwise."""
        batch, error = self.get_json("get", RESOURCE, name)
        if batch is not None:
            return batch
        if is_not_found(error):
            raise PluginError(f'analysisbatch "{name}" not found in {self.where()}', EXIT_NOT_FOUND)
        raise PluginError(_kubectl_message(error, 1), EXIT_KUBECTL)

    def list_json(self, *args: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The items of ``kubectl get <args> -o json``; kubectl failing is exit 4."""
        listed, error = self.get_json("get", *args, namespace=namespace)
        if listed is None:
            raise PluginError(_kubectl_message(error, 1), EXIT_KUBECTL)
        return [item for item in listed.get("items") or [] if isinstance(item, dict)]

    def patch(self, name: str, namespace: str, patch: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """A JSON merge patch of the batch, recorded under our field manager: the object, or None and the error."""
        done = self.run(
            "patch",
            RESOURCE,
            name,
            "--type=merge",
            f"--field-manager={FIELD_MANAGER}",
            "-o",
            "json",
            "-p",
            json.dumps(patch),
            namespace=namespace,
        )
        if done.returncode != 0:
            return None, done.stderr.strip() or f"kubectl exited with code {done.returncode}"
        return parse_object(done.stdout, f"patch {name}"), ""

    def popen(self, *args: str, namespace: str | None = None) -> subprocess.Popen[str]:
        """kubectl running in the background (for ``logs -f``), its stdout a pipe of text lines."""
        try:
            return subprocess.Popen(
                self.argv(*args, namespace=namespace),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                errors="replace",
            )
        except OSError as exc:
            raise PluginError(f"cannot run {self.path}: {exc}", EXIT_KUBECTL) from exc


def parse_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise PluginError(f"kubectl {what} printed no JSON: {exc}", EXIT_KUBECTL) from exc
    if not isinstance(value, dict):
        raise PluginError(f"kubectl {what} printed no JSON object", EXIT_KUBECTL)
    return value


def kubectl_error(stderr: str) -> PluginError:
    """kubectl's failure as the plugin reports it (exit 1 for a missing object, else 4)."""
    return PluginError(_kubectl_message(stderr, 1), EXIT_NOT_FOUND if is_not_found(stderr) else EXIT_KUBECTL)
