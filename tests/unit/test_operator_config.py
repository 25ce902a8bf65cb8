"""The operator's configuration from its environment: defaults, the Redis password, the price table."""

from pathlib import Path

import pytest

import analysis_core
from analysis_core import queue
from analysis_core.api import v1alpha1
from analysis_operator.config import ConfigError, OperatorConfig

pytestmark = pytest.mark.unit

BASE = {"ANALYSIS_OPERATOR_REDIS_URL": "redis://redis.analysis-system:6379/0"}


def test_defaults_need_only_a_redis_url() -> None:
    cfg = OperatorConfig.from_env(BASE)
    assert cfg.worker.redis_url == BASE["ANALYSIS_OPERATOR_REDIS_URL"]
    assert (cfg.redis_password, cfg.worker.redis_auth, cfg.worker.prices) == (None, False, None)
    assert (cfg.metrics_port, cfg.worker.metrics_port) == (8080, 9090)
    # The worker image of the operator's own release (a node pulls nothing it was not given).
    assert cfg.worker.image == f"analysis-worker:{analysis_core.__version__}"
    with pytest.raises(ConfigError, match="ANALYSIS_OPERATOR_REDIS_URL is required"):
        OperatorConfig.from_env({})


def test_the_redis_password_is_used_but_never_shown() -> None:
    cfg = OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_REDIS_PASSWORD": "hunter2-redis"})
    assert cfg.redis_password == "hunter2-redis"
    assert cfg.worker.redis_auth is True
    assert "hunter2" not in repr(cfg)
    assert "hunter2" not in repr(cfg.worker)


def test_the_redis_password_is_read_from_the_file_the_chart_mounts(tmp_path: Path) -> None:
    mounted = tmp_path / "password"
    mounted.write_text("from-the-file\n")
    cfg = OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_REDIS_PASSWORD_FILE": str(mounted)})
    assert (cfg.redis_password, cfg.worker.redis_auth) == ("from-the-file", True)
    missing = {**BASE, "ANALYSIS_OPERATOR_REDIS_PASSWORD_FILE": str(tmp_path / "absent")}
    with pytest.raises(ConfigError, match=r"ANALYSIS_OPERATOR_REDIS_PASSWORD_FILE=.*: cannot read it"):
        OperatorConfig.from_env(missing)


def test_a_price_table_is_read_and_checked_at_start(tmp_path: Path) -> None:
    good = tmp_path / "prices.yaml"
    good.write_text("models:\n  house-model: {input: 0.5, output: 1.5}\n")
    cfg = OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_PRICES_PATH": str(good)})
    assert cfg.worker.prices == good.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  house-model: {input: -1, output: 1}\n")
    with pytest.raises(ConfigError, match=r"ANALYSIS_OPERATOR_PRICES_PATH=.*bad\.yaml"):
        OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_PRICES_PATH": str(bad)})
    with pytest.raises(ConfigError, match=r"ANALYSIS_OPERATOR_PRICES_PATH=.*missing"):
        OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_PRICES_PATH": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize(("name", "value"), [("METRICS_PORT", "http"), ("WORKER_METRICS_PORT", "70000")])
def test_a_bad_port_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"ANALYSIS_OPERATOR_{name}='{value}' is not a port number"):
        OperatorConfig.from_env({**BASE, f"ANALYSIS_OPERATOR_{name}": value})


def test_the_operators_own_namespace_is_where_account_ca_bundles_are_read() -> None:
    assert OperatorConfig.from_env(BASE).namespace is None  # unset: a batch on a bundle says so in a condition
    cfg = OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_NAMESPACE": "analysis-system"})
    assert cfg.namespace == "analysis-system"


def test_calls_per_pod_defaults_to_the_api_constant_and_is_bounded() -> None:
    assert OperatorConfig.from_env(BASE).worker.calls_per_pod == v1alpha1.DEFAULT_CALLS_PER_POD
    assert OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_CALLS_PER_POD": "4"}).worker.calls_per_pod == 4
    for bad in ("0", "x", str(v1alpha1.MAX_CALLS_PER_POD + 1)):
        with pytest.raises(ConfigError, match=f"ANALYSIS_OPERATOR_CALLS_PER_POD='{bad}' must be a whole number"):
            OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_CALLS_PER_POD": bad})


def test_replicas_elect_a_leader_by_a_lease_in_the_operators_namespace() -> None:
    assert OperatorConfig.from_env(BASE).leader_lease is None  # one replica, no election
    both = {**BASE, "ANALYSIS_OPERATOR_NAMESPACE": "analysis-system", "ANALYSIS_OPERATOR_LEADER_LEASE": "ao-leader"}
    assert OperatorConfig.from_env(both).leader_lease == "ao-leader"
    with pytest.raises(
        ConfigError, match="ANALYSIS_OPERATOR_LEADER_LEASE='ao-leader' needs ANALYSIS_OPERATOR_NAMESPACE"
    ):
        OperatorConfig.from_env({**BASE, "ANALYSIS_OPERATOR_LEADER_LEASE": "ao-leader"})


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://10.0.0.1:7000",
        "redis+sentinel://s1:26379,s2:26379,s3:26379/primary",
        "rediss+sentinel://[::1]:26379/primary/2",
    ],
)
def test_a_cluster_or_a_sentinel_managed_primary_is_a_redis_url(url: str) -> None:
    assert OperatorConfig.from_env({"ANALYSIS_OPERATOR_REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("localhost:6379", "ANALYSIS_OPERATOR_REDIS_URL: must be a URL starting with one of redis://"),
        ("redis+sentinel://s1:26379", "names the primary's service"),
        ("redis+sentinel:///primary", "names its sentinels"),
        ("redis+sentinel://s1:port/primary", "sentinel 's1:port' is not host:port"),
        ("redis+sentinel://s1:26379/primary/zero", "database 'zero' is not a number"),
        ("redis+sentinel://admin:hunter2@s1:26379/primary", "carries no credentials"),
    ],
)
def test_a_bad_redis_url_names_its_variable_and_never_echoes_a_password(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        OperatorConfig.from_env({"ANALYSIS_OPERATOR_REDIS_URL": url})
    assert fragment in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    target = queue.parse_sentinel("rediss+sentinel://a:1,[::1]:2/analysis/3")
    assert target == queue.SentinelTarget((("a", 1), ("::1", 2)), "analysis", 3, tls=True)


def test_waiting_for_replicas_is_off_by_default_and_needs_one_primary() -> None:
    plain = {"ANALYSIS_OPERATOR_REDIS_URL": "redis+sentinel://s1:26379/primary"}
    assert OperatorConfig.from_env(plain).redis_wait_replicas == 0
    waiting = OperatorConfig.from_env({**plain, "ANALYSIS_OPERATOR_REDIS_WAIT_REPLICAS": "1"})
    assert waiting.redis_wait_replicas == 1
    with pytest.raises(ConfigError, match="not a Redis Cluster"):
        OperatorConfig.from_env(
            {"ANALYSIS_OPERATOR_REDIS_URL": "redis+cluster://c:7000", "ANALYSIS_OPERATOR_REDIS_WAIT_REPLICAS": "1"}
        )
    with pytest.raises(ConfigError, match="ANALYSIS_OPERATOR_REDIS_WAIT_REPLICAS='-1' must be a whole number"):
        OperatorConfig.from_env({**plain, "ANALYSIS_OPERATOR_REDIS_WAIT_REPLICAS": "-1"})
