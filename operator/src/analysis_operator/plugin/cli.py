"""The command line of ``kubectl analysis``: the parser, one function per verb, and ``main``.

Each verb reads through :class:`~analysis_operator.plugin.kubectl.Kubectl`,
leaves the deciding and the text to the pure modules (``progress``, ``render``,
``control``, ``logs``, and ``analysis_operator.results`` for the result
ConfigMaps), and writes to ``out``. A failure is a
:class:`~analysis_operator.plugin.kubectl.PluginError`, which ``main`` turns
into one ``error: ...`` line on stderr and the exit code it carries (the
codes are listed in ``analysis_operator.plugin``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import analysis_core
from analysis_core import api
from analysis_core.api import wellknown
from analysis_operator import results
from analysis_operator.plugin import control, logs, progress, render
from analysis_operator.plugin.kubectl import (
    CONFLICT_ATTEMPTS,
    EXIT_BATCH_FAILED,
    EXIT_KUBECTL,
    EXIT_NO_RESULTS,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    RESOURCE,
    Kubectl,
    PluginError,
    is_conflict,
    kubectl_error,
)

FORMATS = ("jsonl", "json", "table")
GET_FORMATS = ("table", "wide", "json", "yaml", "name")
TABLE_WIDTH = 120  # when the output is not a terminal and COLUMNS is not set
STATUS_INTERVAL_S = 2.0  # the operator writes status at most every couple of seconds
STATUS_RETRIES = 5  # kubectl failures in a row that following a batch rides out
LOGS_INTERVAL_S = 2.0
GITOPS_NOTE = (
    "GitOps users (Argo CD, Flux) should make this change in Git: a controller that syncs the batch's spec "
    "from Git reverts a change made here."
)


def _unicode(out: TextIO) -> bool:
    return (getattr(out, "encoding", "") or "").lower().replace("-", "").replace("_", "") == "utf8"


def _ident(batch: dict[str, Any]) -> str:
    return f"{api.KIND.lower()}.{api.GROUP}/{(batch.get('metadata') or {}).get('name', '?')}"


def _name_and_namespace(batch: dict[str, Any], name: str) -> tuple[str, str]:
    metadata = batch.get("metadata") or {}
    if not metadata.get("uid") or not metadata.get("namespace"):
        raise PluginError(f'analysisbatch "{name}" has no uid or namespace in its metadata', EXIT_KUBECTL)
    return str(metadata["name"]), str(metadata["namespace"])


# ---------------------------------------------------------------- results


def _no_results(batch: dict[str, Any]) -> PluginError:
    name = batch.get("metadata", {}).get("name", "?")
    status = batch.get("status") or {}
    state = ", ".join(f"{key} {status[key]}" for key in ("phase", "progress") if status.get(key))
    return PluginError(f'analysisbatch "{name}" has no results yet' + (f" ({state})" if state else ""), EXIT_NO_RESULTS)


def _render_results(rows: list[dict[str, Any]], output: str, table: Callable[[list[dict[str, Any]], int], str]) -> str:
    if output == "json":
        return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    if output == "table":
        return table(rows, shutil.get_terminal_size((TABLE_WIDTH, 24)).columns)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def results_verb(args: argparse.Namespace, out: TextIO) -> int:
    if args.location:
        rows = _stored_rows(args.location, args.endpoint, args.location)
        if not rows:
            raise PluginError(f"no results under {args.location}", EXIT_NO_RESULTS)
        out.write(_render_results(results.latest_per_item(rows), args.output, results.format_table))
        return 0
    kubectl = Kubectl.from_args(args)
    try:
        batch = kubectl.batch(args.batch)
    except PluginError as exc:
        if exc.code != EXIT_NOT_FOUND:
            raise
        return _retained_results(kubectl, args, out, exc)
    _name, namespace = _name_and_namespace(batch, args.batch)
    uid = batch["metadata"]["uid"]
    where = (batch.get("status") or {}).get("results") or {}
    if where.get("sink") == "ObjectStore" and where.get("location"):
        rows = _stored_rows(str(where["location"]), args.endpoint or where.get("endpoint"), args.batch)
    else:
        chunks = kubectl.list_json("configmaps", "-l", results.selector(uid), namespace=namespace)
        rows = _chunk_rows(chunks, args.batch)
    if not rows:
        raise _no_results(batch)
    out.write(_render_results(results.latest_per_item(rows), args.output, results.format_table))
    return 0


def _chunk_rows(chunks: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    try:
        return results.read_rows(chunks)
    except ValueError as exc:
        raise PluginError(f"the results of analysisbatch {what!r} do not parse: {exc}", EXIT_KUBECTL) from exc


def _stored_rows(location: str, endpoint: str | None, what: str) -> list[dict[str, Any]]:
    from analysis_operator.plugin import stored

    try:
        return stored.read_location(location, endpoint)
    except stored.UnreadableLocation as exc:
        raise PluginError(str(exc), EXIT_USAGE) from exc
    except stored.StoreError as exc:
        raise PluginError(f"cannot read the results of {what!r} at {location}: {exc}", EXIT_KUBECTL) from exc
    except ValueError as exc:
        raise PluginError(f"the results of {what!r} at {location} do not parse: {exc}", EXIT_KUBECTL) from exc


def _retained_results(kubectl: Kubectl, args: argparse.Namespace, out: TextIO, missing: PluginError) -> int:
    """A deleted batch's results ConfigMaps (kept by spec.results.onDelete: Retain), by the batch's name label:
    those of its last run when the name was used more than once."""
    chunks = kubectl.list_json(
        "configmaps", "-l", f"{results.LABEL_RESULTS}=true,{wellknown.LABEL_BATCH}={args.batch[:63]}"
    )
    if not chunks:
        raise PluginError(
            f"{missing}; no results it left behind in ConfigMaps either (results in object storage: "
            "--location s3://bucket/prefix/namespace/batch/uid/)",
            EXIT_NOT_FOUND,
        )
    newest = max(chunks, key=lambda c: str((c.get("metadata") or {}).get("creationTimestamp") or ""))
    uid = ((newest.get("metadata") or {}).get("labels") or {}).get(wellknown.LABEL_BATCH_UID)
    mine = [c for c in chunks if ((c.get("metadata") or {}).get("labels") or {}).get(wellknown.LABEL_BATCH_UID) == uid]
    rows = _chunk_rows(mine, args.batch)
    if not rows:
        raise PluginError(f"{missing}; the results it left behind are empty", EXIT_NO_RESULTS)
    out.write(_render_results(results.latest_per_item(rows), args.output, results.format_table))
    return 0


# ---------------------------------------------------------------- status


def _draw(out: TextIO, lines: list[str], drawn: int) -> int:
    """Redraw in place on a terminal: back up over the last frame, clear it, print this one; lines now shown.

    Lines are cut to the terminal's width and the frame to its height, so the
    cursor can always move back to the frame's first line.
    """
    width, height = shutil.get_terminal_size((TABLE_WIDTH, 24))
    frame = [render.clip(line, width - 1) for line in lines]
    if len(frame) > max(2, height - 1):
        frame = [*frame[: max(2, height - 1) - 1], "…"]
    if drawn:
        out.write(f"\x1b[{drawn}A\r\x1b[J")
    out.write("\n".join(frame) + "\n")
    return len(frame)


def status_verb(args: argparse.Namespace, out: TextIO) -> int:
    kubectl = Kubectl.from_args(args)
    tty = out.isatty() and not args.once
    rates = progress.Rates()
    drawn, shown, failures = 0, None, 0
    while True:
        try:
            batch = kubectl.batch(args.batch)
            failures = 0
        except PluginError as exc:
            if exc.code != EXIT_KUBECTL or args.once or failures >= STATUS_RETRIES:
                raise
            failures += 1
            print(f"warning: {exc} (retrying)", file=sys.stderr)
            drawn = 0  # the warning went below the frame: draw the next one afresh
            time.sleep(args.interval)
            continue
        rates.observe(time.monotonic(), batch)
        end = progress.outcome(batch)
        lines = progress.snapshot(batch, rates, datetime.now(UTC), unicode=_unicode(out))
        version = (batch.get("metadata") or {}).get("resourceVersion")
        if tty:
            drawn = _draw(out, lines, drawn)
        elif version != shown:  # appended snapshots: only when the batch changed, so logs stay readable
            out.write(("\n" if shown is not None else "") + "\n".join(lines) + "\n")
            shown = version
        out.flush()
        if args.once or end is not None:
            return EXIT_BATCH_FAILED if end == wellknown.ConditionType.FAILED else 0
        time.sleep(args.interval)


# ---------------------------------------------------------------- get and list


def _print_objects(objects: list[dict[str, Any]], output: str, out: TextIO, *, single: bool, namespace: bool) -> None:
    if output == "name":
        out.write("".join(_ident(obj) + "\n" for obj in objects))
        return
    if output in ("json", "yaml"):
        value: dict[str, Any] = (
            objects[0] if single else {"apiVersion": "v1", "items": objects, "kind": "List", "metadata": {}}
        )
        if output == "json":
            out.write(json.dumps(value, ensure_ascii=False, indent=4) + "\n")
        else:
            import yaml  # only here: loading it costs every other call of the plugin about 10 ms

            out.write(yaml.safe_dump(value, allow_unicode=True, default_flow_style=False, sort_keys=True))
        return
    out.write(render.table(objects, datetime.now(UTC), wide=output == "wide", namespace=namespace))


def get_verb(args: argparse.Namespace, out: TextIO) -> int:
    batch = Kubectl.from_args(args).batch(args.batch)
    _print_objects([batch], args.output, out, single=True, namespace=False)
    return 0


def list_verb(args: argparse.Namespace, out: TextIO) -> int:
    kubectl = Kubectl.from_args(args)
    extra = ["--all-namespaces"] if args.all_namespaces else []
    if args.selector:
        extra += ["-l", args.selector]
    found = kubectl.list_json(RESOURCE, *extra)
    if not found and args.output in ("table", "wide", "name"):  # json and yaml print an empty List, as kubectl
        if args.all_namespaces:
            where = ""
        else:
            where = f" in {args.namespace} namespace" if args.namespace else " in the current namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return 0
    _print_objects(found, args.output, out, single=False, namespace=args.all_namespaces)
    return 0


# ---------------------------------------------------------------- writes


def _warn_gitops(batch: dict[str, Any]) -> None:
    owner = control.gitops_owner(batch)
    if owner:
        name = (batch.get("metadata") or {}).get("name", "?")
        print(
            f'warning: analysisbatch "{name}" is managed by {owner}, which may revert this change to its spec; '
            "make it in Git to keep it",
            file=sys.stderr,
        )


def _write_spec(
    kubectl: Kubectl, name: str, compute: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Read the batch, patch it with ``compute(batch)`` (tied to the version read), again after each conflict.

    Returns the batch as read and as written (None: ``compute`` found nothing to change).
    """
    for attempt in range(CONFLICT_ATTEMPTS):
        batch = kubectl.batch(name)
        try:
            patch = compute(batch)
        except control.Refused as exc:
            raise PluginError(str(exc), EXIT_USAGE) from exc
        if attempt == 0 and patch is not None:
            _warn_gitops(batch)
        if patch is None:
            return batch, None
        written, error = kubectl.patch(batch["metadata"]["name"], batch["metadata"]["namespace"], patch)
        if written is not None:
            return batch, written
        if not is_conflict(error):
            raise kubectl_error(error)
    raise PluginError(
        f'analysisbatch "{name}" kept changing while it was written ({CONFLICT_ATTEMPTS} conflicts); try again',
        EXIT_KUBECTL,
    )


def _items_text(items: list[str] | None) -> str:
    return "all items" if items is None else "items " + ", ".join(items)


def approve_verb(args: argparse.Namespace, out: TextIO) -> int:
    try:
        items = control.parse_items(args.items) if args.items is not None else None
    except control.Refused as exc:
        raise PluginError(str(exc), EXIT_USAGE) from exc
    kubectl = Kubectl.from_args(args)
    batch, written = _write_spec(kubectl, args.batch, lambda b: control.approve_patch(b, args.stage, items))
    if written is not None and items is not None:
        listed, complete = control.held_at(batch, args.stage)
        unvouched = [] if complete else [item for item in items if item not in listed]
        if unvouched:
            print(
                f"warning: the status lists only the first waiting items of stage {args.stage}; not among them: "
                f"{', '.join(unvouched)}",
                file=sys.stderr,
            )
    now_open = control.approved(written or batch, args.stage)
    if written is None:
        out.write(f"{_ident(batch)}: stage {args.stage} already approved for {_items_text(now_open)}\n")
    else:
        detail = "" if items is None or now_open == items else f" (the stage now releases {_items_text(now_open)})"
        out.write(f"{_ident(batch)} approved: stage {args.stage}, {_items_text(items)}{detail}\n")
    return 0


def suspend_verb(args: argparse.Namespace, out: TextIO) -> int:
    suspend = args.verb == "suspend"
    kubectl = Kubectl.from_args(args)
    batch, written = _write_spec(kubectl, args.batch, lambda b: control.suspend_patch(b, suspend))
    word = "suspended" if suspend else "resumed"
    if written is None:
        out.write(f"{_ident(batch)} is already {'suspended' if suspend else 'not suspended'}\n")
    elif suspend:
        out.write(f"{_ident(batch)} {word}: no new claims; in-flight items finish\n")
    else:
        out.write(f"{_ident(batch)} {word}\n")
    return 0


def retry_failed_verb(args: argparse.Namespace, out: TextIO) -> int:
    kubectl = Kubectl.from_args(args)
    batch = kubectl.batch(args.batch)
    name, namespace = _name_and_namespace(batch, args.batch)
    token = control.fresh_token(datetime.now(UTC))
    written, error = kubectl.patch(name, namespace, control.retry_patch(token))
    if written is None:
        raise kubectl_error(error)
    failed = render.failed_items(render.status_of(batch))
    out.write(
        f"{_ident(batch)}: retry of failed and dead-lettered items requested ({failed} in the last status; "
        f"token {token})\n"
    )
    return 0


# ---------------------------------------------------------------- logs


def logs_verb(args: argparse.Namespace, out: TextIO) -> int:
    kubectl = Kubectl.from_args(args)
    batch = kubectl.batch(args.batch)
    name, namespace = _name_and_namespace(batch, args.batch)
    types = render.stage_types(batch)
    if args.stage is not None and args.stage not in types:
        raise PluginError(
            f'analysisbatch "{name}" has no stage "{args.stage}" (stages: {", ".join(types)})', EXIT_USAGE
        )
    if args.stage is not None and types[args.stage] == wellknown.StageType.APPROVAL:
        raise PluginError(f'stage "{args.stage}" is an approval stage: it runs no worker pods', EXIT_USAGE)
    order = render.stage_names(batch)
    selector = logs.selector(batch["metadata"]["uid"], args.stage)

    def list_streams() -> list[logs.Stream]:
        return logs.streams(kubectl.list_json("pods", "-l", selector, namespace=namespace), order)

    if args.follow:
        state = logs.Follow(kubectl, namespace, args.tail, out, sys.stderr)
        logs.follow(state, list_streams, lambda: progress.outcome(kubectl.batch(name)) is not None, LOGS_INTERVAL_S)
        return 0
    found = list_streams()
    if not found:
        which = f" in stage {args.stage}" if args.stage else ""
        print(f'No worker pods of analysisbatch "{name}"{which} in namespace "{namespace}".', file=sys.stderr)
        return 0
    logs.print_logs(kubectl, namespace, found, args.tail, out, sys.stderr)
    return 0


# ---------------------------------------------------------------- the command line


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text}")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="the batch's namespace (default: the context's)")
    common.add_argument("--context", help="the kubeconfig context to use")
    common.add_argument("--kubeconfig", help="the kubeconfig file to use (default: $KUBECONFIG or ~/.kube/config)")
    return common


def _verb(sub: Any, name: str, common: argparse.ArgumentParser, summary: str, text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=summary, description=text)
    if name != "list":
        parser.add_argument("batch", help="the AnalysisBatch's name")
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl analysis", description="Inspect and control AnalysisBatch resources."
    )
    parser.add_argument("--version", action="version", version=f"kubectl-analysis {analysis_core.__version__}")
    sub = parser.add_subparsers(dest="verb")
    sub.add_parser("version", help="print the plugin's version")
    common = _common()

    status = _verb(
        sub,
        "status",
        common,
        "follow a batch's progress until it finishes",
        "Show a batch's progress per stage (bars, rates, retries, judge verdicts, tokens, cost, and the "
        "conditions that need attention), refreshed until it completes or fails. Exit 0 when it "
        "completes, 5 when it fails.",
    )
    status.add_argument("--once", action="store_true", help="print one snapshot and exit (for scripts)")
    status.add_argument(
        "--interval",
        type=_positive,
        default=STATUS_INTERVAL_S,
        metavar="SECONDS",
        help=f"seconds between refreshes (default: {STATUS_INTERVAL_S:g})",
    )

    get = _verb(
        sub,
        "get",
        common,
        "show one batch as a table",
        "Show one AnalysisBatch: phase, current stage, "
        "stages done, progress, failures, retries, judge verdicts, tokens, cost, run time and age.",
    )
    get.add_argument("-o", "--output", choices=GET_FORMATS, default="table", help="output format (default: table)")

    listed = _verb(sub, "list", common, "list batches as a table", "List AnalysisBatches with the columns of get.")
    listed.add_argument("-A", "--all-namespaces", action="store_true", help="list the batches of every namespace")
    listed.add_argument("-l", "--selector", help="only batches with these labels, e.g. team=research")
    listed.add_argument("-o", "--output", choices=GET_FORMATS, default="table", help="output format (default: table)")

    found = _verb(
        sub,
        "results",
        common,
        "print what a batch's items ended with",
        "Print the latest result of every item of an AnalysisBatch, from its results sink: its result ConfigMaps, "
        "or its folder in object storage read with your own credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). "
        "A deleted batch's retained ConfigMaps are found by its name; a deleted batch's objects by --location.",
    )
    found.add_argument("-o", "--output", choices=FORMATS, default="jsonl", help="output format (default: jsonl)")
    found.add_argument("--location", help="read s3://bucket/folder/ directly (a deleted batch's results)")
    found.add_argument("--endpoint", help="the S3 endpoint URL (default: the batch's status, or AWS_ENDPOINT_URL)")

    approve = _verb(
        sub,
        "approve",
        common,
        "release items held at an approval stage",
        "Add the stage (and items) to spec.approvals, merged with what is there: a stage approved for all "
        "items stays so, listed items join those already approved. Refuses a stage that is not of type "
        "approval. The write is tied to the version it read, so concurrent writers never lose each "
        f"other's changes. {GITOPS_NOTE}",
    )
    approve.add_argument("--stage", required=True, help="the approval stage to open")
    approve.add_argument(
        "--items",
        metavar="A,B,...",
        help="comma-separated item ids to release (default: every item waiting at the stage)",
    )

    _verb(
        sub,
        "retry-failed",
        common,
        "re-run the failed and dead-lettered items",
        f"Set the {wellknown.ANNOTATION_RETRY_FAILED} annotation to a fresh value; the operator re-runs the "
        "batch's failed and dead-lettered items once for it.",
    )
    _verb(
        sub,
        "suspend",
        common,
        "stop new claims (spec.suspend: true)",
        f"Set spec.suspend to true: no new claims; in-flight items finish and workers scale to zero. {GITOPS_NOTE}",
    )
    _verb(
        sub,
        "resume",
        common,
        "continue a suspended batch (spec.suspend: false)",
        f"Set spec.suspend to false. {GITOPS_NOTE}",
    )

    log = _verb(
        sub,
        "logs",
        common,
        "print the worker pods' logs of a batch",
        "Print the logs of the batch's worker pods (selected by the batch's uid), each line prefixed with "
        "its stage and pod. Logs live as long as their pods.",
    )
    log.add_argument("--stage", help="only the workers of this stage")
    log.add_argument(
        "-f", "--follow", action="store_true", help="keep printing, picking up new pods, until the batch has finished"
    )
    log.add_argument("--tail", type=_count, metavar="N", help="only the last N lines of each container (default: all)")
    return parser


VERBS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "results": results_verb,
    "status": status_verb,
    "get": get_verb,
    "list": list_verb,
    "approve": approve_verb,
    "retry-failed": retry_failed_verb,
    "suspend": suspend_verb,
    "resume": suspend_verb,
    "logs": logs_verb,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.verb in (None, "version"):
        print(f"kubectl-analysis {analysis_core.__version__}")
        return
    try:
        code = VERBS[args.verb](args, sys.stdout)
        sys.stdout.flush()
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # e.g. piped into head: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    if code:
        raise SystemExit(code)
