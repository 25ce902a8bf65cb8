"""The pure builders of a batch's children: names, labels, security, environment."""

import base64
import dataclasses
import json
import re
from typing import Any

import pytest

from analysis_core import env, plan, queue, tenancy, wire
from analysis_core.api import v1alpha1, wellknown
from analysis_operator import builders

pytestmark = pytest.mark.unit

BATCH = builders.Batch("semis-q3", "research", "0b9c6c1e-5d7a-4c1b-9a3e-1f2d3c4b5a69")
SETTINGS = builders.WorkerSettings(image="analysis-worker:0.1.0", redis_url="redis://redis:6379/0")


def the_plan(executor: str = "Job") -> plan.Plan:
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["NVDA"],
            "providers": {
                "claude": {
                    "type": "anthropic",
                    "model": "m",
                    "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"},
                }
            },
            "stages": [{"name": "analyze", "provider": "claude", "prompt": "{{ item }}", "executor": executor}],
        }
    )
    return plan.compile_plan(BATCH.uid, spec)


def test_names_are_deterministic_dns_labels_even_for_long_batches() -> None:
    assert builders.child_name(BATCH, "analyze") == "semis-q3-analyze"
    long_a = builders.Batch("a" * 80, "ns", "u")
    long_b = builders.Batch("a" * 79 + "b", "ns", "u")
    name_a, name_b = builders.child_name(long_a, "analyze"), builders.child_name(long_b, "analyze")
    for name in (name_a, name_b):
        assert len(name) <= 63
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert name_a != name_b
    assert builders.child_name(long_a, "analyze") == name_a


def test_worker_pods_are_locked_down() -> None:
    pod = builders.worker_pod_template(BATCH, the_plan(), the_plan().stage("analyze"), SETTINGS, mode="job")
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["exec"]["command"] == ["analysis-worker", "--check"]
    assert spec["terminationGracePeriodSeconds"] > SETTINGS.grace_s


def test_the_api_key_comes_only_from_its_secret_as_a_file() -> None:
    pod = builders.worker_pod_template(BATCH, the_plan(), the_plan().stage("analyze"), SETTINGS, mode="job")
    container = pod["spec"]["containers"][0]
    variables = {v["name"]: v for v in container["env"]}
    assert env.API_KEY not in variables
    assert not [v for v in container["env"] if "secretKeyRef" in v.get("valueFrom", {})]  # no secret in any variable
    assert variables[env.API_KEY_FILE]["value"] == f"{builders.API_KEY_DIR}/{builders.API_KEY_FILE}"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["api-key"]["secret"] == {
        "secretName": "llm-keys",
        "items": [{"key": "anthropic", "path": builders.API_KEY_FILE}],
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["api-key"] == {"name": "api-key", "mountPath": builders.API_KEY_DIR, "readOnly": True}
    assert variables[env.POD_NAME]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {variables[n]["value"] for n in (env.BATCH_UID, env.STAGE, env.MODE)} == {BATCH.uid, "analyze", "job"}
    # The plan the pods mount names the Secret key; no key material exists for it to carry.
    assert json.loads(builders.plan_configmap(BATCH, the_plan(), SETTINGS)["data"][builders.PLAN_KEY])["providers"][
        "claude"
    ]["api_key_secret_ref"] == {"name": "llm-keys", "key": "anthropic"}


def test_the_plan_configmap_holds_the_plan_the_pods_mount() -> None:
    compiled = the_plan()
    configmap = builders.plan_configmap(BATCH, compiled, SETTINGS)
    assert plan.Plan.loads(configmap["data"][builders.PLAN_KEY]) == compiled
    pod = builders.worker_pod_template(BATCH, compiled, compiled.stage("analyze"), SETTINGS, mode="job")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["plan"]["configMap"]["name"] == configmap["metadata"]["name"]


def test_the_batchs_redis_user_reaches_workers_only_as_files_of_its_secret() -> None:
    plain = builders.worker_pod_template(BATCH, the_plan(), the_plan().stage("analyze"), SETTINGS, mode="job")
    assert env.REDIS_AUTH_DIR not in {v["name"] for v in plain["spec"]["containers"][0]["env"]}
    assert "redis-auth" not in {v["name"] for v in plain["spec"]["volumes"]}
    settings = dataclasses.replace(SETTINGS, redis_auth=True)
    pod = builders.worker_pod_template(BATCH, the_plan(), the_plan().stage("analyze"), settings, mode="job")
    container = pod["spec"]["containers"][0]
    variables = {v["name"]: v for v in container["env"]}
    secret = builders.redis_secret(BATCH, tenancy.username(BATCH.uid), "s3cret/+pw")
    # No variable holds the Redis Secret's keys or refers to them: the Secret is a volume, its keys files.
    refs = [
        v["valueFrom"]["secretKeyRef"]["name"] for v in container["env"] if "secretKeyRef" in v.get("valueFrom", {})
    ]
    assert secret["metadata"]["name"] not in refs
    assert variables[env.REDIS_AUTH_DIR]["value"] == builders.REDIS_AUTH_DIR
    assert env.REDIS_PASSWORD not in variables
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["redis-auth"] == {"name": "redis-auth", "secret": {"secretName": secret["metadata"]["name"]}}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["redis-auth"] == {"name": "redis-auth", "mountPath": builders.REDIS_AUTH_DIR, "readOnly": True}
    assert secret["metadata"]["namespace"] == BATCH.namespace
    assert secret["metadata"]["labels"][wellknown.LABEL_BATCH_UID] == BATCH.uid
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {tenancy.SECRET_USERNAME: tenancy.username(BATCH.uid), tenancy.SECRET_PASSWORD: "s3cret/+pw"}
    assert "s3cret" not in json.dumps(pod)


def test_a_price_table_is_published_with_the_plan_and_named_to_workers() -> None:
    compiled = the_plan()
    assert builders.PRICES_KEY not in builders.plan_configmap(BATCH, compiled, SETTINGS)["data"]
    table = "models:\n  my-model: {input: 1, output: 2}\n"
    settings = dataclasses.replace(SETTINGS, prices=table)
    assert builders.plan_configmap(BATCH, compiled, settings)["data"][builders.PRICES_KEY] == table
    pod = builders.worker_pod_template(BATCH, compiled, compiled.stage("analyze"), settings, mode="job")
    variables = {v["name"]: v for v in pod["spec"]["containers"][0]["env"]}
    assert variables[env.PRICES_PATH]["value"] == f"{builders.PLAN_DIR}/{builders.PRICES_KEY}"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert {i["key"] for i in volumes["plan"]["configMap"]["items"]} == {builders.PLAN_KEY, builders.PRICES_KEY}


def test_workers_expose_a_named_metrics_port_unless_turned_off() -> None:
    pod = builders.worker_pod_template(BATCH, the_plan(), the_plan().stage("analyze"), SETTINGS, mode="job")
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": SETTINGS.metrics_port}]
    assert {v["name"]: v.get("value") for v in container["env"]}[env.METRICS_PORT] == str(SETTINGS.metrics_port)
    off = dataclasses.replace(SETTINGS, metrics_port=0)
    pod = builders.worker_pod_template(BATCH, the_plan(), the_plan().stage("analyze"), off, mode="job")
    assert pod["spec"]["containers"][0]["ports"] == []


@pytest.mark.parametrize(
    ("executor", "kind", "size_field"), [("Job", "Job", "parallelism"), ("Deployment", "Deployment", "replicas")]
)
def test_the_executor_picks_the_workload(executor: str, kind: str, size_field: str) -> None:
    compiled = the_plan(executor)
    obj: dict[str, Any] = builders.workload(BATCH, compiled, compiled.stage("analyze"), SETTINGS, size=3)
    assert obj["kind"] == kind
    assert obj["spec"][size_field] == 3
    assert obj["metadata"]["labels"][wellknown.LABEL_STAGE] == "analyze"
    restart = obj["spec"]["template"]["spec"]["restartPolicy"]
    assert restart == ("Never" if kind == "Job" else "Always")


def test_a_job_is_renamed_when_its_template_or_run_changes_but_not_by_an_approval() -> None:
    compiled = the_plan()
    stage = compiled.stage("analyze")
    job = builders.worker_job(BATCH, compiled, stage, SETTINGS, parallelism=2)
    approved = compiled.model_copy(update={"approvals": {"analyze": None}, "generation": 7})
    assert (
        builders.worker_job(BATCH, approved, stage, SETTINGS, parallelism=3)["metadata"]["name"]
        == (job["metadata"]["name"])
    )
    edited = compiled.model_copy(update={"vars": {"language": "de"}})
    assert (
        builders.worker_job(BATCH, edited, stage, SETTINGS, parallelism=2)["metadata"]["name"]
        != (job["metadata"]["name"])
    )
    rerun = builders.worker_job(BATCH, compiled, stage, SETTINGS, parallelism=2, run=1)
    assert rerun["metadata"]["name"] != job["metadata"]["name"]
    assert re.fullmatch(r"semis-q3-analyze-[0-9a-f]{6}", job["metadata"]["name"])


def test_a_job_ignores_workers_stopped_by_a_scale_down_and_never_replaces_them_while_they_stop() -> None:
    job = builders.worker_job(BATCH, the_plan(), the_plan().stage("analyze"), SETTINGS, parallelism=1)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [env.EXIT_STOPPED_EARLY]}} in rules
    assert job["spec"]["podReplacementPolicy"] == "Failed"


def stage_with(**fields: Any) -> plan.StagePlan:
    stage = {"name": "analyze", "provider": "claude", "prompt": "{{ item }}", **fields}
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {"items": ["NVDA"], "providers": {"claude": {"type": "offline"}}, "stages": [stage]}
    )
    return plan.compile_plan(BATCH.uid, spec).stage("analyze")


def env_of(stage: plan.StagePlan, settings: builders.WorkerSettings = SETTINGS) -> dict[str, Any]:
    pod = builders.worker_pod_template(BATCH, the_plan(), stage, settings, mode="job")
    return {v["name"]: v.get("value") for v in pod["spec"]["containers"][0]["env"]}


def test_a_pod_runs_the_operators_calls_per_pod_unless_its_stage_sets_its_own() -> None:
    assert SETTINGS.calls_per_pod == v1alpha1.DEFAULT_CALLS_PER_POD == 16
    assert env_of(stage_with())[env.CONCURRENCY] == "16"
    assert env_of(stage_with(), dataclasses.replace(SETTINGS, calls_per_pod=5))[env.CONCURRENCY] == "5"
    assert env_of(stage_with(callsPerPod=2), dataclasses.replace(SETTINGS, calls_per_pod=5))[env.CONCURRENCY] == "2"


@pytest.mark.parametrize(
    ("timeout_s", "worker_grace_s"),
    [
        (300, 305),  # the default timeout: a call started just before SIGTERM reaches its deadline and is recorded
        (5, SETTINGS.grace_s),  # never less than the operator's grace
        (86400, env.MAX_GRACE_SECONDS),  # capped: a pod does not linger for a day
    ],
)
def test_a_stopping_pod_waits_for_its_calls_up_to_their_deadline_within_the_cap(
    timeout_s: int, worker_grace_s: int
) -> None:
    stage = stage_with(timeoutSeconds=timeout_s)
    pod = builders.worker_pod_template(BATCH, the_plan(), stage, SETTINGS, mode="job")
    assert env_of(stage)[env.GRACE_SECONDS] == str(worker_grace_s)
    assert pod["spec"]["terminationGracePeriodSeconds"] == worker_grace_s + env.GRACE_MARGIN_SECONDS


@pytest.mark.parametrize(
    ("concurrency", "calls_per_pod", "ready", "running", "retrying", "stopping", "expected"),
    [
        (4, 16, 0, 0, 0, False, 0),  # nothing to do: no pods
        (4, 16, 3, 0, 0, False, 1),
        (4, 1, 3, 0, 0, False, 3),  # one call per pod: a pod per call
        (100, 16, 2000, 0, 0, False, 7),  # ceil(100 / 16)
        (100, 16, 0, 33, 0, False, 3),  # ceil(33 / 16)
        (4, 1, 50, 2, 0, False, 4),  # capped by concurrency
        (4, 16, 0, 0, 7, False, 1),  # retries waiting: one pod promotes them when due
        (4, 16, 9, 2, 0, True, 0),  # stopping wants none; the reconciler keeps pods that hold items
    ],
)
def test_stages_are_sized_by_backlog_and_in_flight_over_calls_per_pod(
    concurrency: int, calls_per_pod: int, ready: int, running: int, retrying: int, stopping: bool, expected: int
) -> None:
    stage = stage_with(concurrency=concurrency, callsPerPod=calls_per_pod)
    counts = queue.StageCounts(ready, running, retrying, {})
    assert builders.sized(stage, counts, SETTINGS, stopping=stopping) == expected


PODS = [("p-a", True), ("p-b", True), ("p-c", True), ("p-d", False)]  # (name, started); p-d is still pending


def test_a_job_shrinks_by_unfilled_slots_and_idle_pods_never_below_the_busy_ones() -> None:
    held = {"p-a": 3, "p-c": 1}
    # Two slots no pod fills yet go first, then idle pods, those not started yet first.
    assert builders.scale_in("Job", 6, 3, PODS, held) == builders.ScaleIn(3, ("p-d",))
    assert builders.scale_in("Job", 6, 5, PODS, held) == builders.ScaleIn(5)
    # Wanting none leaves the pods that hold items.
    assert builders.scale_in("Job", 4, 0, PODS, held) == builders.ScaleIn(2, ("p-d", "p-b"))
    # A pod retired before (it claims nothing any more) goes before any other.
    assert builders.scale_in("Job", 4, 3, PODS, held, frozenset({"p-b"})) == builders.ScaleIn(3, ("p-b",))
    everyone_busy = {name: 1 for name, _started in PODS}
    assert builders.scale_in("Job", 4, 1, PODS, everyone_busy) == builders.ScaleIn(4)
    assert builders.scale_in("Job", 4, 7, PODS, everyone_busy) == builders.ScaleIn(7)  # growing is never held back


def test_a_deployment_keeps_a_replica_per_busy_pod_and_lets_deletion_costs_pick_the_idle_ones() -> None:
    held = {"p-a": 3, "p-c": 1}
    assert builders.scale_in("Deployment", 4, 0, PODS, held) == builders.ScaleIn(2)
    assert builders.scale_in("Deployment", 4, 3, PODS, held) == builders.ScaleIn(3)


def account_plan(egress: dict[str, Any] | None) -> plan.Plan:
    """Two stages: ``draft`` on a provider of the account ``gateway`` (with ``egress``), ``polish`` inline."""
    gateway = v1alpha1.AnalysisProviderSpec.model_validate(
        {
            "type": "openai",
            "baseURL": "https://llm-gateway.example/v1",
            "limits": {"requestsPerMinute": 60},
            "namespaces": [{"name": BATCH.namespace}],
            **({"egress": egress} if egress is not None else {}),
        }
    )
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["NVDA"],
            "providers": {
                "gw": {"providerRef": {"name": "gateway"}, "model": "m", "apiKeySecretRef": {"name": "k", "key": "a"}},
                "claude": {"type": "anthropic", "model": "m", "apiKeySecretRef": {"name": "k", "key": "b"}},
            },
            "stages": [
                {"name": "draft", "provider": "gw", "prompt": "{{ item }}"},
                {"name": "polish", "provider": "claude", "prompt": "{{ item }}"},
            ],
        }
    )
    return plan.compile_plan(BATCH.uid, spec, accounts={"gateway": gateway})


def ca_volumes(pod: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes from the batch's CA ConfigMap, and the container's mounts of them."""
    ca = builders.child_name(BATCH, "ca")
    volumes = [v for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == ca]
    names = {v["name"] for v in volumes}
    mounts = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] in names]
    return volumes, mounts


def test_workers_of_a_provider_whose_account_has_a_ca_bundle_mount_it_where_workers_look() -> None:
    the_plan = account_plan({"caBundle": {"name": "gateway-ca", "key": "ca.crt"}})
    assert the_plan.providers["gw"].account == plan.AccountPlan(name="gateway", ca_bundle=True)
    pod = builders.worker_pod_template(BATCH, the_plan, the_plan.stage("draft"), SETTINGS, mode="deployment")
    [volume], [mount] = ca_volumes(pod)
    # Only the stage's own provider's key, under the name the worker reads (<provider>.pem in its CA directory).
    assert volume["configMap"] == {"name": "semis-q3-ca", "items": [{"key": "gw.pem", "path": "gw.pem"}]}
    assert mount == {"name": volume["name"], "mountPath": env.DEFAULT_CA_BUNDLE_DIR, "readOnly": True}
    # The copy the operator writes holds that key.
    configmap = builders.ca_bundle_configmap(BATCH, {"gw": "-----BEGIN CERTIFICATE-----\n..."})
    assert set(configmap["data"]) == {item["key"] for item in volume["configMap"]["items"]}
    # A stage on an inline provider of the same batch mounts nothing of it.
    other = builders.worker_pod_template(BATCH, the_plan, the_plan.stage("polish"), SETTINGS, mode="deployment")
    assert ca_volumes(other) == ([], [])
    assert len(other["spec"]["volumes"]) == len(pod["spec"]["volumes"]) - 1


@pytest.mark.parametrize(
    "egress",
    [
        pytest.param(None, id="no-egress"),
        pytest.param({"proxyURL": "http://proxy.platform:3128"}, id="proxy-only"),
    ],
)
def test_workers_of_an_account_without_a_ca_bundle_mount_none(egress: dict[str, Any] | None) -> None:
    the_plan = account_plan(egress)
    assert the_plan.providers["gw"].account is not None
    assert not the_plan.providers["gw"].account.ca_bundle
    for stage in ("draft", "polish"):
        pod = builders.worker_pod_template(BATCH, the_plan, the_plan.stage(stage), SETTINGS, mode="job")
        assert ca_volumes(pod) == ([], [])
        assert {v["name"] for v in pod["spec"]["volumes"]} == {"plan", "tmp", "api-key"}  # the key, no bundle
        mounted = [m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]]
        assert env.DEFAULT_CA_BUNDLE_DIR not in mounted


def test_the_ca_bundle_copy_is_the_batchs_configmap_of_one_key_per_provider() -> None:
    pem_a, pem_b = "-----BEGIN CERTIFICATE-----\nAAA\n", "-----BEGIN CERTIFICATE-----\nBBB\n"
    configmap = builders.ca_bundle_configmap(BATCH, {"writer": pem_b, "reviewer": pem_a})
    assert configmap == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "semis-q3-ca", "namespace": "research", "labels": builders.labels(BATCH)},
        "data": {"reviewer.pem": pem_a, "writer.pem": pem_b},
    }
    assert list(configmap["data"]) == ["reviewer.pem", "writer.pem"]  # sorted: the same bundles, the same object


def test_a_worker_is_ready_once_it_serves_its_metrics_or_else_once_it_beats() -> None:
    compiled = the_plan()
    pod = builders.worker_pod_template(BATCH, compiled, compiled.stage("analyze"), SETTINGS, mode="job")
    assert pod["spec"]["containers"][0]["readinessProbe"]["tcpSocket"] == {"port": "metrics"}  # costs the pod nothing
    quiet = dataclasses.replace(SETTINGS, metrics_port=0)
    pod = builders.worker_pod_template(BATCH, compiled, compiled.stage("analyze"), quiet, mode="job")
    probe = pod["spec"]["containers"][0]["readinessProbe"]
    assert probe["exec"]["command"] == ["analysis-worker", "--check"]
    assert probe["periodSeconds"] >= 60  # each check starts a Python process


def test_a_batch_mode_stage_runs_one_worker_while_it_has_work_and_recreates_it_on_a_change() -> None:
    stage = stage_with(mode="Batch", concurrency=3)
    for ready, running, retrying in ((5_000, 0, 0), (0, 2_000, 0), (0, 0, 4)):
        assert builders.sized(stage, queue.StageCounts(ready, running, retrying, {}), SETTINGS, stopping=False) == 1
    assert builders.sized(stage, queue.StageCounts(0, 0, 0, {}), SETTINGS, stopping=False) == 0
    assert builders.sized(stage, queue.StageCounts(9, 9, 0, {}), SETTINGS, stopping=True) == 0
    # Every item recorded, a provider batch not yet done with (its copy at the provider to delete): the worker stays.
    finishing = queue.StageCounts(0, 0, 0, {wire.COUNT_PROVIDER_BATCHES: 3, wire.COUNT_PROVIDER_BATCHES_ENDED: 2})
    assert not finishing.drained
    assert builders.sized(stage, finishing, SETTINGS, stopping=False) == 1
    done = queue.StageCounts(0, 0, 0, {wire.COUNT_PROVIDER_BATCHES: 3, wire.COUNT_PROVIDER_BATCHES_ENDED: 3})
    assert done.drained
    assert builders.sized(stage, done, SETTINGS, stopping=False) == 0
    # Two workers must never collect the same provider batch: a Deployment's rollout stops the old one first.
    batched = stage_with(mode="Batch", executor="Deployment")
    deployment = builders.workload(BATCH, the_plan(), batched, SETTINGS, size=1, run=0)
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    realtime = builders.workload(BATCH, the_plan(), stage_with(executor="Deployment"), SETTINGS, size=1, run=0)
    assert realtime["spec"]["strategy"]["type"] == "RollingUpdate"
