"""The node's pod network, decided without touching the host: ranges, overlap with host routes, the CNI config."""

import ipaddress
from pathlib import Path

import pytest

from analysis_devcluster import podnet

pytestmark = pytest.mark.unit

RANGES = podnet.Ranges(ipaddress.IPv4Network("10.244.0.0/24"), ipaddress.IPv4Network("10.96.0.0/24"))


def test_defaults_and_derived_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(podnet.POD_CIDR_ENV, raising=False)
    monkeypatch.delenv(podnet.SERVICE_CIDR_ENV, raising=False)
    ranges = podnet.Ranges.from_env()
    assert ranges == RANGES
    assert ranges.gateway == "10.244.0.1"
    assert ranges.kubernetes_service_ip == "10.96.0.1"


@pytest.mark.parametrize(
    ("pods", "services", "message"),
    [
        ("10.244.0.0/33", "10.96.0.0/24", "ANALYSIS_DEVCLUSTER_POD_CIDR"),
        ("8.8.8.0/24", "10.96.0.0/24", "a private IPv4 range"),
        ("10.244.0.0/24", "10.244.0.0/25", "overlaps the Service range"),
        ("10.244.0.0/30", "10.96.0.0/24", "at least 16 addresses"),
    ],
)
def test_bad_ranges_are_refused_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, pods: str, services: str, message: str
) -> None:
    monkeypatch.setenv(podnet.POD_CIDR_ENV, pods)
    monkeypatch.setenv(podnet.SERVICE_CIDR_ENV, services)
    with pytest.raises(podnet.NetworkError, match=message):
        podnet.Ranges.from_env()


def test_a_route_of_the_host_into_a_range_is_refused_and_names_the_variable() -> None:
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "192.0.2.0/24", "dev": "eth0"},
        {"dst": "10.96.0.0/16", "dev": "tun0"},
    ]
    problem = podnet.overlap(RANGES, routes)
    assert problem is not None
    assert "Service range 10.96.0.0/24" in problem
    assert "10.96.0.0/16 (dev tun0)" in problem
    assert podnet.SERVICE_CIDR_ENV in problem
    assert podnet.overlap(RANGES, [{"dst": "10.244.0.7", "dev": "wg0"}]) is not None  # a host route counts too


def test_a_default_route_and_our_own_leftovers_do_not_count() -> None:
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "10.244.0.0/24", "dev": podnet.BRIDGE},
        {"type": "blackhole", "dst": "10.244.0.0/24"},
        {"type": "blackhole", "dst": "10.96.0.0/24"},
    ]
    assert podnet.overlap(RANGES, routes) is None


def test_the_cni_config_has_no_default_route_and_no_masquerade() -> None:
    config = podnet.cni_config(RANGES, Path("/var/lib/x"))
    plugins = config["plugins"]
    assert isinstance(plugins, list)
    bridge = plugins[0]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == podnet.BRIDGE
    assert bridge["ipMasq"] is False
    assert bridge.get("isDefaultGateway") is not True
    ipam = bridge["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]]
    # Only the Service range is routed (through the host); nothing at all has a route out.
    assert ipam["routes"] == [{"dst": "10.96.0.0/24", "gw": "10.244.0.1"}]
