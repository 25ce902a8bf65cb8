"""Prompt templates: Jinja2 in a sandbox, with the variables docs/design.md#prompts-and-template-variables names.

A template sees ``item``, ``input`` (the previous stage's output), ``vars``,
``feedback`` and ``round`` (judge loops) and ``attempt``. Unknown variables
are errors rather than empty strings, so a typo fails the item with a clear
message (the plan compiler also rejects them before anything runs). The
sandbox keeps a template from reaching Python internals. Compiled templates
are cached: one stage renders the same template for every item.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jinja2
import jinja2.sandbox

_ENV = jinja2.sandbox.ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message says where."""


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


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
    template = _compile(source)
    try:
        return template.render(
            item=item, input=input, vars=dict(vars or {}), feedback=feedback, round=round, attempt=attempt
        )
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template uses an unknown variable: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template failed: {exc}") from exc
