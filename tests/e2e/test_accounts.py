"""Provider accounts end to end: an AnalysisProvider shared by batches of two namespaces, worker pods on the node.

The platform admin's account object and the teams' batches as a user applies
them: a batch whose namespace the account does not admit waits, naming the
field, and starts once the admin admits it; a missing account is named the
same way; batches of two namespaces run to completion on one account, whose
status shows its use; a refusal for quota holds both namespaces' batches with
a condition naming the account until the provider accepts calls again; and
the account cannot be deleted while a batch uses it.
"""

import json
import math
import uuid
from typing import Any

import pytest
import yaml

from analysis_core.api import v1alpha1
from analysis_devcluster import standin

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_KEY = "sk-test-e2e-accounts"
PROBE_S = 1.0  # the operator's first wait before probing a refused account (tests/e2e/conftest.py sets it)


def account(name: str, server: standin.StandIn, namespaces: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisProvider",
        "metadata": {"name": name},
        "spec": {
            "type": "openai",
            "baseURL": server.openai_base_url,
            "limits": {"requestsPerMinute": 600, "maxInFlight": 4, "windowSeconds": 10},
            "namespaces": [{"name": ns} for ns in namespaces],
        },
    }


def team_batch(name: str, account_name: str, items: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": name},
        "spec": {
            "items": [f"{name}-{i}" for i in range(items)],
            "providers": {
                "llm": {
                    "providerRef": {"name": account_name},
                    "model": "gpt-4.1",
                    "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
                }
            },
            "stages": [{"name": "analyze", "provider": "llm", "prompt": "Analyze {{ item }}", "concurrency": 2}],
        },
    }


class Team:
    """A second namespace beside the fixture's, with the same helpers."""

    def __init__(self, batches: Any, namespace: str) -> None:
        self.batches = batches
        self.namespace = namespace

    def kubectl(self, *args: str, check: bool = True) -> Any:
        return self.batches.dev.kubectl("-n", self.namespace, *args, check=check)


@pytest.fixture
def shared(batches: Any) -> Any:
    """The fixture's namespace, a second team namespace and an account name; the account is deleted after."""
    other = f"{batches.namespace}-b"
    dev = batches.dev
    dev.kubectl("create", "namespace", other)
    name = f"acct-{uuid.uuid4().hex[:6]}"
    try:
        yield batches, other, name
    finally:
        dev.kubectl("delete", "analysisbatches", "--all", "-n", other, "--wait=false", check=False)
        dev.kubectl("delete", "namespace", other, "--wait=false", "--ignore-not-found", check=False)
        dev.kubectl("delete", "analysisprovider", name, "--wait=false", "--ignore-not-found", check=False)


def apply(dev: Any, namespace: str | None, manifest: dict[str, Any]) -> None:
    scope = ["-n", namespace] if namespace else []
    dev.kubectl(*scope, "apply", "-f", "-", input=yaml.safe_dump(manifest))


def condition(dev: Any, namespace: str, name: str, kind: str) -> dict[str, Any]:
    body = json.loads(dev.kubectl("-n", namespace, "get", "analysisbatch", name, "-o", "json").stdout)
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}.get(kind, {})


@pytest.mark.timeout(300)
def test_an_account_admits_namespaces_serves_two_teams_and_is_held_while_in_use(shared: Any) -> None:
    batches, other, name = shared
    dev = batches.dev
    with standin.StandIn(api_key=API_KEY, host=dev.host) as server:
        for ns in (batches.namespace, other):
            dev.kubectl("-n", ns, "create", "secret", "generic", "llm-keys", f"--from-literal=openai={API_KEY}")
        # A batch naming an account that does not exist yet waits, naming the field and the account.
        apply(dev, batches.namespace, team_batch("early", name))
        batches.wait("early", "Stalled", timeout_s=60)
        stalled = batches.conditions("early")["Stalled"]
        assert stalled["reason"] == v1alpha1.Reason.PROVIDER_NOT_FOUND
        assert stalled["message"] == f"spec.providers.llm.providerRef: AnalysisProvider {name} not found"
        # The admin creates the account for the first namespace only.
        apply(dev, None, account(name, server, [batches.namespace]))
        apply(dev, other, team_batch("late", name))
        batches.wait("early", "Complete", timeout_s=120)
        batches.eventually(
            lambda: condition(dev, other, "late", "Stalled").get("reason") == v1alpha1.Reason.PROVIDER_NOT_ALLOWED,
            60,
            "the other namespace's batch refused",
        )
        message = condition(dev, other, "late", "Stalled")["message"]
        assert message.startswith(f"spec.providers.llm.providerRef: AnalysisProvider {name} does not admit")
        # Admitted: it starts at once.
        apply(dev, None, account(name, server, [batches.namespace, other]))
        batches.eventually(lambda: condition(dev, other, "late", "Complete").get("status") == "True", 120, "late done")
        calls = server.requests()
        assert len(calls) == 8
        assert all(call["key_matched"] for call in calls)
        # The account's status shows its use; kubectl prints it.
        status = json.loads(dev.kubectl("get", "analysisprovider", name, "-o", "json").stdout).get("status") or {}
        assert status["requests"] >= 1
        assert status["requestsSummary"].endswith("/100")
        ready = {c["type"]: c for c in status["conditions"]}["Ready"]
        assert ready["status"] == "True"
        # This install holds the account, and renews its claim.
        assert status["servedBy"]
        assert status["renewTime"]
        printed = dev.kubectl("get", "analysisproviders", name).stdout
        assert "REQUESTS" in printed
        assert "openai" in printed

        # While a batch uses it, deleting the account waits, and says which batch holds it.
        held = team_batch("holder", name)
        held["spec"]["suspend"] = True
        apply(dev, other, held)
        batches.eventually(
            lambda: condition(dev, other, "holder", "Suspended").get("status") == "True", 60, "holder suspended"
        )
        dev.kubectl("delete", "analysisprovider", name, "--wait=false")

        def held_event() -> bool:
            events = dev.kubectl("get", "events", "-A", "-o", "json").stdout
            return "AccountInUse" in events and f"{other}/holder" in events

        batches.eventually(held_event, 60, "an AccountInUse event naming the batch")
        assert json.loads(dev.kubectl("get", "analysisprovider", name, "-o", "json").stdout)["metadata"].get(
            "deletionTimestamp"
        )
        dev.kubectl("-n", other, "delete", "analysisbatch", "holder")
        batches.eventually(
            lambda: dev.kubectl("get", "analysisprovider", name, "--ignore-not-found").stdout.strip() == "",
            60,
            "the account gone once no batch uses it",
        )


@pytest.mark.timeout(300)
def test_a_refusal_for_quota_holds_both_teams_with_a_condition_naming_the_account(shared: Any) -> None:
    batches, other, name = shared
    dev = batches.dev
    with standin.StandIn(api_key=API_KEY, host=dev.host) as server:
        server.set_plan([{"kind": "insufficient_quota", "times": 10_000}])
        for ns in (batches.namespace, other):
            dev.kubectl("-n", ns, "create", "secret", "generic", "llm-keys", f"--from-literal=openai={API_KEY}")
        apply(dev, None, account(name, server, [batches.namespace, other]))
        apply(dev, batches.namespace, team_batch("team-a", name))
        apply(dev, other, team_batch("team-b", name))
        for ns, batch in ((batches.namespace, "team-a"), (other, "team-b")):
            batches.eventually(
                lambda ns=ns, batch=batch: (
                    condition(dev, ns, batch, "Stalled").get("reason") == v1alpha1.Reason.PROVIDER_QUOTA_EXHAUSTED
                ),
                120,
                f"{batch} held for quota",
            )
            message = condition(dev, ns, batch, "Stalled")["message"]
            assert f"AnalysisProvider {name}" in message
            assert standin.OPENAI_INSUFFICIENT_QUOTA in message
        refused = server.requests()

        def account_says_refused() -> bool:
            # The account's status is written every couple of seconds, the batches' conditions on their own steps.
            got = json.loads(dev.kubectl("get", "analysisprovider", name, "-o", "json").stdout).get("status") or {}
            return standin.OPENAI_INSUFFICIENT_QUOTA in (got.get("quotaExhausted") or "")

        batches.eventually(account_says_refused, 30, "the account's status shows the refusal")
        # The provider accepts calls again: a probe passes and both teams finish, each item answered once.
        server.set_plan([])
        batches.wait("team-a", "Complete", timeout_s=180)
        batches.eventually(lambda: condition(dev, other, "team-b", "Complete").get("status") == "True", 120, "b done")
        answered = [call for call in server.requests() if call["kind"] == "ok"]
        assert len(answered) == 8
        # Before it accepted them: the calls granted before the first refusal reached the operator (at most the
        # account's calls in flight, twice), then one probe per wait, the waits doubling from the operator's 1 s.
        assert {call["kind"] for call in refused} == {"insufficient_quota"}
        span_s = refused[-1]["time"] - refused[0]["time"]
        assert len(refused) <= 2 * 4 + math.floor(math.log2(span_s / PROBE_S + 1)) + 1
