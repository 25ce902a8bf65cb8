"""The operator's Kopf settings: our own finalizer and annotation prefix, finite timeouts."""

import kopf
import pytest

from analysis_operator import handlers

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
