"""The Lua scripts of ``lua/``, read once per process and registered on a client by name.

``queue`` and ``ratelimit`` call ``script(client, name)``; registering is
cheap (a SHA1 of the cached text) and the call itself uses EVALSHA with a
fallback to EVAL, so a script is sent to Redis once per server.
"""

from __future__ import annotations

import functools
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


@functools.cache
def source(name: str) -> str:
    return (resources.files("analysis_core") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def script(client: aioredis.Redis, name: str) -> AsyncScript:
    return client.register_script(source(name))
