"""Prompt templates: Jinja2 in a sandbox, with the variables docs/design.md#prompts-and-template-variables names.

A template sees ``item``, ``input`` (the previous stage's output), ``vars``,
``feedback`` and ``round`` (judge loops) and ``attempt``. Unknown variables
are errors rather than empty strings, so a typo fails the item with a clear
message (the plan compiler also rejects them before anything runs). The
sandbox keeps a template from reaching Python internals. Compiled templates
are cached: one stage renders the same template for every item. Most prompts
only put variables into text (``{{ item }}``, ``{{ vars.topic }}``): those
are rendered by joining their parts, as Jinja would, without Jinja (neither
imported at start nor a Jinja context per item); anything else (filters,
tests, loops, comments, whitespace control, a missing variable) is Jinja's.

The items of a stage share the start of their prompt (instructions, a
rubric, context from ``vars``): ``split`` cuts a template where the first
thing that differs between items begins, so that the providers' prompt caches
can serve that shared prefix (``providers.base.Request.cache_prefix``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; the message says where."""


# A part of a plain template: its text, or how to look its value up in the variables.
_Part = str | Callable[[Mapping[str, Any]], Any]
# Where a Jinja tag may start (its default delimiters: {{ }}, {% %}, {# #}).
_TAG = re.compile(r"\{[{%#]")
# The only tags a plain template has: {{ name }} of a scalar variable, or {{ vars.key }}.
_PLAIN_OUTPUT = re.compile(
    r"\{\{[ \t\r\n]*(?:(item|input|feedback|round|attempt)|vars\.([A-Za-z_][A-Za-z0-9_]*))[ \t\r\n]*\}\}"
)
# Jinja writes every line break of a template's text as "\n".
_LINE_BREAK = re.compile(r"\r\n|\r")


@functools.lru_cache(maxsize=64)
def _plain(source: str) -> tuple[_Part, ...] | None:
    """The parts of a template that only puts variables into text, as Jinja reads it; None for any other."""
    parts: list[_Part] = []
    position = 0
    while (tag := _TAG.search(source, position)) is not None:
        output = _PLAIN_OUTPUT.match(source, tag.start())
        # vars.items and the like are the dict's methods to Jinja, not keys: Jinja renders those.
        if output is None or (output[2] is not None and hasattr(dict, output[2])):
            return None
        parts.append(_LINE_BREAK.sub("\n", source[position : tag.start()]))
        if output[1] is not None:
            parts.append(functools.partial(_scalar, output[1]))
        else:
            parts.append(functools.partial(_var, output[2]))
        position = output.end()
    parts.append(_LINE_BREAK.sub("\n", source[position:]))
    return tuple(part for part in parts if part != "")


def _scalar(name: str, values: Mapping[str, Any]) -> Any:
    return values[name]


def _var(key: str, values: Mapping[str, Any]) -> Any:
    return values["vars"][key]  # a KeyError sends the template to Jinja, which names the missing key


# Ends the shared prefix of a prompt where a template says so, if that is before its first per-item part.
CACHE_MARKER = "{# cache #}"
_STRIPS_BEFORE = re.compile(r"\{[{%#]-")


@functools.lru_cache(maxsize=64)
def split(source: str) -> tuple[str, str]:
    """``(prefix, rest)`` of a template: ``prefix`` is the longest start that is the same for every item (text and
    ``{{ vars.key }}``, nothing else), cut short at ``CACHE_MARKER`` if the template has one there; ``rest`` is
    the remainder, a template of its own. ``render_split`` renders both; together they render as the whole does.
    """
    position, end = 0, len(source)
    while (tag := _TAG.search(source, position)) is not None:
        output = _PLAIN_OUTPUT.match(source, tag.start())
        if output is None or output[2] is None or hasattr(dict, output[2]):
            end = tag.start()
            break
        position = output.end()
    marker = source.find(CACHE_MARKER)
    if 0 <= marker < end:
        end = marker
    prefix, rest = source[:end], source[end:]
    if _STRIPS_BEFORE.match(rest):
        # "{%-" strips the whitespace before it: the prefix ends where the text ends.
        trimmed = prefix.rstrip()
        prefix, rest = trimmed, prefix[len(trimmed) :] + rest
    return prefix, rest


def render_split(source: str, **values: Any) -> tuple[str, int]:
    """The rendered prompt (``values`` as ``render`` takes them), and how many of its characters are the prefix
    every item of the stage shares."""
    prefix_source, rest_source = split(source)
    prefix = render(prefix_source, **values) if prefix_source else ""
    rest = render(rest_source, **values) if rest_source else ""
    return prefix + rest, len(prefix)


@functools.lru_cache(maxsize=64)
def _jinja(source: str) -> jinja2.Template:
    # Imported here: a worker whose prompts are all plain never imports Jinja.
    import jinja2.sandbox

    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc


@functools.cache
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    import jinja2.sandbox

    return jinja2.sandbox.ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


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
    values = {
        "item": item,
        "input": input,
        "vars": vars or {},
        "feedback": feedback,
        "round": round,
        "attempt": attempt,
    }
    parts = _plain(source)
    if parts is not None:
        try:
            return "".join(part if isinstance(part, str) else str(part(values)) for part in parts)
        except KeyError:
            pass  # a variable the item lacks: Jinja says which
    template = _jinja(source)
    import jinja2  # imported by _jinja already; here for its exceptions

    try:
        return template.render({**values, "vars": dict(vars or {})})
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"template uses an unknown variable: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template failed: {exc}") from exc
