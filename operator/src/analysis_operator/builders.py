"""Pure builders of a batch's child objects: the plan ConfigMap, the worker ServiceAccount, Jobs, Deployments.

The reconciler calls these with what it observed and applies the dicts they
return (adopting them, so they are owned by the batch). They do no I/O and
decide nothing about *when*: sizing (parallelism, replicas) comes in as an
argument. Names are deterministic, so a replayed reconcile finds the object
it made before; the labels others select by are named in ``analysis_core.api.wellknown``.

Worker pods are built to be admitted where the ``restricted`` Pod Security
Standard is enforced: non-root, read-only root filesystem, no privilege
escalation, every capability dropped, the runtime's default seccomp profile,
no service-account token. An API key reaches a pod only as a Secret-backed
environment variable; the operator never reads it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from analysis_core import env, plan, queue, tenancy
from analysis_core.api import v1alpha1, wellknown

LABEL_NAME = "app.kubernetes.io/name"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
ANNOTATION_PLAN_HASH = "analysis.dev/plan-hash"  # on pod templates: what the workers run
ANNOTATION_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"

PLAN_KEY = "plan.json"
PRICES_KEY = "prices.yaml"
PLAN_DIR = "/etc/analysis"
REDIS_AUTH_DIR = "/var/run/secrets/analysis/redis"  # the batch's Redis Secret, its keys as files
API_KEY_DIR = "/var/run/secrets/analysis/provider"  # the provider's API key, from the team's Secret
API_KEY_FILE = "api-key"
WORKER_UID = 65532  # the conventional "nonroot" user of distroless and Chainguard images
MAX_NAME = 63  # a Job's name becomes a pod label value


@dataclasses.dataclass(frozen=True)
class Batch:
    """What the builders need to know of the AnalysisBatch they build for."""

    name: str
    namespace: str
    uid: str


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Operator-wide defaults for worker pods (from the operator's configuration)."""

    image: str
    redis_url: str
    cpu_request: str = "100m"
    memory_request: str = "128Mi"
    memory_limit: str = "512Mi"
    cpu_limit: str | None = None  # none by default: a CPU limit throttles even on an idle node
    grace_s: int = env.DEFAULT_GRACE_SECONDS  # the least a stopping worker waits for its calls (``grace_s``)
    calls_per_pod: int = v1alpha1.DEFAULT_CALLS_PER_POD  # a stage's callsPerPod when it sets none
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 9090  # the worker's Prometheus endpoint; 0 turns it off
    redis_auth: bool = False  # Redis wants a password: workers connect as the batch's user, from its Redis Secret
    prices: str | None = None  # a price table over the packaged one, published with the plan


def child_name(batch: Batch, *parts: str) -> str:
    """``<batch>-<parts>``, a DNS label of at most 63 characters; long names keep a hash of the whole."""
    full = "-".join([batch.name, *parts])
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return re.sub(r"-+$", "", full[: MAX_NAME - 9]) + "-" + digest


def plan_hash(the_plan: plan.Plan) -> str:
    """What worker pods run, hashed: the plan without what they never read (approvals, generation).

    It goes on pod templates, so editing a prompt rolls a Deployment and gives a
    Job a new name (Job templates are immutable), while an approval does not.
    """
    worker_view = the_plan.model_copy(update={"approvals": {}, "generation": 0})
    return hashlib.sha256(worker_view.dumps().encode()).hexdigest()[:10]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]


def labels(batch: Batch, stage: str | None = None) -> dict[str, str]:
    out = {
        LABEL_NAME: "analysis-worker",
        LABEL_PART_OF: "analysis-operator",
        LABEL_MANAGED_BY: "analysis-operator",
        wellknown.LABEL_BATCH: batch.name[:MAX_NAME],
        wellknown.LABEL_BATCH_UID: batch.uid,
    }
    if stage is not None:
        out[wellknown.LABEL_STAGE] = stage
    return out


def plan_configmap(batch: Batch, the_plan: plan.Plan, settings: WorkerSettings) -> dict[str, Any]:
    """The plan workers load, and the operator's price table when it has one."""
    data = {PLAN_KEY: the_plan.dumps()}
    if settings.prices is not None:
        data[PRICES_KEY] = settings.prices
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child_name(batch, "plan"), "namespace": batch.namespace, "labels": labels(batch)},
        "data": data,
    }


def redis_secret(batch: Batch, username: str, password: str) -> dict[str, Any]:
    """The batch's own Redis user and password (``analysis_core.tenancy``), in the batch's namespace.

    Mounted into its workers as files (never environment variables). Owned by
    the batch, so the garbage collector removes it with the batch: the
    operator needs to create and patch Secrets, never to read one (it derives
    the password again whenever it needs it).
    """
    data = {tenancy.SECRET_USERNAME: username, tenancy.SECRET_PASSWORD: password}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": child_name(batch, "redis"), "namespace": batch.namespace, "labels": labels(batch)},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def service_account(batch: Batch) -> dict[str, Any]:
    """The workers' identity: no API token, since workers never talk to Kubernetes."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": child_name(batch, "worker"), "namespace": batch.namespace, "labels": labels(batch)},
        "automountServiceAccountToken": False,
    }


def _environment(
    batch: Batch, the_plan: plan.Plan, stage: plan.StagePlan, settings: WorkerSettings, mode: str
) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = [
        {"name": env.REDIS_URL, "value": settings.redis_url},
        {"name": env.BATCH_UID, "value": batch.uid},
        {"name": env.STAGE, "value": stage.name},
        {"name": env.PLAN_PATH, "value": f"{PLAN_DIR}/{PLAN_KEY}"},
        {"name": env.POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": env.MODE, "value": mode},
        # The pod's calls at once; the stage's concurrency, in the plan, caps what all its pods hold together.
        {"name": env.CONCURRENCY, "value": str(calls_per_pod(stage, settings))},
        {"name": env.GRACE_SECONDS, "value": str(grace_s(stage, settings))},
        {"name": env.LOG_FORMAT, "value": "json"},
        {"name": env.METRICS_PORT, "value": str(settings.metrics_port)},
    ]
    if settings.redis_auth:
        variables.append({"name": env.REDIS_AUTH_DIR, "value": REDIS_AUTH_DIR})  # the files, not the secret
    if settings.prices is not None:
        variables.append({"name": env.PRICES_PATH, "value": f"{PLAN_DIR}/{PRICES_KEY}"})
    provider = the_plan.providers.get(stage.provider or "")
    if provider is not None and provider.api_key_secret_ref is not None:
        variables.append({"name": env.API_KEY_FILE, "value": f"{API_KEY_DIR}/{API_KEY_FILE}"})  # a path, not the key
    return variables


def worker_pod_template(
    batch: Batch, the_plan: plan.Plan, stage: plan.StagePlan, settings: WorkerSettings, *, mode: str
) -> dict[str, Any]:
    """The pod of one stage's workers, admissible under the ``restricted`` Pod Security Standard."""
    published = {PLAN_KEY} | ({PRICES_KEY} if settings.prices is not None else set())
    container = {
        "name": "worker",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["analysis-worker"],
        "env": _environment(batch, the_plan, stage, settings, mode),
        "ports": [{"name": "metrics", "containerPort": settings.metrics_port}] if settings.metrics_port else [],
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"memory": settings.memory_limit, **({"cpu": settings.cpu_limit} if settings.cpu_limit else {})},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "readinessProbe": _readiness(settings),
        "livenessProbe": {
            "exec": {"command": ["analysis-worker", "--check"]},
            "initialDelaySeconds": 20,
            "periodSeconds": 20,
            "timeoutSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [
            {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # the root filesystem is read-only
        ],
    }
    template = {
        "metadata": {
            "labels": labels(batch, stage.name),
            "annotations": {ANNOTATION_PLAN_HASH: plan_hash(the_plan)},
        },
        "spec": {
            "serviceAccountName": child_name(batch, "worker"),
            "automountServiceAccountToken": False,
            "restartPolicy": "Never" if mode == "job" else "Always",
            # The worker drains within its grace period; Kubernetes waits a little longer (the hand-back) before SIGKILL.
            "terminationGracePeriodSeconds": grace_s(stage, settings) + env.GRACE_MARGIN_SECONDS,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": WORKER_UID,
                "runAsGroup": WORKER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [
                {
                    "name": "plan",
                    "configMap": {
                        "name": child_name(batch, "plan"),
                        "items": [{"key": k, "path": k} for k in (PLAN_KEY, PRICES_KEY) if k in published],
                    },
                },
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
            ],
        },
    }
    _mount_ca_bundle(template, batch, the_plan, stage)
    if settings.redis_auth:
        _mount_redis_auth(template, batch)
    _mount_api_key(template, the_plan, stage)
    return template


def _mount_api_key(template: dict[str, Any], the_plan: plan.Plan, stage: plan.StagePlan) -> None:
    """The provider's API key, the one key of the team's Secret (``apiKeySecretRef``) as a file, never a variable."""
    provider = the_plan.providers.get(stage.provider or "")
    if provider is None or provider.api_key_secret_ref is None:
        return
    ref = provider.api_key_secret_ref
    spec = template["spec"]
    items = [{"key": ref.key, "path": API_KEY_FILE}]
    spec["volumes"].append({"name": "api-key", "secret": {"secretName": ref.name, "items": items}})
    spec["containers"][0]["volumeMounts"].append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})


def _readiness(settings: WorkerSettings) -> dict[str, Any]:
    """Ready once it serves its metrics (it starts that before its first claim), which costs the pod nothing; without
    a metrics port, once it beats, checked rarely: each check starts a Python process."""
    if settings.metrics_port:
        return {"tcpSocket": {"port": "metrics"}, "periodSeconds": 10}
    return {"exec": {"command": ["analysis-worker", "--check"]}, "periodSeconds": 60, "timeoutSeconds": 10}


def _mount_redis_auth(template: dict[str, Any], batch: Batch) -> None:
    """The batch's Redis user and password (``redis_secret``), as files where the worker reads them."""
    spec = template["spec"]
    spec["volumes"].append({"name": "redis-auth", "secret": {"secretName": child_name(batch, "redis")}})
    spec["containers"][0]["volumeMounts"].append({"name": "redis-auth", "mountPath": REDIS_AUTH_DIR, "readOnly": True})


def _mount_ca_bundle(template: dict[str, Any], batch: Batch, the_plan: plan.Plan, stage: plan.StagePlan) -> None:
    """A provider account's CA certificates, from the batch's copy (``ca_bundle_configmap``), where workers look."""
    provider = the_plan.providers.get(stage.provider or "")
    if provider is None or provider.account is None or not provider.account.ca_bundle or stage.provider is None:
        return
    name = f"{stage.provider}.pem"
    spec = template["spec"]
    spec["volumes"].append(
        {"name": "ca-bundle", "configMap": {"name": child_name(batch, "ca"), "items": [{"key": name, "path": name}]}}
    )
    spec["containers"][0]["volumeMounts"].append(
        {"name": "ca-bundle", "mountPath": env.DEFAULT_CA_BUNDLE_DIR, "readOnly": True}
    )


def ca_bundle_configmap(batch: Batch, bundles: dict[str, str]) -> dict[str, Any]:
    """The CA certificates of the batch's provider accounts (``egress.caBundle``), as ``<provider>.pem``.

    The account's ConfigMap is in the operator's namespace, which pods of the
    batch's namespace cannot mount; the operator copies it here, owned by the batch.
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": child_name(batch, "ca"), "namespace": batch.namespace, "labels": labels(batch)},
        "data": {f"{provider}.pem": pem for provider, pem in sorted(bundles.items())},
    }


def worker_job(
    batch: Batch,
    the_plan: plan.Plan,
    stage: plan.StagePlan,
    settings: WorkerSettings,
    *,
    parallelism: int,
    run: int = 0,
) -> dict[str, Any]:
    """A work-queue Job (no completions): pods exit 0 once the stage is sealed and drained.

    Its name ends in a digest of its pod template and ``run`` (bumped when
    retry-failed reopens a stage whose Job already completed): a Job's
    template cannot change, so a changed one is a new Job, and the reconciler
    deletes the old one.
    """
    template = worker_pod_template(batch, the_plan, stage, settings, mode="job")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": child_name(batch, stage.name, _digest({"template": template, "run": run})),
            "namespace": batch.namespace,
            "labels": labels(batch, stage.name),
        },
        "spec": {
            "parallelism": parallelism,
            # Crashed pods are replaced; their items come back when their leases expire.
            "backoffLimit": 20,
            # A pod the operator deleted to scale in is not replaced while it terminates, so lowering parallelism
            # right after never leaves the Job controller an active pod to delete (reconciler._scale_in).
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {
                "rules": [
                    # Stopped by a scale-down, a suspend or an eviction: not the worker's failure.
                    {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [env.EXIT_STOPPED_EARLY]}},
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": template,
        },
    }


def worker_deployment(
    batch: Batch, the_plan: plan.Plan, stage: plan.StagePlan, settings: WorkerSettings, *, replicas: int
) -> dict[str, Any]:
    """A Deployment of idling workers for ``executor: Deployment``, sized by the reconciler."""
    selector = {wellknown.LABEL_BATCH_UID: batch.uid, wellknown.LABEL_STAGE: stage.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": child_name(batch, stage.name),
            "namespace": batch.namespace,
            "labels": labels(batch, stage.name),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # New workers first, so a rollout never drops the stage's capacity to zero; but a mode: Batch stage's
            # one worker goes before the next takes its provider batches over, so two never collect the same one.
            "strategy": {"type": "Recreate"}
            if stage.mode is v1alpha1.StageMode.BATCH
            else {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": worker_pod_template(batch, the_plan, stage, settings, mode="deployment"),
        },
    }


def workload(
    batch: Batch,
    the_plan: plan.Plan,
    stage: plan.StagePlan,
    settings: WorkerSettings,
    *,
    size: int,
    run: int = 0,
) -> dict[str, Any]:
    """The stage's Job or Deployment, by its executor."""
    if stage.executor is v1alpha1.Executor.DEPLOYMENT:
        return worker_deployment(batch, the_plan, stage, settings, replicas=size)
    return worker_job(batch, the_plan, stage, settings, parallelism=size, run=run)


def calls_per_pod(stage: plan.StagePlan, settings: WorkerSettings) -> int:
    """Calls one worker pod of ``stage`` runs at once: its ``callsPerPod``, else the operator's setting."""
    return stage.calls_per_pod or settings.calls_per_pod


def grace_s(stage: plan.StagePlan, settings: WorkerSettings) -> int:
    """How long a stopping worker of ``stage`` waits for its calls: long enough for one to reach its deadline.

    The stage's ``timeoutSeconds`` plus a margin to record the call's end, at
    least the operator's grace and at most ``env.MAX_GRACE_SECONDS``: a stage
    whose calls may take longer has what is left at the cap handed back.
    """
    covering = math.ceil(stage.timeout_seconds) + env.GRACE_MARGIN_SECONDS
    return max(settings.grace_s, min(covering, env.MAX_GRACE_SECONDS))


def sized(stage: plan.StagePlan, counts: queue.StageCounts, settings: WorkerSettings, *, stopping: bool) -> int:
    """How many worker pods ``stage`` wants now: ceil(calls wanted / calls per pod).

    The calls wanted are min(concurrency, backlog + in flight), from the
    stage's ``queue.StageCounts``; items waiting for a retry want one call,
    so a pod stays to promote them when they are due. ``stopping`` (suspend,
    a failed or finished batch) wants none: the reconciler keeps the pods
    that still hold items until they are done (it only ever removes idle
    pods). Approval stages have no workers.
    """
    if stage.provider is None or stopping:
        return 0
    if stage.mode is v1alpha1.StageMode.BATCH:  # one worker gathers, submits, collects and deletes provider batches
        return 1 if counts.ready + counts.running + counts.retrying + counts.provider_batches_open else 0
    calls = min(stage.concurrency, counts.ready + counts.running + min(counts.retrying, 1))
    return math.ceil(calls / calls_per_pod(stage, settings))


@dataclasses.dataclass(frozen=True)
class ScaleIn:
    """How a stage's workload shrinks: its new size, and the idle pods to retire and delete first (Jobs)."""

    size: int
    retire: tuple[str, ...] = ()


def scale_in(
    kind: str,
    current: int,
    wanted: int,
    pods: Sequence[tuple[str, bool]],
    held: Mapping[str, int],
    retired: frozenset[str] = frozenset(),
) -> ScaleIn:
    """Shrink from ``current`` toward ``wanted`` without stopping a pod that holds an item.

    ``pods``: the workload's live pods as (name, started), ``held``: the
    items each pod holds (absent: none). A Deployment's ReplicaSet picks
    the pods to delete by their deletion cost (the reconciler marks busy
    pods), so its replicas never go below the pods that hold items. A Job's
    controller deletes active pods of its own choosing and ignores deletion
    costs, so a Job's parallelism drops only by the slots no pod fills yet
    and by the idle pods named here, which the reconciler retires (they can
    no longer claim) and deletes before lowering it. Pods retired before
    (``retired``, which claim nothing any more) go first, then pods not
    started yet.
    """
    if wanted >= current:
        return ScaleIn(wanted)
    busy = sum(1 for name, _started in pods if held.get(name, 0) > 0)
    if kind == "Deployment":
        return ScaleIn(max(wanted, busy, 0))
    unfilled = min(current - wanted, max(0, current - len(pods)))
    idle = sorted((name not in retired, started, name) for name, started in pods if held.get(name, 0) == 0)
    retire = tuple(name for _fresh, _started, name in idle[: current - wanted - unfilled])
    return ScaleIn(current - unfilled - len(retire), retire)
