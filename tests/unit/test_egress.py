"""A provider account's egress on the worker's side: the SDK client options, and where the CA bundle is read.

``providers.base.Egress`` turns the account's ``proxyURL`` and CA bundle
file into the keyword arguments of the SDKs' ``DefaultAsyncHttpxClient``:
the proxy for every call, and an SSL context that trusts the system's
certificates and the account's on top. Calls through them, over real TLS and
a real proxy, are in tests/integration/test_egress.py.
"""

import ssl
from pathlib import Path

import pytest

from analysis_core import env, plan
from analysis_core.api import v1alpha1
from analysis_devcluster import pki
from analysis_worker import config
from analysis_worker.providers import base

pytestmark = pytest.mark.unit


def common_names(context: ssl.SSLContext) -> set[str]:
    """The common names of the CA certificates ``context`` holds in memory (those loaded from files)."""
    return {
        value for cert in context.get_ca_certs() for rdn in cert["subject"] for key, value in rdn if key == "commonName"
    }


def ca_file(directory: Path, name: str) -> Path:
    path = directory / f"{name}.pem"
    path.write_bytes(pki.cert_pem(pki.make_ca(name).cert))
    return path


def test_without_egress_settings_the_sdks_keep_their_own_defaults() -> None:
    assert base.Egress().client_options() == {}


def test_a_proxy_url_is_the_clients_proxy_and_leaves_verification_alone() -> None:
    assert base.Egress(proxy_url="http://proxy.platform:3128").client_options() == {
        "proxy": "http://proxy.platform:3128"
    }


def test_the_accounts_ca_file_is_trusted_on_top_of_the_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The system's store, as OpenSSL finds it (SSL_CERT_FILE is what it reads first), holds one CA here.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file(tmp_path, "system-ca")))
    options = base.Egress(ca_file=str(ca_file(tmp_path, "gateway-ca"))).client_options()
    assert set(options) == {"verify"}
    context = options["verify"]
    assert isinstance(context, ssl.SSLContext)
    assert common_names(context) == {"system-ca", "gateway-ca"}
    # Still verifying, names included: the bundle adds trust, it turns no check off.
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_proxy_and_ca_file_together(tmp_path: Path) -> None:
    options = base.Egress("http://proxy.platform:3128", str(ca_file(tmp_path, "gateway-ca"))).client_options()
    assert options["proxy"] == "http://proxy.platform:3128"
    assert "gateway-ca" in common_names(options["verify"])


def test_a_missing_ca_file_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        base.Egress(ca_file=str(tmp_path / "absent.pem")).client_options()


@pytest.fixture
def plan_file(tmp_path: Path) -> Path:
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["A"],
            "providers": {"sim": {"type": "offline"}},
            "stages": [{"name": "s", "provider": "sim", "prompt": "p"}],
        }
    )
    path = tmp_path / "plan.json"
    path.write_text(plan.compile_plan("u", spec).dumps(), encoding="utf-8")
    return path


def test_workers_read_ca_bundles_where_the_operator_mounts_them_unless_told(plan_file: Path) -> None:
    base_env = {env.REDIS_URL: "redis://r:6379", env.BATCH_UID: "u", env.STAGE: "s", env.PLAN_PATH: str(plan_file)}
    cfg, _ = config.from_env(base_env)
    assert cfg.ca_bundle_dir == Path(env.DEFAULT_CA_BUNDLE_DIR)
    cfg, _ = config.from_env({**base_env, env.CA_BUNDLE_DIR: "/srv/ca"})
    assert cfg.ca_bundle_dir == Path("/srv/ca")
