"""AnalysisBatch v1alpha1: the spec a user writes and the status the operator reports.

These pydantic models are the single source of the API. ``analysis_core.api.crd``
turns them into the CRD under ``crds/`` (``make crds``): field descriptions become
``kubectl explain`` text, ``Field`` bounds become schema bounds, and the
``x-kubernetes-validations`` attached to a model become CEL rules that the API
server checks at ``kubectl apply``. So a rule lives next to the fields it
governs, and a test fails when the committed CRD drifts from these models.

The models parse what the API server already admitted (the operator and the
plan compiler read batches through them). They do not repeat the CEL rules:
cross-field checks that the schema cannot express belong to the plan compiler,
which reports them as conditions. Spec models are frozen and forbid unknown
fields; they accept both the wire names (camelCase) and the Python names.

The enumerations a client compares a batch against (stage types, phases,
condition types and statuses) are defined in ``analysis_core.api.wellknown``,
with the labels and annotations, and re-exported here.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any

import pydantic
from pydantic import Field
from pydantic.alias_generators import to_camel

from analysis_core import env, errors
from analysis_core.api import wellknown

# Defined without pydantic (the kubectl plugin compares against them), and part of this API all the same.
StageType = wellknown.StageType
Phase = wellknown.Phase
ConditionStatus = wellknown.ConditionStatus
ConditionType = wellknown.ConditionType
AccountConditionType = wellknown.AccountConditionType
Reason = wellknown.Reason

# Bounds shared by several fields. They keep objects well under Kopf's
# 256 KiB annotation cap and keep the API server's CEL cost estimates finite.
MAX_ITEMS = 5000
MAX_STAGES = 20
MAX_PROVIDERS = 10
MAX_VARS = 64
MAX_PROMPT_LENGTH = 32768
MAX_NAME_LENGTH = 40
# Kopf keeps a copy of the spec in an annotation, and `kubectl apply` keeps
# another; all annotations of an object share 256 KiB. Inline items and
# prompts together stay under this, larger ones belong in ConfigMaps.
MAX_INLINE_BYTES = 96 * 1024
# The ConfigMap results sink's ceiling: so many ConfigMaps of at most 512 KiB of results each (export.CHUNK_BYTES).
CONFIGMAP_RESULTS_MAX_CHUNKS = 16
CONFIGMAP_RESULTS_MAX_MIB = CONFIGMAP_RESULTS_MAX_CHUNKS // 2

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Item ids are words separated by single spaces, without "/": a fanned-out
# child's id is "<parent>/<child-key>", so "/" stays unambiguous.
ITEM_ID = r"^[^/\s]+( [^/\s]+)*$"
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A JSONPath subset: "$" (the output itself) or "$.a.b" (nested object keys).
FANOUT_PATH = r"^\$(\.[A-Za-z_][A-Za-z0-9_-]*)*$"
# A sub-object whose members all have defaults defaults to {}: the API server
# then fills in each member, so stored objects show the effective settings.
DEFAULTED: dict[str, Any] = {"default": {}}


def cel(
    rule: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry, written once per rule next to its model."""
    entry = {"rule": rule}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def k8s(**extensions: Any) -> dict[str, Any]:
    """Schema extensions for a model or field, e.g. ``k8s(validations=[...], list_type="map")``."""
    out: dict[str, Any] = {}
    for key, value in extensions.items():
        out["x-kubernetes-" + key.replace("_", "-")] = value
    return out


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
        # Validators are built on first use, not at import: a worker, which reads its plan and no resource,
        # starts without building the schema of every resource model.
        defer_build=True,
    )


class _StatusModel(pydantic.BaseModel):
    # Status is written by the operator; it tolerates fields from newer operators.
    model_config = pydantic.ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        defer_build=True,
    )


# ---------------------------------------------------------------- references


ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
DataKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]


class SecretKeyRef(_Model):
    """A key of a Secret in the batch's namespace."""

    name: ObjectName = Field(description="Name of the Secret, in the AnalysisBatch's namespace.")
    key: DataKey = Field(description="Key within the Secret's data.")


class ConfigMapKeyRef(_Model):
    """A key of a ConfigMap in the batch's namespace."""

    name: ObjectName = Field(description="Name of the ConfigMap, in the AnalysisBatch's namespace.")
    key: DataKey = Field(description="Key within the ConfigMap's data.")


class ItemsFrom(_Model):
    """Where the initial items come from when they are not listed inline."""

    config_map_key_ref: ConfigMapKeyRef = Field(
        description="A ConfigMap key whose value lists the items: a YAML or JSON list of item ids, "
        "or one id per line. Read when the batch starts."
    )


class PromptFrom(_Model):
    """Where a prompt template comes from when it is too large to inline."""

    config_map_key_ref: ConfigMapKeyRef = Field(
        description="A ConfigMap key holding the prompt template. Keeps large prompts out of the spec, "
        "which Kopf copies into a size-capped annotation."
    )


# ---------------------------------------------------------------- providers


class ProviderType(enum.StrEnum):
    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    OFFLINE = "offline"


# The model name an offline provider reports when the spec names none (model is required for the other types, so
# the schema cannot default it; the plan compiler applies this).
OFFLINE_MODEL = "offline"


class OfflineOptions(_Model):
    """Behaviour of the built-in deterministic provider (type offline)."""

    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="Seed mixed into every answer; the same seed, item, stage and round always give the same output.",
    )
    latency_milliseconds: int = Field(
        default=0, ge=0, le=600_000, description="Simulated latency of each call, in milliseconds."
    )
    rejection_rate: float = Field(
        default=0.3,
        ge=0,
        le=1,
        description="Probability, from 0 to 1, that a judge stage rejects a given item in a given round.",
    )
    batch_turnaround_seconds: int = Field(
        default=5,
        ge=0,
        le=86_400,
        description="mode: Batch stages only: how long a simulated provider batch takes from submission to its "
        "results.",
    )


class ProviderRef(_Model):
    """A provider account (an AnalysisProvider) that a platform admin set up for several namespaces."""

    name: ObjectName = Field(description="Name of the AnalysisProvider (cluster-scoped).")


class Provider(_Model):
    """An LLM endpoint that stages refer to by name: inline (``type``), or on a shared account (``providerRef``)."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    "has(self.type) != has(self.providerRef)",
                    "set exactly one of type (an inline provider) and providerRef (a shared AnalysisProvider, "
                    "which sets the type)",
                    field_path=".type",
                    reason="FieldValueRequired",
                ),
                cel(
                    "!has(self.providerRef) || !has(self.baseURL)",
                    "baseURL comes from the AnalysisProvider named by providerRef",
                    field_path=".baseURL",
                    reason="FieldValueForbidden",
                ),
                # On an account, only the AnalysisProvider knows whether it is offline (needing neither): the plan
                # compiler checks model and apiKeySecretRef there, so these two rules apply to inline providers.
                cel(
                    "has(self.providerRef) || (has(self.type) && self.type == 'offline') || has(self.model)",
                    "model is required for anthropic and openai providers",
                    field_path=".model",
                    reason="FieldValueRequired",
                ),
                cel(
                    "has(self.providerRef) || (has(self.type) && self.type == 'offline') || has(self.apiKeySecretRef)",
                    "apiKeySecretRef is required for anthropic and openai providers",
                    field_path=".apiKeySecretRef",
                    reason="FieldValueRequired",
                ),
                cel(
                    "!has(self.type) || self.type != 'offline' || !has(self.apiKeySecretRef)",
                    "apiKeySecretRef is not used by the offline provider",
                    field_path=".apiKeySecretRef",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "!has(self.type) || self.type != 'offline' || !has(self.baseURL)",
                    "baseURL is not used by the offline provider",
                    field_path=".baseURL",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "(has(self.type) && self.type == 'offline') || !has(self.offline)",
                    "offline options apply only to type offline",
                    field_path=".offline",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "!has(self.type) || self.type != 'anthropic' || !has(self.temperature)",
                    "temperature is not accepted by the Anthropic Messages API of the current SDK; remove it",
                    field_path=".temperature",
                    reason="FieldValueForbidden",
                ),
            ]
        )
    )

    type: ProviderType | None = Field(
        default=None,
        description="Which API to call: anthropic (Messages API), openai (Chat Completions "
        "API), or offline (deterministic answers for demos and tests; no key, no network). "
        "Set this or providerRef.",
    )
    provider_ref: ProviderRef | None = Field(
        default=None,
        description="Use a shared provider account (an AnalysisProvider): its type, baseURL, limits and "
        "fair share apply; the batch still names its model and its own apiKeySecretRef. Set this or type.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Model name passed to the provider, e.g. claude-sonnet-4-5 or gpt-4.1. "
        "Required for anthropic and openai.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="The Secret key holding the API key. Required for anthropic and openai. The key "
        "reaches worker pods only as a Secret-backed environment variable; the operator never reads it.",
    )
    base_url: str | None = Field(
        default=None,
        alias="baseURL",
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Overrides the provider's API base URL, for gateways and proxies.",
    )
    max_tokens: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="Upper bound on output tokens per call; also what the token rate limiter reserves before a call.",
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="Sampling temperature (openai only: the current Anthropic API rejects it); the provider's default when absent.",
    )
    offline: OfflineOptions | None = Field(default=None, description="Options of the offline provider.")


# ---------------------------------------------------------------- stages


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Executor(enum.StrEnum):
    JOB = "Job"
    DEPLOYMENT = "Deployment"


class OnExhausted(enum.StrEnum):
    FAIL = "Fail"
    ACCEPT_LAST = "AcceptLast"


class ResultsSink(enum.StrEnum):
    CONFIG_MAP = "ConfigMap"
    OBJECT_STORE = "ObjectStore"


class ResultsOnDelete(enum.StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class SortOrder(enum.StrEnum):
    ASCENDING = "Ascending"
    DESCENDING = "Descending"


# Defaults the schema cannot state, because the field is forbidden where it does not apply (a CEL rule) and a schema
# default would put it there: maxRejections and onExhausted on judge stages only, fanOut.order only with sortBy.
# The plan compiler applies them; the field descriptions quote them.
DEFAULT_MAX_REJECTIONS = 3
DEFAULT_ON_EXHAUSTED = OnExhausted.FAIL
DEFAULT_SORT_ORDER = SortOrder.DESCENDING
# Calls one worker pod runs at once when the stage's callsPerPod is unset: the operator's setting
# (ANALYSIS_OPERATOR_CALLS_PER_POD, the chart's worker.callsPerPod), whose default this is. The field's
# description quotes it; the schema states none, since the operator's setting decides.
DEFAULT_CALLS_PER_POD = 16
MAX_CALLS_PER_POD = 256


class FanOut(_Model):
    """Turns a list in a stage's JSON output into child items of the next stage."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    "!has(self.order) || has(self.sortBy)",
                    "order needs sortBy",
                    field_path=".order",
                    reason="FieldValueForbidden",
                ),
            ]
        )
    )

    path: str = Field(
        max_length=256,
        pattern=FANOUT_PATH,
        description="Where the list is in the output: '$' for the output itself, or '$.a.b' for a "
        "nested key. Each element becomes one child item with id '<parent>/<child-key>'.",
    )
    key: str | None = Field(
        default=None,
        max_length=63,
        pattern=IDENTIFIER,
        description="Field of each element whose value is the child key. Default: the element "
        "itself when it is a string, otherwise its position in the list.",
    )
    sort_by: str | None = Field(
        default=None,
        max_length=63,
        pattern=IDENTIFIER,
        description="Field of each element to sort by before max is applied, e.g. score.",
    )
    order: SortOrder | None = Field(
        default=None,
        description=f"Sort order for sortBy. Default {DEFAULT_SORT_ORDER}, so max "
        "keeps the highest values ('rank, then analyze the top 5').",
    )
    max: int | None = Field(default=None, ge=1, le=1000, description="Keep at most this many children after sorting.")


class RateLimit(_Model):
    """A limit shared by all workers of one stage, enforced in Redis."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    "has(self.requestsPerMinute) || has(self.tokensPerMinute)",
                    "set requestsPerMinute, tokensPerMinute or both",
                ),
            ]
        )
    )

    requests_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Provider calls per minute, across all workers of the stage."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Input plus output tokens per minute, across all workers of "
        "the stage. Reserved before each call and settled with the real usage.",
    )


class Backoff(_Model):
    """Exponential backoff between attempts: initial * factor^(attempt-1), capped, with jitter."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    "!has(self.maxSeconds) || !has(self.initialSeconds) || self.maxSeconds >= self.initialSeconds",
                    "maxSeconds must be at least initialSeconds",
                    field_path=".maxSeconds",
                ),
            ]
        )
    )

    initial_seconds: float = Field(default=2, gt=0, le=3600, description="Delay before the first retry, in seconds.")
    factor: float = Field(default=2, ge=1, le=10, description="Multiplier applied to the delay after each attempt.")
    max_seconds: float = Field(default=300, gt=0, le=86400, description="Cap on a single delay, in seconds.")
    jitter: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Random spread as a fraction of the delay: 0.2 means "
        "up to 20% shorter or longer, so retries of many items do not arrive together.",
    )


class Retry(_Model):
    """How failed calls of a stage are retried. Calls refused for a rate limit or for quota do not use up attempts."""

    max_attempts: int = Field(
        default=3, ge=1, le=20, description="Attempts per item and round, including the first one."
    )
    backoff: Backoff = Field(
        default_factory=Backoff, description="Delay between attempts.", json_schema_extra=DEFAULTED
    )
    deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604_800,
        description="Give up on an item once this long has passed since its first "
        "attempt in the stage, whatever attempts remain. Unset, only waits on the provider's "
        f"rate limits and quota are bounded, by {errors.LIMITED_WAIT_DEADLINE_S:g} seconds.",
    )


_GENERATE_ONLY = "self.type == 'generate'"


class StageMode(enum.StrEnum):
    REALTIME = "Realtime"
    BATCH = "Batch"


# The providers' own bounds on one provider batch (Anthropic's Message Batches API, OpenAI's Batch API).
ANTHROPIC_BATCH_MAX_REQUESTS = 100_000
ANTHROPIC_BATCH_MAX_BYTES = 256 * 1024 * 1024
OPENAI_BATCH_MAX_REQUESTS = 50_000
OPENAI_BATCH_MAX_BYTES = 200 * 1024 * 1024  # the input file's size limit
DEFAULT_BATCH_MAX_ITEMS = 1000
DEFAULT_BATCH_MAX_WAIT_SECONDS = 60


class BatchOptions(_Model):
    """How a stage in mode Batch gathers its ready items into provider batches.

    A provider batch is submitted once maxItems items are ready, or once the
    oldest ready item has waited maxWaitSeconds, whichever comes first (at
    once when no more items can reach the stage).
    """

    max_items: int = Field(
        default=DEFAULT_BATCH_MAX_ITEMS,
        ge=1,
        le=ANTHROPIC_BATCH_MAX_REQUESTS,
        description="Most requests in one provider batch (Anthropic takes up to "
        f"{ANTHROPIC_BATCH_MAX_REQUESTS:,}, OpenAI {OPENAI_BATCH_MAX_REQUESTS:,}). A batch is also cut where its "
        f"requests would pass the provider's size limit ({ANTHROPIC_BATCH_MAX_BYTES // 2**20} MiB, "
        f"{OPENAI_BATCH_MAX_BYTES // 2**20} MiB).",
    )
    max_wait_seconds: int = Field(
        default=DEFAULT_BATCH_MAX_WAIT_SECONDS,
        ge=0,
        le=86_400,
        description="Submit what has gathered once its oldest item has waited this long, even short of maxItems; "
        "0 submits whatever is ready at once.",
    )


class Stage(_Model):
    """One step of the pipeline, applied to every item that reaches it, in stage order."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    "self.type == 'approval' || has(self.provider)",
                    "generate and judge stages need a provider",
                    field_path=".provider",
                    reason="FieldValueRequired",
                ),
                cel(
                    "self.type != 'generate' || has(self.prompt) != has(self.promptFrom)",
                    "a generate stage needs exactly one of prompt and promptFrom",
                    field_path=".prompt",
                    reason="FieldValueRequired",
                ),
                cel(
                    "self.type != 'judge' || !(has(self.prompt) && has(self.promptFrom))",
                    "set at most one of prompt and promptFrom",
                    field_path=".prompt",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.type != 'approval' || !(has(self.provider) || has(self.prompt) || has(self.promptFrom))",
                    "an approval stage calls no provider: remove provider, prompt and promptFrom",
                    field_path=".provider",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.type == 'judge' || !has(self.reviews)",
                    "reviews applies only to judge stages",
                    field_path=".reviews",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.type != 'judge' || has(self.reviews)",
                    "a judge stage must name the stage it reviews",
                    field_path=".reviews",
                    reason="FieldValueRequired",
                ),
                cel(
                    "self.type == 'judge' || !has(self.maxRejections)",
                    "maxRejections applies only to judge stages",
                    field_path=".maxRejections",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.type == 'judge' || !has(self.onExhausted)",
                    "onExhausted applies only to judge stages",
                    field_path=".onExhausted",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "!has(self.fanOut) || (self.type == 'generate' && self.output == 'json')",
                    "fanOut needs a generate stage with output: json",
                    field_path=".fanOut",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "!has(self.jsonSchema) || (self.type == 'generate' && self.output == 'json')",
                    "jsonSchema needs a generate stage with output: json",
                    field_path=".jsonSchema",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "self.type == 'generate' || self.output == 'text'",
                    "output applies only to generate stages (a judge returns a verdict)",
                    field_path=".output",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.type != 'approval' || !has(self.rateLimit)",
                    "an approval stage calls no provider: remove rateLimit",
                    field_path=".rateLimit",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.type != 'approval' || !has(self.callsPerPod)",
                    "an approval stage has no worker pods: remove callsPerPod",
                    field_path=".callsPerPod",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.type != 'approval' || self.mode == 'Realtime'",
                    "an approval stage calls no provider: remove mode",
                    field_path=".mode",
                    reason="FieldValueForbidden",
                ),
                cel(
                    "self.mode == 'Batch' || !has(self.batch)",
                    "batch applies only to mode: Batch",
                    field_path=".batch",
                    reason="FieldValueForbidden",
                ),
            ]
        )
    )

    name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_LABEL,
        description="Unique name of the stage (a DNS label); used in child object names, Redis keys and status.",
    )
    type: StageType = Field(
        default=StageType.GENERATE,
        description="generate calls a provider with the prompt; judge reviews the output of the "
        "stage named by reviews and approves or rejects it; approval holds items until "
        "spec.approvals names the stage.",
    )
    provider: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Key of spec.providers to call. Required for generate and judge stages.",
    )
    prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PROMPT_LENGTH,
        description="Prompt template. It sees item, input (the previous stage's output), vars, "
        "feedback and round (judge loops) and attempt, as in '{{ item }}'. A judge stage "
        "without a prompt uses a built-in review prompt.",
    )
    prompt_from: PromptFrom | None = Field(
        default=None, description="Read the prompt template from a ConfigMap instead of prompt."
    )
    output: OutputFormat = Field(
        default=OutputFormat.TEXT,
        description="text passes the answer on as is; json parses it (and checks it against "
        "jsonSchema when set). Output that does not parse is a BadOutput error.",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="A JSON Schema the parsed output must match (output: json only).",
        json_schema_extra={"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    )
    fan_out: FanOut | None = Field(
        default=None, description="Turn a list in the output into child items of the next stage."
    )
    collect: bool = Field(
        default=False,
        description="Run once over all items that reached this stage, after "
        "everything upstream has drained; the input is the list of their outputs in a stable "
        "order (fan-in).",
    )
    reviews: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        pattern=DNS_LABEL,
        description="Judge stages only: the earlier generate stage whose output this judge "
        "reviews. A rejection sends the item back there with the judge's feedback.",
    )
    max_rejections: int | None = Field(
        default=None,
        ge=0,
        le=10,
        description=f"Judge stages only: how many times an item may be sent back. Default {DEFAULT_MAX_REJECTIONS}.",
    )
    on_exhausted: OnExhausted | None = Field(
        default=None,
        description="Judge stages only: what happens after maxRejections "
        "rejections. Fail fails the item; AcceptLast passes the last output "
        f"on. Default {DEFAULT_ON_EXHAUSTED}.",
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="Most calls of this stage in flight at once, across all its worker pods. The stage runs "
        "ceil(calls wanted / callsPerPod) pods, and its workers never hold more than this many items together. "
        "In mode Batch: provider batches in flight at once, each of at most batch.maxItems items (one worker).",
    )
    calls_per_pod: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CALLS_PER_POD,
        description="Calls one worker pod of this stage runs at once. Unset: the operator's setting "
        f"(ANALYSIS_OPERATOR_CALLS_PER_POD, default {DEFAULT_CALLS_PER_POD}).",
    )
    rate_limit: RateLimit | None = Field(default=None, description="Requests and tokens per minute for the stage.")
    timeout_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="Deadline of one provider call, in seconds. A worker pod that is stopped (scale-in, suspend, "
        "rollout) lets its calls finish for this long plus a few seconds, at most "
        f"{env.MAX_GRACE_SECONDS} seconds; what is left then is handed back and runs again.",
    )
    retry: Retry = Field(default_factory=Retry, description="Retries of failed calls.", json_schema_extra=DEFAULTED)
    executor: Executor = Field(
        default=Executor.JOB,
        description="Job runs the stage as a work-queue Job whose pods exit once the stage "
        "has drained; Deployment keeps a Deployment that scales with the backlog and to zero "
        "when idle.",
    )
    mode: StageMode = Field(
        default=StageMode.REALTIME,
        description="Realtime calls the provider once per item as items arrive. Batch gathers ready items into "
        "the provider's batch API (Anthropic Message Batches, OpenAI Batch) at about half the price, with results "
        "within the provider's window (OpenAI: 24 hours) instead of seconds; judge rounds, fan-out, retries, "
        "budgets and status work as in Realtime.",
    )
    batch: BatchOptions | None = Field(
        default=None, description="mode: Batch only: when a provider batch is submitted. Defaults apply when unset."
    )


# ---------------------------------------------------------------- batch spec


class Approval(_Model):
    """Opens an approval stage for all items, or for the listed ones."""

    stage: str = Field(
        min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_LABEL, description="Name of a stage of type approval."
    )
    items: list[Annotated[str, Field(min_length=1, max_length=512)]] | None = Field(
        default=None,
        max_length=MAX_ITEMS,
        json_schema_extra=k8s(list_type="set"),
        description="Item ids to release. All items waiting at the stage when absent.",
    )


class Budget(_Model):
    """Limits after which no new work starts; in-flight calls finish."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel("has(self.maxTokens) || has(self.maxCostUSD)", "set maxTokens, maxCostUSD or both"),
            ]
        )
    )

    max_tokens: int | None = Field(
        default=None, ge=1, le=10**12, description="Input plus output tokens across all stages."
    )
    max_cost_usd: float | None = Field(
        default=None,
        alias="maxCostUSD",
        gt=0,
        le=10**7,
        description="Estimated cost in US dollars, from the price table.",
    )


class ResultsSpec(_Model):
    """Where the finished items' results go, and whether they outlive the batch (docs/design.md#results-export)."""

    sink: ResultsSink | None = Field(
        default=None,
        description="ConfigMap: JSON Lines in ConfigMaps of the batch's namespace (zero setup, up to "
        f"{CONFIGMAP_RESULTS_MAX_MIB} MiB of results). ObjectStore: JSON Lines objects in the install's "
        "S3-compatible store, under <prefix>/<namespace>/<batch>/<uid>/. Default: ObjectStore when the install "
        "has a store, ConfigMap otherwise.",
    )
    on_delete: ResultsOnDelete = Field(
        default=ResultsOnDelete.RETAIN,
        description="Retain: the results outlive the batch (its deletion or its TTL); Delete: they go with it.",
    )


class FailurePolicy(_Model):
    """When failed items fail the whole batch."""

    max_failed_items: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Failed or dead-lettered items the batch tolerates; one more fails it.",
    )


# CEL's cost estimator loses the length bound of a field of an object taken
# from a filtered list, and then refuses a message built from it. So messages
# name the offending stage by mapping stages to names first and filtering the
# names (bounded strings), which the estimator accepts.
_UNDEFINED_PROVIDER = "has(s.provider) && !(s.provider in self.providers)"
_OPENAI_BATCH_TOO_BIG = (
    "has(s.batch) && has(s.provider) && s.provider in self.providers && has(self.providers[s.provider].type) && "
    f"self.providers[s.provider].type == 'openai' && s.batch.maxItems > {OPENAI_BATCH_MAX_REQUESTS}"
)
_BAD_REVIEW = (
    "s.type == 'judge' && has(s.reviews) && "
    "!self.stages.exists(j, r, j < i && r.name == s.reviews && r.type == 'generate')"
)


class AnalysisBatchSpec(_Model):
    """A multi-stage LLM analysis pipeline over a list of items."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    "(has(self.items) ? self.items.map(i, i.size()).sum() : 0) + self.stages.map(s, has(s.prompt) ? "
                    f"s.prompt.size() : 0).sum() <= {MAX_INLINE_BYTES}",
                    f"inline items and prompts exceed {MAX_INLINE_BYTES // 1024} KiB: move them to ConfigMaps with "
                    "itemsFrom and promptFrom (Kopf and kubectl apply keep copies of the spec in annotations, which "
                    "share a 256 KiB limit)",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "has(self.items) != has(self.itemsFrom)",
                    "set exactly one of items and itemsFrom",
                    reason="FieldValueRequired",
                ),
                cel(
                    "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
                    field_path=".stages",
                    message_expression="'stage names must be unique; repeated: ' + self.stages.map(s, s.name).filter("
                    "n, self.stages.filter(t, t.name == n).size() > 1)[0]",
                    reason="FieldValueInvalid",
                ),
                cel(
                    f"!self.stages.exists(s, {_UNDEFINED_PROVIDER})",
                    field_path=".stages",
                    message_expression="'stage ' + self.stages.map(s, s.name).filter(n, self.stages.exists(s, "
                    f"s.name == n && {_UNDEFINED_PROVIDER}))[0] + ': provider ' + self.stages.map(s, has(s.provider) "
                    "? s.provider : '').filter(p, p != '' && !(p in self.providers))[0] + ' is not defined in "
                    "spec.providers'",
                    reason="FieldValueInvalid",
                ),
                cel(
                    f"!self.stages.exists(i, s, {_BAD_REVIEW})",
                    field_path=".stages",
                    message_expression="'judge stage ' + self.stages.map(s, s.name).filter(n, self.stages.exists(i, "
                    f"s, s.name == n && {_BAD_REVIEW}))[0] + ': reviews must name an earlier generate stage'",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "!has(self.stages[self.stages.size() - 1].fanOut)",
                    "the last stage cannot fan out: there is no next stage to receive the children",
                    field_path=".stages",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "!has(self.approvals) || self.approvals.all(a, self.stages.exists(s, s.name == a.stage && "
                    "s.type == 'approval'))",
                    field_path=".approvals",
                    message_expression="'approvals: ' + self.approvals.map(a, a.stage).filter(n, !self.stages.exists("
                    "s, s.name == n && s.type == 'approval'))[0] + ' is not a stage of type approval'",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "self.providers.all(k, k.matches('" + DNS_LABEL + "') && k.size() <= 63)",
                    "provider names must be DNS labels (lowercase letters, digits and '-')",
                    field_path=".providers",
                ),
                cel(
                    "!has(self.vars) || self.vars.all(k, k.matches('" + IDENTIFIER + "'))",
                    "vars keys must be identifiers (letters, digits and '_') so templates can use them",
                    field_path=".vars",
                ),
                cel(
                    f"!self.stages.exists(s, {_OPENAI_BATCH_TOO_BIG})",
                    f"a stage on an openai provider has batch.maxItems over {OPENAI_BATCH_MAX_REQUESTS}, the most "
                    "requests OpenAI takes in one batch",
                    field_path=".stages",
                    reason="FieldValueInvalid",
                ),
                cel(
                    # has(): a judge without `reviews` gets its own message (on the stage), not CEL's "no such key".
                    "self.stages.filter(s, s.type == 'judge' && has(s.reviews)).all(j, self.stages.filter(k, "
                    "k.type == 'judge' && has(k.reviews) && k.reviews == j.reviews).size() == 1)",
                    "at most one judge stage may review a given stage",
                    field_path=".stages",
                    reason="FieldValueInvalid",
                ),
            ]
        )
    )

    items: list[Annotated[str, Field(min_length=1, max_length=200, pattern=ITEM_ID)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ITEMS,
        json_schema_extra=k8s(list_type="set"),
        description="The initial items, by id (e.g. ticker symbols). Ids are unique, without '/'. "
        "Set exactly one of items and itemsFrom.",
    )
    items_from: ItemsFrom | None = Field(default=None, description="Read the initial items from a ConfigMap instead.")
    vars: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None, max_length=MAX_VARS, description="Values that every prompt template sees as vars.<name>."
    )
    providers: dict[str, Provider] = Field(
        min_length=1, max_length=MAX_PROVIDERS, description="LLM endpoints by name; stages refer to them by that name."
    )
    stages: list[Stage] = Field(
        min_length=1,
        max_length=MAX_STAGES,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="The pipeline, in order. Each item goes through the stages in turn; "
        "fanOut, collect and judge stages change how items flow.",
    )
    approvals: list[Approval] | None = Field(
        default=None,
        max_length=MAX_STAGES,
        json_schema_extra=k8s(list_type="map", list_map_keys=["stage"]),
        description="Opens approval stages. Edit it (in Git, or with `kubectl "
        "analysis approve`) to release waiting items.",
    )
    suspend: bool = Field(
        default=False,
        description="Stop claiming new items; in-flight calls finish and workers "
        "scale to zero. Set back to false to continue.",
    )
    budget: Budget | None = Field(default=None, description="Token and cost limits for the whole batch.")
    failure_policy: FailurePolicy = Field(
        default_factory=FailurePolicy,
        json_schema_extra=DEFAULTED,
        description="How many failed items the batch tolerates.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=31_536_000,
        description="Delete the batch this long after it completes or fails (its results too when "
        "results.onDelete is Delete). Kept forever when absent.",
    )
    results: ResultsSpec | None = Field(default=None, description="Where the results go and how long they stay.")


# ---------------------------------------------------------------- status


class Condition(_StatusModel):
    """A condition in the Kubernetes convention (metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Condition type: " + ", ".join(ConditionType) + ".",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Details for humans.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was computed for."
    )


HELD_ITEMS_SHOWN = 50  # items named per approval stage in status.stages[].heldItems


class ProviderBatchesStatus(_StatusModel):
    """A mode: Batch stage's provider batches (the provider's batch API)."""

    submitted: int = Field(default=0, ge=0, description="Provider batches submitted so far.")
    in_progress: int = Field(default=0, ge=0, description="Submitted and not yet collected.")
    ended: int = Field(default=0, ge=0, description="Ended, their results recorded and the provider's copy deleted.")


class StageStatus(_StatusModel):
    """Counts of one stage."""

    name: str = Field(description="The stage.")
    pending: int = Field(
        default=0, ge=0, description="Items queued and not yet claimed (including held at an approval stage)."
    )
    running: int = Field(default=0, ge=0, description="Items claimed by a worker right now.")
    succeeded: int = Field(default=0, ge=0, description="Items that passed this stage.")
    failed: int = Field(default=0, ge=0, description="Items that failed in this stage for good.")
    retrying: int = Field(default=0, ge=0, description="Items waiting for a retry after a failed attempt.")
    dead_lettered: int = Field(default=0, ge=0, description="Items given up after too many redeliveries.")
    workers: int = Field(default=0, ge=0, description="Worker pods the stage runs now.")
    cache_hit_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Of the stage's input tokens, the share read from the provider's prompt cache, in percent; "
        "unset until the cache has had a part in a call.",
    )
    provider_batches: ProviderBatchesStatus | None = Field(
        default=None, description="mode: Batch stages only: the provider batches that carry its items."
    )
    held_items: list[str] | None = Field(
        default=None,
        max_length=HELD_ITEMS_SHOWN,
        description=f"Approval stages only: the items waiting for spec.approvals, oldest first, at most "
        f"{HELD_ITEMS_SHOWN} (pending counts them all).",
    )


class JudgeStatus(_StatusModel):
    """Verdicts of all judge stages."""

    approved: int = Field(default=0, ge=0, description="Approvals.")
    rejected: int = Field(default=0, ge=0, description="Rejections (each sends an item back with feedback).")
    exhausted: int = Field(default=0, ge=0, description="Items that reached maxRejections.")
    summary: str = Field(default="", description="Approvals and rejections for display, e.g. '2✓ 1✗'.")


class Usage(_StatusModel):
    """Tokens and estimated cost so far."""

    input_tokens: int = Field(default=0, ge=0, description="Input (prompt) tokens, cached or not.")
    output_tokens: int = Field(default=0, ge=0, description="Output (completion) tokens.")
    cache_write_tokens: int = Field(
        default=0, ge=0, description="Of the input tokens, those written to the provider's prompt cache."
    )
    cache_read_tokens: int = Field(
        default=0, ge=0, description="Of the input tokens, those read from the provider's prompt cache."
    )
    total_tokens: int = Field(default=0, ge=0, description="Input plus output tokens.")
    cost_usd: str = Field(
        default="0",
        alias="costUSD",
        pattern=r"^[0-9]+(\.[0-9]+)?$",
        description="Estimated cost in US dollars, as a decimal string.",
    )
    tokens_summary: str = Field(default="", description="Total tokens for display, e.g. '48k'.")
    cost_summary: str = Field(default="", description="Cost for display, e.g. '$0.61'.")


class ItemCounts(_StatusModel):
    """Items of the whole batch, including fanned-out children."""

    total: int = Field(default=0, ge=0, description="Items known so far (grows as stages fan out).")
    done: int = Field(
        default=0, ge=0, description="Items in a terminal state: finished, filtered, failed or dead-lettered."
    )
    succeeded: int = Field(default=0, ge=0, description="Items that finished the last stage.")
    failed: int = Field(default=0, ge=0, description="Items that failed for good.")
    dead_lettered: int = Field(default=0, ge=0, description="Items given up after too many redeliveries.")


class ResultsStatus(_StatusModel):
    """Where the finished items' outputs are (JSON Lines): the manifest of the results sink."""

    sink: ResultsSink | None = Field(default=None, description="ConfigMap or ObjectStore.")
    config_maps: list[str] = Field(
        default_factory=list,
        alias="configMaps",
        max_length=CONFIGMAP_RESULTS_MAX_CHUNKS,
        description="ConfigMap sink: the results ConfigMaps in order; each holds key results.jsonl. "
        "`kubectl analysis results <batch>` reads them.",
    )
    location: str | None = Field(
        default=None,
        description="ObjectStore sink: the folder (s3://bucket/prefix/namespace/batch/uid/) that holds the "
        "parts part-<first row>-<rows>.jsonl and, once the batch ended, manifest.json.",
    )
    endpoint: str | None = Field(
        default=None,
        description="ObjectStore sink: the S3 endpoint URL of the install's store (none: AWS S3). "
        "Read it with your own credentials: `kubectl analysis results <batch>` does.",
    )
    rows: int = Field(default=0, ge=0, description="Rows written so far (an item re-run by retry-failed adds a row).")
    objects: int = Field(default=0, ge=0, description="Objects (ConfigMaps or parts) holding them.")
    bytes: int = Field(default=0, ge=0, description="Bytes of JSON Lines written.")
    pending: int = Field(default=0, ge=0, description="Ended items not yet written to the sink (waiting in Redis).")


class AnalysisBatchStatus(_StatusModel):
    """What the operator observed; aggregates only (per-item data lives in Redis and the results)."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the status was computed for."
    )
    phase: Phase | None = Field(
        default=None,
        description="Summary for humans: Pending, Running, "
        "WaitingForApproval, Suspended, Complete or Failed. Tools read conditions.",
    )
    current_stage: str | None = Field(default=None, description="The earliest stage that still has work.")
    progress: str | None = Field(default=None, description="Items done out of items known, as 'done/total'.")
    percent: int | None = Field(default=None, ge=0, le=100, description="Progress from 0 to 100.")
    retries: int = Field(default=0, ge=0, description="Retries scheduled so far, all stages.")
    message: str | None = Field(default=None, description="The most useful thing to know right now.")
    items: ItemCounts | None = Field(default=None, description="Item counts of the whole batch.")
    stages: list[StageStatus] | None = Field(
        default=None,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Counts per stage, in stage order.",
    )
    judge: JudgeStatus | None = Field(default=None, description="Judge verdicts.")
    usage: Usage | None = Field(default=None, description="Tokens and cost.")
    results: ResultsStatus | None = Field(default=None, description="Where the results are.")
    retried_failed: str | None = Field(
        default=None,
        description=f"The value of the {wellknown.ANNOTATION_RETRY_FAILED} annotation last acted on "
        "(each new value re-runs the failed and dead-lettered items once).",
    )
    start_time: datetime | None = Field(default=None, description="When the first item was enqueued.")
    completion_time: datetime | None = Field(default=None, description="When the batch completed or failed.")
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra=k8s(list_type="map", list_map_keys=["type"]),
        description="Conditions in the Kubernetes convention.",
    )


class AnalysisBatch(_StatusModel):
    """The whole resource, as read from the API server."""

    api_version: str = Field(description="analysis.dev/v1alpha1")
    kind: str = Field(description="AnalysisBatch")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: AnalysisBatchSpec = Field(description="The pipeline and its items.")
    status: AnalysisBatchStatus | None = Field(default=None, description="Observed state.")


# ---------------------------------------------------------------- AnalysisProvider: a shared provider account

NAMESPACE_OR_ANY = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"
ANY_NAMESPACE = "*"
MAX_ACCOUNT_NAMESPACES = 256
DEFAULT_ACCOUNT_WINDOW_SECONDS = 60


class AccountLimits(_Model):
    """What the provider allows the whole account, shared by every namespace, batch and stage that uses it."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    "has(self.requestsPerMinute) || has(self.inputTokensPerMinute) || "
                    "has(self.outputTokensPerMinute) || has(self.maxInFlight)",
                    "set at least one of requestsPerMinute, inputTokensPerMinute, outputTokensPerMinute and "
                    "maxInFlight",
                    reason="FieldValueRequired",
                ),
                cel(
                    "!has(self.requestsPerMinute) || self.requestsPerMinute * self.windowSeconds >= 60",
                    "requestsPerMinute allows less than one request per windowSeconds: lengthen the window",
                    field_path=".windowSeconds",
                    reason="FieldValueInvalid",
                ),
            ]
        )
    )

    requests_per_minute: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Provider calls per minute, across every user of the account."
    )
    input_tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Input (prompt) tokens per minute. Each call reserves its prompt's estimate and is settled "
        "to the real usage once it returns.",
    )
    output_tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Output tokens per minute. Each call reserves its provider's maxTokens and is settled to "
        "the real usage once it returns.",
    )
    max_in_flight: int | None = Field(
        default=None, ge=1, le=100_000, description="Calls in flight at once, across every user of the account."
    )
    window_seconds: int = Field(
        default=DEFAULT_ACCOUNT_WINDOW_SECONDS,
        ge=1,
        le=3600,
        description="The window the per-minute limits are counted over, scaled to its length (a window of 10 "
        "seconds allows a sixth of each per-minute limit in every 10 seconds). Default a minute, as providers "
        "count; shorter windows spread a burst more evenly.",
    )


class NamespaceShare(_Model):
    """A namespace allowed to use the account, its fair-share weight and optional caps."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=NAMESPACE_OR_ANY,
        description="The namespace, or '*' for every namespace not listed by name.",
    )
    weight: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Its share while several namespaces wait on the account: capacity is split in proportion "
        "to the weights of the namespaces waiting (and equally between the batches of one namespace).",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="A cap on this namespace's calls per minute, even when the rest of the account is idle.",
    )
    max_in_flight: int | None = Field(
        default=None, ge=1, le=100_000, description="A cap on this namespace's calls in flight."
    )


class OperatorConfigMapKeyRef(_Model):
    """A key of a ConfigMap in the operator's own namespace (the platform admin's, not a team's)."""

    name: ObjectName = Field(description="Name of the ConfigMap, in the operator's namespace.")
    key: DataKey = Field(description="Key within the ConfigMap's data.")


class Egress(_Model):
    """How the workers reach the provider through a gateway."""

    proxy_url: str | None = Field(
        default=None,
        alias="proxyURL",
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="An HTTP(S) proxy for the provider's API (the workers' HTTPS_PROXY).",
    )
    ca_bundle: OperatorConfigMapKeyRef | None = Field(
        default=None,
        description="PEM certificates to trust besides the system's, e.g. a gateway's own CA. The operator "
        "copies the key into each batch that uses the account.",
    )


# Conditions on one entry ``n`` of spec.namespaces, read by a rule and its message.
_RPM_ABOVE_ACCOUNT = "has(n.requestsPerMinute) && n.requestsPerMinute > self.limits.requestsPerMinute"
_IN_FLIGHT_ABOVE_ACCOUNT = "has(n.maxInFlight) && n.maxInFlight > self.limits.maxInFlight"
_RPM_BELOW_ONE_PER_WINDOW = "has(n.requestsPerMinute) && n.requestsPerMinute * self.limits.windowSeconds < 60"


def _the_namespace(condition: str) -> str:
    """A CEL expression for "namespace <the first entry n of spec.namespaces for which condition holds>".

    Mapped to names before filtering: the API server's cost estimate knows a name's maximum length after
    ``map``, not after ``filter``, and refuses the message as too costly otherwise (names are never empty).
    """
    return f"'namespace ' + self.namespaces.map(n, {condition} ? n.name : '').filter(x, x != '')[0]"


class AnalysisProviderSpec(_Model):
    """A provider account shared by several namespaces: its endpoint, its limits, who may use it and how much."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=k8s(
            validations=[
                cel(
                    f"!has(self.limits.requestsPerMinute) || !self.namespaces.exists(n, {_RPM_ABOVE_ACCOUNT})",
                    "a namespace's requestsPerMinute cannot exceed the account's limits.requestsPerMinute",
                    message_expression=_the_namespace(_RPM_ABOVE_ACCOUNT)
                    + ' + ": requestsPerMinute cannot exceed the account\'s limits.requestsPerMinute"',
                    field_path=".namespaces",
                    reason="FieldValueInvalid",
                ),
                cel(
                    f"!has(self.limits.maxInFlight) || !self.namespaces.exists(n, {_IN_FLIGHT_ABOVE_ACCOUNT})",
                    "a namespace's maxInFlight cannot exceed the account's limits.maxInFlight",
                    message_expression=_the_namespace(_IN_FLIGHT_ABOVE_ACCOUNT)
                    + ' + ": maxInFlight cannot exceed the account\'s limits.maxInFlight"',
                    field_path=".namespaces",
                    reason="FieldValueInvalid",
                ),
                cel(
                    # As limits.requestsPerMinute itself: a cap below one request per window would never grant one.
                    f"!self.namespaces.exists(n, {_RPM_BELOW_ONE_PER_WINDOW})",
                    "a namespace's requestsPerMinute allows less than one request per limits.windowSeconds",
                    message_expression=_the_namespace(_RPM_BELOW_ONE_PER_WINDOW)
                    + " + ': requestsPerMinute allows less than one request per limits.windowSeconds: raise it or "
                    "lengthen the window'",
                    field_path=".namespaces",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "self.type != 'offline' || !has(self.baseURL)",
                    "baseURL is not used by the offline provider",
                    field_path=".baseURL",
                    reason="FieldValueForbidden",
                ),
            ]
        )
    )

    type: ProviderType = Field(
        description="Which API the account serves: anthropic, openai, or offline (no network; for demos and tests)."
    )
    base_url: str | None = Field(
        default=None,
        alias="baseURL",
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="The API's base URL, for gateways and proxies; the SDK's default when absent.",
    )
    limits: AccountLimits = Field(description="The account's limits, shared by everyone who uses it.")
    namespaces: list[NamespaceShare] = Field(
        min_length=1,
        max_length=MAX_ACCOUNT_NAMESPACES,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="The namespaces whose batches may use the account, with their weights and caps. "
        "A batch in any other namespace waits with the condition ProviderNotAllowed.",
    )
    egress: Egress | None = Field(default=None, description="How workers reach the provider through a gateway.")

    def share(self, namespace: str) -> NamespaceShare | None:
        """The entry that admits ``namespace``: its own, else '*', else None (not allowed)."""
        fallback = None
        for entry in self.namespaces:
            if entry.name == namespace:
                return entry
            if entry.name == ANY_NAMESPACE:
                fallback = entry
        return fallback


class NamespaceUse(_StatusModel):
    """One namespace's use of the account, over the last window."""

    name: str = Field(description="The namespace.")
    batches: int = Field(default=0, ge=0, description="Its batches that use the account now.")
    waiting: int = Field(default=0, ge=0, description="Its calls waiting for the account right now.")
    granted: int = Field(default=0, ge=0, description="Calls granted to it in the last window.")
    in_flight: int = Field(default=0, ge=0, description="Its calls in flight.")


class AnalysisProviderStatus(_StatusModel):
    """Live use of the account, written by the operator every few seconds while batches use it."""

    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    window_seconds: int | None = Field(default=None, description="The window the figures below count over.")
    requests: int = Field(default=0, ge=0, description="Calls granted in the last window.")
    input_tokens: int = Field(default=0, ge=0, description="Input tokens reserved or used in the last window.")
    output_tokens: int = Field(default=0, ge=0, description="Output tokens reserved or used in the last window.")
    in_flight: int = Field(default=0, ge=0, description="Calls in flight now.")
    requests_summary: str = Field(default="", description="Calls in the last window against the limit, e.g. '45/60'.")
    batches: int = Field(default=0, ge=0, description="Batches that use the account now.")
    waiting_batches: int = Field(default=0, ge=0, description="Batches with calls waiting for the account.")
    waiting_namespaces: list[str] | None = Field(
        default=None, description="Namespaces with calls waiting for the account."
    )
    namespaces: list[NamespaceUse] | None = Field(
        default=None,
        json_schema_extra=k8s(list_type="map", list_map_keys=["name"]),
        description="Each namespace's use, for those that used the account recently.",
    )
    paused_until: datetime | None = Field(
        default=None, description="The account is paused until then (a provider's retry-after)."
    )
    quota_exhausted: str | None = Field(
        default=None,
        description="The provider refuses the account for quota or billing, in its own words; one probe call "
        "at a time goes out, with growing waits, until one passes.",
    )
    served_by: str | None = Field(
        default=None,
        description="The install whose operator grants the account's capacity (its namespace): the limit is kept "
        "in that install's Redis, so one install holds an account at a time and renews the claim every few seconds.",
    )
    renew_time: datetime | None = Field(
        default=None,
        description="When servedBy last renewed its claim; another install takes the account over only once the "
        "claim is this old by the claim's lease.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        json_schema_extra=k8s(list_type="map", list_map_keys=["type"]),
        description="Conditions in the Kubernetes convention: Ready (the account is valid and serving), "
        "Paused, QuotaExhausted.",
    )


class AnalysisProvider(_StatusModel):
    """The whole resource, as read from the API server."""

    api_version: str = Field(description="analysis.dev/v1alpha1")
    kind: str = Field(description="AnalysisProvider")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: AnalysisProviderSpec = Field(description="The account.")
    status: AnalysisProviderStatus | None = Field(default=None, description="Observed state.")
