"""The names a client of AnalysisBatch relies on, besides the models: labels, an annotation, enumerations.

The operator puts these labels on a batch's children and acts on the
annotation; users, GitOps tools and the ``kubectl analysis`` plugin select,
write and read by them, so each is spelled here once and imported by both
sides. The enumerations are those a reader of a batch's JSON compares
against: stage types, phases, condition types and statuses. ``v1alpha1``
builds its models on them and re-exports them, so ``v1alpha1.Phase`` is
this ``Phase``.

Standard library only: the plugin reads batches with these names without
loading pydantic, which importing ``v1alpha1`` would cost every call.

Left elsewhere on purpose: names only the operator itself reads back (the
plan and spec hashes on children, Kopf's finalizer and bookkeeping
annotations), next to the code that uses them; the labels and annotations of
result ConfigMaps, with the rest of that format in
``analysis_operator.results``; environment variables (``analysis_core.env``)
and Redis keys (``analysis_core.keys``).
"""

from __future__ import annotations

import enum

# On every child of a batch (analysis_operator.builders.labels).
LABEL_BATCH = "analysis.dev/batch"  # the batch's name, cut to 63 characters
LABEL_BATCH_UID = "analysis.dev/batch-uid"  # selects children: a batch recreated under the same name is another
LABEL_STAGE = "analysis.dev/stage"  # on a stage's Job or Deployment and its pods

# On the batch: each new value re-runs its failed and dead-lettered items once; status.retriedFailed echoes
# the value the operator last acted on.
ANNOTATION_RETRY_FAILED = "analysis.dev/retry-failed"


class StageType(enum.StrEnum):
    GENERATE = "generate"
    JUDGE = "judge"
    APPROVAL = "approval"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    WAITING_FOR_APPROVAL = "WaitingForApproval"
    SUSPENDED = "Suspended"
    COMPLETE = "Complete"
    FAILED = "Failed"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(enum.StrEnum):
    """The conditions a batch reports (docs/design.md#conditions).

    Ready, Reconciling and Stalled follow kstatus, so Flux, kpt and Argo CD read
    health without knowing this API; the others say what happened, and
    ``kubectl wait --for=condition=Complete`` waits on them.
    """

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    COMPLETE = "Complete"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    BUDGET_EXCEEDED = "BudgetExceeded"
    WAITING_FOR_APPROVAL = "WaitingForApproval"
