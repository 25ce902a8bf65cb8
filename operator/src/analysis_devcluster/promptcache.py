"""The providers' prompt caches as the stand-in plays them, so that a test of caching cannot pass by construction.

What is modelled, per provider, as their documentation describes it:

- **Anthropic** caches explicitly: a content block (of ``system`` or of a
  message) that carries ``cache_control`` marks a breakpoint, and the prompt
  up to and including that block is the prefix written or read. A prefix
  shorter than the model's minimum (``anthropic_minimum``) is not cached at
  all, silently. A call reads the longest prefix of its breakpoints that is
  cached and writes the longest one that is not; usage reports
  ``cache_read_input_tokens``, ``cache_creation_input_tokens`` and, apart
  from both, ``input_tokens``.
- **OpenAI** caches by itself: every prompt of at least 1,024 tokens is
  cached, and a later prompt reads the longest prefix it shares with one
  cached before, in steps of 128 tokens from 1,024 on. Usage reports
  ``prompt_tokens`` (all of them) and ``prompt_tokens_details.cached_tokens``.

For both, what a call writes is readable only once that call has answered
(``Pending.commit``): calls that start together all miss. Entries are kept
per API key and model, for ``TTL_S`` after their last use. Tokens are
counted as the stand-in counts them everywhere: a token per 4 characters.

It deliberately does not model the 1-hour TTL, a cache shared between the
keys of one organisation, or tools and images in the prefix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Sequence

CHARS_PER_TOKEN = 4
TTL_S = 300.0  # both providers' default: five minutes after the last use
OPENAI_MINIMUM = 1024
OPENAI_STEP = 128
# Anthropic's minimum cacheable prefix, by model family (the longest matching prefix of the model's name wins).
ANTHROPIC_MINIMUMS = {"claude-haiku": 2048, "claude-3-haiku": 2048, "claude": 1024}


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def anthropic_minimum(model: str) -> int:
    matches = [name for name in ANTHROPIC_MINIMUMS if model.startswith(name)]
    return ANTHROPIC_MINIMUMS[max(matches, key=len)] if matches else ANTHROPIC_MINIMUMS["claude"]


@dataclasses.dataclass(frozen=True)
class Usage:
    """A call's prompt tokens: ``input`` read at the full price, and the cache's share."""

    input: int
    cache_write: int = 0
    cache_read: int = 0


@dataclasses.dataclass
class Pending:
    """What a call will have written to the cache once it answers."""

    cache: PromptCache
    entries: list[tuple[str, ...]]

    def commit(self) -> None:
        self.cache.store(self.entries)


class PromptCache:
    """Cached prefixes by (API key, model, digest of the prefix); one lock, shared by the server's handlers."""

    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._expires: dict[tuple[str, ...], float] = {}

    def reset(self) -> None:
        with self._lock:
            self._expires.clear()

    def _hit(self, entry: tuple[str, ...], now: float) -> bool:
        expires = self._expires.get(entry)
        if expires is None or expires < now:
            return False
        self._expires[entry] = now + self.ttl_s  # a read refreshes it
        return True

    def store(self, entries: Sequence[tuple[str, ...]]) -> None:
        now = time.monotonic()
        with self._lock:
            for entry in entries:
                self._expires[entry] = now + self.ttl_s

    def anthropic(self, key: str, model: str, blocks: Sequence[tuple[str, bool]]) -> tuple[Usage, Pending]:
        """The usage of a call whose prompt is ``blocks`` in order, each ``(text, carries cache_control)``."""
        text = "".join(block for block, _ in blocks)
        total = tokens(text)
        breakpoints, length = [], 0
        for block, marked in blocks:
            length += len(block)
            if marked:
                breakpoints.append(length)
        cacheable = [end for end in breakpoints if tokens(text[:end]) >= anthropic_minimum(model)]
        entry: dict[int, tuple[str, ...]] = {end: ("anthropic", key, model, _digest(text[:end])) for end in cacheable}
        now = time.monotonic()
        with self._lock:
            read_end = next((end for end in reversed(cacheable) if self._hit(entry[end], now)), 0)
        read = tokens(text[:read_end]) if read_end else 0
        write_end = cacheable[-1] if cacheable and cacheable[-1] > read_end else 0
        write = tokens(text[:write_end]) - read if write_end else 0
        pending = Pending(self, [entry[write_end]] if write_end else [])
        return Usage(input=max(0, total - read - write), cache_write=write, cache_read=read), pending

    def openai(self, key: str, model: str, prompt: str) -> tuple[Usage, Pending]:
        """The usage of a call whose whole prompt (every message, in order) is ``prompt``."""
        total = tokens(prompt)
        if total < OPENAI_MINIMUM:
            return Usage(input=total), Pending(self, [])
        step = OPENAI_STEP * CHARS_PER_TOKEN
        first = OPENAI_MINIMUM * CHARS_PER_TOKEN
        # The prefix at every step from the minimum on: what this prompt writes, and what a later one may read.
        ends = list(range(first, len(prompt) + 1, step))
        entries: list[tuple[str, ...]] = [("openai", key, model, _digest(prompt[:end])) for end in ends]
        now = time.monotonic()
        read_end = 0
        with self._lock:
            for end, entry in zip(ends, entries, strict=True):
                if not self._hit(entry, now):
                    break
                read_end = end
        read = read_end // CHARS_PER_TOKEN
        return Usage(input=total - read, cache_read=read), Pending(self, entries)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
