"""The queue's Lua, as one Redis Functions library that the operator loads and everyone calls with FCALL.

Every script is a file in ``analysis_core/lua/`` (both images carry this
package: the operator loads the library, workers call it). ``library()``
turns the folder into one library: each file becomes a function of that
name, called with FCALL, whose keys are the ones the call names, which is
what lets a Redis ACL user per batch be confined to its batch's keys (a
tenant's credential runs no Lua of its own: no EVAL, no SCRIPT, no
FUNCTION, only FCALL of these).

The library's name carries a digest of its text (``LIBRARY``, functions
``<LIBRARY>_<file>``): each release's scripts live beside the previous
release's, so the workers of a batch started before an upgrade keep calling
the functions they know while new ones call the new ones. Only a holder of
the admin credential loads it (``load``, at the operator's start and again
whenever a call finds it missing, as after a Redis without persistence
restarts); a worker that finds it missing waits like for a Redis that is
down (``NotLoaded`` is among ``queue.UNAVAILABLE``).

Scripts spell the names of ``wire`` (stream fields, counters, flags, outcome
fields) as the constants' names, e.g. ``f[MSG_ITEM]``. Each function declares
the constants its file mentions as locals in front of the file's first line,
on that same line, so an error's line number inside a function, counted from
its first line, is the file's (``Function`` rewrites Redis's library line
numbers to ``<file>.lua:<line>``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from analysis_core import wire

_IDENTIFIER = re.compile(r"\b[A-Z][A-Z0-9_]*\b")
# A command a script runs: its name (and a container command's subcommand), always spelled as literals.
_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'(?:\s*,\s*'([A-Za-z]+)')?")
_CONTAINERS = frozenset({"xinfo", "xgroup", "client", "object", "config", "function", "script", "acl", "memory"})
_LINE = re.compile(r"user_function:(\d+)")
NOT_FOUND = "Function not found"  # what Redis answers an FCALL of a function it does not have


class NotLoaded(redis.exceptions.ConnectionError):
    """This Redis does not have the project's functions (yet): the operator loads them."""


def prelude(text: str) -> str:
    """The declaration of every ``wire`` constant that ``text`` mentions, as one line without a line break."""
    known = wire.constants()
    used = sorted({name for name in _IDENTIFIER.findall(text) if name in known})
    if not used:
        return ""
    values = ", ".join('"' + known[name].replace("\\", "\\\\").replace('"', '\\"') + '"' for name in used)
    return f"local {', '.join(used)} = {values}; "


def names() -> tuple[str, ...]:
    """The scripts, by file name without ``.lua``, sorted."""
    folder = resources.files("analysis_core") / "lua"
    return tuple(sorted(e.name.removesuffix(".lua") for e in folder.iterdir() if e.name.endswith(".lua")))


@functools.cache
def source(name: str) -> str:
    """The text of ``lua/<name>.lua`` as its function runs it: the file, its ``wire`` constants declared first."""
    text = (resources.files("analysis_core") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return prelude(text) + text


def commands(*scripts: str) -> frozenset[str]:
    """The commands ``scripts`` run, as a Redis ACL names them (``hset``, ``xinfo|groups``).

    A function runs with its caller's permissions, so a caller confined by an
    ACL needs exactly these (``analysis_core.tenancy``).
    """
    found = set()
    for script in scripts:
        for command, sub in _CALL.findall(source(script)):
            name = command.lower()
            if name in _CONTAINERS:
                if not sub:
                    raise ValueError(f"lua/{script}.lua runs {command} with a subcommand that is not a literal")
                name = f"{name}|{sub.lower()}"
            found.add(name)
    return frozenset(found)


@dataclasses.dataclass(frozen=True)
class Library:
    """The library's code, its name, and where each function starts in it (1-based line numbers)."""

    name: str
    code: str
    starts: dict[str, int]

    def function(self, script: str) -> str:
        """The registered name of the function of ``lua/<script>.lua``."""
        if script not in self.starts:
            raise KeyError(f"no script lua/{script}.lua")
        return f"{self.name}_{script}"

    def where(self, line: int) -> str:
        """``<file>.lua:<line>`` of a line of the library (as Redis's errors count them)."""
        found = max(((start, script) for script, start in self.starts.items() if start <= line), default=None)
        if found is None:
            return f"library line {line}"
        start, script = found
        return f"{script}.lua:{line - start + 1}"


@functools.cache
def library() -> Library:
    """Every script of ``lua/`` as one Functions library, named by the digest of its functions' text."""
    body: list[str] = []
    starts: dict[str, int] = {}
    scripts = names()
    for script in scripts:
        text = source(script).rstrip("\n")
        starts[script] = 2 + sum(chunk.count("\n") + 1 for chunk in body)  # line 1 is the shebang
        # The header shares the file's first line, the end its last: a line inside is the file's line plus the start.
        body.append(f"local function fn_{script}(KEYS, ARGV) {text}\nend")
    digest = hashlib.sha256("\n".join(body).encode()).hexdigest()[:12]
    name = f"analysis_{digest}"
    registrations = [f"redis.register_function('{name}_{script}', fn_{script})" for script in scripts]
    code = "\n".join([f"#!lua name={name}", *body, *registrations]) + "\n"
    return Library(name, code, starts)


async def load(client: aioredis.Redis) -> None:
    """Load the library (idempotent: the same name always has the same code). Needs the admin credential."""
    await client.function_load(library().code, replace=True)


@dataclasses.dataclass(frozen=True)
class Function:
    """One script, called with FCALL on ``client``; ``loads``: load the library when Redis lacks it, and call again."""

    client: aioredis.Redis
    script: str
    loads: bool = False

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        lib = library()
        try:
            return await self._call(lib, keys, args)
        except NotLoaded:
            if not self.loads:
                raise
            await load(self.client)
            return await self._call(lib, keys, args)

    async def _call(self, lib: Library, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self.client.fcall(lib.function(self.script), len(keys), *keys, *args)
        except redis.exceptions.ResponseError as exc:
            said = str(exc)
            if NOT_FOUND in said:
                raise NotLoaded(f"Redis has no function {lib.function(self.script)}: {said}") from exc
            located = _LINE.sub(lambda m: lib.where(int(m.group(1))), said)
            if located == said:
                raise
            raise type(exc)(located) from exc


def function(client: aioredis.Redis, script: str, *, loads: bool = False) -> Function:
    """The function of ``lua/<script>.lua`` on ``client`` (``loads``: the caller holds the admin credential)."""
    library().function(script)  # a misspelt name fails here, not at the first call
    return Function(client, script, loads)
