"""The operator's Kopf settings: our own finalizer and annotation prefix, finite timeouts, cluster scanning."""

import kopf
import pytest

from analysis_operator import cli, config, handlers

pytestmark = pytest.mark.unit


def test_startup_settings() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    assert settings.persistence.finalizer == "analysis.dev/cleanup"
    progress = settings.persistence.progress_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage)
    assert progress.prefix == "analysis.dev"
    diffbase = settings.persistence.diffbase_storage
    assert isinstance(diffbase, kopf.AnnotationsDiffBaseStorage)
    assert diffbase.prefix == "analysis.dev"
    assert settings.watching.server_timeout is not None
    assert settings.watching.client_timeout is not None
    assert settings.watching.server_timeout < settings.watching.client_timeout
    assert settings.networking.request_timeout is not None
    assert settings.scanning.disabled is False  # cluster-wide by default: namespaces and CRDs are watched


@pytest.mark.parametrize(
    ("args", "scanning"),
    [
        ([], True),  # Kopf's default is cluster-wide
        (["-A"], True),
        (["--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"], True),
        (["--namespace=team-*"], True),  # a pattern needs the namespace list
        (["--namespace", "team-a", "-n", "team-b"], False),
        (["--namespace=team-a", "-nteam-b", "--log-format=json"], False),
    ],
)
def test_a_fixed_namespace_list_turns_cluster_scanning_off(args: list[str], scanning: bool) -> None:
    assert cli.needs_cluster_scanning(args) is scanning


def test_the_cli_decision_reaches_kopfs_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "CLUSTER_SCANNING", False)
    settings = kopf.OperatorSettings()
    handlers.configure(settings=settings)
    assert settings.scanning.disabled is True
