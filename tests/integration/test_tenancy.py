"""A batch's own Redis user against a real redis-server: its workers finish it; it reaches nothing else.

Batch A's credential is what its workers get. With it, the real worker runs
A to the end; everything it could try against batch B or a provider
account's state fails with NOPERM, B and the account unchanged; arbitrary
Lua and the administrative commands fail; the user can be restored (as after
a Redis restart, which forgets ACL users) and is gone with its batch.
"""

import asyncio
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from analysis_core import env, keys, queue, scripts, tenancy
from analysis_operator import producer
from analysis_worker import consumer

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "the-admin-password-for-tenancy-tests"  # what derives the batches' passwords
STAGES = ["a", "b"]
DENIED = (NoPermissionError, AuthenticationError)


def as_user(redis_url: str, uid: str) -> tuple[str, str]:
    """The batch's Redis URL (its user in it) and password, as its workers get them."""
    parts = urllib.parse.urlsplit(redis_url)
    url = parts._replace(netloc=f"{tenancy.username(uid)}@{parts.hostname}:{parts.port}").geturl()
    return url, tenancy.password(ADMIN_PASSWORD, uid)


@pytest.fixture
async def tenants(redis: queue.Redis, redis_url: str) -> AsyncIterator[dict[str, Any]]:
    """Batches A and B, seeded by the admin, each with its user; A's clients; users removed afterwards."""
    uids = {name: uuid.uuid4().hex for name in ("A", "B")}
    for uid in uids.values():
        await producer.seed(redis, uid, STAGES, ["NVDA", "AMD"])
        await producer.ensure_user(redis, uid, ADMIN_PASSWORD)
    url, password = as_user(redis_url, uids["A"])
    client, blocking = queue.connect(url, password), queue.connect_blocking(url, password)
    try:
        yield {"uids": uids, "client": client, "blocking": blocking}
    finally:
        await client.aclose()
        await blocking.aclose()
        for uid in uids.values():
            await producer.remove_user(redis, uid)


async def dump(redis: queue.Redis, pattern: str) -> dict[str, Any]:
    """Every key matching ``pattern`` and its serialized value: a batch's or an account's whole state."""
    found = {}
    async for key in redis.scan_iter(match=pattern, count=1000):
        found[key] = (await redis.type(key), await _value(redis, key))
    return found


async def _value(redis: queue.Redis, key: str) -> Any:
    kind = await redis.type(key)
    read: dict[str, Callable[[str], Awaitable[Any]]] = {
        "string": redis.get,
        "hash": redis.hgetall,
        "set": redis.smembers,
        "zset": lambda k: redis.zrange(k, 0, -1, withscores=True),
        "list": lambda k: redis.lrange(k, 0, -1),
        "stream": lambda k: redis.xrange(k),
    }
    return await read[kind](key)


async def test_a_batch_user_runs_its_own_queue_and_reaches_nothing_else(
    tenants: dict[str, Any], redis: queue.Redis
) -> None:
    uid_a, uid_b = tenants["uids"]["A"], tenants["uids"]["B"]
    mine, theirs = keys.BatchKeys(uid_a), keys.BatchKeys(uid_b)
    client = tenants["client"]
    account = keys.AccountKeys("shared")
    await redis.hset(account.part(keys.ACCOUNT_SUMS), mapping={"requests": 5})
    before_b, before_account = await dump(redis, theirs.pattern), await dump(redis, account.pattern)

    # Its own queue, through the worker's own code: claim, complete, counts, heartbeat.
    own = consumer.StageQueue(client, tenants["blocking"], uid_a, "a", "pod")
    (delivery,) = (await own.claim(1, 10)).deliveries
    assert await own.complete(delivery, {"status": "succeeded"}, result="ok", increments={"succeeded": 1})
    assert (await own.counts()).counters == {"succeeded": 1}
    assert await consumer.suspended(client, uid_a) is False

    # B's keys, directly and through the project's own functions.
    other = consumer.StageQueue(client, tenants["blocking"], uid_b, "a", "pod")
    attempts: dict[str, Callable[[], Awaitable[Any]]] = {
        "read B's results": lambda: client.hgetall(theirs.results),
        "read B's stream": lambda: client.xrange(theirs.stream("a")),
        "write B's flags": lambda: client.hset(theirs.flags, "suspended", "1"),
        "add to B's stream": lambda: client.xadd(theirs.stream("a"), {"item": "X"}),
        "delete B's counts": lambda: client.delete(theirs.counts("a")),
        "claim from B": lambda: other.claim(1, 10),
        "complete B's item with complete": lambda: scripts.function(client, "complete")(
            keys=[theirs.stream("a"), theirs.outcomes, theirs.results, theirs.counts("a")], args=["x"]
        ),
        "read the account": lambda: client.hgetall(account.part(keys.ACCOUNT_SUMS)),
        "reset the account": lambda: client.delete(account.part(keys.ACCOUNT_SUMS)),
        "enlarge the account": lambda: client.hincrby(account.part(keys.ACCOUNT_SUMS), "requests", -5),
        "enlarge B's allowance": lambda: client.hincrby(theirs.allowance("p", keys.ALLOWANCE_GRANT), "requests", 9),
        "rename its key onto B's": lambda: client.rename(mine.counts("a"), theirs.counts("a")),
        "copy its key onto B's": lambda: client.copy(mine.counts("a"), theirs.counts("a"), replace=True),
    }
    allowed = []
    for what, attempt in attempts.items():
        try:
            await attempt()
        except NoPermissionError:
            continue
        allowed.append(what)
    assert allowed == [], "batch A's user could do these"
    assert await dump(redis, theirs.pattern) == before_b
    assert await dump(redis, account.pattern) == before_account


@pytest.mark.parametrize(
    "command",
    [
        ("EVAL", "return 1", "0"),
        ("EVAL", "return redis.call('FLUSHALL')", "0"),
        ("SCRIPT", "LOAD", "return 1"),
        ("SCRIPT", "FLUSH"),
        ("FUNCTION", "LOAD", "#!lua name=mine\nredis.register_function('mine', function() return 1 end)"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "DELETE", "x"),
        ("FUNCTION", "LIST"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "requirepass"),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", "mine", "on", "+@all", "~*"),
        ("ACL", "WHOAMI"),
        ("DEBUG", "SLEEP", "0"),
        ("SHUTDOWN", "NOSAVE"),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("MONITOR",),
        ("SUBSCRIBE", "anything"),
        ("MIGRATE", "127.0.0.1", "1", "", "0", "1"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
async def test_a_batch_user_runs_no_lua_of_its_own_and_no_administration(
    tenants: dict[str, Any], command: tuple[str, ...]
) -> None:
    with pytest.raises(ResponseError) as refused:
        await tenants["client"].execute_command(*command)
    if command[0] == "DEBUG":  # refused to every client by Redis's default enable-debug-command, before the ACL
        assert "DEBUG command not allowed" in str(refused.value)
    else:
        assert isinstance(refused.value, NoPermissionError), refused.value


async def test_the_worker_finishes_its_batch_on_its_own_user_and_waits_for_a_user_redis_lost(
    workers: Any, redis: queue.Redis, redis_url: str, tmp_path: Path
) -> None:
    spec = {
        "items": [f"T{i}" for i in range(12)],
        "providers": {
            "local": {"type": "offline", "offline": {"seed": 1, "latencyMilliseconds": 5, "batchTurnaroundSeconds": 0}}
        },
        "stages": [
            {"name": "draft", "provider": "local", "prompt": "Draft on {{ item }}", "concurrency": 4},
            # In batch mode, so the provider batches' records and what they hold of the budget are read and
            # written on the batch's own user too.
            {"name": "polish", "provider": "local", "prompt": "Polish {{ input }}", "mode": "Batch"},
        ],
        "budget": {"maxTokens": 1_000_000},
    }
    batch = workers.batch(spec)
    await batch.seed()
    # The Secret as the operator mounts it: the user and the password as files; the URL names no user.
    mounted = tmp_path / "redis-auth"
    mounted.mkdir()
    (mounted / tenancy.SECRET_USERNAME).write_text(tenancy.username(batch.uid))
    (mounted / tenancy.SECRET_PASSWORD).write_text(tenancy.password(ADMIN_PASSWORD, batch.uid))
    try:
        # Started before Redis knows the user (a restart forgot it): the workers wait instead of failing.
        started = [workers.start(batch, stage, **{env.REDIS_AUTH_DIR: str(mounted)}) for stage in ("draft", "polish")]

        async def refused_once() -> bool:
            return all(any("refused the worker's login" in line["msg"] for line in w.lines()) for w in started)

        await workers.eventually(refused_once, 20, "both workers refused their first login")
        await producer.ensure_user(redis, batch.uid, ADMIN_PASSWORD)

        async def finished() -> bool:
            counts = await consumer.stage_counts(redis, batch.uid, "polish")
            return counts.counters.get("succeeded", 0) == len(batch.items) and counts.drained

        await workers.eventually(finished, 60, "finished by workers on the batch's own user")
        assert any(line["msg"] == "provider batch ended" for line in started[1].lines())
        secret = tenancy.password(ADMIN_PASSWORD, batch.uid)
        for worker in started:
            assert worker.process.poll() is None  # still serving: the refusal was waited out
            assert secret not in worker.log.read_text(errors="replace")
            assert not [line for line in worker.lines() if line["level"] == "error"], worker.pod
    finally:
        await producer.remove_user(redis, batch.uid)


async def test_a_user_is_restored_with_the_same_password_and_gone_with_its_batch(
    tenants: dict[str, Any], redis: queue.Redis, redis_url: str
) -> None:
    uid = tenants["uids"]["A"]
    url, password = as_user(redis_url, uid)
    await producer.ensure_user(redis, uid, ADMIN_PASSWORD)  # again: nothing changes
    rules = await redis.acl_getuser(tenancy.username(uid))
    await redis.acl_deluser(tenancy.username(uid))  # what a restart without an ACL file does
    with pytest.raises(DENIED):
        await _ping(url, password)
    await producer.ensure_user(redis, uid, ADMIN_PASSWORD)
    assert await redis.acl_getuser(tenancy.username(uid)) == rules
    assert await _ping(url, password)
    await producer.remove_user(redis, uid)
    assert await redis.acl_getuser(tenancy.username(uid)) is None
    with pytest.raises(DENIED):
        await _ping(url, password)
    # Another batch's password is not A's, nor is the admin's.
    assert tenancy.password(ADMIN_PASSWORD, uid) != tenancy.password(ADMIN_PASSWORD, tenants["uids"]["B"])
    assert ADMIN_PASSWORD not in tenancy.password(ADMIN_PASSWORD, uid)


async def _ping(url: str, password: str) -> bool:
    client = queue.connect(url, password)
    try:
        return bool(await asyncio.wait_for(client.ping(), 5))
    finally:
        await client.aclose()
