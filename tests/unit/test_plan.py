"""The plan compiler: specs the schema admits but no worker could run are rejected, naming the field.

Also the plan's rules: a knob keeps its spec name and its API default (the plan
states none of its own), and a worker reads older plans and refuses newer ones.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from analysis_core import api, errors, plan
from analysis_core.api import v1alpha1

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def spec(*stages: dict[str, Any], **extra: Any) -> v1alpha1.AnalysisBatchSpec:
    return v1alpha1.AnalysisBatchSpec.model_validate(
        {"items": ["NVDA"], "providers": {"main": {"type": "offline"}}, "stages": list(stages), **extra}
    )


def problems(the_spec: v1alpha1.AnalysisBatchSpec, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(plan.PlanError) as caught:
        plan.compile_plan("uid", the_spec, **kwargs)
    return caught.value.problems


EXAMPLES = {
    path: yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted((ROOT / "examples").glob("*.yaml"))
}
# The example accounts, by name, as the operator reads them for a batch's providerRef.
EXAMPLE_ACCOUNTS = {
    doc["metadata"]["name"]: v1alpha1.AnalysisProviderSpec.model_validate(doc["spec"])
    for doc in EXAMPLES.values()
    if doc["kind"] == api.PROVIDER_KIND
}


@pytest.mark.parametrize(
    "path", [path for path, doc in EXAMPLES.items() if doc["kind"] == api.KIND], ids=lambda p: p.stem
)
def test_every_example_compiles(path: Path) -> None:
    the_spec = v1alpha1.AnalysisBatchSpec.model_validate(EXAMPLES[path]["spec"])
    compiled = plan.compile_plan("uid", the_spec, accounts=EXAMPLE_ACCOUNTS)
    assert compiled.stages
    assert all(s.prompt for s in compiled.stages if s.type is not v1alpha1.StageType.APPROVAL)


def test_the_team_example_runs_on_the_example_account() -> None:
    doc = EXAMPLES[ROOT / "examples" / "team-batch-on-account.yaml"]
    the_spec = v1alpha1.AnalysisBatchSpec.model_validate(doc["spec"])
    claude = plan.compile_plan("uid", the_spec, accounts=EXAMPLE_ACCOUNTS).providers["claude"]
    (name,) = EXAMPLE_ACCOUNTS
    assert claude.account == plan.AccountPlan(name=name)
    assert (claude.type, claude.base_url) == (v1alpha1.ProviderType.ANTHROPIC, None)
    assert claude.api_key_secret_ref == v1alpha1.SecretKeyRef(name="llm-keys", key="anthropic")
    # Where the account is missing, the batch cannot compile (the operator reports InvalidPlan, and waits).
    assert problems(the_spec) == [("spec.providers.claude.providerRef", f"AnalysisProvider {name} was not found")]


def on_account(account_type: str, **provider: Any) -> tuple[v1alpha1.AnalysisBatchSpec, dict[str, Any]]:
    """A one-stage spec whose provider uses account "acct" of ``account_type``; and the accounts to compile it with."""
    the_spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["NVDA"],
            "providers": {"main": {"providerRef": {"name": "acct"}, **provider}},
            "stages": [{"name": "a", "provider": "main", "prompt": "{{ item }}"}],
        }
    )
    account = v1alpha1.AnalysisProviderSpec.model_validate(
        {"type": account_type, "limits": {"maxInFlight": 4}, "namespaces": [{"name": "*"}]}
    )
    return the_spec, {"accounts": {"acct": account}}


def test_a_real_account_needs_the_model_and_key_the_schema_could_not_require() -> None:
    the_spec, kwargs = on_account("openai")
    assert problems(the_spec, **kwargs) == [
        ("spec.providers.main.model", "model is required for anthropic and openai providers"),
        ("spec.providers.main.apiKeySecretRef", "apiKeySecretRef is required for anthropic and openai providers"),
    ]
    key = {"name": "llm-keys", "key": "openai"}
    the_spec, kwargs = on_account("openai", model="gpt-4.1", apiKeySecretRef=key)
    assert plan.compile_plan("uid", the_spec, **kwargs).providers["main"].type is v1alpha1.ProviderType.OPENAI


def test_an_offline_account_needs_no_model_and_takes_no_key() -> None:
    the_spec, kwargs = on_account("offline")
    main = plan.compile_plan("uid", the_spec, **kwargs).providers["main"]
    assert (main.type, main.model, main.offline) == (
        v1alpha1.ProviderType.OFFLINE,
        v1alpha1.OFFLINE_MODEL,
        v1alpha1.OfflineOptions(),
    )
    the_spec, kwargs = on_account("offline", apiKeySecretRef={"name": "llm-keys", "key": "x"})
    assert problems(the_spec, **kwargs) == [
        ("spec.providers.main.apiKeySecretRef", "apiKeySecretRef is not used by the offline provider")
    ]


def test_unknown_template_variables_are_named_with_their_field() -> None:
    found = problems(
        spec(
            {"name": "a", "provider": "main", "prompt": "{{ item }} {{ itme }}"},
            {"name": "b", "provider": "main", "prompt": "{{ vars.language }} {{ vars['tone'] }} {{ input }}"},
            vars={"language": "en"},
        )
    )
    assert found[0][0] == "spec.stages[0].prompt"
    assert "unknown template variable 'itme'" in found[0][1]
    assert found[1:] == [("spec.stages[1].prompt", "vars.tone is not defined in spec.vars")]


def test_a_template_that_does_not_parse_is_named() -> None:
    (found,) = problems(spec({"name": "a", "provider": "main", "prompt": "{% if item %}unclosed"}))
    assert found[0] == "spec.stages[0].prompt"
    assert "syntax error" in found[1]


def test_locals_and_loops_in_templates_are_fine() -> None:
    prompt = "{% set x = item %}{% for w in input.split() %}{{ w }}{{ loop.index }}{% endfor %}{{ x }}"
    plan.compile_plan("uid", spec({"name": "a", "provider": "main", "prompt": prompt}))


def test_prompts_from_configmaps_are_checked_too() -> None:
    the_spec = spec({"name": "a", "provider": "main", "promptFrom": {"configMapKeyRef": {"name": "p", "key": "a"}}})
    assert problems(the_spec) == [("spec.stages[0].promptFrom", "no prompt was read from ConfigMap p key a")]
    ((field, message),) = problems(the_spec, prompts={"a": "{{ nope }}"})
    assert field == "spec.stages[0].promptFrom"
    assert "'nope'" in message
    assert plan.compile_plan("uid", the_spec, prompts={"a": "Hi {{ item }}"}).stage("a").prompt == "Hi {{ item }}"


def test_a_fan_out_path_the_schema_rules_out() -> None:
    schema = {"type": "object", "properties": {"stocks": {"type": "array"}}, "additionalProperties": False}
    fan = {"name": "rank", "provider": "main", "prompt": "x", "output": "json", "jsonSchema": schema}
    nxt = {"name": "next", "provider": "main", "prompt": "y"}
    assert problems(spec({**fan, "fanOut": {"path": "$.tickers"}}, nxt)) == [
        ("spec.stages[0].fanOut.path", "$.tickers cannot match: jsonSchema allows no key 'tickers' at $")
    ]
    schema["properties"]["stocks"] = {"type": "string"}
    ((field, message),) = problems(spec({**fan, "fanOut": {"path": "$.stocks"}}, nxt))
    assert (field, message) == ("spec.stages[0].fanOut.path", "$.stocks is of type string in jsonSchema, not a list")


def test_fan_out_fields_the_element_schema_rules_out() -> None:
    element = {"type": "object", "properties": {"ticker": {"type": "string"}}, "additionalProperties": False}
    schema = {"type": "object", "properties": {"stocks": {"type": "array", "items": element}}}
    fan = {
        "name": "rank",
        "provider": "main",
        "prompt": "x",
        "output": "json",
        "jsonSchema": schema,
        "fanOut": {"path": "$.stocks", "key": "ticker", "sortBy": "score"},
    }
    found = problems(spec(fan, {"name": "next", "provider": "main", "prompt": "y"}))
    assert found == [("spec.stages[0].fanOut.sortBy", "'score' is not a property of the list's elements in jsonSchema")]


def test_a_schema_that_does_not_describe_the_path_lets_it_through() -> None:
    fan = {
        "name": "rank",
        "provider": "main",
        "prompt": "x",
        "output": "json",
        "jsonSchema": {"type": "object"},
        "fanOut": {"path": "$.a.b"},
    }
    plan.compile_plan("uid", spec(fan, {"name": "next", "provider": "main", "prompt": "y"}))


def test_a_judge_without_a_provider_is_rejected_even_if_the_schema_was_bypassed() -> None:
    judge = v1alpha1.Stage.model_construct(
        name="review",
        type=v1alpha1.StageType.JUDGE,
        reviews="a",
        provider=None,
        prompt=None,
        prompt_from=None,
        fan_out=None,
        json_schema=None,
    )
    base = spec({"name": "a", "provider": "main", "prompt": "x"})
    bypassed = base.model_copy(update={"stages": [*base.stages, judge]})
    assert problems(bypassed) == [("spec.stages[1].provider", "a judge stage needs a provider")]


def test_a_judge_without_a_prompt_gets_the_default_review_prompt() -> None:
    compiled = plan.compile_plan(
        "uid",
        spec(
            {"name": "a", "provider": "main", "prompt": "x"},
            {"name": "review", "type": "judge", "provider": "main", "reviews": "a"},
        ),
    )
    assert compiled.stage("review").prompt == plan.DEFAULT_JUDGE_PROMPT


def test_the_error_lists_every_problem_in_one_message() -> None:
    the_spec = spec(
        {"name": "a", "provider": "main", "prompt": "{{ x }}"}, {"name": "b", "provider": "main", "prompt": "{{ y }}"}
    )
    with pytest.raises(plan.PlanError, match=r"spec.stages\[0\].prompt: .*'x'.*; spec.stages\[1\].prompt: .*'y'"):
        plan.compile_plan("uid", the_spec)


def test_a_worker_reads_its_own_plan_and_refuses_a_newer_one_by_its_version() -> None:
    compiled = plan.compile_plan("uid", spec({"name": "a", "provider": "main", "prompt": "{{ item }}"}))
    assert plan.Plan.loads(compiled.dumps()) == compiled
    newer = {**json.loads(compiled.dumps()), "version": plan.PLAN_VERSION + 1, "fieldOfTheFuture": True}
    with pytest.raises(plan.PlanVersionError, match=f"plan version {plan.PLAN_VERSION + 1} is newer than this worker"):
        plan.Plan.loads(json.dumps(newer))


def test_a_version_2_plan_reads_as_the_current_version() -> None:
    # Version 3 made concurrency the cap of the whole stage; version-2 workers ran one call per pod, so it was then.
    compiled = plan.compile_plan(
        "uid", spec({"name": "a", "provider": "main", "prompt": "{{ item }}", "callsPerPod": 3})
    )
    assert compiled.version == plan.PLAN_VERSION == 4
    assert compiled.stage("a").calls_per_pod == 3
    v2 = json.loads(compiled.dumps())
    v2["version"] = 2
    del v2["stages"][0]["calls_per_pod"]
    assert plan.Plan.loads(json.dumps(v2)) == compiled.model_copy(
        update={"stages": [compiled.stage("a").model_copy(update={"calls_per_pod": None})]}
    )


def test_a_version_1_plan_reads_as_the_plan_this_compiler_makes_of_the_same_spec() -> None:
    # What an operator of the previous release published: a new worker may start before the new operator rewrites it.
    v1 = json.loads((Path(__file__).parent / "plan-v1.json").read_text(encoding="utf-8"))
    the_spec = v1alpha1.AnalysisBatchSpec.model_validate(v1["spec"])
    compiled = plan.compile_plan(v1["uid"], the_spec, generation=v1["generation"])
    assert v1["plan"]["version"] == 1
    assert plan.Plan.loads(json.dumps(v1["plan"])) == compiled
    unversioned = {name: value for name, value in v1["plan"].items() if name != "version"}  # from before the field
    assert plan.Plan.loads(json.dumps(unversioned)) == compiled
    # Nothing of version 1 is left over for a version-2 plan to carry.
    with pytest.raises(pydantic.ValidationError, match="timeout_s"):
        plan.Plan.loads(json.dumps({**v1["plan"], "version": 2}))


# ---------------------------------------------------------------- one name, one default


def omitted_knobs() -> v1alpha1.AnalysisBatchSpec:
    """A spec that leaves every knob it can unset."""
    return spec(
        {
            "name": "rank",
            "provider": "main",
            "prompt": "x",
            "output": "json",
            "fanOut": {"path": "$.stocks", "sortBy": "score"},
            "rateLimit": {"requestsPerMinute": 10},
        },
        {"name": "draft", "provider": "main", "prompt": "y"},
        {"name": "review", "type": "judge", "provider": "main", "reviews": "draft"},
    )


def check_defaults(api: type[pydantic.BaseModel], resolved: Any, where: str) -> None:
    """Each field of ``api`` with a default (other than None) has that value in ``resolved``, under the same name."""
    for name, field in api.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if field.is_required() or default is None:
            continue
        value = getattr(resolved, name)  # an AttributeError is a knob renamed on its way into the plan
        if isinstance(default, pydantic.BaseModel):
            check_defaults(type(default), value, f"{where}.{name}")
        else:
            assert value == default, f"{where}.{name}: {value!r} in the plan, {default!r} in the API"


def test_an_omitted_knob_compiles_to_the_api_models_default() -> None:
    compiled = plan.compile_plan("uid", omitted_knobs())
    check_defaults(v1alpha1.Stage, compiled.stage("draft"), "stages[draft]")
    check_defaults(v1alpha1.Provider, compiled.providers["main"], "providers[main]")
    # Defaults the schema cannot state (the field is forbidden elsewhere), quoted by their descriptions.
    review = compiled.stage("review")
    assert (review.max_rejections, review.on_exhausted) == (
        v1alpha1.DEFAULT_MAX_REJECTIONS,
        v1alpha1.DEFAULT_ON_EXHAUSTED,
    )
    rank = compiled.stage("rank")
    assert rank.fan_out is not None
    assert rank.fan_out.order is v1alpha1.DEFAULT_SORT_ORDER
    main = compiled.providers["main"]
    assert (main.model, main.offline) == (v1alpha1.OFFLINE_MODEL, v1alpha1.OfflineOptions())
    # What the spec has no field for: one constant each.
    assert rank.rate_limit == plan.RateLimitPlan(requests_per_minute=10, window_s=plan.RATE_LIMIT_WINDOW_S)
    assert (compiled.lease_s, compiled.max_deliveries) == (plan.LEASE_S, plan.MAX_DELIVERIES)


def test_the_plan_states_no_default_but_none() -> None:
    for model in (plan.Plan, plan.StagePlan, plan.ProviderPlan, plan.RateLimitPlan, plan.BudgetPlan):
        for name, field in model.model_fields.items():
            assert field.is_required() or field.default is None, (
                f"{model.__name__}.{name} defaults to {field.default!r}"
            )
    for policy in (errors.RetryPolicy, errors.Backoff):
        for f in dataclasses.fields(policy):
            assert f.default in (dataclasses.MISSING, None), f"{policy.__name__}.{f.name} defaults to {f.default!r}"
            assert f.default_factory is dataclasses.MISSING, f"{policy.__name__}.{f.name} has a default factory"


def field_names(model: Any) -> set[str]:
    """The field names of a pydantic model or a dataclass."""
    if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
        return set(model.model_fields)
    return {f.name for f in dataclasses.fields(model)}


def test_a_knob_keeps_its_spec_name_in_the_plan() -> None:
    resolved_into_prompt = {"prompt_from"}
    assert field_names(v1alpha1.Stage) - field_names(plan.StagePlan) == resolved_into_prompt
    resolved_into_account = {"provider_ref"}  # the AnalysisProvider it names, as the plan's account
    assert field_names(v1alpha1.Provider) - field_names(plan.ProviderPlan) == resolved_into_account
    assert field_names(v1alpha1.RateLimit) <= field_names(plan.RateLimitPlan)
    assert field_names(v1alpha1.Retry) <= field_names(errors.RetryPolicy)
    assert field_names(v1alpha1.Backoff) <= field_names(errors.Backoff)
    assert field_names(v1alpha1.Budget) - field_names(plan.BudgetPlan) == {"max_cost_usd"}  # as max_cost_nusd


def test_a_version_3_plan_is_every_stage_in_realtime_mode() -> None:
    compiled = plan.compile_plan("uid", spec({"name": "a", "provider": "main", "prompt": "{{ item }}"}))
    v3 = {**json.loads(compiled.dumps()), "version": 3}
    for stage in v3["stages"]:
        stage.pop("mode", None)
    assert plan.Plan.loads(json.dumps(v3)) == compiled
    assert compiled.stage("a").mode is v1alpha1.StageMode.REALTIME
    assert compiled.stage("a").batch is None


def test_a_batch_stage_gets_the_default_thresholds_unless_it_sets_its_own() -> None:
    compiled = plan.compile_plan(
        "uid",
        spec(
            {"name": "a", "provider": "main", "prompt": "{{ item }}", "mode": "Batch"},
            {"name": "b", "provider": "main", "prompt": "{{ input }}", "mode": "Batch", "batch": {"maxItems": 50}},
        ),
    )
    assert compiled.stage("a").batch == plan.BatchPlan(
        max_items=v1alpha1.DEFAULT_BATCH_MAX_ITEMS, max_wait_s=v1alpha1.DEFAULT_BATCH_MAX_WAIT_SECONDS
    )
    assert compiled.stage("b").batch == plan.BatchPlan(max_items=50, max_wait_s=v1alpha1.DEFAULT_BATCH_MAX_WAIT_SECONDS)


def test_a_batch_larger_than_an_openai_account_takes_names_the_field() -> None:
    the_spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["X"],
            "providers": {"shared": {"providerRef": {"name": "team-openai"}, "model": "gpt-4.1"}},
            "stages": [
                {
                    "name": "a",
                    "provider": "shared",
                    "prompt": "{{ item }}",
                    "mode": "Batch",
                    "batch": {"maxItems": 60000},
                }
            ],
        }
    )
    account = v1alpha1.AnalysisProviderSpec.model_validate(
        {"type": "openai", "limits": {"requestsPerMinute": 100}, "namespaces": [{"name": "*"}]}
    )
    with pytest.raises(plan.PlanError, match=r"spec.stages\[0\].batch.maxItems: 60000 is more than OpenAI takes"):
        plan.compile_plan("uid", the_spec, accounts={"team-openai": account})
