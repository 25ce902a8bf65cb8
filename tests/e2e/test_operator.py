"""The operator, end to end: real control plane and controller-manager, the node, Redis, worker pods as containers.

Each example runs to ``Complete`` in both executors with exactly the results
its offline provider predicts; then the controls and failure modes a platform
team relies on: suspend and resume, deletion mid-run, an operator restart, a
worker pod deleted mid-item, a broken reference that recovers, and a
provider that refuses the key.
"""

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_core import keys, plan
from analysis_core.api import v1alpha1
from analysis_devcluster import binaries

ARGOCD_IGNORE = Path(__file__).resolve().parents[2] / "gitops/argocd/ignore-differences.yaml"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str, executor: str = "Job", latency_ms: int | None = 0) -> dict[str, Any]:
    manifest = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text(encoding="utf-8"))
    for stage in manifest["spec"]["stages"]:
        stage["executor"] = executor
    if latency_ms is not None:
        for provider in manifest["spec"]["providers"].values():
            provider.setdefault("offline", {})["latencyMilliseconds"] = latency_ms
    return dict(manifest)


def on_stand_in(server: Any, api: str, **stage: Any) -> dict[str, Any]:
    """ticker-summary with its provider pointed at the stand-in (``api``: anthropic or openai), key from llm-keys."""
    manifest = example("ticker-summary", latency_ms=None)
    base_url = server.url if api == "anthropic" else server.openai_base_url
    manifest["spec"]["providers"] = {
        "summarizer": {
            "type": api,
            "model": "claude-test" if api == "anthropic" else "gpt-4.1",
            "baseURL": base_url,
            "apiKeySecretRef": {"name": "llm-keys", "key": api},
        },
    }
    manifest["spec"]["stages"][0].update(stage)
    return manifest


def predicted_finals(manifest: dict[str, Any], uid: str, simulate: Any) -> dict[str, str]:
    """item -> status of what leaves the last stage, by the offline provider's answers."""
    spec = v1alpha1.AnalysisBatchSpec.model_validate(manifest["spec"])
    compiled = plan.compile_plan(uid, spec)
    outcomes = simulate(compiled, list(spec.items or [])).outcomes
    last = compiled.stages[-1].name
    parsed = {keys.parse_idem(key): status for key, status in outcomes.items()}
    return {idem.item.rsplit("/", 1)[-1]: status for idem, status in parsed.items() if idem.stage == last}


def results(batches: Any, name: str, output: str = "jsonl", *more: str) -> subprocess.CompletedProcess[str]:
    """``kubectl analysis results`` as a user runs it (kubectl refuses flags before a plugin's name), with a key of
    their own that may only read the results store's prefix."""
    return subprocess.run(
        [str(binaries.find("kubectl")), "analysis", "results", name, "-n", batches.namespace, "-o", output, *more],
        env={**batches.reader_env(), "KUBECONFIG": str(batches.dev.kubeconfig)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["Job", "Deployment"])
@pytest.mark.parametrize("name", ["ticker-summary", "stock-research"])
def test_each_example_completes_with_the_predicted_results(
    batches: Any, simulate: Any, name: str, executor: str
) -> None:
    manifest = example(name, executor)
    sink = "ObjectStore" if executor == "Job" else "ConfigMap"  # the install's default, and the zero-setup one
    if sink == "ConfigMap":
        manifest["spec"]["results"] = {"sink": "ConfigMap"}
    batches.apply(manifest)
    batches.wait(name, "Complete", timeout_s=180)
    batch = batches.get(name)
    st, meta = batch["status"], batch["metadata"]
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    # kstatus: done means Ready, not Reconciling, not Stalled, for the current generation.
    assert (conditions["Ready"], conditions["Reconciling"], conditions["Stalled"]) == ("True", "False", "False")
    assert st["observedGeneration"] == meta["generation"]
    assert st["phase"] == "Complete"
    assert st["percent"] == 100
    expected = predicted_finals(manifest, meta["uid"], simulate)
    shown = results(batches, name)
    assert shown.returncode == 0, shown.stderr
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {row["item"].rsplit("/", 1)[-1]: row["status"] for row in rows} == expected
    assert len(rows) == len(expected)  # no duplicates
    assert st["results"]["sink"] == sink
    assert st["results"]["pending"] == 0
    if sink == "ConfigMap":
        assert st["results"]["configMaps"]
    else:
        folder = f"{batches.namespace}/{name}/{meta['uid']}/"
        assert st["results"]["location"].endswith(folder)
        stored = {key.rsplit("/", 1)[-1]: text for key, text in batches.stored().items() if folder in key}
        manifest_object = json.loads(stored.pop("manifest.json"))
        assert manifest_object["rows"] == st["results"]["rows"] == sum(len(t.splitlines()) for t in stored.values())
    # One workload per stage that ran, none left running.
    children = batches.children(meta["uid"])
    kind = "jobs" if executor == "Job" else "deployments"
    stages = {s["name"] for s in st["stages"] if s["succeeded"] or s["failed"]}
    worker_stages = {s["name"] for s in manifest["spec"]["stages"] if s.get("type") != "approval"} & stages
    assert len(children[kind]) == len(worker_stages), children
    batches.eventually(lambda: not batches.children(meta["uid"])["pods"] or executor == "Job", 60, "workers gone")
    check_argocd_ignores_what_kopf_wrote(meta.get("annotations") or {})


def check_argocd_ignores_what_kopf_wrote(annotations: dict[str, str]) -> None:
    """The README's Argo CD ignore rule, run with jq (``del(...)``, as Argo CD applies it) on a live batch."""
    kopf_wrote = sorted(k for k in annotations if k.startswith("analysis.dev/"))
    assert "analysis.dev/last-handled-configuration" in kopf_wrote, annotations
    rule = yaml.safe_load(ARGOCD_IGNORE.read_text(encoding="utf-8"))
    people_wrote = {"analysis.dev/retry-failed": "1", "team": "research"}  # what must stay visible in a diff
    live = {"metadata": {"annotations": {**annotations, **people_wrote}}}
    for expression in rule["jqPathExpressions"]:
        result = subprocess.run(
            ["jq", "-c", f"del({expression})"],
            input=json.dumps(live),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        live = json.loads(result.stdout)
    others = {k: v for k, v in annotations.items() if k not in kopf_wrote}  # e.g. kubectl's last-applied
    assert live["metadata"]["annotations"] == {**others, **people_wrote}, kopf_wrote


@pytest.mark.timeout(240)
def test_suspend_stops_claims_and_resume_finishes(batches: Any) -> None:
    manifest = example("ticker-summary", latency_ms=1500)
    manifest["spec"]["items"] = [f"T{i}" for i in range(12)]
    manifest["spec"]["stages"][0]["concurrency"] = 2
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    batches.eventually(
        lambda: (batches.get(name).get("status") or {}).get("items", {}).get("done", 0) >= 2, 90, "two items done"
    )
    running = batches.conditions(name)
    assert (running["Reconciling"]["status"], running["Ready"]["status"]) == ("True", "False")
    batches.kubectl("patch", "analysisbatch", name, "--type=merge", "-p", '{"spec": {"suspend": true}}')
    batches.wait(name, "Suspended", timeout_s=30)
    uid = batches.get(name)["metadata"]["uid"]
    # In-flight items finish; then no worker is left and nothing moves.
    batches.eventually(lambda: not [p for p in batches.children(uid)["pods"]] or None, 60, "workers scaled to zero")
    done = batches.get(name)["status"]["items"]["done"]
    time.sleep(4)
    assert batches.get(name)["status"]["items"]["done"] == done
    assert done < 12
    assert batches.get(name)["status"]["phase"] == "Suspended"
    batches.kubectl("patch", "analysisbatch", name, "--type=merge", "-p", '{"spec": {"suspend": false}}')
    batches.wait(name, "Complete", timeout_s=180)
    assert batches.get(name)["status"]["items"]["succeeded"] == 12


@pytest.mark.timeout(180)
@pytest.mark.parametrize("executor", ["Job", "Deployment"])
def test_deleting_mid_run_leaves_no_redis_key_and_no_child(batches: Any, executor: str) -> None:
    """Job: the default results (the install's store, retained) outlive the batch, with every item that ended;
    Deployment: results in ConfigMaps with ``onDelete: Delete`` go with it, and nothing of the batch is left."""
    manifest = example("ticker-summary", executor, latency_ms=3000)
    manifest["spec"]["items"] = [f"T{i}" for i in range(6)]
    retained = executor == "Job"
    if not retained:
        manifest["spec"]["results"] = {"sink": "ConfigMap", "onDelete": "Delete"}
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    uid = batches.get(name)["metadata"]["uid"]

    def ended_and_running() -> bool:
        st = batches.get(name).get("status") or {}
        exported = not retained or (st.get("results") or {}).get("location")
        return (
            bool((st.get("items") or {}).get("done"))
            and bool(st.get("stages", [{}])[0].get("running"))
            and bool(exported)
        )

    batches.eventually(ended_and_running, 90, "an item ended and others in flight")
    location = batches.get(name)["status"]["results"].get("location")
    endpoint = batches.get(name)["status"]["results"].get("endpoint")
    ended = batches.get(name)["status"]["items"]["done"]
    batches.kubectl("delete", "analysisbatch", name, "--timeout=90s", timeout=120)
    assert batches.kubectl("get", "analysisbatch", name, check=False).returncode != 0
    assert batches.redis_keys(uid) == []
    batches.eventually(lambda: not any(batches.children(uid).values()), 60, "every child gone")
    if retained:
        # Everything that ended before the deletion, exported by the finalizer, read back as a user would.
        shown = results(batches, name, "jsonl", f"--location={location}", f"--endpoint={endpoint}")
        assert shown.returncode == 0, shown.stderr
        items = [json.loads(line)["item"] for line in shown.stdout.splitlines()]
        assert len(items) == len(set(items)) >= ended
        assert set(items) <= set(manifest["spec"]["items"])


@pytest.mark.timeout(300)
def test_a_results_store_outage_pauses_claims_and_loses_nothing(batches: Any) -> None:
    """The install's store goes away mid-batch: a condition names the setting, ended items wait in Redis, claims
    pause once more than the operator's cap wait, and when the store is back every item is there exactly once."""
    manifest = example("ticker-summary", latency_ms=300)
    items = [f"S{i:03d}" for i in range(150)]  # 15 s of work at concurrency 3: the outage starts well before
    manifest["spec"]["items"] = items
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    cap = int(batches.operator.env()["ANALYSIS_OPERATOR_RESULTS_MAX_PENDING"])
    batches.eventually(lambda: (batches.get(name).get("status") or {}).get("results"), 60, "the first export")

    def status() -> dict[str, Any]:
        return dict(batches.get(name).get("status") or {})

    with batches.operator.store.down():
        unavailable = batches.eventually(
            lambda: (
                batches.conditions(name)["Reconciling"]["reason"] == "ResultsStoreUnavailable"
                and batches.conditions(name)["Reconciling"]
            ),
            60,
            "the store's condition",
        )
        assert "ANALYSIS_OPERATOR_RESULTS_STORE_ENDPOINT" in unavailable["message"]
        assert batches.conditions(name)["Stalled"]["status"] == "False"  # it may come back by itself
        # Past the cap, claims pause: in-flight items end, then nothing more runs while the store is away.
        batches.eventually(lambda: status()["results"]["pending"] > cap, 120, "results waiting")
        batches.eventually(lambda: not status()["stages"][0]["running"], 30, "claims paused")
        paused = status()["items"]["done"]
        time.sleep(3)
        assert status()["items"]["done"] == paused < len(items)
        assert status()["phase"] == "Running"
    batches.wait(name, "Complete", timeout_s=180)
    final = status()
    assert final["results"]["pending"] == 0
    assert final["results"]["rows"] == len(items)
    shown = results(batches, name)
    assert shown.returncode == 0, shown.stderr
    assert sorted(json.loads(line)["item"] for line in shown.stdout.splitlines()) == items


@pytest.mark.timeout(300)
def test_an_operator_killed_mid_batch_finishes_it_without_duplicates(batches: Any, simulate: Any) -> None:
    manifest = example("stock-research", latency_ms=300)
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    batches.eventually(
        lambda: (batches.get(name).get("status") or {}).get("currentStage") in ("analyze", "review"),
        120,
        "analysis under way",
    )
    batches.operator.kill()
    time.sleep(2)
    batches.operator.start()
    batches.wait(name, "Complete", timeout_s=180)
    batch = batches.get(name)
    children = batches.children(batch["metadata"]["uid"])
    stages = [job.rsplit("-", 1)[0] for job in children["jobs"]]
    assert len(stages) == len(set(stages)), children["jobs"]  # one Job per stage
    rows = [json.loads(line) for line in results(batches, name).stdout.splitlines()]
    expected = predicted_finals(manifest, batch["metadata"]["uid"], simulate)
    assert sorted(row["item"].rsplit("/", 1)[-1] for row in rows) == sorted(expected)


@pytest.mark.timeout(240)
def test_a_worker_pod_deleted_mid_item_loses_nothing(batches: Any) -> None:
    manifest = example("ticker-summary", "Deployment", latency_ms=4000)
    manifest["spec"]["items"] = ["A", "B", "C", "D"]
    manifest["spec"]["stages"][0]["concurrency"] = 2
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    uid = batches.get(name)["metadata"]["uid"]
    busy = batches.eventually(
        lambda: (
            (batches.get(name).get("status") or {}).get("stages", [{}])[0].get("running")
            and batches.children(uid)["pods"]
        ),
        90,
        "an item in flight",
    )
    batches.kubectl("delete", "pod", busy[0], "--grace-period=1", "--wait=false")
    batches.wait(name, "Complete", timeout_s=180)
    st = batches.get(name)["status"]
    assert st["items"]["succeeded"] == 4
    assert st["items"]["failed"] == st["items"]["deadLettered"] == 0


@pytest.mark.timeout(180)
def test_a_missing_configmap_shows_its_condition_and_recovers(batches: Any) -> None:
    manifest = example("ticker-summary")
    del manifest["spec"]["items"]
    manifest["spec"]["itemsFrom"] = {"configMapKeyRef": {"name": "tickers", "key": "list"}}
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    batches.wait(name, "Stalled", timeout_s=20)
    stalled = batches.conditions(name)["Stalled"]
    assert stalled["reason"] == "ConfigMapNotFound"
    assert "spec.itemsFrom.configMapKeyRef" in stalled["message"]
    assert "tickers" in stalled["message"]
    batches.kubectl("create", "configmap", "tickers", "--from-literal=list=NVDA\nAMD\n")
    batches.wait(name, "Complete", timeout_s=120)
    assert batches.conditions(name)["Stalled"]["status"] == "False"
    assert batches.get(name)["status"]["items"]["succeeded"] == 2


@pytest.mark.timeout(180)
def test_a_missing_secret_is_named_and_recovers(batches: Any) -> None:
    from analysis_devcluster import standin

    with standin.StandIn(api_key="sk-test-key", host=batches.dev.host) as server:
        manifest = on_stand_in(server, "openai")
        batches.apply(manifest)
        name = manifest["metadata"]["name"]
        batches.wait(name, "Stalled", timeout_s=30)
        stalled = batches.conditions(name)["Stalled"]
        assert stalled["reason"] == "SecretNotFound"
        assert stalled["message"].startswith("spec.providers.summarizer.apiKeySecretRef")
        batches.kubectl("create", "secret", "generic", "llm-keys", "--from-literal=openai=sk-test-key")
        batches.wait(name, "Complete", timeout_s=120)
        events = batches.kubectl("get", "events", "-o", "json").stdout
        assert "sk-test-key" not in events
        assert "sk-test-key" not in json.dumps(batches.get(name))


@pytest.mark.timeout(180)
def test_no_secret_is_anywhere_a_team_or_the_operator_can_read(batches: Any) -> None:
    """The key of a batch that ran (through the real SDK against the stand-in): only in its Secret and in the
    worker's memory; nowhere in status, events, describe output, logs, ConfigMaps, results or Redis."""
    from analysis_devcluster import standin

    key = f"sk-leak-scan-{uuid.uuid4().hex}"
    with standin.StandIn(api_key=key, host=batches.dev.host) as server:
        manifest = on_stand_in(server, "openai")
        batches.kubectl("create", "secret", "generic", "llm-keys", f"--from-literal=openai={key}")
        batches.apply(manifest)
        name = manifest["metadata"]["name"]
        batches.wait(name, "Complete", timeout_s=120)
        assert server.requests()  # the key did its work: the stand-in admitted the calls
    uid = batches.get(name)["metadata"]["uid"]
    readable = batches.everything_readable(uid)
    assert [where for where, text in readable.items() if key in text] == []
    assert any(where.startswith("log of ") for where in readable)  # the workers' logs were read
    assert any(where.startswith("redis ") for where in readable)
    # No worker variable holds a secret: describe shows where the key is read from, not the key.
    assert "ANALYSIS_API_KEY_FILE" in readable["describe"]


@pytest.mark.timeout(180)
def test_a_cost_budget_over_an_unpriced_model_waits_with_its_condition_until_the_spec_is_fixed(batches: Any) -> None:
    from analysis_devcluster import standin

    with standin.StandIn(api_key="sk-test-key", host=batches.dev.host) as server:
        manifest = on_stand_in(server, "anthropic")  # the model claude-test has no price
        manifest["spec"]["budget"] = {"maxCostUSD": 1}
        batches.kubectl("create", "secret", "generic", "llm-keys", "--from-literal=anthropic=sk-test-key")
        batches.apply(manifest)
        name = manifest["metadata"]["name"]
        batches.wait(name, "Stalled", timeout_s=30)
        stalled = batches.conditions(name)["Stalled"]
        assert stalled["reason"] == "UnpricedModel"
        assert stalled["message"].startswith("spec.providers.summarizer.model: claude-test: no price")
        assert batches.children(batches.get(name)["metadata"]["uid"])["pods"] == []  # nothing ran at $0
        batches.kubectl(
            "patch",
            "analysisbatch",
            name,
            "--type=json",
            "-p",
            '[{"op": "replace", "path": "/spec/budget", "value": {"maxTokens": 100000}}]',
        )
        batches.wait(name, "Complete", timeout_s=120)
        assert batches.conditions(name)["Stalled"]["status"] == "False"


@pytest.mark.timeout(180)
def test_a_refused_key_fails_the_batch_quickly_with_a_clear_reason(batches: Any) -> None:
    from analysis_devcluster import standin

    with standin.StandIn(api_key="sk-right", host=batches.dev.host) as server:
        manifest = on_stand_in(server, "anthropic")
        batches.kubectl("create", "secret", "generic", "llm-keys", "--from-literal=anthropic=sk-wrong")
        started = time.monotonic()
        batches.apply(manifest)
        name = manifest["metadata"]["name"]
        batches.wait(name, "Failed", timeout_s=90)
        elapsed = time.monotonic() - started
        st = batches.get(name)["status"]
        assert st["phase"] == "Failed"
        assert batches.conditions(name)["Stalled"]["status"] == "True"
        assert st["items"]["failed"] >= 1
        # One call per item at most: an auth error is not retried.
        assert len(server.requests()) <= 3
        assert elapsed < 90
        assert "sk-wrong" not in json.dumps(st)


@pytest.mark.timeout(180)
def test_retry_failed_reruns_only_the_failed_items(batches: Any) -> None:
    from analysis_devcluster import standin

    with standin.StandIn(api_key="sk-test", host=batches.dev.host) as server:
        # The first call about BAD fails with a 500; with one attempt, BAD fails for good and the batch with it.
        server.set_plan([{"kind": "server_error", "match": "BAD", "times": 1}])
        manifest = on_stand_in(server, "openai", retry={"maxAttempts": 1})
        manifest["spec"]["items"] = ["GOOD", "BAD", "FINE"]
        batches.kubectl("create", "secret", "generic", "llm-keys", "--from-literal=openai=sk-test")
        batches.apply(manifest)
        name = manifest["metadata"]["name"]
        batches.wait(name, "Failed", timeout_s=90)
        assert "BAD" in batches.get(name)["status"]["message"]  # the first failure is named
        calls = len(server.requests())
        batches.kubectl("annotate", "analysisbatch", name, "analysis.dev/retry-failed=first")
        batches.wait(name, "Complete", timeout_s=90)
        st = batches.get(name)["status"]
        assert st["retriedFailed"] == "first"
        assert (st["items"]["succeeded"], st["items"]["failed"]) == (3, 0)
        # Only BAD ran again.
        again = [r for r in server.requests()[calls:]]
        assert len(again) == 1
        assert "BAD" in json.dumps(again[0])
        rows = {
            json.loads(line)["item"]: json.loads(line)["status"] for line in results(batches, name).stdout.splitlines()
        }
        assert rows == {"GOOD": "succeeded", "BAD": "succeeded", "FINE": "succeeded"}


@pytest.mark.timeout(180)
def test_an_approval_added_to_the_spec_releases_the_held_items(batches: Any) -> None:
    manifest = example("stock-research")
    del manifest["spec"]["approvals"]
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    batches.wait(name, "WaitingForApproval", timeout_s=60)
    st = batches.get(name)["status"]
    assert st["phase"] == "WaitingForApproval"
    assert "plan-ok" in batches.conditions(name)["WaitingForApproval"]["message"]
    # Settled: nothing left but a person's approval, so kstatus readers see it as Current, not as work in progress.
    conditions = batches.conditions(name)
    assert conditions["Reconciling"]["status"] == "False"
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "WaitingForApproval")
    batches.kubectl(
        "patch", "analysisbatch", name, "--type=merge", "-p", '{"spec": {"approvals": [{"stage": "plan-ok"}]}}'
    )
    batches.wait(name, "Complete", timeout_s=120)
    assert batches.conditions(name)["WaitingForApproval"]["status"] == "False"


@pytest.mark.timeout(120)
def test_a_finished_batch_is_deleted_after_its_ttl(batches: Any) -> None:
    manifest = example("ticker-summary")
    manifest["spec"]["ttlSecondsAfterFinished"] = 2
    batches.apply(manifest)
    name = manifest["metadata"]["name"]
    uid = batches.get(name)["metadata"]["uid"]
    batches.wait(name, "Complete", timeout_s=60)
    batches.eventually(
        lambda: batches.kubectl("get", "analysisbatch", name, check=False).returncode != 0, 30, "deleted by its TTL"
    )
    assert batches.redis_keys(uid) == []


def test_liveness_reports_the_time_since_the_last_event(batches: Any) -> None:
    import urllib.request

    port = batches.operator.liveness_port
    probe = batches.eventually(lambda: _get_json(urllib.request, f"http://127.0.0.1:{port}/healthz"), 30, "liveness up")
    assert isinstance(probe["secondsSinceLastEvent"], float)


def _get_json(request: Any, url: str) -> Any:
    try:
        with request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())
    except OSError:
        return None
