"""What both sides of a batch's Redis work queue share: connections, the message, a stage's counts and quota pause.

The queue has two sides, each in the package of the process that runs it:

- the producer, ``analysis_operator.producer``: the operator seeds the first
  stage, releases approved items, collects fan-in stages, seals stages, reads
  atomic snapshots, exports the items that ended and re-runs failed ones;
- the consumer, ``analysis_worker.consumer``: a worker claims, renews its
  leases, completes or retries attempts, reclaims expired leases and hands
  back what it holds when it stops.

They agree on the key names (``keys``), the names inside the keys
(``wire``), the message format (``Message``) and the script registry
(``scripts``). This module holds the rest of what both need, and nothing
that only one side uses.

Why Streams with a consumer group, not lists with a lease set
--------------------------------------------------------------
``XREADGROUP`` is an atomic, *blocking* claim that records the delivery time
and count in the group's pending entries list (PEL). The PEL is exactly the
lease set a visibility timeout needs, kept by Redis itself:

- a lease is the entry's idle time in the PEL; renewing it is ``XCLAIM ...
  JUSTID`` by the holder (``renew.lua``), which resets the idle time without
  counting a delivery;
- a worker that dies mid-item leaves its entry pending; once idle longer than
  the lease, ``XAUTOCLAIM`` hands it to a live worker and counts the
  delivery, and past the bound the entry is dead-lettered (``reclaim.lua``);
- a blocked ``XREADGROUP`` wakes the moment work is added, so pickup takes
  one round trip, with no polling.

With lists, the blocking move (``BLMOVE``) and the lease registration are two
steps, and a worker dying between them leaves an item no lease covers; the
fix is a reaper that guesses. Streams need no guess.

What Lua adds: every state change that touches several keys is one script
(``lua/*.lua`` of either side), so it is atomic and replay-safe. Acknowledged
entries are deleted, so ``XLEN - pending`` is the backlog.

Connections: blocking reads use a client of their own with no socket timeout
(redis-py 8's default 5 s timeout plus its retries turns a blocking read into
a minute-long stall) and short blocks, so shutdown stays responsive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from analysis_core import wire

Redis = aioredis.Redis

# What Redis being away looks like (down, restarting, still loading its AOF): wait and try again.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,  # a Redis Cluster with a slot unserved (a primary failing over)
    redis.exceptions.TryAgainError,
    OSError,
)


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}  # a Redis Cluster, from one seed node
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # a Sentinel-managed primary (value: TLS)
SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)  # every Redis URL a process accepts


@dataclasses.dataclass(frozen=True)
class SentinelTarget:
    """Where a ``redis+sentinel://`` URL points: the sentinels to ask, and the name of the primary they watch."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    tls: bool = False


def parse_sentinel(url: str) -> SentinelTarget:
    """``redis+sentinel://host:port[,host:port...]/<service>[/<db>]``, or ``ValueError`` saying what is wrong.

    The sentinels are asked which node is the primary of ``service`` on every
    new connection, so after a failover the clients follow the promoted
    replica. Credentials never go in the URL (the password comes from a
    Secret); messages quote only the part at fault, never the whole URL.
    """
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"scheme {scheme!r} is not {' or '.join(s + '://' for s in SENTINEL_SCHEMES)}")
    if "@" in rest:
        raise ValueError("a redis+sentinel:// URL carries no credentials: the Redis password comes from its Secret")
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    sentinels = []
    for hostport in filter(None, hosts.split(",")):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel {hostport!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL names its sentinels (host:port[,host:port...]) before the service")
    if not service:
        raise ValueError("a redis+sentinel:// URL names the primary's service (as the sentinels know it) after /")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return SentinelTarget(tuple(sentinels), service, int(db or 0), SENTINEL_SCHEMES[scheme])


def check_url(url: str) -> str | None:
    """What is wrong with a Redis URL, or None: the schemes ``connect`` takes, and a Sentinel URL's parts."""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme not in SCHEMES:
        return f"must be a URL starting with one of {', '.join(s + '://' for s in SCHEMES)}"
    if scheme in SENTINEL_SCHEMES:
        try:
            parse_sentinel(url)
        except ValueError as exc:
            return str(exc)
    return None


def connect(url: str, password: str | None = None, username: str | None = None) -> Redis:
    """A client for ordinary commands: short timeouts, string replies.

    RESP2 is pinned: the reply shapes this module parses are RESP2's, whatever
    a future client chooses by default. ``password`` (kept out of the URL, so
    a logged URL never carries it) overrides one in the URL, and ``username``
    (a batch's own user, ``tenancy``) one there. ``redis+cluster://host:port``
    (or ``rediss+cluster://``) is a Redis Cluster found from that node: every
    key of a batch shares its hash tag, so each script's keys are in one slot.
    ``redis+sentinel://h:p,h:p/<service>`` is the primary the sentinels
    name, found again after a failover (``parse_sentinel``).
    """
    options: dict[str, Any] = {"socket_timeout": 10, "socket_connect_timeout": 5, "protocol": 2}
    return _client(url, options | _credential(password, username))


def connect_blocking(url: str, password: str | None = None, username: str | None = None) -> Redis:
    """A client for blocking reads only: no socket timeout (the block bounds the wait), no retries."""
    options: dict[str, Any] = {"socket_timeout": None, "socket_connect_timeout": 5, "retry": None, "protocol": 2}
    return _client(url, options | _credential(password, username))


def _client(url: str, options: dict[str, Any]) -> Redis:
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        options.pop("retry", None)  # the cluster client retries by its own policy (moved slots, failovers)
        cluster = RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", decode_responses=True, **options)
        # The cluster client answers the commands this project sends as the single-node one does (the scripts'
        # keys share a slot, FUNCTION LOAD goes to every primary, SCAN walks every primary).
        return cast(Redis, cluster)
    if scheme in SENTINEL_SCHEMES:
        target = parse_sentinel(url)
        timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=timeouts | {"decode_responses": True})
        if target.tls:
            options["ssl"] = True
        primary = sentinel.master_for(
            target.service, redis_class=_SentinelManaged, db=target.db, decode_responses=True, **options
        )
        cast(_SentinelManaged, primary).managed_by = sentinel
        return cast(Redis, primary)
    return aioredis.Redis.from_url(url, decode_responses=True, **options)


async def on_every_primary(client: Redis, *command: str) -> list[Any]:
    """Run ``command`` on every primary: one Redis, or each primary of a cluster (``ACL SETUSER`` and the like,
    which a node keeps to itself); the replies, one per primary."""
    reached: object = client  # connect's type says Redis; it may be the cluster client
    if isinstance(reached, RedisCluster):
        replies = await reached.execute_command(*command, target_nodes=RedisCluster.PRIMARIES)
        return list(replies.values()) if isinstance(replies, dict) else [replies]
    return [await client.execute_command(*command)]  # type: ignore[no-untyped-call]


class _SentinelManaged(aioredis.Redis):
    """The primary's client; closing it closes its connections to the sentinels as well."""

    managed_by: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.managed_by is not None:
            for client in self.managed_by.sentinels:
                await client.aclose()


async def replicated(client: Redis, key: str, value: str, replicas: int, timeout_ms: int) -> int:
    """Write ``key`` and wait until ``replicas`` replicas hold it, and so every write the primary took before it.

    ``WAIT`` counts the replicas that acknowledged the *connection's* last
    write, so the write and the wait go down one connection (a pipeline);
    a process that only read (the operator reading what workers wrote) makes
    that write of its own to cover what it read. Returns how many replicas
    acknowledged within ``timeout_ms``. Only for one primary (plain or
    Sentinel-managed): a cluster client would send ``WAIT`` to every primary
    on other connections.
    """
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(key, value)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        _, acknowledged = await pipe.execute()
    return int(acknowledged)


def _credential(password: str | None, username: str | None) -> dict[str, Any]:
    given = {"password": password, "username": username}
    return {name: value for name, value in given.items() if value}


@dataclasses.dataclass(frozen=True)
class Message:
    """One unit of work for a stage: an item in a round, at an attempt."""

    item: str
    round: int = 0
    attempt: int = 1
    input: str = ""  # idempotency key of the previous stage's result ("" for initial items)
    since_ms: int = 0  # when the first attempt in this stage and round started (0: not yet)
    feedback: str = ""  # a judge's feedback, for the next round
    # The attempt this run of the item started at: 1, or past the old attempts after a re-run
    # (``producer.retry_failed``); the retry policy counts attempts from here.
    first_attempt: int = 1

    def fields(self) -> list[str]:
        """Flat stream fields, the wire format of the stream and the delayed set."""
        return [
            wire.MSG_ITEM,
            self.item,
            wire.MSG_ROUND,
            str(self.round),
            wire.MSG_ATTEMPT,
            str(self.attempt),
            wire.MSG_INPUT,
            self.input,
            wire.MSG_SINCE,
            str(self.since_ms),
            wire.MSG_FEEDBACK,
            self.feedback,
            wire.MSG_FIRST,
            str(self.first_attempt),
        ]

    @property
    def attempts_in_run(self) -> int:
        """Which attempt of this run this is (1-based), what the retry policy's ``maxAttempts`` bounds."""
        return max(1, self.attempt - self.first_attempt + 1)

    @classmethod
    def from_fields(cls, fields: dict[str, str] | Sequence[str], claimed_ms: int = 0) -> Message:
        """The message of stream fields; ``claimed_ms``: when it was claimed, its ``since_ms`` if it has none yet."""
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        return cls(
            item=fields[wire.MSG_ITEM],
            round=int(fields.get(wire.MSG_ROUND, 0)),
            attempt=int(fields.get(wire.MSG_ATTEMPT, 1)),
            input=fields.get(wire.MSG_INPUT, ""),
            since_ms=int(fields.get(wire.MSG_SINCE, 0) or 0) or claimed_ms,
            feedback=fields.get(wire.MSG_FEEDBACK, ""),
            first_attempt=int(fields.get(wire.MSG_FIRST, 1) or 1),
        )


@dataclasses.dataclass(frozen=True)
class StageCounts:
    """One stage's backlog, leases, retries and counters.

    Per stage of the operator's snapshot (status, sizing, sealing), and what a
    worker reads to learn its stage has drained.
    """

    ready: int  # in the stream, not yet claimed
    running: int  # claimed and not acknowledged (leased)
    retrying: int  # waiting in the delayed set
    counters: dict[str, int]  # wire.COUNT_* and wire.USAGE_*: monotonic but for a re-run
    gathered: int = 0  # waiting to be collected (collect stages)

    @property
    def provider_batches_open(self) -> int:
        """Provider batches submitted and not yet done with (mode: Batch stages): their results are still to be
        handed out, or the provider's copy (prompts and answers) still to be deleted."""
        submitted = self.counters.get(wire.COUNT_PROVIDER_BATCHES, 0)
        return max(0, submitted - self.counters.get(wire.COUNT_PROVIDER_BATCHES_ENDED, 0))

    @property
    def drained(self) -> bool:
        """Nothing left to do: no item waiting, leased, retrying or gathered, and no provider batch open (the
        last items of a batch are recorded a moment before its worker has deleted the provider's copy)."""
        idle = self.ready == 0 and self.running == 0 and self.retrying == 0 and self.gathered == 0
        return idle and self.provider_batches_open == 0


@dataclasses.dataclass(frozen=True)
class QuotaPause:
    """A stage paused because its provider refused a call for quota or billing (``keys.LIMITER_QUOTA``).

    Workers write it (``analysis_worker.ratelimit``) and the operator reads it
    into a condition (``analysis_operator.producer.snapshot``). While it
    exists, one call at a time probes the provider, ``backoff_ms`` after the
    last refusal; the first probe that is not refused for quota removes it.
    """

    message: str  # the provider's words
    model: str | None  # the refusal concerns this model only; None: the whole account
    since_ms: int  # Redis time of the first refusal
    backoff_ms: int  # from a refused probe to the next
    probes: int  # probes let through so far

    @classmethod
    def from_fields(cls, fields: dict[str, str] | Sequence[str]) -> QuotaPause | None:
        """The pause in a hash's fields (a dict, or HGETALL's flat list inside a script's reply); None if empty."""
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        if not fields:
            return None
        return cls(
            message=str(fields.get(wire.QUOTA_MESSAGE, "")),
            model=fields.get(wire.QUOTA_MODEL) or None,
            since_ms=int(fields.get(wire.QUOTA_SINCE, 0) or 0),
            backoff_ms=int(fields.get(wire.QUOTA_BACKOFF, 0) or 0),
            probes=int(fields.get(wire.QUOTA_PROBES, 0) or 0),
        )
