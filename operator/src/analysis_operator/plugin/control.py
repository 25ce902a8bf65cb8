"""The writes of ``kubectl analysis``: approve, retry-failed, suspend and resume, as patches. Pure.

Each verb reads the batch, then sends a JSON merge patch computed here from
what it read. A patch that changes the spec carries the
``metadata.resourceVersion`` it was computed from: the API server refuses it
with 409 Conflict when anyone else wrote the batch in between (another
``approve``, a GitOps sync, a ``kubectl edit``), and the verb then reads
again and recomputes. So a merge never loses someone else's write, without
taking ownership of the whole list the way server-side apply would.

``spec.approvals`` is a list keyed by stage; an entry without ``items``
releases everything that waits at the stage. Approving merges into it:
an entry that already releases all items stays as it is, listed items are
added to the ones already there, and approving the whole stage replaces a
list of items.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from analysis_core.api import wellknown
from analysis_operator.plugin import render

# Field managers and markers of the GitOps controllers that would undo a spec change made outside Git.
GITOPS_MANAGERS = {"argocd-controller": "Argo CD", "kustomize-controller": "Flux", "helm-controller": "Flux"}
GITOPS_MARKERS = {
    "argocd.argoproj.io/tracking-id": "Argo CD",
    "kustomize.toolkit.fluxcd.io/name": "Flux",
    "helm.toolkit.fluxcd.io/name": "Flux",
}


class Refused(ValueError):
    """A request the batch cannot take (e.g. approving a stage that is not an approval stage)."""


def parse_items(text: str) -> list[str]:
    """``a,b, c`` -> ``[a, b, c]``: trimmed, without empties or repeats, in the order given."""
    out: list[str] = []
    for part in text.split(","):
        item = part.strip()
        if item and item not in out:
            out.append(item)
    if not out:
        raise Refused("--items lists no item")
    return out


def check_approval_stage(batch: Mapping[str, Any], stage: str) -> None:
    """Refuse a stage the batch does not have, or one that is not of type approval (it holds nothing)."""
    types = render.stage_types(batch)
    name = (batch.get("metadata") or {}).get("name", "?")
    if stage not in types:
        raise Refused(f'analysisbatch "{name}" has no stage "{stage}" (stages: {", ".join(types) or "none"})')
    if types[stage] != wellknown.StageType.APPROVAL:
        gates = [s for s, kind in types.items() if kind == wellknown.StageType.APPROVAL]
        hint = f"its approval stages: {', '.join(gates)}" if gates else "it has no approval stage"
        raise Refused(f'stage "{stage}" of analysisbatch "{name}" is of type {types[stage]}, not approval ({hint})')


def merged_approvals(
    existing: Sequence[Mapping[str, Any]], stage: str, items: Sequence[str] | None
) -> list[dict[str, Any]] | None:
    """``spec.approvals`` with ``stage`` approved (for ``items``, or all when None); None when nothing changes."""
    out = [dict(entry) for entry in existing]
    for index, entry in enumerate(out):
        if entry.get("stage") != stage:
            continue
        held = entry.get("items")
        if held is None:
            return None  # already open for every item
        if items is None:
            out[index] = {"stage": stage}
            return out
        union = list(held) + [item for item in items if item not in held]
        if len(union) == len(held):
            return None
        out[index] = {**entry, "items": union}
        return out
    out.append({"stage": stage} if items is None else {"stage": stage, "items": list(items)})
    return out


def _precondition(batch: Mapping[str, Any]) -> dict[str, Any]:
    version = (batch.get("metadata") or {}).get("resourceVersion")
    return {"resourceVersion": version} if version else {}


def approve_patch(batch: Mapping[str, Any], stage: str, items: Sequence[str] | None) -> dict[str, Any] | None:
    """The patch that approves ``stage`` (for ``items`` or all), tied to the version read; None: already approved.

    Listed items must be waiting at the stage (``check_waiting``), unless the spec already approves them.
    """
    check_approval_stage(batch, stage)
    existing = (batch.get("spec") or {}).get("approvals") or []
    merged = merged_approvals(existing, stage, items)
    if merged is None:
        return None
    if items is not None:
        already = approved(batch, stage) or []
        check_waiting(batch, stage, [item for item in items if item not in already])
    return {"metadata": _precondition(batch), "spec": {"approvals": merged}}


def held_at(batch: Mapping[str, Any], stage: str) -> tuple[list[str], bool]:
    """The items the last status lists as waiting at ``stage``, and whether that list names all of them.

    The operator lists at most a bounded number per stage (``status.stages[].heldItems``) while ``pending``
    counts them all.
    """
    for row in render.status_of(batch).get("stages") or []:
        if isinstance(row, Mapping) and row.get("name") == stage:
            listed = [str(item) for item in row.get("heldItems") or []]
            return listed, len(listed) >= int(row.get("pending") or 0)
    return [], True


def check_waiting(batch: Mapping[str, Any], stage: str, items: Sequence[str]) -> list[str]:
    """Refuse items that do not wait at ``stage``, naming them; returns those the status cannot vouch for.

    When the status names every waiting item, an item it does not name is refused. When its list is cut
    short, an item missing from it may still wait further back: it is returned, for a warning, not refused.
    """
    listed, complete = held_at(batch, stage)
    missing = [item for item in items if item not in listed]
    if missing and complete:
        name = (batch.get("metadata") or {}).get("name", "?")
        waiting = ", ".join(listed) if listed else "none"
        raise Refused(
            f'not waiting at stage "{stage}" of analysisbatch "{name}": {", ".join(missing)} (waiting: {waiting}); '
            "to approve items before they arrive, list them in spec.approvals"
        )
    return missing


def approved(batch: Mapping[str, Any], stage: str) -> list[str] | None:
    """What ``spec.approvals`` releases at ``stage``: None for every item, else the listed ones ([] for none)."""
    for entry in (batch.get("spec") or {}).get("approvals") or []:
        if entry.get("stage") == stage:
            held = entry.get("items")
            return None if held is None else [str(item) for item in held]
    return []


def suspend_patch(batch: Mapping[str, Any], suspend: bool) -> dict[str, Any] | None:
    """The patch that sets ``spec.suspend``; None when it already has that value."""
    if bool((batch.get("spec") or {}).get("suspend")) == suspend:
        return None
    return {"metadata": _precondition(batch), "spec": {"suspend": suspend}}


def fresh_token(now: datetime, suffix: str | None = None) -> str:
    """A retry-failed token no earlier request used: the time, and random hex against two in the same second."""
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + (suffix if suffix is not None else secrets.token_hex(3))


def retry_patch(token: str) -> dict[str, Any]:
    """The annotation the operator compares with ``status.retriedFailed``; each new value re-runs failures once."""
    return {"metadata": {"annotations": {wellknown.ANNOTATION_RETRY_FAILED: token}}}


def gitops_owner(batch: Mapping[str, Any]) -> str | None:
    """The GitOps tool that manages this batch (so a spec change made here would be reverted), if one shows."""
    metadata = batch.get("metadata") or {}
    marks: Iterable[tuple[str, Any]] = [
        *(metadata.get("annotations") or {}).items(),
        *(metadata.get("labels") or {}).items(),
    ]
    for key, _value in marks:
        if key in GITOPS_MARKERS:
            return GITOPS_MARKERS[key]
    for entry in metadata.get("managedFields") or []:
        manager = str(entry.get("manager", ""))
        fields = entry.get("fieldsV1") or {}
        if manager in GITOPS_MANAGERS and "f:spec" in fields:
            return GITOPS_MANAGERS[manager]
    return None
