"""Fixtures of the integration tier: the provider stand-in, shared by the modules that call it through the SDKs."""

from collections.abc import Iterator

import pytest

from analysis_devcluster import standin


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
