"""``kubectl analysis`` (installed as ``kubectl-analysis``): the kubectl plugin.

Verbs: ``version``, and ``results <batch> [-n NS] [-o jsonl|json|table]``,
which prints what the batch's items ended with (one row per item, its latest
end: a re-run item's new result replaces the old one), read from the result
ConfigMaps the operator writes (``analysis_operator.results``).

Why it runs kubectl rather than a Kubernetes client: it then uses exactly
the user's kubeconfig, context, credentials plugins and proxy settings, as
``kubectl get`` would, with no client library to keep in step with them.
The kubectl it runs is ``$KUBECTL`` if set, else the one next to this
plugin, else the first on PATH; ``--kubeconfig``, ``--context`` and
``-n/--namespace`` are passed on (``KUBECONFIG`` is honoured by kubectl
itself). The chunks are selected by the batch's uid, read from the batch
first, so the results of an earlier batch of the same name never mix in.

Exit codes: 0 printed; 1 the batch does not exist; 2 bad usage; 3 the batch
has no results yet; 4 kubectl could not be run or failed otherwise. Errors
go to stderr, one line, ``error: ...`` like kubectl's own.

The plugin never imports the worker or kopf (import-linter checks it): it
is installed where only kubectl is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import analysis_core
from analysis_operator import results

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_RESULTS = 3
EXIT_KUBECTL = 4
FORMATS = ("jsonl", "json", "table")
TABLE_WIDTH = 120  # when the output is not a terminal and COLUMNS is not set
KUBECTL_TIMEOUT_S = 60


class PluginError(Exception):
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


def _global_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    if args.kubeconfig:
        flags += ["--kubeconfig", args.kubeconfig]
    if args.context:
        flags += ["--context", args.context]
    return flags


def _get_json(kubectl: str, argv: list[str]) -> tuple[dict[str, Any] | None, str]:
    """``kubectl <argv> -o json``: the object, or None and kubectl's error text."""
    try:
        done = subprocess.run(
            [kubectl, *argv, "-o", "json"], capture_output=True, text=True, timeout=KUBECTL_TIMEOUT_S, check=False
        )
    except OSError as exc:
        raise PluginError(f"cannot run {kubectl}: {exc}", EXIT_KUBECTL) from exc
    except subprocess.TimeoutExpired as exc:
        raise PluginError(f"kubectl {' '.join(argv)} did not answer within {KUBECTL_TIMEOUT_S}s", EXIT_KUBECTL) from exc
    if done.returncode != 0:
        return None, done.stderr.strip() or f"kubectl exited with code {done.returncode}"
    try:
        value = json.loads(done.stdout)
    except ValueError as exc:
        raise PluginError(f"kubectl {' '.join(argv)} printed no JSON: {exc}", EXIT_KUBECTL) from exc
    if not isinstance(value, dict):
        raise PluginError(f"kubectl {' '.join(argv)} printed no JSON object", EXIT_KUBECTL)
    return value, ""


def _batch(kubectl: str, args: argparse.Namespace) -> dict[str, Any]:
    namespace = ["--namespace", args.namespace] if args.namespace else []
    batch, error = _get_json(kubectl, [*_global_flags(args), "get", "analysisbatch", args.batch, *namespace])
    if batch is not None:
        return batch
    if "NotFound" in error or "not found" in error:
        where = f'namespace "{args.namespace}"' if args.namespace else "the current namespace"
        raise PluginError(f'analysisbatch "{args.batch}" not found in {where}', EXIT_NOT_FOUND)
    raise PluginError(error.removeprefix("error: "), EXIT_KUBECTL)


def _no_results(batch: dict[str, Any]) -> PluginError:
    name = batch.get("metadata", {}).get("name", "?")
    status = batch.get("status") or {}
    state = ", ".join(f"{key} {status[key]}" for key in ("phase", "progress") if status.get(key))
    return PluginError(f'analysisbatch "{name}" has no results yet' + (f" ({state})" if state else ""), EXIT_NO_RESULTS)


def _render(rows: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    if output == "table":
        width = shutil.get_terminal_size((TABLE_WIDTH, 24)).columns
        return results.format_table(rows, width)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def results_verb(args: argparse.Namespace) -> str:
    """The text ``kubectl analysis results`` prints, or PluginError."""
    kubectl = find_kubectl()
    batch = _batch(kubectl, args)
    metadata = batch.get("metadata", {})
    uid, namespace = metadata.get("uid"), metadata.get("namespace")
    if not uid or not namespace:
        raise PluginError(f'analysisbatch "{args.batch}" has no uid or namespace in its metadata', EXIT_KUBECTL)
    argv = [*_global_flags(args), "get", "configmaps", "--namespace", namespace, "-l", results.selector(uid)]
    listed, error = _get_json(kubectl, argv)
    if listed is None:
        raise PluginError(error.removeprefix("error: "), EXIT_KUBECTL)
    try:
        rows = results.latest_per_item(results.read_rows(listed.get("items") or []))
    except ValueError as exc:
        raise PluginError(f"the results of analysisbatch {args.batch!r} do not parse: {exc}", EXIT_KUBECTL) from exc
    if not rows:
        raise _no_results(batch)
    return _render(rows, args.output)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl analysis", description="Inspect and control AnalysisBatch resources."
    )
    parser.add_argument("--version", action="version", version=f"kubectl-analysis {analysis_core.__version__}")
    sub = parser.add_subparsers(dest="verb")
    sub.add_parser("version", help="print the plugin's version")
    found = sub.add_parser(
        "results",
        help="print what a batch's items ended with",
        description="Print the latest result of every item of an AnalysisBatch, from its result ConfigMaps.",
    )
    found.add_argument("batch", help="the AnalysisBatch's name")
    found.add_argument("-n", "--namespace", help="the batch's namespace (default: the context's)")
    found.add_argument("-o", "--output", choices=FORMATS, default="jsonl", help="output format (default: jsonl)")
    found.add_argument("--context", help="the kubeconfig context to use")
    found.add_argument("--kubeconfig", help="the kubeconfig file to use (default: $KUBECONFIG or ~/.kube/config)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.verb in (None, "version"):
        print(f"kubectl-analysis {analysis_core.__version__}")
        return
    try:
        text = results_verb(args)
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
