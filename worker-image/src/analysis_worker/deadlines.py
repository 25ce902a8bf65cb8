"""The deadline of a stage's provider calls: one timer for all of them, not one per call.

Every call of a stage runs under the same timeout, so the calls' deadlines
come in the order the calls start. ``Deadlines`` keeps them in that order and
arms one event-loop timer, for the earliest deadline still running; when it
fires it cancels what is overdue and arms itself for the next. Entering and
leaving costs a small object and a deque append, where ``asyncio.timeout``
costs a ``Timeout`` object, a timer handle on the loop's heap and its
cancellation, several times as much at thousands of calls a second.

The semantics are ``asyncio.timeout``'s: past the deadline the task is
cancelled, and leaving the ``with`` block turns that cancellation into
``TimeoutError``; a cancellation from elsewhere (shutdown) stays a
cancellation. The block must not be left by ``await``-free code that
swallows the cancellation, the same rule as for ``asyncio.timeout``.

Finished calls stay queued until the ones before them finish; when they
outnumber the running calls they are swept out, so a call that hangs until
its deadline cannot make the queue grow with the calls that passed it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

_RUNNING, _LEFT, _EXPIRED = 0, 1, 2
SWEEP_SLACK = 64  # finished entries tolerated beyond the running ones before a sweep


class _Entry:
    __slots__ = ("at", "state", "task")

    def __init__(self, at: float, task: asyncio.Task[object]) -> None:
        self.at = at
        self.task = task
        self.state = _RUNNING


class Deadlines:
    """Deadlines ``seconds`` after each call's start, for calls made in the running event loop."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"a deadline must be positive, got {seconds}")
        self.seconds = seconds
        self._queue: deque[_Entry] = deque()
        self._left = 0  # entries in the queue whose calls finished
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Entries queued (running and finished-but-not-yet-swept): for tests."""
        return len(self._queue)

    def within(self) -> Within:
        """A ``with`` block that the current task leaves by ``TimeoutError`` if it runs past the deadline."""
        return Within(self)

    def _start(self) -> _Entry:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        loop = task.get_loop()
        entry = _Entry(loop.time() + self.seconds, task)
        self._queue.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.at, self._expire)
        return entry

    def _finish(self, entry: _Entry) -> None:
        entry.state = _LEFT
        queue = self._queue
        if queue[0] is entry:
            queue.popleft()
            while queue and queue[0].state != _RUNNING:
                queue.popleft()
                self._left -= 1
            return
        self._left += 1
        if self._left > len(queue) - self._left + SWEEP_SLACK:
            self._queue = deque(each for each in queue if each.state == _RUNNING)
            self._left = 0

    def _expire(self) -> None:
        self._timer = None
        queue = self._queue
        while queue:
            head = queue[0]
            if head.state != _RUNNING:
                queue.popleft()
                self._left -= 1
                continue
            loop = head.task.get_loop()
            if head.at > loop.time():
                self._timer = loop.call_at(head.at, self._expire)
                return
            queue.popleft()
            head.state = _EXPIRED
            head.task.cancel()


class Within:
    """One call's deadline; see ``Deadlines.within``."""

    __slots__ = ("_deadlines", "_entry")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self._entry: _Entry | None = None

    def __enter__(self) -> None:
        self._entry = self._deadlines._start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        entry = self._entry
        assert entry is not None, "left a deadline that was never entered"
        if entry.state == _EXPIRED:
            # The expiry's cancel is answered here; another cancel still pending (shutdown) wins.
            if entry.task.uncancel() == 0 and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
            return
        self._deadlines._finish(entry)
