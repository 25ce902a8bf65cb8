"""Fixtures of the integration tier: the provider stand-in, shared by the modules that call it through the SDKs,
and the operator's allocator for the provider accounts that worker processes spend allowances of."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from analysis_core import queue
from analysis_core.api import v1alpha1
from analysis_devcluster import rediscluster, standin
from analysis_operator import accounts, builders, reconciler


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rediscluster.RedisCluster]:
    """A real Redis Cluster of three primaries for the session (``redis+cluster://`` URL in ``.url``)."""
    with rediscluster.RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as running:
        yield running


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[standin.StandIn]:
    """One stand-in per test module, wanting the module's ``API_KEY``."""
    with standin.StandIn(api_key=request.module.API_KEY) as running:
        yield running


@pytest.fixture
def stand_in(server: standin.StandIn) -> standin.StandIn:
    """The module's stand-in with no fault plan and no recorded requests."""
    server.reset()
    return server


@pytest.fixture
def batch_stand_in(server: standin.StandIn) -> standin.StandIn:
    """The module's stand-in, reset, with provider batches that end 0.3 s after they are submitted."""
    server.reset()
    server.batch_turnaround(0.3)
    return server


class Allocating:
    """The operator's allocator for one account, granting in the background while batches register.

    Workers of a batch on an account call only with an allowance the operator granted (docs/design.md,
    Provider accounts): without this running, they wait for ever.
    """

    def __init__(
        self, redis: queue.Redis, name: str, spec: v1alpha1.AnalysisProviderSpec, *, probe_s: float = 0.2
    ) -> None:
        self.registry = accounts.Registry()
        self.allocator = accounts.Allocator(name, spec, redis, self.registry, probe_s=probe_s)
        self._stop = asyncio.Event()

    def use(self, namespace: str, name: str, batch: Any) -> None:
        """Register ``batch`` (the ``workers`` fixture's) as the batch ``namespace/name``, as the reconciler does."""
        members = reconciler.account_members(builders.Batch(name, namespace, batch.uid), batch.plan)
        self.registry.use(batch.uid, members)

    async def run(self) -> None:
        """As the AnalysisProvider's daemon runs it: a Redis hiccup skips a grant, it does not end the loop."""
        while not self._stop.is_set():
            busy = True
            try:
                busy = await self.allocator.tick()
            except queue.UNAVAILABLE as exc:
                logging.getLogger(__name__).warning(f"a grant failed: {exc}")
            await asyncio.sleep(accounts.TICK_S if busy else accounts.IDLE_TICK_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["Allocating"]:
        task = asyncio.create_task(self.run())
        try:
            yield self
        finally:
            self._stop.set()
            await task


@pytest.fixture
def allocate(redis: queue.Redis) -> Callable[..., Allocating]:
    """``allocate(name, spec, probe_s=0.2)``: the allocator of the account ``name`` on the session's Redis; it
    grants while ``async with allocating.running():`` lasts."""

    def make(name: str, spec: v1alpha1.AnalysisProviderSpec, *, probe_s: float = 0.2) -> Allocating:
        return Allocating(redis, name, spec, probe_s=probe_s)

    return make
