"""Generates the CustomResourceDefinitions (AnalysisBatch, AnalysisProvider) from the pydantic models.

``make crds`` runs ``python -m analysis_core.api.crd --write`` and ``make check-crds``
runs it with ``--check``; a unit test compares the committed YAML with
``render()``, so the CRDs cannot drift from ``v1alpha1``.

The API server wants a structural schema (Kubernetes' "structural schema"
rules): every node typed, no ``$ref``, no ``anyOf`` with null, no
``additionalProperties`` beside ``properties``, OpenAPI v3.0 style exclusive
bounds. Pydantic emits JSON Schema 2020-12, so ``structural()`` rewrites it.
Every property must carry a description, so ``kubectl explain`` teaches the
whole API; generation fails on an undocumented field rather than shipping it.
This module writes no cluster state; applying the CRD is the caller's business.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import pydantic
import yaml

from analysis_core import api
from analysis_core.api import v1alpha1

CRD_NAME = f"{api.PLURAL}.{api.GROUP}"
FILE_NAME = f"{CRD_NAME}.yaml"
PROVIDER_CRD_NAME = f"{api.PROVIDER_PLURAL}.{api.GROUP}"
PROVIDER_FILE_NAME = f"{PROVIDER_CRD_NAME}.yaml"
HEADER = "# Generated from analysis_core/api/v1alpha1.py by `make crds`. Do not edit.\n"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Phase, for humans."},
    {
        "name": "Stage",
        "type": "string",
        "jsonPath": ".status.currentStage",
        "description": "The earliest stage that still has work.",
    },
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress", "description": "Items done/total."},
    {"name": "Retries", "type": "integer", "jsonPath": ".status.retries", "description": "Retries so far."},
    {
        "name": "Judge",
        "type": "string",
        "jsonPath": ".status.judge.summary",
        "description": "Judge approvals and rejections.",
    },
    {"name": "Tokens", "type": "string", "jsonPath": ".status.usage.tokensSummary", "description": "Tokens used."},
    {"name": "Cost", "type": "string", "jsonPath": ".status.usage.costSummary", "description": "Estimated cost."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Message",
        "type": "string",
        "jsonPath": ".status.message",
        "priority": 1,
        "description": "The most useful thing to know right now.",
    },
]

PROVIDER_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Type", "type": "string", "jsonPath": ".spec.type", "description": "The provider's API."},
    {
        "name": "Requests",
        "type": "string",
        "jsonPath": ".status.requestsSummary",
        "description": "Calls granted in the last window, against the limit.",
    },
    {"name": "In-Flight", "type": "integer", "jsonPath": ".status.inFlight", "description": "Calls in flight now."},
    {"name": "Batches", "type": "integer", "jsonPath": ".status.batches", "description": "Batches using it."},
    {
        "name": "Waiting",
        "type": "integer",
        "jsonPath": ".status.waitingBatches",
        "description": "Batches with calls waiting for the account.",
    },
    # A string, not a date: kubectl prints a date column as the time since, and "<invalid>" for a time to come,
    # which a pause always is while it lasts.
    {
        "name": "Paused-Until",
        "type": "string",
        "format": "date-time",
        "jsonPath": ".status.pausedUntil",
        "description": "Paused by the provider's retry-after until then.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {
        "name": "Quota",
        "type": "string",
        "jsonPath": ".status.quotaExhausted",
        "priority": 1,
        "description": "The provider's refusal for quota or billing, while it lasts.",
    },
    {
        "name": "Served-By",
        "type": "string",
        "jsonPath": ".status.servedBy",
        "priority": 1,
        "description": "The install whose operator grants the account's capacity.",
    },
]

# Keys of pydantic's output that have no place in a CRD schema.
_DROPPED = {"title", "$defs", "discriminator"}


class SchemaError(ValueError):
    """The models cannot be expressed as a structural schema (e.g. a field without a description)."""


def structural(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model``, as the CRD needs it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a ``$ref`` (keeping the referring node's own keys, e.g. its description)."""
    if "$ref" not in node:
        return node
    target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
    local = {k: v for k, v in node.items() if k != "$ref"}
    # The field's description wins over the model's docstring.
    return {**target, **local}


def _unwrap_optional(node: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` is written as an absent field, never as ``anyOf: [X, null]``."""
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if options is None:
            continue
        non_null = [o for o in options if o.get("type") != "null"]
        if len(non_null) != 1:
            raise SchemaError(f"{key} with several non-null options cannot be structural: {options}")
        rest = {k: v for k, v in node.items() if k != key}
        return {**non_null[0], **rest}
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:  # noqa: C901
    # `X | None` of a model is anyOf[$ref, null]: unwrap, then inline the ref.
    while "$ref" in node or "anyOf" in node or "oneOf" in node:
        node = _unwrap_optional(_resolve(node, defs))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "default" and value is None:
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {name: _convert(child, defs, f"{path}.{name}") for name, child in value.items()}
            for name, child in out["properties"].items():
                if not child.get("description"):
                    raise SchemaError(f"{path}.{name} has no description")
        elif key == "items":
            out["items"] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict) and value:
                out["additionalProperties"] = _convert(value, defs, f"{path}{{}}")
            # `false` (extra="forbid") is not allowed beside properties; the API
            # server prunes unknown fields, and kubectl's strict field
            # validation reports them to the user.
        else:
            out[key] = copy.deepcopy(value)
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out["type"] = "object"
    if "type" not in out:
        if "enum" in out:
            out["type"] = "string"
        else:
            raise SchemaError(f"{path} has no type")
    if "default" in out and isinstance(out["default"], dict) and not out["default"]:
        # A defaulted sub-object: let the API server fill in its members' own defaults.
        out["default"] = {}
    return out


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Stable key order for readable YAML: type and description first, nested nodes last."""
    first = (
        "type",
        "description",
        "format",
        "enum",
        "default",
        "minimum",
        "exclusiveMinimum",
        "maximum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "required",
    )
    out: dict[str, Any] = {k: schema[k] for k in first if k in schema}
    for key in sorted(k for k in schema if k not in out):
        value = schema[key]
        if key == "properties":
            value = {name: _ordered(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _ordered(value)
        elif key == "x-kubernetes-validations":
            rule_keys = ("rule", "message", "messageExpression", "fieldPath", "reason")
            value = [{k: v[k] for k in rule_keys if k in v} for v in value]
        out[key] = value
    return out


def _with_model_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Defaulted sub-objects (``retry``, ``backoff``, ...) default to ``{}`` so the API server fills members in.

    Pydantic writes the model's fully expanded default; the API server would
    store the same values either way, but ``{}`` keeps each default in one
    place (the member's own schema).
    """
    for child in schema.get("properties", {}).values():
        _with_model_defaults(child)
        if child.get("type") == "object" and isinstance(child.get("default"), dict) and "properties" in child:
            child["default"] = {}
    if isinstance(schema.get("items"), dict):
        _with_model_defaults(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        _with_model_defaults(schema["additionalProperties"])
    return schema


def openapi_schema(
    spec_model: type[pydantic.BaseModel] = v1alpha1.AnalysisBatchSpec,
    status_model: type[pydantic.BaseModel] = v1alpha1.AnalysisBatchStatus,
    *,
    kind: str = api.KIND,
    what: str = "A multi-stage LLM analysis pipeline over a list of items, run by analysis-operator.",
    spec_description: str = "The pipeline and its items.",
) -> dict[str, Any]:
    """The schema of a whole object, as served by the API server."""
    spec = _with_model_defaults(structural(spec_model))
    status = _with_model_defaults(structural(status_model))
    spec["description"] = spec_description
    status["description"] = "Observed state, written by the operator."
    return _ordered(
        {
            "type": "object",
            "description": what,
            "required": ["spec"],
            "properties": {
                "apiVersion": {
                    "type": "string",
                    "description": f"APIVersion of the object: {api.GROUP}/{api.VERSION}.",
                },
                "kind": {"type": "string", "description": f"Kind of the object: {kind}."},
                # The API server owns metadata's schema; a CRD may only say it is an object.
                "metadata": {"type": "object"},
                "spec": spec,
                "status": status,
            },
        }
    )


def _definition(
    name: str, scope: str, names: dict[str, Any], columns: list[dict[str, Any]], schema: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "analysis-operator"}},
        "spec": {
            "group": api.GROUP,
            "scope": scope,
            "names": names,
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def crd() -> dict[str, Any]:
    """The AnalysisBatch CustomResourceDefinition."""
    names = {
        "kind": api.KIND,
        "listKind": f"{api.KIND}List",
        "plural": api.PLURAL,
        "singular": api.SINGULAR,
        "shortNames": list(api.SHORT_NAMES),
        "categories": list(api.CATEGORIES),
    }
    return _definition(CRD_NAME, "Namespaced", names, PRINTER_COLUMNS, openapi_schema())


def provider_crd() -> dict[str, Any]:
    """The AnalysisProvider CustomResourceDefinition (cluster-scoped: a platform admin's account)."""
    names = {
        "kind": api.PROVIDER_KIND,
        "listKind": f"{api.PROVIDER_KIND}List",
        "plural": api.PROVIDER_PLURAL,
        "singular": api.PROVIDER_SINGULAR,
        "shortNames": list(api.PROVIDER_SHORT_NAMES),
        "categories": list(api.CATEGORIES),
    }
    schema = openapi_schema(
        v1alpha1.AnalysisProviderSpec,
        v1alpha1.AnalysisProviderStatus,
        kind=api.PROVIDER_KIND,
        what="A provider account shared by several namespaces' batches: one limit, fair shares, one pause.",
        spec_description="The account.",
    )
    return _definition(PROVIDER_CRD_NAME, "Cluster", names, PROVIDER_PRINTER_COLUMNS, schema)


def _yaml(obj: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=100)


def rendered() -> dict[str, str]:
    """Every committed CRD file, by file name, byte for byte."""
    return {FILE_NAME: _yaml(crd()), PROVIDER_FILE_NAME: _yaml(provider_crd())}


def render() -> str:
    """The committed AnalysisBatch YAML, byte for byte."""
    return rendered()[FILE_NAME]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis_core.api.crd", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("crds"), help="where the CRD YAML lives (default: crds)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the generated CRD")
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed CRD differs from the models")
    args = parser.parse_args(argv)
    files = rendered()
    if args.write:
        args.dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (args.dir / name).write_text(text, encoding="utf-8")
            sys.stdout.write(f"wrote {args.dir / name}\n")
        return 0
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.dir / name).exists() or (args.dir / name).read_text(encoding="utf-8") != text
        ]
        for name in stale:
            sys.stderr.write(f"{args.dir / name} is out of date with the API models: run `make crds`\n")
        if stale:
            return 1
        sys.stdout.write(f"{', '.join(files)} are up to date\n")
        return 0
    sys.stdout.write("---\n".join(files.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
