"""A batch's own Redis credential: the ACL user its workers connect as, and what that user may do.

The operator holds Redis's admin credential; a batch's workers get a user of
their own, ``analysis-batch-<uid>``, confined to the keys of their batch
(every key of a batch starts with its hash tag ``{<uid>}``, ``keys.BatchKeys``)
and to the commands a worker runs: FCALL of the project's functions
(``scripts``), the commands those functions run (a function runs with its
caller's permissions, so the key patterns apply inside it too), and the few
the worker sends itself (``WORKER_COMMANDS``). No EVAL, SCRIPT or FUNCTION,
so a tenant runs no Lua of its own, and nothing outside the batch's keys: not
another batch's, not a provider account's (its capacity reaches a batch as an
allowance under the batch's own tag, which the operator grants).

The password is derived from the admin password (an HMAC of the batch's
uid), so the operator can restore a user or its Secret at any time without
keeping a copy, and one batch's password says nothing of the admin's or of
another batch's. Redis stores only its SHA-256 (``#<hex>`` in the rules).

What this does not stop: a team that holds an API key of a shared provider
account can always call the provider directly, beyond its fair share; the
allowance keeps honest workers to their share, and the provider's own
per-key or per-project limits are the hard barrier (docs/design.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from analysis_core import keys, scripts

USER_PREFIX = "analysis-batch-"  # + the batch's uid: its Redis ACL user
# The keys of the batch's Redis Secret (in the batch's namespace), mounted into its workers as files.
SECRET_USERNAME = "username"
SECRET_PASSWORD = "password"

# The functions a worker calls (scripts.function in analysis_worker), and the commands it sends itself.
WORKER_FUNCTIONS = (
    "account_report",
    "account_settle",
    "account_spend",
    "adopt",
    "claim",
    "complete",
    "handback",
    "limiter_acquire",
    "limiter_pause",
    "limiter_probed",
    "limiter_quota",
    "limiter_settle",
    "promote",
    "provider_batch",
    "reclaim",
    "renew",
    "retry",
)
WORKER_COMMANDS = (
    "fcall",
    "fcall_ro",
    "get",  # the batch's layout version
    "set",  # the heartbeat
    "exists",  # the liveness check reads the heartbeat
    "hget",  # results and outcomes a call needs
    "hgetall",
    "hvals",  # what a mode: Batch stage's provider batches hold against the budget
    "hexists",  # the suspend flag
    "hsetnx",  # the budget's flag
    "sismember",  # sealed stages
    "xlen",  # a stage's counts
    "xinfo|groups",
    "zcard",
    "xgroup|create",
    "xpending",
    "xread",  # waiting for new entries
    "xreadgroup",  # a restarted worker's own pending entries
    "ping",
    "select",  # a Redis URL naming a database other than 0
    "cluster|slots",  # a Redis Cluster's map of slots to nodes, which the cluster client reads on connecting
    "asking",  # a cluster client following a slot that is moving to another node
    "command",  # the command table, from which a cluster client learns where each command's keys are
)
# Not "client|setinfo", with which redis-py names itself on connecting: Redis 7.0 does not know it, and redis-py
# goes on without it when it is refused.


def username(uid: str) -> str:
    return USER_PREFIX + uid


def password(admin_password: str, uid: str) -> str:
    """The batch's password: an HMAC-SHA256 of its uid under the admin password, URL-safe base64."""
    digest = hmac.new(admin_password.encode(), f"{USER_PREFIX}{uid}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def commands() -> tuple[str, ...]:
    """Every command a worker may run, sorted: its own and its functions'."""
    return tuple(sorted(set(WORKER_COMMANDS) | scripts.commands(*WORKER_FUNCTIONS)))


def rules(uid: str, secret: str) -> list[str]:
    """The ``ACL SETUSER`` rules of the batch's user, from scratch (``reset``): applying them twice changes nothing."""
    return [
        "reset",
        "on",
        "#" + hashlib.sha256(secret.encode()).hexdigest(),
        f"~{keys.BatchKeys(uid).tag}:*",
        "resetchannels",
        "-@all",
        *(f"+{command}" for command in commands()),
    ]
