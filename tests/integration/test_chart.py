"""The Helm chart against helm (built from its Go module) and the real API server.

``helm lint --strict`` with the defaults and each ``ci/`` values file; each
rendering applied with ``kubectl apply --dry-run=server`` (the API server's
own validation, strict field checking and PodSecurity "restricted" warnings);
helm's schema errors for a misspelled key and a wrong type; the rendered RBAC,
Deployment and bundled Redis read as objects; and a real ``helm install`` /
``upgrade`` into the session cluster to see the rights the authorizer grants
the operator's ServiceAccount and the Redis password surviving an upgrade.
Running the installed operator is ``tests/e2e/test_helm_install.py``.

ServiceMonitor and PodMonitor: the session cluster has no Prometheus
Operator, so ``monitoring_crds`` installs CRDs of the same group, versions and
kinds whose schemas list only the fields the chart uses (by their upstream
names) and no unknown-field escape hatch: kubectl's strict field validation
then rejects a misspelled field, though not a field the real CRD would refuse.
"""

import base64
import dataclasses
import json
import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from lightkube.core.resource import api_info
from lightkube.resources.core_v1 import Event

from analysis_core import keys, plan, queue
from analysis_core.api import PLURAL, PROVIDER_PLURAL, v1alpha1, wellknown
from analysis_devcluster import binaries, cluster
from analysis_operator import builders, export, kube, objectstore, results, teardown
from analysis_operator.config import OperatorConfig

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "analysis-operator"
CI_FILES = sorted(path.name for path in (CHART / "ci").glob("*.yaml"))
RELEASE_NAMESPACE = "chart-ci-system"
# Every namespace a ci/ file names; created before the dry runs.
CI_NAMESPACES = [RELEASE_NAMESPACE, "chart-ci-team-a", "chart-ci-team-b", "chart-ci-monitoring", "chart-ci-data"]
Obj = dict[str, Any]


# ------------------------------------------------------------------ helm


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm's cache, config and data in a temporary directory: nothing from or into the user's ~/.config/helm."""
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def run_helm(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``helm`` from .devcluster/bin (a missing one fails the test: ``make controlplane`` builds it)."""
    argv = [str(binaries.find("helm")), *args]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}{result.stdout[-2000:]}")
    return result


def values_args(values: str | None = None, *sets: str) -> list[str]:
    out = [] if values is None else ["-f", str(CHART / "ci" / values)]
    for item in sets:
        out += ["--set", item]
    return out


def render(env: dict[str, str], *args: str) -> list[Obj]:
    text = run_helm(env, "template", "analysis-operator", str(CHART), "-n", RELEASE_NAMESPACE, *args).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Obj], kind: str) -> Obj:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def ci_values(name: str) -> Obj:
    return dict(yaml.safe_load((CHART / "ci" / name).read_text(encoding="utf-8")))


# ------------------------------------------------------------------ cluster set-up


MONITORING_FIELDS: dict[str, Obj] = {
    "selector": {
        "type": "object",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string"},
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    },
    "namespaceSelector": {
        "type": "object",
        "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
    },
    "podTargetLabels": {"type": "array", "items": {"type": "string"}},
    "targetLabels": {"type": "array", "items": {"type": "string"}},
    "jobLabel": {"type": "string"},
}
ENDPOINT = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "port": {"type": "string"},
            "path": {"type": "string"},
            "interval": {"type": "string"},
            "scrapeTimeout": {"type": "string"},
            "scheme": {"type": "string"},
        },
    },
}


def monitoring_crd(kind: str, plural: str, endpoints: str) -> Obj:
    spec = {"type": "object", "required": ["selector"], "properties": {**MONITORING_FIELDS, endpoints: ENDPOINT}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": spec}}},
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def monitoring_crds(devcluster: cluster.DevCluster) -> None:
    crds = [
        monitoring_crd("ServiceMonitor", "servicemonitors", "endpoints"),
        monitoring_crd("PodMonitor", "podmonitors", "podMetricsEndpoints"),
    ]
    devcluster.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(yaml.safe_dump(c) for c in crds))
    for crd in crds:
        name = crd["metadata"]["name"]
        devcluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{name}", timeout=45)


@pytest.fixture(scope="module")
def ci_namespaces(devcluster: cluster.DevCluster) -> Iterator[list[str]]:
    """The ci/ files' namespaces; pods in them would be checked against the "restricted" Pod Security Standard."""
    for name in CI_NAMESPACES:
        manifest = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            },
        }
        devcluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
    try:
        yield CI_NAMESPACES
    finally:
        devcluster.kubectl("delete", "namespace", *CI_NAMESPACES, "--wait=false", "--ignore-not-found", check=False)


def dry_run(dev: cluster.DevCluster, docs: list[Obj]) -> subprocess.CompletedProcess[str]:
    manifest = "\n---\n".join(yaml.safe_dump(doc) for doc in docs)
    return dev.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest, check=False, timeout=90)


# ------------------------------------------------------------------ lint and the API server's view


@pytest.mark.parametrize("values", [None, *CI_FILES])
def test_helm_lint_strict(helm_env: dict[str, str], values: str | None) -> None:
    result = run_helm(helm_env, "lint", "--strict", str(CHART), *values_args(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("values", CI_FILES)
def test_each_rendering_passes_the_api_servers_dry_run(
    devcluster: cluster.DevCluster,
    helm_env: dict[str, str],
    ci_namespaces: list[str],
    monitoring_crds: None,
    values: str,
) -> None:
    docs = render(helm_env, *values_args(values))
    result = dry_run(devcluster, docs)
    assert result.returncode == 0, result.stderr
    # Pod templates meet the "restricted" standard (the namespaces warn on workloads that would violate it).
    assert "PodSecurity" not in result.stderr, result.stderr
    assert "unknown field" not in result.stderr, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs)


def test_the_pod_security_check_can_fail(
    devcluster: cluster.DevCluster, helm_env: dict[str, str], ci_namespaces: list[str]
) -> None:
    """The check above is real: the same Deployment without its security context draws the warning."""
    deployment = one(render(helm_env), "Deployment")
    del deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    result = dry_run(devcluster, [deployment])
    assert result.returncode == 0, result.stderr
    assert 'would violate PodSecurity "restricted' in result.stderr


def test_a_misspelled_field_fails_the_dry_run(
    devcluster: cluster.DevCluster, helm_env: dict[str, str], ci_namespaces: list[str], monitoring_crds: None
) -> None:
    """kubectl's strict field validation is on: so a rendering with a field the API does not know would fail."""
    docs = render(helm_env, *values_args("all-optional-values.yaml"))
    monitor = one(docs, "PodMonitor")
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    deployment = one(docs, "Deployment")
    deployment["spec"]["strategy"]["tpye"] = "Recreate"
    for broken in (monitor, deployment):
        result = dry_run(devcluster, [broken])
        assert result.returncode != 0, result.stdout
        assert "unknown field" in result.stderr, result.stderr


# ------------------------------------------------------------------ the schema, through helm


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"operator": {"logFromat": "json"}}, ["at '/operator'", "'logFromat' not allowed"]),
        ({"redis": {"bundeled": {"enabled": False}}}, ["at '/redis'", "'bundeled' not allowed"]),
        ({"operator": {"verbose": "yes"}}, ["at '/operator/verbose'", "got string, want boolean"]),
        ({"worker": {"metricsPort": "9090"}}, ["at '/worker/metricsPort'", "got string, want integer"]),
        ({"watch": {"allNamespaces": False}}, ["at '/watch/namespaces'", "minItems"]),
        ({"operator": {"logFormat": "yaml"}}, ["at '/operator/logFormat'", "plain"]),
    ],
)
def test_helm_rejects_values_the_schema_does_not_allow(
    helm_env: dict[str, str], tmp_path: Path, values: Obj, expected: list[str]
) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    result = run_helm(helm_env, "template", "x", str(CHART), "-f", str(path), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def test_a_password_in_the_redis_url_is_rejected_without_being_echoed(helm_env: dict[str, str]) -> None:
    url = "redis://:hunter2-secret@redis.data.svc:6379/0"
    result = run_helm(
        helm_env,
        "template",
        "x",
        str(CHART),
        "--set",
        "redis.bundled.enabled=false",
        "--set",
        f"redis.external.url={url}",
        check=False,
    )
    assert result.returncode != 0
    assert "at '/redis/external/url'" in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


# ------------------------------------------------------------------ RBAC


def rules_of(docs: list[Obj]) -> list[Obj]:
    return [rule for doc in docs if doc["kind"] in ("Role", "ClusterRole") for rule in doc["rules"]]


def verbs(rules: list[Obj], group: str, resource: str) -> set[str]:
    return {verb for r in rules if group in r["apiGroups"] and resource in r["resources"] for verb in r["verbs"]}


@pytest.mark.parametrize("values", CI_FILES)
def test_rbac_is_least_privilege(helm_env: dict[str, str], values: str) -> None:
    docs = render(helm_env, *values_args(values))
    rules = rules_of(docs)
    assert rules
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "nonResourceURLs" not in rule, rule
        # Names narrow a rule to one object; only the leader Lease's rule can name its object (create cannot).
        assert "resourceNames" not in rule or rule["resources"] == ["leases"], rule
    # The leader Lease, in the release's namespace only, by its own Role: make it, then read and write that one.
    leader = [d for d in of_kind(docs, "Role") if d["metadata"]["name"].endswith("-leader")]
    assert [(d["metadata"]["namespace"], d["rules"]) for d in leader] == [
        (
            RELEASE_NAMESPACE,
            [
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": ["analysis-operator-leader"],
                    "verbs": ["get", "update"],
                },
            ],
        )
    ]
    docs = [d for d in docs if d not in leader and not d["metadata"]["name"].endswith("-leader")]
    rules = rules_of(docs)
    # The operator writes the per-batch Redis Secret and never reads a Secret through the API.
    assert verbs(rules, "", "secrets") == {"create", "patch"}
    assert not any(verb in verbs(rules, "", "secrets") for verb in ("get", "list", "watch"))
    # AnalysisProviders are cluster-scoped: every mode watches them across the cluster and writes their status.
    assert verbs(rules, "analysis.dev", PROVIDER_PLURAL) == {"list", "watch", "patch"}
    assert verbs(rules, "analysis.dev", f"{PROVIDER_PLURAL}/status") == {"patch"}
    watch = ci_values(values).get("watch", {})
    cluster_wide = watch.get("allNamespaces", True)
    cluster_kinds = {doc["kind"] for doc in docs if doc["kind"] in ("ClusterRole", "ClusterRoleBinding")}
    roles = {doc["metadata"]["namespace"]: doc for doc in of_kind(docs, "Role")}
    bindings = of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding")
    if cluster_wide:
        assert cluster_kinds == {"ClusterRole", "ClusterRoleBinding"}
        assert not roles
        assert verbs(rules, "apiextensions.k8s.io", "customresourcedefinitions") == {"list", "watch"}
    else:
        assert cluster_kinds == {"ClusterRole", "ClusterRoleBinding"}
        # The ClusterRole holds the accounts' rules and nothing namespaced.
        (cluster_role,) = of_kind(docs, "ClusterRole")
        assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {
            PROVIDER_PLURAL,
            f"{PROVIDER_PLURAL}/status",
        }
        assert set(roles) == {*watch["namespaces"], RELEASE_NAMESPACE}
        assert {b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")} == set(roles)
        # In its own namespace: the accounts' Events and CA bundles, nothing else.
        own = roles[RELEASE_NAMESPACE]["rules"]
        assert {(r, v) for rule in own for r in rule["resources"] for v in rule["verbs"]} == {
            ("events", "create"),
            ("configmaps", "get"),
        }
        assert not verbs(rules, "apiextensions.k8s.io", "customresourcedefinitions")
    account = one(docs, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": RELEASE_NAMESPACE}
        ]


def test_rbac_covers_every_kind_the_operator_calls(helm_env: dict[str, str]) -> None:
    """Each kind in the operator's client (kube.KINDS), Events (Kopf posts them) and the batches has a rule.

    A new kind needs one.
    """
    rules = rules_of(render(helm_env))
    for kind in {*kube.KINDS.values(), Event}:
        info = api_info(kind)
        assert verbs(rules, info.resource.group, info.plural), f"no rule for {info.resource.api_version} {info.plural}"
    assert verbs(rules, "analysis.dev", PLURAL) >= {"list", "watch", "patch"}
    assert verbs(rules, "analysis.dev", f"{PLURAL}/status") == {"patch"}
    assert verbs(rules, "analysis.dev", PROVIDER_PLURAL) >= {"list", "watch", "patch"}
    assert verbs(rules, "analysis.dev", f"{PROVIDER_PLURAL}/status") == {"patch"}


# ------------------------------------------------------------------ the operator's Deployment


def env_of(container: Obj) -> dict[str, Obj]:
    return {variable["name"]: variable for variable in container["env"]}


@pytest.mark.parametrize("values", CI_FILES)
def test_the_operator_deployment(helm_env: dict[str, str], values: str) -> None:
    docs = render(helm_env, *values_args(values))
    deployment = one(docs, "Deployment")
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    # Two replicas, one active (the leader Lease): a new pod, a standby at first, is up before an old one goes.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (container,) = pod["containers"]
    assert env_of(container)["ANALYSIS_OPERATOR_LEADER_LEASE"]["value"] == "analysis-operator-leader"
    assert (
        env_of(container)["ANALYSIS_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    )
    budget = next(d for d in of_kind(docs, "PodDisruptionBudget") if d["metadata"]["name"] == "analysis-operator")
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    overrides = ci_values(values)
    watch = overrides.get("watch", {})
    operator = overrides.get("operator", {})
    flags = [a for a in container["args"] if a.startswith(("--all-namespaces", "--namespace"))]
    if watch.get("allNamespaces", True):
        assert flags == ["--all-namespaces"]
    else:
        assert flags == [f"--namespace={name}" for name in watch["namespaces"]]
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    assert f"--log-format={operator.get('logFormat', 'plain')}" in container["args"]
    assert ("--verbose" in container["args"]) is operator.get("verbose", False)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "healthz": 8081}
    # The "restricted" Pod Security Standard, with a fixed non-root uid and only /tmp writable.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert "emptyDir" in volumes["tmp"]
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


def operator_environment(docs: list[Obj], tmp_path: Path) -> dict[str, str]:
    """The environment the kubelet would give the operator: secretKeyRefs and the pod's namespace resolved, the
    prices file where mounted."""
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Files of mounted Secrets, where the kubelet would put them: each key holds the test's stand-in value.
    secrets = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    mounted = {}
    for mount in container.get("volumeMounts", []):
        if mount["name"] in secrets:
            folder = tmp_path / "secrets" / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            for item in secrets[mount["name"]].get("items", []):
                (folder / item["path"]).write_text("password-from-the-secret\n", encoding="utf-8")
            mounted[mount["mountPath"]] = folder
    environ = {}
    for name, variable in env_of(container).items():
        if variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            environ[name] = deployment["metadata"]["namespace"]
        elif "valueFrom" in variable:
            environ[name] = "password-from-the-secret"
        else:
            environ[name] = variable["value"]
            for path, folder in mounted.items():
                if environ[name].startswith(path + "/"):
                    environ[name] = str(folder / environ[name][len(path) + 1 :])
                elif environ[name] == path:  # a directory of a Secret's files
                    environ[name] = str(folder)
    if "ANALYSIS_OPERATOR_PRICES_PATH" in environ:
        prices = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-prices"))
        path = tmp_path / "prices.yaml"
        path.write_text(prices["data"]["prices.yaml"], encoding="utf-8")
        environ["ANALYSIS_OPERATOR_PRICES_PATH"] = str(path)
    return environ


@pytest.mark.parametrize("values", CI_FILES)
def test_the_operator_reads_the_configuration_the_chart_gives_it(
    helm_env: dict[str, str], tmp_path: Path, values: str
) -> None:
    """The rendered environment, through the operator's own parser (a renamed variable or a bad value fails here)."""
    docs = render(helm_env, *values_args(values))
    cfg = OperatorConfig.from_env(operator_environment(docs, tmp_path))
    overrides = ci_values(values)
    worker = overrides.get("worker", {})
    assert cfg.worker.image.startswith(worker.get("image", {}).get("repository", "analysis-worker"))
    assert cfg.worker.metrics_port == worker.get("metricsPort", 9090)
    assert cfg.status_interval_s == overrides.get("operator", {}).get("statusInterval", 2)
    redis = overrides.get("redis", {})
    if redis.get("bundled", {}).get("enabled", True):
        assert cfg.redis_url == f"redis://analysis-operator-redis.{RELEASE_NAMESPACE}.svc:6379/0"
        assert cfg.worker.redis_url == cfg.redis_url
    else:
        assert cfg.redis_url == redis["external"]["url"]
        assert cfg.worker.redis_url == redis["external"].get("workerUrl") or redis["external"]["url"]
    assert cfg.redis_wait_replicas == redis.get("external", {}).get("waitReplicas", 0)
    assert cfg.redis_password == "password-from-the-secret"
    assert cfg.worker.redis_auth
    # Where the accounts' CA bundles are read from: the operator's own namespace, the release's.
    assert cfg.namespace == RELEASE_NAMESPACE
    if overrides.get("prices"):
        table = yaml.safe_load(cfg.worker.prices or "")
        assert table == {"models": overrides["prices"]}
    else:
        assert cfg.worker.prices is None
    store = overrides.get("results", {}).get("objectStore", {})
    if store.get("bucket"):
        assert cfg.results_store is not None
        assert (cfg.results_store.bucket, cfg.results_store.endpoint) == (store["bucket"], store["endpoint"])
        assert cfg.results_store.prefix == store["prefix"]
        # The operator's storage key comes from the Secret's files (mounted), never from its environment.
        assert objectstore.credential_of(cfg.results_store) == ("password-from-the-secret",) * 2
    else:
        assert cfg.results_store is None
    assert cfg.results_max_pending == overrides.get("results", {}).get("maxPending", 5000)


def test_external_redis_without_a_secret_gives_no_password(helm_env: dict[str, str], tmp_path: Path) -> None:
    docs = render(helm_env, "--set", "redis.bundled.enabled=false", "--set", "redis.external.url=redis://r:6379/0")
    environ = operator_environment(docs, tmp_path)
    assert "ANALYSIS_OPERATOR_REDIS_PASSWORD" not in environ
    assert "ANALYSIS_OPERATOR_REDIS_PASSWORD_FILE" not in environ
    assert not of_kind(docs, "StatefulSet")
    assert not of_kind(docs, "Secret")
    assert OperatorConfig.from_env(environ).redis_password is None


def test_the_password_comes_from_the_secret_as_a_file_and_nowhere_else(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, *values_args("external-redis-values.yaml"))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert (
        env_of(container)["ANALYSIS_OPERATOR_REDIS_PASSWORD_FILE"]["value"] == "/etc/analysis-operator/redis/password"
    )
    assert {v["name"]: v for v in pod["volumes"]}["redis-auth"]["secret"] == {
        "secretName": "redis-auth",
        "items": [{"key": "redis-password", "path": "password"}],
    }
    bundled = render(helm_env)
    password = base64.b64decode(one(bundled, "Secret")["data"]["password"]).decode()
    others = [doc for doc in bundled if doc["kind"] != "Secret"]
    assert password not in json.dumps(others)
    # No container of any pod the chart makes has a secret in, or referred to by, its environment.
    for doc in [*docs, *bundled]:
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        for each in template.get("containers", []):
            refs = [v["name"] for v in each.get("env", []) if "secretKeyRef" in v.get("valueFrom", {})]
            assert refs == [], f"{doc['kind']} {doc['metadata']['name']}: {refs}"


# ------------------------------------------------------------------ CRD, bundled Redis, optional objects


def test_the_crds_are_the_generated_ones_with_a_keep_policy(helm_env: dict[str, str]) -> None:
    rendered = {doc["metadata"]["name"]: doc for doc in of_kind(render(helm_env), "CustomResourceDefinition")}
    generated = [yaml.safe_load(path.read_text(encoding="utf-8")) for path in sorted((ROOT / "crds").glob("*.yaml"))]
    assert sorted(rendered) == sorted(doc["metadata"]["name"] for doc in generated)
    assert f"{PROVIDER_PLURAL}.analysis.dev" in rendered
    for doc in generated:
        crd = rendered[doc["metadata"]["name"]]
        assert crd["spec"] == doc["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert not of_kind(render(helm_env, "--set", "crds.install=false"), "CustomResourceDefinition")


def test_the_bundled_redis(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, *values_args("cluster-wide-bundled-values.yaml"))
    statefulset = one(docs, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    config = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-redis-config"))
    lines = config["data"]["redis.conf"].splitlines()
    assert "appendonly yes" in lines
    assert "maxmemory-policy noeviction" in lines
    secret = one(docs, "Secret")["data"]
    password = base64.b64decode(secret["password"]).decode()
    assert len(password) == 32
    assert password.isalnum()
    assert base64.b64decode(secret["auth.conf"]).decode() == f"requirepass {password}\n"
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert password not in json.dumps(container)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    services = {s["metadata"]["name"]: s["spec"] for s in of_kind(docs, "Service")}
    assert sorted(services) == ["analysis-operator-metrics", "analysis-operator-redis"]
    assert services["analysis-operator-redis"]["clusterIP"] == "None"


@pytest.mark.parametrize("values", ["cluster-wide-bundled-values.yaml", "namespaces-values.yaml"])
def test_only_the_operator_and_workers_reach_the_bundled_redis(helm_env: dict[str, str], values: str) -> None:
    docs = render(helm_env, *values_args(values))
    policy = next(d for d in of_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-redis"))
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "redis", "protocol": "TCP"}]
    operator_peer, worker_peer = ingress["from"]
    operator_labels = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert operator_peer == {"podSelector": {"matchLabels": operator_labels}}
    assert worker_peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "analysis-worker"
    watch = ci_values(values).get("watch", {})
    if watch.get("allNamespaces", True):
        assert worker_peer["namespaceSelector"] == {}
    else:
        (expression,) = worker_peer["namespaceSelector"]["matchExpressions"]
        assert expression == {"key": "kubernetes.io/metadata.name", "operator": "In", "values": watch["namespaces"]}


@pytest.mark.parametrize("values", CI_FILES)
def test_every_pod_runs_as_a_high_uid_and_the_operator_admits_only_scrapes(
    helm_env: dict[str, str], values: str
) -> None:
    docs = render(helm_env, *values_args(values))
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        users = [pod.get("securityContext", {}).get("runAsUser")]
        users += [c.get("securityContext", {}).get("runAsUser") for c in pod["containers"]]
        assert all(user is None or user >= 10000 for user in users), f"{doc['kind']} {doc['metadata']['name']}"
        assert pod.get("securityContext", {}).get("runAsUser", 0) >= 10000, doc["metadata"]["name"]
    # On by default: nothing reaches the operator but its metrics port; no egress rule (the API server's
    # address differs from cluster to cluster, and an egress rule that misses it stops the operator).
    policy = next(d for d in of_kind(docs, "NetworkPolicy") if d["metadata"]["name"] == "analysis-operator")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert [rule["ports"] for rule in policy["spec"]["ingress"]] == [[{"port": "metrics", "protocol": "TCP"}]]


def test_the_bundled_redis_image_is_pinned_by_digest_unless_overridden(helm_env: dict[str, str]) -> None:
    def image(*args: str) -> str:
        return str(one(render(helm_env, *args), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["image"])

    assert re.fullmatch(r"redis:7\.4-alpine@sha256:[0-9a-f]{64}", image())
    # What the dev cluster and the README do: their own build, by tag.
    overridden = image(
        "--set", "redis.bundled.image.repository=analysis-redis", "--set", "redis.bundled.image.tag=0.1.0"
    )
    assert overridden == "analysis-redis:0.1.0"


def test_a_worker_cpu_limit_is_there_when_asked_for(helm_env: dict[str, str], tmp_path: Path) -> None:
    plain = OperatorConfig.from_env(operator_environment(render(helm_env), tmp_path))
    assert plain.worker.cpu_limit is None
    docs = render(helm_env, "--set", "worker.cpuLimit=500m")
    settings = OperatorConfig.from_env(operator_environment(docs, tmp_path)).worker
    assert settings.cpu_limit == "500m"
    batch = builders.Batch("b", "ns", "uid")
    spec = {
        "items": ["A"],
        "providers": {"p": {"type": "offline"}},
        "stages": [{"name": "s", "provider": "p", "prompt": "{{ item }}"}],
    }
    compiled = plan.compile_plan("uid", v1alpha1.AnalysisBatchSpec.model_validate(spec))
    pod = builders.worker_pod_template(batch, compiled, compiled.stage("s"), settings, mode="job")
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"memory": "512Mi", "cpu": "500m"}


def test_the_optional_objects(helm_env: dict[str, str]) -> None:
    plain = render(helm_env)
    assert not {doc["kind"] for doc in plain} & {"ServiceMonitor", "PodMonitor"}
    # Only the operator's own budget (two replicas by default); one replica has none (it would block drains).
    assert [d["metadata"]["name"] for d in of_kind(plain, "PodDisruptionBudget")] == ["analysis-operator"]
    assert not of_kind(render(helm_env, "--set", "operator.replicas=1"), "PodDisruptionBudget")
    docs = render(helm_env, *values_args("all-optional-values.yaml"))
    kinds = {doc["kind"] for doc in docs}
    assert {"ServiceMonitor", "PodMonitor", "PodDisruptionBudget"} <= kinds
    monitor = one(docs, "PodMonitor")["spec"]
    assert monitor["namespaceSelector"] == {"matchNames": ["chart-ci-team-a"]}
    assert monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    dashboard = next(d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "chart-ci-monitoring"
    shipped = json.loads((CHART / "dashboards" / "analysis-operator.json").read_text(encoding="utf-8"))
    assert json.loads(dashboard["data"]["analysis-operator.json"]) == shipped
    image = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/analysis/analysis-operator@sha256:" + "0123456789abcdef" * 4


# ------------------------------------------------------------------ a real install (no operator running)


@dataclasses.dataclass
class Release:
    namespace: str  # the release's
    watched: str  # the one namespace the operator watches
    env: dict[str, str]  # helm's environment, with the cluster's KUBECONFIG
    args: list[str]  # the --set flags it was installed with


@pytest.fixture
def installed(
    devcluster: cluster.DevCluster, crds_installed: Path, helm_env: dict[str, str], namespace: str
) -> Iterator[Release]:
    """The chart installed for real (bundled Redis; its pods stay Pending: this cluster has no node)."""
    env = {**helm_env, "KUBECONFIG": str(devcluster.kubeconfig)}
    watched = f"{namespace}-w"
    devcluster.kubectl("create", "namespace", watched)
    args = [
        "--set",
        "crds.install=false",
        "--set",
        "watch.allNamespaces=false",
        "--set",
        f"watch.namespaces={{{watched}}}",
    ]
    run_helm(env, "install", "ao", str(CHART), "-n", namespace, *args)
    try:
        yield Release(namespace, watched, env, args)
    finally:
        run_helm(env, "uninstall", "ao", "-n", namespace, check=False)
        devcluster.kubectl("delete", "namespace", watched, "--wait=false", check=False)


@pytest.fixture
def installed_cluster_wide(
    devcluster: cluster.DevCluster, crds_installed: Path, helm_env: dict[str, str], namespace: str
) -> Iterator[str]:
    """The chart installed watching every namespace, as release "aoc" (so its ClusterRole has a name of its own).

    Returns the release's namespace. Redis is external (and absent): only the RBAC is looked at.
    """
    env = {**helm_env, "KUBECONFIG": str(devcluster.kubeconfig)}
    args = ["--set", "crds.install=false", "--set", "redis.bundled.enabled=false"]
    args += ["--set", "redis.external.url=redis://redis.elsewhere:6379/0"]
    run_helm(env, "install", "aoc", str(CHART), "-n", namespace, *args)
    try:
        yield namespace
    finally:
        run_helm(env, "uninstall", "aoc", "-n", namespace, check=False)


def authorizer(devcluster: cluster.DevCluster, account: str) -> Callable[..., bool]:
    """``can(verb, resource, namespace or None for the cluster scope, *flags)``, asked of the real authorizer."""

    def can(verb: str, resource: str, where: str | None, *extra: str) -> bool:
        scope = ["-n", where] if where else ["--all-namespaces"]
        result = devcluster.kubectl("auth", "can-i", verb, resource, "--as", account, *scope, *extra, check=False)
        return result.stdout.strip() == "yes"

    return can


ACCOUNTS = f"{PROVIDER_PLURAL}.analysis.dev"


def assert_the_accounts_rights(can: Callable[..., bool], own_namespace: str) -> None:
    """What the operator needs of AnalysisProviders, and nothing more of them, in any mode."""
    for verb in ("list", "watch", "patch"):
        assert can(verb, ACCOUNTS, None), f"cannot {verb} {ACCOUNTS}"
    assert can("patch", ACCOUNTS, None, "--subresource=status")
    # Accounts are the platform admin's: the operator neither makes nor removes nor rewrites them.
    for verb in ("create", "delete", "update"):
        assert not can(verb, ACCOUNTS, None), f"can {verb} {ACCOUNTS}"
    assert not can("update", ACCOUNTS, None, "--subresource=status")
    # Their Events (Kopf posts a cluster-scoped object's Events in its own namespace) and CA bundles.
    assert can("create", "events", own_namespace)
    assert can("get", "configmaps", own_namespace)
    for verb in ("get", "list"):
        assert not can(verb, "secrets", own_namespace)


def test_the_installed_rbac_grants_what_the_operator_needs_and_no_more(
    devcluster: cluster.DevCluster, installed: Release
) -> None:
    """Asked of the real authorizer, as the operator's ServiceAccount."""
    can = authorizer(devcluster, f"system:serviceaccount:{installed.namespace}:ao-analysis-operator")
    elsewhere = "default"  # neither watched nor the operator's own
    needed = [
        ("create", "secrets"),
        ("patch", "secrets"),
        ("watch", PLURAL),
        ("create", "events"),
        ("list", "events"),  # a worker pod's FailedMount Events: a missing key Secret
        ("delete", "jobs.batch"),
        ("delete", "configmaps"),
        ("delete", "serviceaccounts"),
        ("patch", "deployments.apps"),
        ("patch", "pods"),
        ("delete", "pods"),  # a Job's retired idle pods, before its parallelism is lowered
    ]
    for verb, resource in needed:
        assert can(verb, resource, installed.watched), f"cannot {verb} {resource} in {installed.watched}"
        assert not can(verb, resource, elsewhere), f"can {verb} {resource} outside the watched namespace"
    assert can("patch", PLURAL, installed.watched, "--subresource=status")
    for verb in ("get", "list", "watch"):
        assert not can(verb, "secrets", installed.watched)
    assert not can("list", PLURAL, None)
    assert not can("list", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert_the_accounts_rights(can, installed.namespace)
    # In its own namespace, only what the accounts need: not the batches' rights.
    for verb, resource in [("list", "configmaps"), ("create", "configmaps"), ("create", "secrets"), ("watch", PLURAL)]:
        assert not can(verb, resource, installed.namespace), f"can {verb} {resource} in its own namespace"
    assert not can("create", "events", elsewhere)


def test_the_cluster_wide_rbac_grants_the_batches_and_the_accounts_rights(
    devcluster: cluster.DevCluster, installed_cluster_wide: str
) -> None:
    can = authorizer(devcluster, f"system:serviceaccount:{installed_cluster_wide}:aoc-analysis-operator")
    for verb, resource in [("watch", PLURAL), ("create", "events"), ("patch", "jobs.batch"), ("get", "configmaps")]:
        assert can(verb, resource, None), f"cannot {verb} {resource} across the cluster"
    assert can("list", "customresourcedefinitions.apiextensions.k8s.io", None)
    assert not can("get", "secrets", None)
    assert_the_accounts_rights(can, installed_cluster_wide)


async def test_the_operators_client_does_its_work_within_the_installed_rbac(
    devcluster: cluster.DevCluster, installed: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every call of ``kube.Kube`` the reconciler and the teardown make, as the chart's ServiceAccount."""
    watched = installed.watched
    manifest = {
        "apiVersion": "analysis.dev/v1alpha1",
        "kind": "AnalysisBatch",
        "metadata": {"name": "rbac", "namespace": watched},
        "spec": {
            "items": ["a"],
            "providers": {"local": {"type": "offline"}},
            "stages": [
                {"name": "analyze", "provider": "local", "prompt": "{{ item }}"},
                {"name": "report", "provider": "local", "prompt": "{{ input }}", "executor": "Deployment"},
            ],
        },
    }
    body = json.loads(devcluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(manifest)).stdout)
    batch = builders.Batch("rbac", watched, body["metadata"]["uid"])
    spec = v1alpha1.AnalysisBatchSpec.model_validate(manifest["spec"])
    compiled = plan.compile_plan(batch.uid, spec)
    settings = builders.WorkerSettings(image="analysis-worker:0.1.0", redis_url="redis://redis:6379/0", redis_auth=True)
    config_path = devcluster.kubeconfig_as(installed.namespace, "ao-analysis-operator", tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(config_path))
    client = kube.Kube(timeout_s=10)
    redis = queue.connect(devcluster.redis_url)
    try:
        children = [
            builders.service_account(batch),
            builders.redis_secret(batch, "analysis-batch-x", "pw"),
            builders.plan_configmap(batch, compiled, settings),
        ]
        children += [builders.workload(batch, compiled, stage, settings, size=1) for stage in compiled.stages]
        for child in children:
            await client.apply(child)
        plan_name = builders.plan_configmap(batch, compiled, settings)["metadata"]["name"]
        assert await client.get(kube.CONFIGMAPS, watched, plan_name) is not None
        owned = export.results_configmap(batch, 0, ['{"item": "a"}'])
        kopf.append_owner_reference(owned, owner=kopf.Body(body))  # as before results were kept by default
        await client.create(owned)
        (chunk,) = [c.to_dict() for c in await client.list(kube.CONFIGMAPS, watched, results.labels(batch.uid))]
        await client.replace(export.plan_export(batch, [chunk], [{"item": "b"}])[0])
        # The two rows' ends, as Redis lists them (a sink holding more rows than Redis lists ends has diverged).
        ends = [keys.BatchKeys(batch.uid).idem("draft", item, 0, 1) for item in "ab"]
        await redis.rpush(keys.BatchKeys(batch.uid).finals, *ends)
        await client.merge_patch(kube.BATCHES.Status, watched, batch.name, {"status": {"phase": "Running"}})
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "worker", "namespace": watched, "labels": builders.labels(batch)},
            "spec": {"containers": [{"name": "w", "image": "analysis-worker:0.1.0"}]},
        }
        devcluster.kubectl("create", "-f", "-", input=json.dumps(pod))
        patch = {"metadata": {"annotations": {builders.ANNOTATION_DELETION_COST: "0"}}}
        await client.merge_patch(kube.PODS, watched, "worker", patch)
        assert await client.delete(kube.PODS, watched, "worker") is True  # a Job's retired pod, at scale-in
        for kind in (kube.JOBS, kube.DEPLOYMENTS):
            assert len(await client.list(kind, watched, {wellknown.LABEL_BATCH_UID: batch.uid})) == 1
        await teardown.tear_down(client, redis, kopf.Body(body), retry=0, logger=logging.getLogger("test"))
        for kind in (kube.JOBS, kube.DEPLOYMENTS, kube.SERVICEACCOUNTS):
            assert await client.list(kind, watched, {wellknown.LABEL_BATCH_UID: batch.uid}) == []
        # The results stay by default (spec.results.onDelete: Retain), without the owner garbage collection follows.
        (kept,) = await client.list(kube.CONFIGMAPS, watched, {wellknown.LABEL_BATCH_UID: batch.uid})
        assert kept.metadata is not None
        assert kept.metadata.labels is not None
        assert kept.metadata.labels[results.LABEL_RESULTS] == "true"
        assert not kept.metadata.ownerReferences
        deleting = {**body, "spec": {**body["spec"], "results": {"onDelete": "Delete"}}}
        await teardown.tear_down(client, redis, kopf.Body(deleting), retry=0, logger=logging.getLogger("test"))
        assert await client.list(kube.CONFIGMAPS, watched, {wellknown.LABEL_BATCH_UID: batch.uid}) == []
        assert await client.delete(kube.BATCHES, watched, batch.name) is True
    finally:
        await client.close()
        await redis.aclose()


def test_the_bundled_redis_password_survives_an_upgrade(devcluster: cluster.DevCluster, installed: Release) -> None:
    def get(kind: str, name: str) -> Obj:
        return dict(json.loads(devcluster.kubectl("get", kind, name, "-n", installed.namespace, "-o", "json").stdout))

    before = base64.b64decode(get("secret", "ao-analysis-operator-redis")["data"]["password"]).decode()
    run_helm(
        installed.env,
        "upgrade",
        "ao",
        str(CHART),
        "-n",
        installed.namespace,
        *installed.args,
        "--set",
        "operator.statusInterval=3",
    )
    after = base64.b64decode(get("secret", "ao-analysis-operator-redis")["data"]["password"]).decode()
    assert after == before
    container = get("deployment", "ao-analysis-operator")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["ANALYSIS_OPERATOR_STATUS_INTERVAL"]["value"] == "3"


# ------------------------------------------------------------------ checkov

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"  # `make checkov` installs it (a pinned version)
# The checks the chart fails on purpose, by id: each is listed in the README with its reason.
ACCEPTED = {
    "CKV_K8S_11": "CPU limits should be set",  # off by default: they throttle even on an idle node
    "CKV_K8S_15": "Image Pull Policy should be Always",  # IfNotPresent: images by digest, nodes without a registry
    "CKV_K8S_38": "Service Account Tokens are only mounted where necessary",  # the operator talks to the API
    "CKV_K8S_43": "Image should use digest",  # our images' digests are the installer's registry's: .digest sets them
}


# What the workers fail on purpose besides: they are a team's pods in the team's namespace, where the operator makes
# no NetworkPolicy (the team's policy is the team's; the Redis ACL is the barrier between teams).
WORKER_ACCEPTED = {"CKV2_K8S_6": "pods which lack an associated NetworkPolicy"}


def checkov_failures(rendered: str, tmp_path: Path) -> set[tuple[str, str]]:
    """(check id, resource) of every check checkov fails on ``rendered`` manifests, offline."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make checkov`"
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(rendered, encoding="utf-8")
    scanned = subprocess.run(
        [str(CHECKOV), "--framework", "kubernetes", "-f", str(manifests), "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert scanned.stdout.strip(), f"checkov printed nothing: {scanned.stderr[-2000:]}"
    reports = json.loads(scanned.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    passed = sum(int(r["summary"]["passed"]) for r in reports)
    assert passed > 50, f"checkov passed only {passed} checks: did it scan anything?"
    return {(f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]}


@pytest.mark.parametrize("values", [None, *CI_FILES])
def test_checkov_finds_nothing_but_the_accepted_checks(
    helm_env: dict[str, str], tmp_path: Path, values: str | None
) -> None:
    text = run_helm(
        helm_env, "template", "analysis-operator", str(CHART), "-n", RELEASE_NAMESPACE, *values_args(values)
    )
    failed = checkov_failures(text.stdout, tmp_path)
    assert {check for check, _ in failed} <= set(ACCEPTED), sorted(failed)
    # Among what it no longer finds: secrets in environment variables, a missing readiness probe, a low uid.
    assert not {check for check, _ in failed} & {"CKV_K8S_35", "CKV_K8S_9", "CKV_K8S_40"}


def test_the_checkov_scan_can_fail(helm_env: dict[str, str], tmp_path: Path) -> None:
    # The scan sees what it is for: a Redis password put back into the operator's environment fails it.
    docs = render(helm_env)
    deployment = one(docs, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "r", "key": "p"}}})
    failed = checkov_failures(yaml.safe_dump_all(docs), tmp_path)
    assert "CKV_K8S_35" in {check for check, _ in failed}


def test_the_readme_lists_each_accepted_check_with_its_reason() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for check in [*ACCEPTED, *WORKER_ACCEPTED]:
        (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{check}`")]
        cells = row.split("|")
        assert len(cells) >= 4, row
        assert cells[3].strip(), f"{check}: no reason in the README"


def test_checkov_finds_nothing_in_the_workers_but_the_accepted_checks(tmp_path: Path) -> None:
    # What the operator makes in a team's namespace, with a Redis password and a provider key: no secret in any
    # environment, no service-account token, the restricted profile.
    batch = builders.Batch("scan", "team-a", "4c1f9d2e-0b7a-4f55-9a3e-2d6c1e8b7a90")
    spec = {
        "items": ["A"],
        "providers": {
            "claude": {"type": "anthropic", "model": "m", "apiKeySecretRef": {"name": "llm-keys", "key": "anthropic"}}
        },
        "stages": [
            {"name": "job", "provider": "claude", "prompt": "{{ item }}"},
            {"name": "idle", "provider": "claude", "prompt": "{{ input }}", "executor": "Deployment"},
        ],
    }
    compiled = plan.compile_plan(batch.uid, v1alpha1.AnalysisBatchSpec.model_validate(spec))
    settings = builders.WorkerSettings(image="analysis-worker:0.1.0", redis_url="redis://redis:6379/0", redis_auth=True)
    made = [
        builders.worker_job(batch, compiled, compiled.stage("job"), settings, parallelism=2),
        builders.worker_deployment(batch, compiled, compiled.stage("idle"), settings, replicas=1),
        builders.redis_secret(batch, "analysis-batch-x", "pw"),
        builders.service_account(batch),
    ]
    failed = checkov_failures(yaml.safe_dump_all(made), tmp_path)
    assert {check for check, _ in failed} <= set(ACCEPTED) - {"CKV_K8S_38"} | set(WORKER_ACCEPTED), sorted(failed)
