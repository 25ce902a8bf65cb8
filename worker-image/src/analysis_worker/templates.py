"""Prompt templates: Jinja2 in a sandbox, with the variables docs/design.md#prompts-and-template-variables names.

A template sees ``item``, ``input`` (the previous stage's output), ``vars``,
``feedback`` and ``round`` (judge loops) and ``attempt``. Unknown variables
are errors rather than empty strings, so a typo fails the item with a clear
message (the plan compiler also rejects them before anything runs). The
sandbox keeps a template from reaching Python internals. Compiled templates
are cached: one stage renders the same template for every item. Most prompts
only put variables into text (``{{ item }}``, ``{{ vars.topic }}``): those
are rendered by joining their parts, as Jinja would, without building a
Jinja context per item; anything else (filters, tests, loops, a missing
variable) is left to Jinja.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import jinja2.nodes
import jinja2.sandbox

_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message says where."""


# A part of a plain template: its text, or how to look its value up in the variables (None: Jinja must render).
_Part = str | Callable[[Mapping[str, Any]], Any]
_SCALARS = ("item", "input", "feedback", "round", "attempt")


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> tuple[jinja2.Template, tuple[_Part, ...] | None]:
    """The compiled template, and its parts when it only puts variables into text."""
    try:
        return _ENV.from_string(source), _plain_parts(_ENV.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


def _plain_parts(tree: jinja2.nodes.Template) -> tuple[_Part, ...] | None:
    """Text and ``{{ name }}`` / ``{{ vars.key }}`` outputs only; None for anything else."""
    parts: list[_Part] = []
    for statement in tree.body:
        if not isinstance(statement, jinja2.nodes.Output):
            return None
        for node in statement.nodes:
            if isinstance(node, jinja2.nodes.TemplateData):
                parts.append(node.data)
            elif isinstance(node, jinja2.nodes.Name) and node.name in _SCALARS:
                parts.append(functools.partial(_scalar, node.name))
            elif (
                isinstance(node, jinja2.nodes.Getattr)
                and isinstance(node.node, jinja2.nodes.Name)
                and node.node.name == "vars"
                and not hasattr(dict, node.attr)  # vars.items is the dict's method to Jinja, not a key
            ):
                parts.append(functools.partial(_var, node.attr))
            else:
                return None
    return tuple(parts)


def _scalar(name: str, values: Mapping[str, Any]) -> Any:
    return values[name]


def _var(key: str, values: Mapping[str, Any]) -> Any:
    return values["vars"][key]  # a KeyError sends the template to Jinja, which names the missing key


def render(
    source: str,
    *,
    item: str,
    input: str = "",  # noqa: A002 (the template variable's name)
    vars: Mapping[str, str] | None = None,  # noqa: A002
    feedback: str = "",
    round: int = 0,  # noqa: A002
    attempt: int = 1,
) -> str:
    template, parts = _compile(source)
    values = {
        "item": item,
        "input": input,
        "vars": vars or {},
        "feedback": feedback,
        "round": round,
        "attempt": attempt,
    }
    if parts is not None:
        try:
            return "".join(part if isinstance(part, str) else str(part(values)) for part in parts)
        except KeyError:
            pass  # a variable the item lacks: Jinja says which
    try:
        return template.render({**values, "vars": dict(vars or {})})
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template uses an unknown variable: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template failed: {exc}") from exc
