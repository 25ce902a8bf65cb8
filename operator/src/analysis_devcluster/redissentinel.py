"""A real Sentinel-managed Redis for the tests: a primary, a replica and three sentinels, on loopback.

``RedisSentinel`` starts two ``redis-server`` data nodes (the second a
replica of the first) and three ``redis-server --sentinel`` processes that
watch the primary under the service name ``SERVICE``, with a quorum of two
and a short down-after time, so that killing the primary promotes the
replica within seconds. Clients reach it as
``redis+sentinel://127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/analysis``
(``analysis_core.queue.connect`` asks the sentinels for the primary and asks
again after a failover).

The replica reaches the primary through a relay (:class:`Link`) on
loopback, so a test can cut replication alone: ``partition`` drops what the
primary sends its replica from then on, while the replica, the primary and the
sentinels all still answer, which is how a replica falls behind in a real
partition (a frozen process would not do: the kernel keeps receiving for it,
and it catches up the moment it runs again). Other faults: ``kill``
(SIGKILL, no goodbye) and ``restart`` (the node comes back on its port, empty, as a replica of the
primary the sentinels name, the way a restarted Redis pod of a Sentinel
deployment asks them first, and never to be promoted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self, cast

import redis as redis_sync

from analysis_devcluster import cluster, processes, threaded

SERVICE = "analysis"
QUORUM = 2
# A primary that does not answer this long is subjectively down. Above the sentinels' ping period (1 s): at 1 s
# a sentinel could take the primary it had just switched to for down before its first ping of it was due, and
# fail over again at once.
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 5000
START_BUDGET_S = 30.0


class Link(threaded.ThreadedServer):
    """A TCP relay to ``target`` on loopback whose downstream direction can be cut (``partition``)."""

    what = "replication link"

    def __init__(self, target: int) -> None:
        super().__init__("127.0.0.1", 0)
        self.target = target
        self.port = 0
        self._cut = threading.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def partition(self) -> None:
        """From now on, what the target sends is read and dropped; what goes to it still passes."""
        self._cut.set()

    async def _open(self) -> tuple[int, Callable[[], Awaitable[None]]]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]

        async def close() -> None:
            server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await server.wait_closed()

        return self.port, close

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [client_writer]
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target)
            writers.append(target_writer)
            pipes = [
                asyncio.create_task(self._pipe(client_reader, target_writer, None)),
                asyncio.create_task(self._pipe(target_reader, client_writer, self._cut)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass
        finally:
            self._tasks.discard(task)
            for writer in writers:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: threading.Event | None) -> None:
        with contextlib.suppress(OSError):
            await Link._copy(reader, writer, cut)

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: threading.Event | None) -> None:
        while data := await reader.read(65536):
            if cut is not None and cut.is_set():
                continue
            writer.write(data)
            await writer.drain()


class RedisSentinel:
    def __init__(self, workdir: Path, sentinels: int = 3) -> None:
        self.workdir = workdir
        ports = processes.free_ports(2 + sentinels)
        self.data_ports, self.sentinel_ports = ports[:2], ports[2:]
        self._nodes: dict[int, processes.Component] = {}
        self.link = Link(self.data_ports[0])  # the replica's way to the first primary

    @property
    def url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{sentinels}/{SERVICE}"

    def start(self) -> None:
        primary, replica = self.data_ports
        self._start_data(primary)
        self.link.start()
        self._start_data(replica, "--replicaof", "127.0.0.1", str(self.link.port))
        processes.eventually(lambda: self._info(replica).get("master_link_status") == "up", START_BUDGET_S, "in sync")
        for port in self.sentinel_ports:
            data = self.workdir / f"sentinel-{port}"
            data.mkdir(parents=True, exist_ok=True)
            conf = data / "sentinel.conf"  # a sentinel rewrites its file with what it learns
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {data}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary} {QUORUM}\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n",
                encoding="utf-8",
            )
            argv = [str(cluster.redis_argv(port, data)[0]), str(conf), "--sentinel"]
            self._spawn(port, argv, data)
        # Every sentinel has found the replica and the other sentinels: a failover can start from any of them.
        processes.eventually(self._acquainted, START_BUDGET_S, "sentinels that know the replica and each other")

    def _start_data(self, port: int, *extra: str) -> None:
        data = self.workdir / str(port)
        data.mkdir(parents=True, exist_ok=True)
        # A replica that asks for a full sync gets it at once (by default the primary waits 5 s for more to ask).
        argv = [*cluster.redis_argv(port, data, persist=False), "--repl-diskless-sync-delay", "0", *extra]
        self._spawn(port, argv, data)

    def _spawn(self, port: int, argv: list[str], data: Path) -> None:
        node = processes.spawn(f"redis-{port}", argv, data / "redis.log")
        self._nodes[port] = node
        deadline = time.monotonic() + START_BUDGET_S
        processes.wait_until(node, "listening", functools.partial(processes.port_open, port), deadline, START_BUDGET_S)

    def _acquainted(self) -> bool:
        for port in self.sentinel_ports:
            client = self._client(port)
            try:
                fields = cast(dict[str, Any], client.sentinel_master(SERVICE))
            finally:
                client.close()
            if int(fields["num-slaves"]) < 1 or int(fields["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                return False
        return True

    @staticmethod
    def _client(port: int) -> redis_sync.Redis:
        return redis_sync.Redis(port=port, decode_responses=True, socket_timeout=2)

    def _info(self, port: int) -> dict[str, str]:
        client = self._client(port)
        try:
            return {k: str(v) for k, v in client.info("replication").items()}
        finally:
            client.close()

    def _named_by(self, sentinel: int) -> int | None:
        """The port of the primary as ``sentinel`` names it (None: it names none); ConnectionError if it is away."""
        client = self._client(sentinel)
        try:
            address = cast(tuple[str, int] | None, client.sentinel_get_master_addr_by_name(SERVICE))
        finally:
            client.close()
        return int(address[1]) if address is not None else None

    def primary(self) -> int:
        """The port of the primary, as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis_sync.ConnectionError):
                named = self._named_by(port)
                if named is not None:
                    return named
        raise RuntimeError("no sentinel answers")

    def replica(self) -> int:
        (other,) = [port for port in self.data_ports if port != self.primary()]
        return other

    def promoted(self, instead_of: int) -> bool:
        """Whether every sentinel names the same primary, another than ``instead_of``, and it takes writes.

        Every sentinel, not the first that answers: one that has not heard of the
        failover yet would name the old primary again as soon as it is back.
        """
        try:
            named = {self._named_by(port) for port in self.sentinel_ports}
        except redis_sync.ConnectionError:
            return False
        if len(named) != 1:
            return False
        (now,) = named
        return now is not None and now != instead_of and self._info(now).get("role") == "master"

    def kill(self, port: int) -> None:
        os.kill(self._nodes[port].pid, signal.SIGKILL)
        self._nodes[port].process.wait()

    def partition(self) -> None:
        """The replica gets nothing more of the first primary's writes (it stays up, its link looks up)."""
        self.link.partition()

    def restart(self, port: int) -> None:
        """Start the node again on its port, as a replica of the primary the sentinels name.

        It has no persistence, so it comes back empty, and with a replica
        priority of 0: were the sentinels to fail over again before it has
        synced (a primary taken for down under load), promoting it would lose
        every write, the hazard Redis documents for nodes without persistence
        that restart by themselves. Here one failover is the fault under test.
        """
        self._start_data(port, "--replicaof", "127.0.0.1", str(self.primary()), "--replica-priority", "0")

    def stop(self) -> None:
        for node in self._nodes.values():
            node.stop(grace=5.0)
        self.link.stop()

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
