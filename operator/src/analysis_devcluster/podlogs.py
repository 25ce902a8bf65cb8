"""Container logs on the local node: what each run wrote, when it arrived, and the kubelet's log options.

Called by :mod:`analysis_devcluster.podrun`, which gives every container run
an :class:`Output` (a pipe the node drains), and by
:mod:`analysis_devcluster.kubeletapi`, which answers ``containerLogs`` with
:func:`stream`.

A runtime under a kubelet stores a timestamp with every line (the CRI log
format). Here the plain log stays exactly what the process wrote, because
humans and tests read it; the node, which reads the pipe, writes two small
files beside it in the pod's directory:

* ``<container>.log``: stdout and stderr, every run appended;
* ``<container>.log.runs``: one text line per run,
  ``<offset> <unix ns> <containerID>``: where in the log that run begins;
* ``<container>.log.times``: one 16-byte record per read from the pipe,
  little-endian ``(offset, unix ns)``: the bytes from ``offset`` on arrived
  then. A line's time is that of the record holding its first byte. Fixed
  width, so a request finds its starting record by binary search.

:func:`stream` reads like the kubelet's log reader: ``tailLines`` counts the
run's last lines before ``sinceSeconds``/``sinceTime`` filters them; the
``timestamps`` prefix (RFC 3339, nine fixed fraction digits, UTC) counts
towards ``limitBytes``; lines longer than 16 KiB are cut into pieces with one
prefix, as the runtime splits them; ``follow`` streams complete lines as they
arrive and ends once the run's output does (every writer of the pipe gone).

It deliberately keeps stdout and stderr in one stream (the ``stream`` option
of the PodLogsQuerySplitStreams feature is not offered) and never rotates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import struct
import time
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

Obj = dict[str, Any]
log = logging.getLogger("analysis_devcluster.node")

RUNS_SUFFIX = ".runs"
TIMES_SUFFIX = ".times"
LINGER_S = 1.0  # after a process exits, how long a grandchild may keep its output pipe open
_RECORD = struct.Struct("<QQ")
_READ_SIZE = 65536
_BLOCK = 1 << 20
_MAX_PIECE = 16 * 1024  # what CRI runtimes cut a long line into
_FALSE = {"0", "f", "false"}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class BadRequest(Exception):
    """Query parameters the kubelet refuses, with its status code and body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class LogError(Exception):
    """No log to give for this container now: the kubelet answers 400 with this message."""


def runs_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + RUNS_SUFFIX)


def times_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + TIMES_SUFFIX)


# ------------------------------------------------------------------ options


@dataclasses.dataclass(frozen=True)
class Options:
    """A ``containerLogs`` request's PodLogOptions; ``since_ns`` is resolved to a point in time (0: none)."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_ns: int = 0


def _flag(value: str | None) -> bool:
    """Go's query decoding of a bool: absent is false, and so are only ``0``, ``f`` and ``false``."""
    return value is not None and value.lower() not in _FALSE


def _number(value: str | None) -> int | None:
    return None if value is None else int(value)


def _instant_ns(value: str | None) -> int | None:
    if value is None:
        return None
    instant = datetime.datetime.fromisoformat(value)
    if instant.tzinfo is None:
        raise ValueError(f"sinceTime {value!r} has no time zone")
    return (instant - _EPOCH) // datetime.timedelta(microseconds=1) * 1000


def parse_options(query: Mapping[str, str], now_ns: int) -> Options:
    """The kubelet's reading of the query, with its answers to what it refuses (400 undecodable, 422 invalid)."""
    values = dict(query)
    tail = values.pop("tail", None)  # the kubelet still takes its old name
    if tail:
        values["tailLines"] = tail
        if tail == "all":
            del values["tailLines"]
    try:
        tail_lines = _number(values.get("tailLines"))
        limit_bytes = _number(values.get("limitBytes"))
        since_seconds = _number(values.get("sinceSeconds"))
        since_time = _instant_ns(values.get("sinceTime"))
    except ValueError:
        raise BadRequest(400, '{"message": "Unable to decode query."}') from None
    if (
        (tail_lines is not None and tail_lines < 0)
        or (limit_bytes is not None and limit_bytes < 1)
        or (since_seconds is not None and since_seconds < 1)
        or (since_seconds is not None and since_time is not None)
    ):
        raise BadRequest(422, '{"message": "Invalid request."}')
    since = now_ns - since_seconds * 10**9 if since_seconds is not None else 0
    if since_time is not None and since_time > since:
        since = since_time
    return Options(
        follow=_flag(values.get("follow")),
        previous=_flag(values.get("previous")),
        timestamps=_flag(values.get("timestamps")),
        tail_lines=tail_lines,
        limit_bytes=limit_bytes,
        since_ns=since,
    )


def format_ns(ns: int) -> str:
    """``2025-01-02T03:04:05.000000006Z``: the kubelet's fixed-width RFC 3339 timestamp."""
    seconds, fraction = divmod(ns, 10**9)
    return f"{datetime.datetime.fromtimestamp(seconds, datetime.UTC):%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


# ------------------------------------------------------------------ which run


def log_container_id(status: Obj | None, container: str, pod: str, *, previous: bool) -> str:
    """The ID of the container run whose log to read, from its status: the kubelet's validateContainerLogStatus.

    Raises LogError with the kubelet's message when there is none.
    """
    if status is None:
        raise LogError(f'container "{container}" in pod "{pod}" is not available')
    state, last = status.get("state") or {}, (status.get("lastState") or {}).get("terminated")
    last_id = (last or {}).get("containerID") or ""
    if previous:
        if not last_id:
            raise LogError(f'previous terminated container "{container}" in pod "{pod}" not found')
        return str(last_id)
    if state.get("running") is not None:
        return str(status.get("containerID") or "")
    if state.get("terminated") is not None:
        own = state["terminated"].get("containerID") or last_id
        if not own:
            raise LogError(f'container "{container}" in pod "{pod}" is terminated')
        return str(own)
    if last is not None:
        if not last_id:
            raise LogError(f'container "{container}" in pod "{pod}" is terminated')
        return str(last_id)
    if state.get("waiting") is not None:
        reason = state["waiting"].get("reason", "")
        raise LogError(f'container "{container}" in pod "{pod}" is waiting to start: {reason}')
    raise LogError(f'container "{container}" in pod "{pod}" is waiting to start - no logs yet')


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a container: where its output begins in the log, when, and its container ID."""

    start: int
    started_ns: int
    container_id: str


def parse_runs(text: str) -> list[Run]:
    runs = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            runs.append(Run(int(parts[0]), int(parts[1]), parts[2]))
    return runs


def run_span(runs: Sequence[Run], container_id: str, size: int) -> tuple[Run, int] | None:
    """The newest run with ``container_id`` and the offset where its output ends (the next run, or ``size``)."""
    for position in range(len(runs) - 1, -1, -1):
        if runs[position].container_id == container_id:
            end = runs[position + 1].start if position + 1 < len(runs) else size
            return runs[position], end
    return None


# ------------------------------------------------------------------ writing


class Output:
    """One run's stdout and stderr: a pipe that the node drains into the log, its runs and its times.

    Create it, give :attr:`write_fd` to the process as stdout and stderr, then
    :meth:`start` it with the run's container ID. :meth:`drained` waits for
    the end of the output once the process has exited.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._read_fd, self.write_fd = os.pipe()
        self.container_id = ""
        self.end = 0  # the log offset up to which this run's output has been written
        self.done = False
        self._log_fd = self._times_fd = -1
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._write_failed = False

    def start(self, container_id: str) -> None:
        """The process holds the write end now: record the run and drain the pipe from here on."""
        os.close(self.write_fd)
        self.write_fd = -1
        self.container_id = container_id
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._log_fd = os.open(self.log_path, flags, 0o644)
        self._times_fd = os.open(times_path(self.log_path), flags, 0o644)
        self.end = os.fstat(self._log_fd).st_size
        with runs_path(self.log_path).open("a") as runs:
            runs.write(f"{self.end} {time.time_ns()} {container_id}\n")
        os.set_blocking(self._read_fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._read_fd, self._drain)

    def abandon(self) -> None:
        """The process never started: close both ends."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        if not self.done:
            os.close(self._read_fd)
            self.done = True

    def _drain(self) -> None:
        try:
            data = os.read(self._read_fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as error:
            log.warning("reading the output for %s: %s", self.log_path, error)
            data = b""
        if not data:
            self._close()
            return
        try:
            # The time first: a reader that sees the bytes finds when they came.
            os.write(self._times_fd, _RECORD.pack(self.end, time.time_ns()))
            os.write(self._log_fd, data)
        except OSError as error:
            if not self._write_failed:
                log.warning("writing %s: %s; output dropped", self.log_path, error)
                self._write_failed = True
            return
        self.end += len(data)
        self._wake()

    def next_change(self) -> asyncio.Future[None]:
        """A future resolved at the next write or at the end of the output (at once if it has ended)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.done:
            future.set_result(None)
        else:
            self._waiters.append(future)
        return future

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    async def drained(self, limit_s: float = LINGER_S) -> None:
        """Wait until every writer has closed the pipe, at most ``limit_s`` (a daemon may hold it); then close it."""
        if not self.done:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit_s):
                    while not self.done:
                        await self.next_change()
        self._close()

    def _close(self) -> None:
        if self.done:
            return
        self.done = True
        if self._loop is not None:
            self._loop.remove_reader(self._read_fd)
        for fd in (self._read_fd, self._log_fd, self._times_fd):
            if fd >= 0:
                os.close(fd)
        self._wake()


# ------------------------------------------------------------------ reading


class _Times:
    """A forward-only reader of a ``.times`` file: the arrival time of the byte at an offset."""

    def __init__(self, path: Path, start: int, default_ns: int) -> None:
        self._file: IO[bytes] | None = None
        self._current = default_ns
        self._next: tuple[int, int] | None = None
        with contextlib.suppress(FileNotFoundError):
            self._file = path.open("rb")
            self._file.seek(self._first_record(start) * _RECORD.size)

    def _record(self, index: int) -> tuple[int, int]:
        assert self._file is not None
        self._file.seek(index * _RECORD.size)
        offset, ns = _RECORD.unpack(self._file.read(_RECORD.size))
        return offset, ns

    def _first_record(self, start: int) -> int:
        """The index of the last record at or before ``start`` (0 if none)."""
        assert self._file is not None
        count = os.fstat(self._file.fileno()).st_size // _RECORD.size
        low, high = 0, count  # the answer is below high
        while high - low > 1:
            middle = (low + high) // 2
            if self._record(middle)[0] <= start:
                low = middle
            else:
                high = middle
        return low

    def at(self, offset: int) -> int:
        while self._file is not None:
            if self._next is None:
                data = self._file.read(_RECORD.size)
                if len(data) < _RECORD.size:
                    self._file.seek(-len(data), os.SEEK_CUR)  # written later; read again next time
                    break
                self._next = _RECORD.unpack(data)
            if self._next[0] > offset:
                break
            self._current = self._next[1]
            self._next = None
        return self._current

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._file is not None:
            self._file.close()


def tail_start(handle: IO[bytes], start: int, end: int, lines: int) -> int:
    """Where the last ``lines`` lines of the bytes in [start, end) begin (an unterminated last line counts)."""
    if lines == 0 or end <= start:
        return end
    handle.seek(end - 1)
    high = end - 1 if handle.read(1) == b"\n" else end  # a final newline ends the last line, it starts none
    found = 0
    while high > start:
        low = max(start, high - _BLOCK)
        handle.seek(low)
        block = handle.read(high - low)
        position = len(block)
        while (position := block.rfind(b"\n", 0, position)) != -1:
            found += 1
            if found == lines:
                return low + position + 1
        high = low
    return start


def pieces(handle: IO[bytes], start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, piece) over [start, end): lines with their newline, cut every 16 KiB; the last may be unfinished."""
    handle.seek(start)
    position, offset, buffer = start, start, b""
    while position < end:
        block = handle.read(min(_BLOCK, end - position))
        if not block:
            break
        position += len(block)
        buffer += block
        cut = 0
        while True:
            newline = buffer.find(b"\n", cut, cut + _MAX_PIECE)
            if newline != -1:
                stop = newline + 1
            elif len(buffer) - cut >= _MAX_PIECE:
                stop = cut + _MAX_PIECE
            else:
                break
            yield offset, buffer[cut:stop]
            offset += stop - cut
            cut = stop
        buffer = buffer[cut:]
    if buffer:
        yield offset, buffer


class _Renderer:
    """Writes the log as the options say; remembers where it stopped, whether a line was open, and the byte budget.

    Without timestamps or since, nothing depends on where lines begin, so
    bytes are copied in blocks, several times faster than piece by piece.
    """

    def __init__(self, options: Options, times: _Times, position: int) -> None:
        self.options = options
        self.times = times
        self.position = position
        self.remaining = options.limit_bytes
        self.new_line = True
        self._raw = not options.timestamps and not options.since_ns
        self._stamped: tuple[int, bytes] = (-1, b"")

    @property
    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def render(self, handle: IO[bytes], end: int, *, final: bool) -> Iterator[bytes]:
        """The output for [position, end); unless ``final``, an unfinished last line waits."""
        return self._blocks(handle, end, final=final) if self._raw else self._pieces(handle, end, final=final)

    def _blocks(self, handle: IO[bytes], end: int, *, final: bool) -> Iterator[bytes]:
        if not final:
            end = self._complete_end(handle, end)
        handle.seek(self.position)
        while self.position < end and not self.exhausted:
            block = handle.read(min(_BLOCK, end - self.position))
            if not block:
                return
            self.position += len(block)
            yield self._spend(block)

    def _complete_end(self, handle: IO[bytes], end: int) -> int:
        """Where the last finished line in [position, end) ends; an unfinished one of 16 KiB or more goes too."""
        low = max(self.position, end - _MAX_PIECE)
        handle.seek(low)
        newline = handle.read(end - low).rfind(b"\n")
        if newline != -1:
            return low + newline + 1
        return end if end - self.position >= _MAX_PIECE else self.position

    def _pieces(self, handle: IO[bytes], end: int, *, final: bool) -> Iterator[bytes]:
        out: list[bytes] = []
        size = 0
        for offset, piece in pieces(handle, self.position, end):
            if not final and not piece.endswith(b"\n") and len(piece) < _MAX_PIECE:
                break
            self.position = offset + len(piece)
            text = self._one(offset, piece)
            if text:
                out.append(text)
                size += len(text)
            if self.exhausted:
                break
            if size >= _READ_SIZE:
                yield b"".join(out)
                out, size = [], 0
        if out:
            yield b"".join(out)

    def _one(self, offset: int, piece: bytes) -> bytes:
        at_line_start, self.new_line = self.new_line, piece.endswith(b"\n")
        arrived = self.times.at(offset)
        if arrived < self.options.since_ns:
            return b""
        if self.options.timestamps and at_line_start:
            if self._stamped[0] != arrived:  # lines that came in one read share it
                self._stamped = (arrived, format_ns(arrived).encode() + b" ")
            piece = self._stamped[1] + piece
        return self._spend(piece)

    def _spend(self, data: bytes) -> bytes:
        if self.remaining is None:
            return data
        data = data[: self.remaining]
        self.remaining -= len(data)
        return data


def stream(log_path: Path, container_id: str, options: Options, live: Output | None) -> AsyncGenerator[bytes, None]:
    """The log of the run ``container_id`` as the options ask, following ``live`` if that is the run.

    Raises LogError at once (before any output) if the node has no output of that run.
    """
    following = options.follow and live is not None and live.container_id == container_id and not live.done
    # Asked for before reading, so that no write between the read and the wait is missed.
    change = live.next_change() if following and live is not None else None
    runs = parse_runs(runs_path(log_path).read_text()) if runs_path(log_path).exists() else []
    size = log_path.stat().st_size if log_path.exists() else 0
    found = run_span(runs, container_id, size)
    if found is None:
        raise LogError(f"the devcluster node has no log of container {container_id} in {log_path}")
    run, end = found
    return _read(log_path, run, end, options, (live, change) if following and live and change else None)


async def _read(
    log_path: Path,
    run: Run,
    end: int,
    options: Options,
    follow: tuple[Output, asyncio.Future[None]] | None,
) -> AsyncGenerator[bytes, None]:
    with log_path.open("rb") as handle:
        start = tail_start(handle, run.start, end, options.tail_lines) if options.tail_lines is not None else run.start
        with _Times(times_path(log_path), start, run.started_ns) as times:
            renderer = _Renderer(options, times, start)
            for chunk in renderer.render(handle, end, final=follow is None):
                yield chunk
            if follow is None:
                return
            live, change = follow
            while not renderer.exhausted:
                await change
                change = live.next_change()
                finished = live.done
                for chunk in renderer.render(handle, live.end, final=finished):
                    yield chunk
                if finished:
                    return
