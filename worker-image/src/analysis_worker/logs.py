"""The worker's log lines: one JSON object per line, batch, stage and item first.

``setup`` installs the formatter on the root logger; call sites pass
structured fields as ``extra={"fields": {...}}`` (``item`` among them), so
the line stays greppable and a log pipeline gets typed fields. ``text`` is a
plain variant for a terminal. The formatter never sees secrets because no
call site passes one: the API key lives only in the provider's client.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = ("batch", "stage", "item")
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
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        line: dict[str, Any] = {"batch": self.batch, "stage": self.stage, "item": fields.pop("item", None)}
        line["ts"] = self._timestamp(record.created, record.msecs)
        line["level"] = record.levelname.lower()
        line["msg"] = record.getMessage()
        line.update(fields)
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


def setup(batch: str, stage: str, fmt: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
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
