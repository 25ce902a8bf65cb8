"""Kopf handler registration, loaded only by ``kopf run -m analysis_operator.handlers``.

Handlers stay thin: they configure Kopf at startup and (from the operator
issue on) kick the level-based reconciler. Nothing here decides anything.
"""

from typing import Any

import kopf

FINALIZER = "analysis.dev/cleanup"
ANNOTATION_PREFIX = "analysis.dev"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Own finalizer and annotation prefix, finite watch and request timeouts."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
