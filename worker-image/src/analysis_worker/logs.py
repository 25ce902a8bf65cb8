"""The worker's log lines: one JSON object per line, batch, stage and item first.

``setup`` installs the formatter on the root logger; call sites pass
structured fields as ``extra={"fields": {...}}`` (``item`` among them), so
the line stays greppable and a log pipeline gets typed fields. ``text`` is a
plain variant for a terminal. The formatter never sees secrets because no
call site passes one: the API key lives only in the provider's client.

Lines logged in a turn of the event loop are written together at its end,
one write instead of one per line (a busy worker logs a line per item);
outside the loop (start-up, exit, other threads) a line is written at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

_NO_FIELDS: dict[str, Any] = {}
_LEVELS = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}
# Built once: json.dumps with any option builds an encoder per call.
_ENCODE = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    def __init__(self, batch: str, stage: str) -> None:
        super().__init__()
        self.batch = batch
        self.stage = stage
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # a busy worker writes many lines a second: format the date once per second
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", _NO_FIELDS)
        line: dict[str, Any] = {
            "batch": self.batch,
            "stage": self.stage,
            "item": fields.get("item"),
            "ts": self._timestamp(record.created, record.msecs),
            "level": _LEVELS.get(record.levelno) or record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for name, value in fields.items():
            if name != "item":
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _ENCODE(line)


class TextFormatter(logging.Formatter):
    def __init__(self, batch: str, stage: str) -> None:
        super().__init__()
        self.prefix = f"{batch[:8]}/{stage}"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        item = fields.pop("item", "-")
        rest = " ".join(f"{k}={v}" for k, v in fields.items())
        text = f"{self.prefix} {item} {record.levelname.lower()} {record.getMessage()} {rest}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class TurnHandler(logging.StreamHandler):  # type: ignore[type-arg]  # (generic in typeshed only)
    """A stream handler that writes the lines of one event-loop turn in one write, when the turn ends."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 (logging's own rule: a line that cannot be formatted is reported, not raised)
            self.handleError(record)
            return
        self._pending.append(line)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # not in the loop's thread, or no loop: now (with whatever a stopped loop left)
            self.flush()
            return
        if not self._scheduled:
            self._scheduled = True
            running.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._scheduled = False
            if self._pending:
                text = "\n".join(self._pending) + "\n"
                self._pending.clear()
                self.stream.write(text)
            super().flush()
        finally:
            self.release()


def setup(batch: str, stage: str, fmt: str = "json", level: int = logging.INFO) -> None:
    handler = TurnHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(batch, stage) if fmt == "json" else TextFormatter(batch, stage))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A line says nothing of its thread, process or source line, so don't look them up: the logging HOWTO's
    # "Optimization" settings: a few microseconds a line, which a busy worker writes per item.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # the HOWTO's way to skip findCaller
    # The SDKs' HTTP clients log every request at INFO; keep them to warnings.
    for noisy in ("httpx", "httpx2", "anthropic", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
