"""The registry of the queue's Lua scripts: each read once per process and registered on a client by name.

A script lives next to the only code that calls it, in the ``lua/`` folder of
that code's package: the producer's in ``analysis_operator/lua/``, the
consumer's and the rate limiter's in ``analysis_worker/lua/``. Each side
makes one ``Library`` for its package and calls ``library.script(client,
name)``; registering is cheap (a SHA1 of the cached text) and the call itself
uses EVALSHA with a fallback to EVAL, so a script is sent to Redis once per
server.

Scripts spell the names of ``wire`` (stream fields, counters, flags, outcome
fields) as the constants' names, e.g. ``f[MSG_ITEM]``. Reading a script puts
a ``local MSG_ITEM, ... = "item", ...;`` declaration of the constants it
mentions in front of its first line, on that same line, so the text sent to
Redis is the same for every process of a release (one SHA1, one EVALSHA
cache entry) and Redis' error messages name the line numbers of the file.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from analysis_core import wire

_IDENTIFIER = re.compile(r"\b[A-Z][A-Z0-9_]*\b")


def prelude(text: str) -> str:
    """The declaration of every ``wire`` constant that ``text`` mentions, as one line without a line break."""
    known = wire.constants()
    used = sorted({name for name in _IDENTIFIER.findall(text) if name in known})
    if not used:
        return ""
    values = ", ".join('"' + known[name].replace("\\", "\\\\").replace('"', '\\"') + '"' for name in used)
    return f"local {', '.join(used)} = {values}; "


@functools.cache
def _read(package: str, name: str) -> str:
    text = (resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    return prelude(text) + text


@dataclasses.dataclass(frozen=True)
class Library:
    """The scripts in ``<package>/lua/``."""

    package: str

    def source(self, name: str) -> str:
        """The text of ``lua/<name>.lua`` as sent to Redis: the file, its ``wire`` constants declared first."""
        return _read(self.package, name)

    def script(self, client: aioredis.Redis, name: str) -> AsyncScript:
        return client.register_script(self.source(name))
