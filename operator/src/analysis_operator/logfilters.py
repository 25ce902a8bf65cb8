"""Log levels that say what a line means: a request Kopf retries is a warning, not an error.

Kopf's API client logs every failed attempt of a request it is about to
retry at ERROR ("Request attempt #1/9 failed; will retry: ..."). Right after a
control plane starts, the API server answers the first watch with 429
"storage is (re)initializing" and a Retry-After, so a healthy operator's first
log line was an ERROR. A retried attempt is an expected, passing condition:
:class:`RetriedAtWarning` logs it at WARNING. The attempt Kopf gives up on
("failed; escalating") and everything else keep their level.

Installed on the root logger's handlers (where Kopf's ``configure`` puts its
own), so it applies whichever logger Kopf passed to the request, its own
module's or a resource's.
"""

from __future__ import annotations

import logging

RETRIED = "failed; will retry"  # Kopf's wording for an attempt it retries (kopf/_cogs/clients/api.py)


class RetriedAtWarning(logging.Filter):
    """Lowers Kopf's "Request attempt ... failed; will retry" records from ERROR to WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.name.startswith("kopf"):
            message = record.getMessage()
            if message.startswith("Request attempt ") and RETRIED in message:
                record.levelno = logging.WARNING
                record.levelname = logging.getLevelName(logging.WARNING)
        return True


def install(root: logging.Logger | None = None) -> None:
    """Add the filter to every handler of the root logger (once)."""
    for handler in (root or logging.getLogger()).handlers:
        if not any(isinstance(f, RetriedAtWarning) for f in handler.filters):
            handler.addFilter(RetriedAtWarning())
