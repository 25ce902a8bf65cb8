"""The registry of the queue's Lua scripts: each read once per process and registered on a client by name.

A script lives next to the only code that calls it, in the ``lua/`` folder of
that code's package: the producer's in ``analysis_operator/lua/``, the
consumer's and the rate limiter's in ``analysis_worker/lua/``. Each side
makes one ``Library`` for its package and calls ``library.script(client,
name)``; registering is cheap (a SHA1 of the
cached text) and the call itself uses EVALSHA with a fallback to EVAL, so a
script is sent to Redis once per server.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


@functools.cache
def _read(package: str, name: str) -> str:
    return (resources.files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@dataclasses.dataclass(frozen=True)
class Library:
    """The scripts in ``<package>/lua/``."""

    package: str

    def source(self, name: str) -> str:
        """The text of ``lua/<name>.lua``, as sent to Redis."""
        return _read(self.package, name)

    def script(self, client: aioredis.Redis, name: str) -> AsyncScript:
        return client.register_script(self.source(name))
