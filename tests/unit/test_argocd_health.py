"""The Argo CD health checks (``gitops/argocd/.../<Kind>/health.lua``), run by a real Lua interpreter on real statuses.

One check per kind, AnalysisBatch and AnalysisProvider. Each kind's
``health_test.yaml`` follows Argo CD's own layout: one case per fixture in
``testdata/``, with the health status and message expected. Each fixture
becomes a Lua table, ``health.lua`` runs under ``lua5.4`` and its answer is
compared. Argo CD itself runs gopher-lua (Lua 5.1), where every number is a
float: so every case also runs with the fixture's numbers as Lua floats, and the
script is checked for constructs that 5.1 or gopher-lua would not run.

The fixtures are what the operator really writes: most statuses are
``status.compute`` (a batch's) or ``accounts.provider_status`` (an account's)
of an observation built here (a test fails, printing the fresh YAML, when the
operator changes what it writes), and every fixture validates against its
CRD's schema and the API models. Every phase and every condition the API
defines must show up in some fixture.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pydantic
import pytest
import yaml

from analysis_core import plan, queue, wire
from analysis_core.api import v1alpha1
from analysis_operator import accounts, completion, producer, status

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ROOT / "gitops/argocd/resource_customizations/analysis.dev"
CHECK_DIR = CHECKS / "AnalysisBatch"
CRD = ROOT / "crds/analysisbatches.analysis.dev.yaml"
PROVIDER_DIR = CHECKS / "AnalysisProvider"
KINDS = ("AnalysisBatch", "AnalysisProvider")
LUA = "lua5.4"  # tools/system-packages.sh installs it; a missing interpreter fails these tests
ARGOCD_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


# ---------------------------------------------------------------- running health.lua


def lua_string(text: str) -> str:
    """A Lua string literal for ``text``: printable ASCII as is, every other byte as a 3-digit decimal escape."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\' or not (32 <= byte < 127):
            out.append(f"\\{byte:03d}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def lua_literal(value: Any, floats: bool) -> str:
    """``value`` (decoded JSON) as a Lua expression; ``floats`` writes integers as floats, as gopher-lua holds them."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}.0" if floats else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v, floats) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_string(k)}] = {lua_literal(v, floats)}" for k, v in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} is not JSON: {value!r}")


def assess(resource: dict[str, Any], floats: bool = False) -> tuple[str, str]:
    """(health status, message) that its kind's health.lua returns for ``resource``, with ``obj`` set as Argo CD
    sets it."""
    lua = shutil.which(LUA)
    assert lua is not None, f"{LUA} is not installed (tools/system-packages.sh installs it)"
    harness = "\n".join(
        [
            f"obj = {lua_literal(resource, floats)}",
            f"local hs = dofile({lua_string(str(CHECKS / resource['kind'] / 'health.lua'))})",
            "local keys = {}",
            "for k in pairs(hs) do keys[#keys + 1] = k end",
            "table.sort(keys)",
            'io.write(table.concat(keys, ","), "\\0", hs.status, "\\0", hs.message)',
        ]
    )
    result = subprocess.run([lua, "-"], input=harness, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    keys, health, message = result.stdout.split("\0")
    assert keys == "message,status", f"health.lua must return exactly status and message, returned {keys}"
    return health, message


# ---------------------------------------------------------------- the statuses, from status.compute

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
UID = "4f6b2a4e-7d1c-4a53-9a57-0c3f51d2e8a1"
ITEMS = ["NVDA", "AMD", "TSM"]
SPEC: dict[str, Any] = {
    "items": ITEMS,
    "providers": {"local": {"type": "offline"}},
    "budget": {"maxTokens": 50000},
    "stages": [
        {"name": "draft", "provider": "local", "prompt": "Deep analysis of {{ item }}. {{ feedback }}"},
        {"name": "gate", "type": "approval"},
        {"name": "review", "type": "judge", "provider": "local", "reviews": "draft"},
    ],
}
ITEMS_FROM_SPEC: dict[str, Any] = {
    **{k: v for k, v in SPEC.items() if k != "items"},
    "itemsFrom": {"configMapKeyRef": {"name": "tickers", "key": "list"}},
}


def compiled(spec: dict[str, Any]) -> plan.Plan:
    return plan.compile_plan(UID, v1alpha1.AnalysisBatchSpec.model_validate(spec))


PLAN = compiled(SPEC)


def counts(ready: int = 0, running: int = 0, retrying: int = 0, **counters: int) -> queue.StageCounts:
    return queue.StageCounts(ready, running, retrying, dict(counters))


def snapshot(
    sealed: tuple[str, ...] = (), tokens: int = 12_400, flags: dict[str, str] | None = None, **stages: queue.StageCounts
) -> producer.Snapshot:
    every = {s.name: stages.get(s.name, counts()) for s in PLAN.stages}
    usage = {"input_tokens": tokens * 4 // 5, "output_tokens": tokens // 5, "cost_nusd": tokens * 3_000}
    return producer.Snapshot(every, frozenset(sealed), True, usage, flags or {})


def observe(snap: producer.Snapshot | None, generation: int = 1, max_failed: int = 0, **kw: Any) -> status.Observation:
    state = completion.state(PLAN, snap, max_failed) if snap is not None else None
    return status.Observation(generation=generation, now=NOW, plan=PLAN, snapshot=snap, state=state, **kw)


RUNNING = snapshot(draft=counts(ready=1, running=2, succeeded=0))
HELD = snapshot(("draft",), draft=counts(succeeded=3), gate=counts(ready=3))
HELD_WHILE_RUNNING = snapshot(draft=counts(ready=1, running=1, succeeded=1), gate=counts(ready=1))
DONE = snapshot(
    ("draft", "gate", "review"),
    31_000,
    draft=counts(succeeded=4),
    gate=counts(succeeded=3),
    review=counts(succeeded=3, approved=3, rejected=1),
)
BROKE = snapshot(("draft",), draft=counts(succeeded=2, failed=1), gate=counts(ready=2))


def over_budget() -> producer.Snapshot:
    tokens = 52_000
    assert PLAN.budget is not None
    why = PLAN.budget.exceeded({"input_tokens": tokens * 4 // 5, "output_tokens": tokens // 5})
    assert why is not None
    return snapshot(tokens=tokens, flags={wire.FLAG_BUDGET_EXCEEDED: why}, draft=counts(ready=1, succeeded=2))


def redis_away() -> dict[str, Any]:
    """Redis stopped answering while the batch ran: the last counts stay, Reconciling says why."""
    away = status.Problem("RedisUnavailable", "Redis cannot be reached: Connection refused", stalled=False)
    return status.compute(observe(None, problems=[away]), status.compute(observe(RUNNING), None))


def suspended_redis_away() -> dict[str, Any]:
    """Redis stopped answering while the batch was suspended: the operator cannot tell what workers see, so it
    reports the wait for Redis rather than a settled batch."""
    away = status.Problem("RedisUnavailable", "Redis cannot be reached: Connection refused", stalled=False)
    suspended = status.compute(observe(RUNNING, generation=2, suspended=True), None)
    return status.compute(observe(None, generation=2, suspended=True, problems=[away]), suspended)


def missing_configmap() -> dict[str, Any]:
    """spec.itemsFrom names a ConfigMap that is not there: nothing compiles, someone has to act."""
    problem = status.Problem(
        "ConfigMapNotFound", "spec.itemsFrom.configMapKeyRef: ConfigMap research/tickers not found"
    )
    return status.compute(status.Observation(generation=1, now=NOW, problems=[problem]), None)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A batch as the operator leaves it: its spec, its metadata.generation and the status it computed."""

    spec: dict[str, Any]
    generation: int
    status: Callable[[], dict[str, Any]]


SCENARIOS: dict[str, Scenario] = {
    "progressing_pending.yaml": Scenario(SPEC, 1, lambda: status.compute(observe(None), None)),
    "progressing_running.yaml": Scenario(SPEC, 1, lambda: status.compute(observe(RUNNING, workers={"draft": 3}), None)),
    # Every draft is done and the items wait at the gate: a person's approval is all that moves it on.
    "suspended_waitingForApproval.yaml": Scenario(
        SPEC, 1, lambda: status.compute(observe(HELD, held={"gate": 3}), None)
    ),
    # One item waits at the gate while another is still being drafted: that is work in progress.
    "progressing_heldWhileRunning.yaml": Scenario(
        SPEC, 1, lambda: status.compute(observe(HELD_WHILE_RUNNING, held={"gate": 1}, workers={"draft": 1}), None)
    ),
    "progressing_redisUnavailable.yaml": Scenario(SPEC, 1, redis_away),
    # spec.failurePolicy was raised after the failure; the operator has not caught up with generation 2 yet.
    "progressing_olderGeneration.yaml": Scenario(
        {**SPEC, "failurePolicy": {"maxFailedItems": 1}}, 2, lambda: status.compute(observe(BROKE), None)
    ),
    "healthy_complete.yaml": Scenario(SPEC, 1, lambda: status.compute(observe(DONE), None)),
    "healthy_completeWhileSuspended.yaml": Scenario(
        {**SPEC, "suspend": True}, 2, lambda: status.compute(observe(DONE, generation=2, suspended=True), None)
    ),
    "degraded_failed.yaml": Scenario(SPEC, 1, lambda: status.compute(observe(BROKE), None)),
    "degraded_stalled.yaml": Scenario(ITEMS_FROM_SPEC, 1, missing_configmap),
    "degraded_budgetExceeded.yaml": Scenario(SPEC, 1, lambda: status.compute(observe(over_budget()), None)),
    "progressing_suspendedRedisUnavailable.yaml": Scenario({**SPEC, "suspend": True}, 2, suspended_redis_away),
    "suspended_bySpec.yaml": Scenario(
        {**SPEC, "suspend": True}, 2, lambda: status.compute(observe(RUNNING, generation=2, suspended=True), None)
    ),
}
# Written by hand: no status at all (the operator has not seen the batch yet).
BY_HAND = {"progressing_noStatus.yaml"}

# ---------------------------------------------------------------- an account's statuses, from accounts.provider_status

PROVIDER_SPEC: dict[str, Any] = {
    "type": "anthropic",
    "limits": {"requestsPerMinute": 400, "outputTokensPerMinute": 80000, "maxInFlight": 32},
    "namespaces": [{"name": "research", "weight": 2}, {"name": "support", "requestsPerMinute": 60}],
}
NOW_MS = int(NOW.timestamp() * 1000)


def account_view(paused_until_ms: int = 0, quota: dict[str, accounts.Quota] | None = None) -> accounts.AccountView:
    namespaces = [
        accounts.NamespaceUse("research", batches=2, waiting=1, granted=96, in_flight=9),
        accounts.NamespaceUse("support", batches=1, waiting=0, granted=24, in_flight=3),
    ]
    return accounts.AccountView(
        window_s=60,
        requests=120,
        input_tokens=98_000,
        output_tokens=21_000,
        in_flight=12,
        batches=3,
        waiting_batches=1,
        namespaces=namespaces,
        paused_until_ms=paused_until_ms,
        quota=quota or {},
        granted_total={"research": 960, "support": 240},
    )


def provider_status(view: accounts.AccountView, generation: int = 1) -> Callable[[], dict[str, Any]]:
    spec = v1alpha1.AnalysisProviderSpec.model_validate(PROVIDER_SPEC)
    return lambda: accounts.provider_status(view, spec, generation, {}, NOW_MS, served_by="analysis-system")


REFUSED = accounts.Quota(
    message="Your credit balance is too low to access the Anthropic API.",
    since_ms=NOW_MS - 90_000,
    backoff_s=20.0,
    next_probe_ms=NOW_MS + 5_000,
)
PROVIDER_SCENARIOS: dict[str, Scenario] = {
    "healthy_serving.yaml": Scenario(PROVIDER_SPEC, 1, provider_status(account_view())),
    "progressing_paused.yaml": Scenario(PROVIDER_SPEC, 1, provider_status(account_view(NOW_MS + 30_000))),
    "degraded_quotaExhausted.yaml": Scenario(
        PROVIDER_SPEC, 1, provider_status(account_view(quota={accounts.WHOLE_ACCOUNT: REFUSED}))
    ),
    "degraded_modelRefused.yaml": Scenario(
        PROVIDER_SPEC, 1, provider_status(account_view(quota={"claude-opus-4-1": REFUSED}))
    ),
    # maxInFlight was raised; the allocator has not picked up generation 2 yet.
    "progressing_olderGeneration.yaml": Scenario(
        {**PROVIDER_SPEC, "limits": {**PROVIDER_SPEC["limits"], "maxInFlight": 64}},
        2,
        provider_status(account_view()),
    ),
}


def stored(value: Any) -> Any:
    """``value`` as the API server keeps it: the operator merge-patches its status, and a null there removes the
    field (``currentStage`` of a finished batch)."""
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [stored(v) for v in value]
    return value


# Each kind's fixture object: a batch in a namespace, a cluster-scoped account.
METADATA: dict[str, dict[str, Any]] = {
    "AnalysisBatch": {
        "name": "semis-q3",
        "namespace": "research",
        "uid": UID,
        "creationTimestamp": "2026-11-22T11:58:00Z",
    },
    "AnalysisProvider": {
        "name": "shared-anthropic",
        "uid": "9d0c2f5e-1b7a-4c3e-8f61-2a4b6c8d0e13",
        "creationTimestamp": "2026-11-20T09:00:00Z",
    },
}


def manifest(scenario: Scenario, kind: str = "AnalysisBatch") -> dict[str, Any]:
    """The whole resource a fixture holds, as ``kubectl get -o yaml`` would show it."""
    fixed = METADATA[kind]
    return {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            **{k: fixed[k] for k in ("name", "namespace", "uid") if k in fixed},
            "generation": scenario.generation,
            "creationTimestamp": fixed["creationTimestamp"],
        },
        "spec": scenario.spec,
        "status": stored(scenario.status()),
    }


# ---------------------------------------------------------------- fixtures and cases


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def cases(kind: str = "AnalysisBatch") -> list[dict[str, Any]]:
    tests = load(CHECKS / kind / "health_test.yaml")["tests"]
    assert isinstance(tests, list)
    return tests


def fixtures(kind: str = "AnalysisBatch") -> Iterator[Path]:
    return iter(sorted((CHECKS / kind / "testdata").glob("*.yaml")))


def case_id(case: dict[str, Any]) -> str:
    return Path(case["inputPath"]).stem


KIND_CASES = [(kind, case) for kind in KINDS for case in cases(kind)]


@pytest.mark.parametrize(("kind", "case"), KIND_CASES, ids=[f"{k}-{case_id(c)}" for k, c in KIND_CASES])
def test_health_of_each_fixture(kind: str, case: dict[str, Any]) -> None:
    resource = load(CHECKS / kind / case["inputPath"])
    assert resource["kind"] == kind
    expected = (case["healthStatus"]["status"], case["healthStatus"]["message"])
    assert expected[0] in ARGOCD_HEALTH
    assert assess(resource) == expected
    # gopher-lua holds every number as a float: the answer must not change.
    assert assess(resource, floats=True) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_cases_and_fixtures_match_one_to_one(kind: str) -> None:
    named = [case["inputPath"] for case in cases(kind)]
    assert len(named) == len(set(named))
    assert sorted(named) == [f"testdata/{p.name}" for p in fixtures(kind)]
    # The file names say the health they expect, as Argo CD's own fixtures do.
    for case in cases(kind):
        assert Path(case["inputPath"]).name.startswith(case["healthStatus"]["status"].lower() + "_"), case


@pytest.mark.parametrize(
    ("kind", "scenarios"), [("AnalysisBatch", SCENARIOS), ("AnalysisProvider", PROVIDER_SCENARIOS)]
)
def test_every_fixture_is_a_status_the_operator_writes(kind: str, scenarios: dict[str, Scenario]) -> None:
    for path in fixtures(kind):
        assert path.name in scenarios or path.name in BY_HAND, f"{path.name}: no scenario computes it"
    for name, scenario in scenarios.items():
        expected = manifest(scenario, kind)
        actual = load(CHECKS / kind / "testdata" / name)
        assert actual == expected, (
            f"{kind}/testdata/{name} is not what the operator writes now; if it changed on purpose, "
            f"replace it with:\n{yaml.safe_dump(expected, sort_keys=False, allow_unicode=True)}"
        )


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields rejected: the API server would prune them, so a fixture must not have any."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


FIXTURES = [(kind, path) for kind in KINDS for path in fixtures(kind)]
CRDS = {"AnalysisBatch": CRD, "AnalysisProvider": ROOT / "crds/analysisproviders.analysis.dev.yaml"}
MODELS: dict[str, tuple[type[pydantic.BaseModel], type[pydantic.BaseModel]]] = {
    "AnalysisBatch": (v1alpha1.AnalysisBatchSpec, v1alpha1.AnalysisBatchStatus),
    "AnalysisProvider": (v1alpha1.AnalysisProviderSpec, v1alpha1.AnalysisProviderStatus),
}


@pytest.mark.parametrize(("kind", "path"), FIXTURES, ids=[f"{k}-{p.stem}" for k, p in FIXTURES])
def test_fixture_validates_against_the_crd_and_the_api_models(kind: str, path: Path) -> None:
    crd = load(CRDS[kind])
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    resource = load(path)
    assert (resource["apiVersion"], resource["kind"]) == ("analysis.dev/v1alpha1", kind)
    # OpenAPI v3.0 schemas keep draft 4's boolean exclusiveMinimum. This also catches an unquoted timestamp,
    # which YAML would load as a datetime instead of the string the API server returns.
    jsonschema.Draft4Validator(schema).validate(resource)
    spec_model, status_model = MODELS[kind]
    spec_model.model_validate(resource["spec"])
    if "status" in resource:
        status_model.model_validate(resource["status"])


def test_every_phase_and_condition_has_a_fixture() -> None:
    """Derived from the API's enums, so a new phase or condition needs a fixture (and a decision in health.lua)."""
    phases, true_conditions = set(), set()
    for path in fixtures():
        resource = load(path)
        st = resource.get("status") or {}
        if st.get("observedGeneration") != resource["metadata"]["generation"]:
            continue  # a stale status says nothing about how its phase is assessed
        phases.add(st["phase"])
        true_conditions |= {c["type"] for c in st["conditions"] if c["status"] == "True"}
    assert phases == {str(p) for p in v1alpha1.Phase}
    assert true_conditions == {str(c) for c in v1alpha1.ConditionType}
    assert {case["healthStatus"]["status"] for case in cases()} == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_every_account_condition_has_a_fixture_where_it_holds() -> None:
    """Derived from the API's enum, so a new account condition needs a fixture (and a decision in health.lua)."""
    true_conditions = set()
    for path in fixtures("AnalysisProvider"):
        resource = load(path)
        st = resource.get("status") or {}
        if st.get("observedGeneration") == resource["metadata"]["generation"]:
            true_conditions |= {c["type"] for c in st["conditions"] if c["status"] == "True"}
    assert true_conditions == {str(c) for c in v1alpha1.AccountConditionType}
    assert {case["healthStatus"]["status"] for case in cases("AnalysisProvider")} == {
        "Healthy",
        "Progressing",
        "Degraded",
    }


# ---------------------------------------------------------------- what gopher-lua would not run

# Lua 5.2+ syntax and library, and string.format (gopher-lua hands its arguments to Go's fmt, so "%d" of a
# number prints "%!d(lua.LNumber=3)").
NOT_IN_GOPHER_LUA = {
    "floor division //": r"//",
    "bitwise operators": r"[&|]|<<|>>|~(?!=)",
    "goto and labels": r"\bgoto\b|::",
    "attributes <const>/<close>": r"<\s*(const|close)\s*>",
    "5.3+ library": r"\b(utf8|math\.type|math\.tointeger|table\.move|table\.unpack|string\.pack)\b",
    "string.format": r"\bstring\.format\b|:format\s*\(",
}


def code_only(source: str) -> str:
    """The script without its comments and string literals (all of them short strings here)."""
    source = re.sub(r"--\[(=*)\[.*?\]\1\]", " ", source, flags=re.DOTALL)
    assert "[[" not in source, "long strings are not handled by this check"
    source = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', source)
    return re.sub(r"--[^\n]*", " ", source)


@pytest.mark.parametrize("kind", KINDS)
def test_health_lua_sticks_to_what_gopher_lua_runs(kind: str) -> None:
    code = code_only((CHECKS / kind / "health.lua").read_text(encoding="utf-8"))
    found = {what: re.findall(pattern, code) for what, pattern in NOT_IN_GOPHER_LUA.items()}
    assert {what: hits for what, hits in found.items() if hits} == {}


def test_the_gopher_lua_guard_sees_what_it_looks_for() -> None:
    snippet = 'local a = 7 // 2 -- fine here\nlocal s = string.format("%d", a) .. "//"\ngoto done'
    code = code_only(snippet)
    assert re.findall(NOT_IN_GOPHER_LUA["floor division //"], code) == ["//"]
    assert re.findall(NOT_IN_GOPHER_LUA["string.format"], code)
    assert re.findall(NOT_IN_GOPHER_LUA["goto and labels"], code)


def test_a_float_generation_prints_as_a_whole_number() -> None:
    """Under gopher-lua 2 is 2.0; Lua 5.4 would print "2.0" unless health.lua takes care."""
    resource = load(CHECK_DIR / "testdata/progressing_olderGeneration.yaml")
    health, message = assess(resource, floats=True)
    assert health == "Progressing"
    assert "generation 2 " in message
    assert ".0" not in message
