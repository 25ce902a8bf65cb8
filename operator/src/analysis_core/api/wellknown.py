"""The names a client of AnalysisBatch relies on, besides the models: labels, an annotation, enumerations.

The operator puts these labels on a batch's children and acts on the
annotation; users, GitOps tools and the ``kubectl analysis`` plugin select,
write and read by them, so each is spelled here once and imported by both
sides. The enumerations are those a reader of a batch's JSON compares
against: stage types, phases, condition types and statuses, and every reason
a condition or an Event carries. ``v1alpha1`` builds its models on them and
re-exports them, so ``v1alpha1.Phase`` is this ``Phase``.

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


class AccountConditionType(enum.StrEnum):
    """The conditions an AnalysisProvider reports: Ready, and whether the provider holds the account back."""

    READY = "Ready"
    PAUSED = "Paused"  # the provider asked the account to wait (a 429's retry-after)
    QUOTA_EXHAUSTED = "QuotaExhausted"  # the provider refuses the account, or a model on it, for quota or billing


class Reason(enum.StrEnum):
    """Every reason the operator writes on a condition or an Event, defined once (docs/design.md#conditions).

    People alert on these and tools match them (the kubectl plugin, the Argo CD health check), so they are
    part of the API: a reason is added, never renamed.
    """

    # Conditions: the kstatus trio and the phase they report.
    COMPLETE = "Complete"
    FAILED = "Failed"
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    WAITING_FOR_APPROVAL = "WaitingForApproval"
    PROGRESSING = "Progressing"
    # Conditions: what happened, true / false.
    TOO_MANY_FAILED_ITEMS = "TooManyFailedItems"
    NO_FAILURE = "NoFailure"
    SUSPENDED_BY_SPEC = "SuspendedBySpec"
    NOT_SUSPENDED = "NotSuspended"
    BUDGET_EXCEEDED = "BudgetExceeded"
    WITHIN_BUDGET = "WithinBudget"
    ITEMS_HELD = "ItemsHeld"
    NOTHING_HELD = "NothingHeld"
    # Problems (docs/design.md#problem-reasons): what the schema cannot catch.
    INVALID_SPEC = "InvalidSpec"
    INVALID_PLAN = "InvalidPlan"
    CONFIGMAP_NOT_FOUND = "ConfigMapNotFound"
    CONFIGMAP_KEY_NOT_FOUND = "ConfigMapKeyNotFound"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    NO_ITEMS = "NoItems"
    DUPLICATE_ITEMS = "DuplicateItems"
    INVALID_ITEMS = "InvalidItems"
    WORKER_IMAGE_UNAVAILABLE = "WorkerImageUnavailable"
    WORKERS_CRASHING = "WorkersCrashing"
    WORKERS_FAILED = "WorkersFailed"
    PUBLISH_FAILED = "PublishFailed"
    WORKLOAD_APPLY_FAILED = "WorkloadApplyFailed"
    REDIS_UNAVAILABLE = "RedisUnavailable"
    REDIS_LAYOUT_UNSUPPORTED = "RedisLayoutUnsupported"
    REDIS_NOT_REPLICATED = "RedisNotReplicated"  # the replicas the export waits for did not acknowledge in time
    UNPRICED_MODEL = "UnpricedModel"
    PROVIDER_QUOTA_EXHAUSTED = "ProviderQuotaExhausted"
    PROVIDER_NOT_FOUND = "ProviderNotFound"  # spec.providers.<name>.providerRef names no AnalysisProvider
    PROVIDER_NOT_ALLOWED = "ProviderNotAllowed"  # the AnalysisProvider does not admit the batch's namespace
    PROVIDER_SERVED_ELSEWHERE = "ProviderServedElsewhere"  # another install's operator holds the account
    RESULTS_STORE_UNAVAILABLE = "ResultsStoreUnavailable"  # the results store is missing, refuses or does not answer
    RESULTS_TOO_LARGE = "ResultsTooLarge"  # the ConfigMap results sink reached its ceiling
    RESULTS_DIVERGED = "ResultsDiverged"  # the sink holds more than Redis lists: a failover lost ends, export stopped
    STATUS_WRITE_FAILED = "StatusWriteFailed"  # the API server kept refusing the batch's status: it failed
    # An AnalysisProvider's conditions.
    ACCOUNT_SERVING = "Serving"
    ACCOUNT_PAUSED = "RetryAfter"  # the provider asked the account to wait
    NOT_PAUSED = "NotPaused"
    QUOTA_AVAILABLE = "QuotaAvailable"
    # Events besides condition flips (a flip to false posts "<Type>Cleared").
    RETRY_FAILED = "RetryFailed"
    CLEANUP_RETRYING = "CleanupRetrying"
    CLEANUP_INCOMPLETE = "CleanupIncomplete"
    ACCOUNT_IN_USE = "AccountInUse"  # an AnalysisProvider's deletion waits for the batches that use it
    REDIS_USER_RESTORED = "RedisUserRestored"  # Redis had lost the batch's user (a restart): the operator set it again

    @staticmethod
    def cleared(condition: ConditionType) -> str:
        """The Event reason of ``condition`` turning false."""
        return f"{condition}Cleared"
