"""A real Redis Cluster for the tests: three ``redis-server`` primaries in cluster mode, on loopback.

``make_cluster`` starts them on free ports in a directory of their own, joins
them with ``redis-cli --cluster create`` (every slot covered, no replicas),
and waits until the cluster says ``cluster_state:ok``. Clients reach it as
``redis+cluster://127.0.0.1:<first port>`` (``analysis_core.queue.connect``
finds the other nodes from there). Stopping it stops every node.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import time
from pathlib import Path
from typing import Self

from analysis_devcluster import binaries, cluster, processes

PRIMARIES = 3
START_BUDGET_S = 30.0


class RedisCluster:
    def __init__(self, workdir: Path, primaries: int = PRIMARIES) -> None:
        self.workdir = workdir
        ports = processes.free_ports(2 * primaries)
        # Each node's cluster bus gets a free port of its own (its default, port + 10000, may be taken or too high).
        self.ports, self._bus = ports[:primaries], ports[primaries:]
        self._nodes: list[processes.Component] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise binaries.MissingBinaryError("redis-cli not found on PATH: run `apt-get install redis-tools`")
        for port, bus in zip(self.ports, self._bus, strict=True):
            data = self.workdir / str(port)
            data.mkdir(parents=True, exist_ok=True)
            argv = [
                *cluster.redis_argv(port, data, persist=False),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(data / "nodes.conf"),
                "--cluster-port",
                str(bus),
            ]
            node = processes.spawn(f"redis-{port}", argv, data / "redis.log")
            self._nodes.append(node)
            deadline = time.monotonic() + START_BUDGET_S
            processes.wait_until(
                node, "listening", functools.partial(processes.port_open, port), deadline, START_BUDGET_S
            )
        create = [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise processes.StartupError(f"redis-cli --cluster create failed: {done.stdout[-800:]}{done.stderr}")
        deadline = time.monotonic() + START_BUDGET_S
        processes.wait_until(self._nodes[0], "a cluster with every slot served", self._ok, deadline, START_BUDGET_S)

    def _ok(self) -> bool:
        info = subprocess.run(
            ["redis-cli", "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, text=True, check=False
        ).stdout
        return "cluster_state:ok" in info

    def stop(self) -> None:
        for node in self._nodes:
            node.stop(grace=5.0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
