"""The execution plan: an AnalysisBatch spec compiled into what workers run.

The operator compiles the spec (``compile_plan``), publishes the plan as JSON
in a ConfigMap, and every worker reads it at start (``Plan.load``). The plan
resolves what the spec leaves implicit: prompts read from ConfigMaps, the
stage that follows each stage, defaults of judge-only fields, the retry
policy, and the settings the spec has no field for (the rate-limit window,
the lease, the delivery bound: the constants below). It carries no secrets: a
provider names the Secret key that the operator maps into the worker's
environment.

One meaning per knob, one default. The API models (``v1alpha1``) hold the
default of every field a user can set, and ``compile_plan`` copies the
resolved value into the plan, so the plan's models state no default of their
own: a field is required, or None when the spec leaves it unset (``dumps``
leaves Nones out). A plan field has the name of its spec field in snake_case
(``timeoutSeconds``, ``timeout_seconds``); a name changes only with its unit
(``budget.maxCostUSD`` in dollars, ``max_cost_nusd`` in nano-dollars). Code
downstream (the worker, the builders) reads the plan and never defaults a value
again.

``compile_plan`` also rejects what the schema cannot see but would fail at
run time, naming the field: a template that does not parse or uses an
unknown variable (or an unknown ``vars`` key), a ``promptFrom`` whose text
the caller could not read, a ``fanOut`` that the stage's JSON schema says
can never match, a stage without the provider it needs. The operator turns a
``PlanError`` into a condition.

This module is pure (no Redis, no Kubernetes); it does not repeat the checks
the CRD schema and its CEL rules already make at ``kubectl apply``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pydantic

from analysis_core import errors, wire
from analysis_core.api import v1alpha1

# The plan's schema version. A worker reads every plan from version 1 up to its own (``Plan.loads`` upgrades an
# older one) and refuses a newer one rather than guess at it; a change that an older worker would misread bumps it
# (docs/design.md#upgrades). Version 2 named every field as the spec does (version 1: ``timeout_s``, ``retry``'s
# ``initial_s``, ``rate_limit.requests``, ...) and resolved ``fanOut.order``. Version 3 added ``calls_per_pod`` and
# made ``concurrency`` the cap of the whole stage, which its workers keep together: a version-2 worker would read
# it as its own, and run as many calls as its pod's ``ANALYSIS_CONCURRENCY`` (several per pod now) allows; and it
# added a provider's ``account`` (a version-2 plan has none of either, and reads as it is). Version 4 added a
# stage's ``mode`` and ``batch``: a version-3 worker would call a Batch stage's items one by one at the full price.
PLAN_VERSION = 4
# Settings the spec has no field for, each stated here only; ``compile_plan`` puts them in every plan.
# The window that rateLimit's "per minute" counts over.
RATE_LIMIT_WINDOW_S = 60.0
# The lease (visibility timeout) of a claimed item; workers renew it every third of this while a call runs, and
# take over an item whose lease ran out.
LEASE_S = 30.0
# How often an item may be delivered before it is dead-lettered (a worker that died with it counts as one).
MAX_DELIVERIES = 5
# What a prompt template may use (docs/design.md#prompts-and-template-variables); the worker renders exactly these.
TEMPLATE_VARIABLES = frozenset({"item", "input", "vars", "feedback", "round", "attempt"})
# The judge's prompt when the spec gives none.
DEFAULT_JUDGE_PROMPT = (
    "Review the answer below for accuracy, completeness and clarity. Reply with JSON only: "
    '{"approved": true or false, "feedback": "what to fix, if anything", "score": 0.0 to 1.0}.'
    "\n\nAnswer about {{ item }}:\n{{ input }}"
)


class PlanVersionError(ValueError):
    """A plan written for a newer worker than this one."""


class PlanError(ValueError):
    """A spec the schema admits but no worker could run; each problem names its field."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")


class AccountPlan(_Frozen):
    """``spec.providers.<name>.providerRef``, resolved from the AnalysisProvider it names.

    The worker spends its batch's allowance of the account (granted by the
    operator, docs/design.md#provider-accounts) instead of calling freely, and
    reaches the provider through the account's egress settings.
    """

    name: str
    proxy_url: str | None = None
    ca_bundle: bool = False  # the account trusts extra CAs: the operator mounts them for the worker


class ProviderPlan(_Frozen):
    """``spec.providers.<name>``, resolved: ``model`` is set for every type, ``offline`` for type offline.

    A provider on an account takes its type and base URL from the account.
    """

    type: v1alpha1.ProviderType
    model: str
    base_url: str | None = None
    max_tokens: int
    temperature: float | None = None
    api_key_secret_ref: v1alpha1.SecretKeyRef | None = None
    offline: v1alpha1.OfflineOptions | None = None
    account: AccountPlan | None = None


class BatchPlan(_Frozen):
    """``spec.stages[].batch`` of a stage in mode Batch, with its defaults applied."""

    max_items: int
    max_wait_s: float


class RateLimitPlan(_Frozen):
    """``spec.stages[].rateLimit``; the limits count over ``window_s`` (``RATE_LIMIT_WINDOW_S``, a minute).

    Tests and benchmarks shorten the window to run a real worker against a
    limit in seconds rather than minutes; the operator always writes a minute.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    window_s: float


class BudgetPlan(_Frozen):
    """``spec.budget``; the cost in nano-dollars, the unit of the usage counters."""

    max_tokens: int | None = None
    max_cost_nusd: int | None = None

    def exceeded(self, usage: Mapping[str, int]) -> str | None:
        """Why ``usage`` is past this budget, or None."""
        tokens = usage.get(wire.USAGE_INPUT_TOKENS, 0) + usage.get(wire.USAGE_OUTPUT_TOKENS, 0)
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"{tokens} tokens used, budget.maxTokens is {self.max_tokens}"
        cost = usage.get(wire.USAGE_COST_NUSD, 0)
        if self.max_cost_nusd is not None and cost >= self.max_cost_nusd:
            return f"${cost / 1e9:.4f} spent, budget.maxCostUSD is ${self.max_cost_nusd / 1e9:.4f}"
        return None

    def room(self, usage: Mapping[str, int], held_nusd: int = 0, held_tokens: int = 0) -> tuple[int | None, int | None]:
        """What is left of the budget (nano-dollars, tokens; None for no limit) after ``usage`` and what provider
        batches in flight hold against it."""
        tokens = usage.get(wire.USAGE_INPUT_TOKENS, 0) + usage.get(wire.USAGE_OUTPUT_TOKENS, 0)
        cost = usage.get(wire.USAGE_COST_NUSD, 0)
        return (
            None if self.max_cost_nusd is None else self.max_cost_nusd - cost - held_nusd,
            None if self.max_tokens is None else self.max_tokens - tokens - held_tokens,
        )


class StagePlan(_Frozen):
    """``spec.stages[i]``, resolved: the prompt's text, the judge-only settings (on every stage), the next stage."""

    name: str
    index: int
    type: v1alpha1.StageType
    provider: str | None = None
    prompt: str | None = None
    output: v1alpha1.OutputFormat
    json_schema: dict[str, Any] | None = None
    fan_out: v1alpha1.FanOut | None = None  # with sortBy, its order is set
    collect: bool
    reviews: str | None = None
    max_rejections: int
    on_exhausted: v1alpha1.OnExhausted
    concurrency: int  # calls in flight for the whole stage: its workers hold at most this many items together
    calls_per_pod: int | None = None  # None: the operator's setting (the builders resolve it)
    rate_limit: RateLimitPlan | None = None
    timeout_seconds: float
    retry: errors.RetryPolicy
    executor: v1alpha1.Executor
    next: str | None = None  # the stage that receives this stage's output
    mode: v1alpha1.StageMode
    batch: BatchPlan | None = None  # set exactly when mode is Batch


class Plan(_Frozen):
    version: int
    uid: str
    generation: int
    providers: dict[str, ProviderPlan]
    stages: list[StagePlan]
    vars: dict[str, str]
    # Approval stage -> the items released through it; None releases every item.
    approvals: dict[str, list[str] | None]
    budget: BudgetPlan | None = None
    max_deliveries: int  # MAX_DELIVERIES
    lease_s: float  # LEASE_S

    def stage(self, name: str) -> StagePlan:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"the plan has no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def feeders(self, name: str) -> list[str]:
        """The stages that can still send items to stage ``name``: every earlier one, and every later judge that
        reviews it or an earlier stage (a rejection goes back to the reviewed stage and comes forward again)."""
        index = self.stage(name).index
        earlier = [s.name for s in self.stages if s.index < index]
        names = [s.name for s in self.stages]
        judges = [
            s.name
            for s in self.stages
            if s.index > index
            and s.type is v1alpha1.StageType.JUDGE
            and s.reviews in names
            and names.index(s.reviews) <= index
        ]
        return earlier + judges

    def dumps(self) -> str:
        return self.model_dump_json(exclude_none=True)

    @classmethod
    def loads(cls, text: str) -> Plan:
        """The plan in ``text``, upgraded to this schema if it is older.

        A plan of a newer schema is refused by its version, before its fields are read.
        """
        raw = json.loads(text)
        if not isinstance(raw, dict):
            return cls.model_validate(raw)  # refused, with pydantic's message
        version = raw.get("version", 1)  # a plan from before the field is version 1
        if isinstance(version, int) and version > PLAN_VERSION:
            raise PlanVersionError(
                f"plan version {version} is newer than this worker's ({PLAN_VERSION}): the worker image is older than "
                "the operator that wrote the plan; run the worker image of the operator's release"
            )
        if version == 1:
            raw = _from_version_1(raw)
        if raw.get("version") in (2, 3):
            # Nothing to rename: version 2's fields are version 3's, and version 3's are version 4's, with every
            # stage in Realtime mode. Version 2's workers ran one call per pod, so the stage's concurrency was the
            # cap of the whole stage then too.
            stages = raw.get("stages")
            if isinstance(stages, list):
                stages = [
                    {"mode": v1alpha1.StageMode.REALTIME.value, **s} if isinstance(s, dict) else s for s in stages
                ]
            raw = {**raw, "version": PLAN_VERSION, "stages": stages}
        return cls.model_validate(raw)

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls.loads(path.read_text(encoding="utf-8"))


def _from_version_1(raw: dict[str, Any]) -> dict[str, Any]:
    """A version-1 plan in version 2's names, so a new worker runs the plan an old operator published.

    Version 1 wrote every field it had (only Nones were left out), so the
    upgrade renames and regroups, and adds one value: version 1 left
    ``fanOut.order`` unset to mean Descending, which version 2 writes out.
    What version 1 meant is fixed, so that is Descending here, whatever the
    API's default becomes. Anything malformed is passed on for validation to refuse.
    """
    upgraded = {**raw, "version": 2}
    if isinstance(providers := raw.get("providers"), dict):
        upgraded["providers"] = {
            name: _renamed(provider, {"api_key_secret": "api_key_secret_ref"}) for name, provider in providers.items()
        }
    if isinstance(stages := raw.get("stages"), list):
        upgraded["stages"] = [_stage_from_version_1(stage) for stage in stages]
    return upgraded


def _stage_from_version_1(stage: Any) -> Any:
    stage = _renamed(stage, {"timeout_s": "timeout_seconds"})
    if not isinstance(stage, dict):
        return stage
    if isinstance(retry := stage.get("retry"), dict):
        backoff = {"initial_s": "initial_seconds", "factor": "factor", "max_s": "max_seconds", "jitter": "jitter"}
        stage["retry"] = {
            **_renamed({k: v for k, v in retry.items() if k not in backoff}, {"deadline_s": "deadline_seconds"}),
            "backoff": {new: retry[old] for old, new in backoff.items() if old in retry},
        }
    if "rate_limit" in stage:
        stage["rate_limit"] = _renamed(
            stage["rate_limit"], {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}
        )
    if isinstance(fan := stage.get("fan_out"), dict) and fan.get("sortBy") and fan.get("order") is None:
        stage["fan_out"] = {**fan, "order": v1alpha1.SortOrder.DESCENDING.value}
    return stage


def _renamed(fields: Any, names: Mapping[str, str]) -> Any:
    """``fields`` with its keys renamed by ``names``; anything but a dict as it is."""
    if not isinstance(fields, dict):
        return fields
    return {names.get(name, name): value for name, value in fields.items()}


@functools.cache
def _templates() -> Any:
    # Jinja is imported by what checks templates (the operator compiling a plan), not by every reader of a plan:
    # a worker renders its plain prompts without it (analysis_worker.templates).
    import jinja2.sandbox

    return jinja2.sandbox.ImmutableSandboxedEnvironment()


def _template_problems(field: str, source: str, vars_: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    import jinja2.meta
    import jinja2.nodes

    try:
        tree = _templates().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        yield field, f"template syntax error on line {exc.lineno}: {exc.message}"
        return
    for name in sorted(jinja2.meta.find_undeclared_variables(tree) - TEMPLATE_VARIABLES):
        yield field, f"unknown template variable {name!r} (known: {', '.join(sorted(TEMPLATE_VARIABLES))})"
    for node in tree.find_all((jinja2.nodes.Getattr, jinja2.nodes.Getitem)):
        target = getattr(node, "node", None)
        if not (isinstance(target, jinja2.nodes.Name) and target.name == "vars"):
            continue
        key = (
            node.attr if isinstance(node, jinja2.nodes.Getattr) else getattr(getattr(node, "arg", None), "value", None)
        )
        if isinstance(key, str) and key not in vars_:
            yield field, f"vars.{key} is not defined in spec.vars"


def _schema_at(schema: dict[str, Any], keys: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The sub-schema at ``keys``, or (None, why) when the schema rules the path out."""
    node = schema
    for depth, key in enumerate(keys):
        if node.get("type") not in (None, "object"):
            return None, f"{'.'.join(['$', *keys[:depth]])} is of type {node['type']}, not an object"
        properties = node.get("properties", {})
        if key in properties:
            node = properties[key]
        elif node.get("additionalProperties") is False:
            return None, f"jsonSchema allows no key {key!r} at {'.'.join(['$', *keys[:depth]])}"
        else:
            return {}, None  # not described: anything may be there
    return node, None


def _fan_out_problems(field: str, stage: v1alpha1.Stage) -> Iterator[tuple[str, str]]:
    if stage.fan_out is None or not stage.json_schema:
        return
    keys = [part for part in stage.fan_out.path.split(".")[1:]]
    target, why = _schema_at(stage.json_schema, keys)
    if target is None:
        yield f"{field}.fanOut.path", f"{stage.fan_out.path} cannot match: {why}"
        return
    if target.get("type") not in (None, "array"):
        yield f"{field}.fanOut.path", f"{stage.fan_out.path} is of type {target['type']} in jsonSchema, not a list"
        return
    element = target.get("items")
    items: dict[str, Any] = element if isinstance(element, dict) else {}
    for attr in ("key", "sort_by"):
        name = getattr(stage.fan_out, attr)
        if name and items.get("additionalProperties") is False and name not in items.get("properties", {}):
            wire = "sortBy" if attr == "sort_by" else attr
            yield f"{field}.fanOut.{wire}", f"{name!r} is not a property of the list's elements in jsonSchema"


def _provider_problems(
    spec: v1alpha1.AnalysisBatchSpec, accounts: Mapping[str, v1alpha1.AnalysisProviderSpec]
) -> Iterator[tuple[str, str]]:
    for name, provider in spec.providers.items():
        field = f"spec.providers.{name}"
        if provider.provider_ref is None:
            continue
        account = accounts.get(provider.provider_ref.name)
        if account is None:
            yield f"{field}.providerRef", f"AnalysisProvider {provider.provider_ref.name} was not found"
            continue
        if account.type is v1alpha1.ProviderType.ANTHROPIC and provider.temperature is not None:
            why = (
                f"AnalysisProvider {provider.provider_ref.name} is anthropic, whose Messages API (in the current "
                "SDK) accepts no temperature; remove it"
            )
            yield f"{field}.temperature", why
        # The schema cannot require these on an account (only the account knows its type), so they are checked here.
        if account.type is not v1alpha1.ProviderType.OFFLINE and provider.model is None:
            yield f"{field}.model", "model is required for anthropic and openai providers"
        if account.type is not v1alpha1.ProviderType.OFFLINE and provider.api_key_secret_ref is None:
            yield f"{field}.apiKeySecretRef", "apiKeySecretRef is required for anthropic and openai providers"
        if account.type is v1alpha1.ProviderType.OFFLINE and provider.api_key_secret_ref is not None:
            yield f"{field}.apiKeySecretRef", "apiKeySecretRef is not used by the offline provider"


def _problems(
    spec: v1alpha1.AnalysisBatchSpec, prompts: Mapping[str, str], accounts: Mapping[str, v1alpha1.AnalysisProviderSpec]
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = list(_provider_problems(spec, accounts))
    vars_ = spec.vars or {}
    for index, stage in enumerate(spec.stages):
        field = f"spec.stages[{index}]"
        if stage.type is not v1alpha1.StageType.APPROVAL:
            if stage.provider is None:
                problems.append((f"{field}.provider", f"a {stage.type} stage needs a provider"))
            elif stage.provider not in spec.providers:
                problems.append((f"{field}.provider", f"{stage.provider} is not defined in spec.providers"))
        if stage.prompt is not None:
            problems.extend(_template_problems(f"{field}.prompt", stage.prompt, vars_))
        elif stage.prompt_from is not None:
            ref = stage.prompt_from.config_map_key_ref
            if stage.name not in prompts:
                problems.append((f"{field}.promptFrom", f"no prompt was read from ConfigMap {ref.name} key {ref.key}"))
            else:
                problems.extend(_template_problems(f"{field}.promptFrom", prompts[stage.name], vars_))
        problems.extend(_fan_out_problems(field, stage))
        problems.extend(_batch_problems(field, stage, spec, accounts))
    return problems


def compile_plan(
    uid: str,
    spec: v1alpha1.AnalysisBatchSpec,
    *,
    generation: int = 1,
    prompts: Mapping[str, str] | None = None,
    accounts: Mapping[str, v1alpha1.AnalysisProviderSpec] | None = None,
) -> Plan:
    """The plan of ``spec``.

    Read by the caller: ``prompts``, the text of each stage's ``promptFrom``;
    ``accounts``, the spec of each AnalysisProvider a ``providerRef`` names.
    Raises ``PlanError`` listing every problem, each with its field.
    """
    prompts = prompts or {}
    accounts = accounts or {}
    problems = _problems(spec, prompts, accounts)
    if problems:
        raise PlanError(problems)
    providers = {name: _provider(p, accounts) for name, p in spec.providers.items()}
    stages = []
    for index, s in enumerate(spec.stages):
        backoff = s.retry.backoff
        stages.append(
            StagePlan(
                name=s.name,
                index=index,
                type=s.type,
                provider=s.provider,
                prompt=s.prompt
                if s.prompt is not None
                else prompts.get(s.name, DEFAULT_JUDGE_PROMPT if s.type is v1alpha1.StageType.JUDGE else None),
                output=s.output,
                json_schema=s.json_schema,
                fan_out=_fan_out(s.fan_out),
                collect=s.collect,
                reviews=s.reviews,
                max_rejections=v1alpha1.DEFAULT_MAX_REJECTIONS if s.max_rejections is None else s.max_rejections,
                on_exhausted=s.on_exhausted or v1alpha1.DEFAULT_ON_EXHAUSTED,
                concurrency=s.concurrency,
                calls_per_pod=s.calls_per_pod,
                rate_limit=None
                if s.rate_limit is None
                else RateLimitPlan(
                    requests_per_minute=s.rate_limit.requests_per_minute,
                    tokens_per_minute=s.rate_limit.tokens_per_minute,
                    window_s=RATE_LIMIT_WINDOW_S,
                ),
                timeout_seconds=float(s.timeout_seconds),
                retry=errors.RetryPolicy(
                    max_attempts=s.retry.max_attempts,
                    backoff=errors.Backoff(
                        initial_seconds=backoff.initial_seconds,
                        factor=backoff.factor,
                        max_seconds=backoff.max_seconds,
                        jitter=backoff.jitter,
                    ),
                    deadline_seconds=None if s.retry.deadline_seconds is None else float(s.retry.deadline_seconds),
                ),
                executor=s.executor,
                next=spec.stages[index + 1].name if index + 1 < len(spec.stages) else None,
                mode=s.mode,
                batch=_batch(s),
            )
        )
    approvals = {a.stage: (None if a.items is None else list(a.items)) for a in spec.approvals or []}
    budget = None
    if spec.budget is not None:
        cost = spec.budget.max_cost_usd
        budget = BudgetPlan(max_tokens=spec.budget.max_tokens, max_cost_nusd=None if cost is None else int(cost * 1e9))
    return Plan(
        version=PLAN_VERSION,
        uid=uid,
        generation=generation,
        providers=providers,
        stages=stages,
        vars=dict(spec.vars or {}),
        approvals=approvals,
        budget=budget,
        max_deliveries=MAX_DELIVERIES,
        lease_s=LEASE_S,
    )


def _provider(p: v1alpha1.Provider, accounts: Mapping[str, v1alpha1.AnalysisProviderSpec]) -> ProviderPlan:
    account = None
    type_, base_url = p.type, p.base_url
    if p.provider_ref is not None:
        spec = accounts[p.provider_ref.name]
        type_, base_url = spec.type, spec.base_url
        egress = spec.egress or v1alpha1.Egress()
        account = AccountPlan(
            name=p.provider_ref.name, proxy_url=egress.proxy_url, ca_bundle=egress.ca_bundle is not None
        )
    if type_ is None:  # the schema requires type or providerRef
        raise PlanError([("spec.providers", "a provider needs a type or a providerRef")])
    return ProviderPlan(
        type=type_,
        model=p.model or v1alpha1.OFFLINE_MODEL,
        base_url=base_url,
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        api_key_secret_ref=p.api_key_secret_ref,
        offline=p.offline or (v1alpha1.OfflineOptions() if type_ is v1alpha1.ProviderType.OFFLINE else None),
        account=account,
    )


def _batch(stage: v1alpha1.Stage) -> BatchPlan | None:
    if stage.mode is not v1alpha1.StageMode.BATCH:
        return None
    options = stage.batch or v1alpha1.BatchOptions()
    return BatchPlan(max_items=options.max_items, max_wait_s=float(options.max_wait_seconds))


def _batch_problems(
    field: str,
    stage: v1alpha1.Stage,
    spec: v1alpha1.AnalysisBatchSpec,
    accounts: Mapping[str, v1alpha1.AnalysisProviderSpec],
) -> list[tuple[str, str]]:
    """A Batch stage's limits against its provider's own (the schema checks an inline provider's type; this also
    sees the type of an account a providerRef names)."""
    if stage.mode is not v1alpha1.StageMode.BATCH or stage.provider not in spec.providers:
        return []
    provider = spec.providers[stage.provider]
    type_ = provider.type
    if provider.provider_ref is not None and provider.provider_ref.name in accounts:
        type_ = accounts[provider.provider_ref.name].type
    options = stage.batch or v1alpha1.BatchOptions()
    if type_ is v1alpha1.ProviderType.OPENAI and options.max_items > v1alpha1.OPENAI_BATCH_MAX_REQUESTS:
        return [
            (
                f"{field}.batch.maxItems",
                f"{options.max_items} is more than OpenAI takes in one batch ({v1alpha1.OPENAI_BATCH_MAX_REQUESTS})",
            )
        ]
    return []


def _fan_out(fan_out: v1alpha1.FanOut | None) -> v1alpha1.FanOut | None:
    """``fan_out`` with its sort order resolved when it sorts."""
    if fan_out is None or fan_out.sort_by is None or fan_out.order is not None:
        return fan_out
    return fan_out.model_copy(update={"order": v1alpha1.DEFAULT_SORT_ORDER})
