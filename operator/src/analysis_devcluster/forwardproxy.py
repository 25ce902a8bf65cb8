"""A small HTTP forward proxy, as a provider account's egress gateway in tests.

It serves what an HTTP client sends a proxy (RFC 9112 3.2.2, RFC 9110 9.3.6):
absolute-form requests (``POST http://host:port/path HTTP/1.1``) for plain
HTTP targets, which it forwards with ``Connection: close`` and a ``Via``
header, piping the answer back; and ``CONNECT host:port`` for HTTPS targets,
which it answers ``200`` and then tunnels bytes both ways without reading
them. Each request or tunnel is recorded (:class:`Forwarded`) with the local
address of the proxy's own connection to the target, so a test can match
what a server saw (the stand-in's ``peer``) to what went through here.

Written on asyncio streams rather than an aiohttp server: a tunnel needs the
raw connection, which aiohttp's request handlers do not hand over. It
deliberately does not authenticate, cache, reuse upstream connections, accept
chunked request bodies (411) or limit where it connects: it listens on
loopback, for tests only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import urllib.parse
from collections.abc import Awaitable, Callable

from analysis_devcluster import threaded

VIA = "1.1 analysis-devcluster-forward-proxy"
# Headers about the hop to the proxy, never forwarded (RFC 9110 7.6.1); Connection is set anew.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer", "upgrade"}
)
_HEAD_LIMIT = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Forwarded:
    """One request the proxy forwarded, or one tunnel it opened."""

    method: str  # the client's method; CONNECT for a tunnel
    target: str  # the absolute URL, or host:port for a tunnel
    upstream: str  # host:port of the proxy's end of its connection to the target


class _Refused(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on (a half close), so the other direction can finish."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


def _close(writer: asyncio.StreamWriter) -> None:
    if not writer.is_closing():
        writer.close()


def _address(writer: asyncio.StreamWriter) -> str:
    host, port = writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


class ForwardProxy(threaded.ThreadedServer):
    """The proxy on ``host`` (a free port by default), in a thread with its own event loop."""

    what = "proxy"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._lock = threading.Lock()
        self._seen: list[Forwarded] = []
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The proxy's URL, for a client's proxy setting (``http://host:port``)."""
        if not self.running:
            raise RuntimeError("the proxy is not running")
        return f"http://{self._host}:{self._port}"

    def requests(self) -> list[Forwarded]:
        """What was forwarded so far, in order."""
        with self._lock:
            return list(self._seen)

    def reset(self) -> None:
        with self._lock:
            self._seen = []

    async def _open(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        server = await asyncio.start_server(self._accept, self._host, self._port, limit=_HEAD_LIMIT)

        async def close() -> None:
            server.close()
            for task in list(self._handlers):  # open tunnels and kept-alive clients end with the proxy
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await server.wait_closed()

        return int(server.sockets[0].getsockname()[1]), close

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        except _Refused as refused:
            writer.write(f"HTTP/1.1 {refused.status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            _close(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head[: -len("\r\n\r\n")].split("\r\n")
        try:
            method, target, version = request_line.split(" ")
        except ValueError:
            raise _Refused("400 Bad Request") from None
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
        if any(len(header) != 2 for header in headers):
            raise _Refused("400 Bad Request")
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
        else:
            await self._forward(method, target, version, headers, reader, writer)

    async def _tunnel(self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise _Refused("400 Bad Request")
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            raise _Refused("502 Bad Gateway") from None
        try:
            self._record(Forwarded("CONNECT", target, _address(up_writer)))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            _close(up_writer)

    async def _forward(
        self,
        method: str,
        target: str,
        version: str,
        headers: list[tuple[str, ...]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        url = urllib.parse.urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            raise _Refused("400 Bad Request")  # not absolute-form: this is a proxy, not a server
        named = {name.lower(): value for name, value in headers}
        if "chunked" in named.get("transfer-encoding", "").lower():
            raise _Refused("411 Length Required")
        length = named.get("content-length", "0")
        if not length.isdigit():
            raise _Refused("400 Bad Request")
        body = await reader.readexactly(int(length))
        try:
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        except OSError:
            raise _Refused("502 Bad Gateway") from None
        try:
            self._record(Forwarded(method, target, _address(up_writer)))
            path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
            kept = [f"{name}: {value}" for name, value in headers if name.lower() not in _HOP_BY_HOP]
            head = [f"{method} {path} {version}", *kept, "Connection: close", f"Via: {VIA}", "", ""]
            up_writer.write("\r\n".join(head).encode("latin-1") + body)
            await up_writer.drain()
            # The target closes after answering, and so does the proxy; the answer it passes on says so
            # (Connection: close), so the client opens a new connection for its next request.
            answer = (await up_reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *answer_lines = answer[: -len("\r\n\r\n")].split("\r\n")
            passed = [line for line in answer_lines if line.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
            writer.write("\r\n".join([status_line, *passed, "Connection: close", "", ""]).encode("latin-1"))
            await _pipe(up_reader, writer)
        finally:
            _close(up_writer)

    def _record(self, forwarded: Forwarded) -> None:
        with self._lock:
            self._seen.append(forwarded)
