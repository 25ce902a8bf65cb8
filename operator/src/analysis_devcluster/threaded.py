"""A test server in a thread of its own, with its own event loop: start, stop, and a context manager.

The provider stand-in and the forward proxy run beside the tests' own event
loop this way. A subclass opens its listener in ``_open`` (on the server's
loop, returning its bound port and what to close at the end) and names itself
in ``what`` for errors; ``start`` returns once it listens, or raises what
stopped it from listening.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Self


class ThreadedServer:
    what = "server"

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def _open(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        """Listen on the server's loop; the bound port and the coroutine function that closes everything."""
        raise NotImplementedError

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"the {self.what} is already running")
        self._ready.clear()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name=self.what, daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        if self._failure is not None or not self._ready.is_set():
            self._thread.join(timeout=5)
            self._thread = None
            raise RuntimeError(f"the {self.what} did not start") from self._failure
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        self._thread = self._loop = self._stopping = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        try:
            self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
            self._port, close = await self._open()
        except (OSError, RuntimeError) as exc:  # handed to start(), which raises it in the caller's thread
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await close()
