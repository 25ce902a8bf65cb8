"""Built children are valid objects, and worker pods pass the ``restricted`` Pod Security Standard."""

import copy
import json
from typing import Any

import pytest

from analysis_core import plan
from analysis_core.api import v1alpha1
from analysis_devcluster.cluster import DevCluster
from analysis_operator import builders

pytestmark = pytest.mark.integration

# Every optional part on: a Redis password (from the batch's Secret) and a price table (in the plan ConfigMap).
SETTINGS = builders.WorkerSettings(
    image="analysis-worker:0.1.0",
    redis_url="redis://redis:6379/0",
    redis_auth=True,
    prices="models:\n  house-model: {input: 1, output: 2}\n",
)


def apply(devcluster: DevCluster, namespace: str, obj: dict[str, Any]) -> Any:
    return devcluster.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", "-o", "json", input=json.dumps(obj), check=False
    )


def test_children_are_accepted_and_worker_pods_are_admitted_as_restricted(
    devcluster: DevCluster, namespace: str
) -> None:
    devcluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    batch = builders.Batch("semis-q3", namespace, "0b9c6c1e-5d7a-4c1b-9a3e-1f2d3c4b5a69")
    spec = v1alpha1.AnalysisBatchSpec.model_validate(
        {
            "items": ["NVDA"],
            "providers": {"gpt": {"type": "openai", "model": "m", "apiKeySecretRef": {"name": "llm-keys", "key": "k"}}},
            "stages": [
                {"name": "analyze", "provider": "gpt", "prompt": "{{ item }}"},
                {"name": "report", "provider": "gpt", "prompt": "{{ input }}", "executor": "Deployment"},
            ],
        }
    )
    compiled = plan.compile_plan(batch.uid, spec)
    children = [builders.plan_configmap(batch, compiled, SETTINGS), builders.service_account(batch)]
    children.append(builders.redis_secret(batch, "analysis-batch-x", "a-password"))
    children += [builders.workload(batch, compiled, stage, SETTINGS, size=2) for stage in compiled.stages]
    for child in children:
        result = apply(devcluster, namespace, child)
        assert result.returncode == 0, f"{child['kind']}: {result.stderr}"
        assert "would violate PodSecurity" not in result.stderr  # the API server warns about templates
    # Admission looks the pod's ServiceAccount up, so that one is created for real.
    devcluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(builders.service_account(batch)))
    template = builders.worker_pod_template(batch, compiled, compiled.stage("analyze"), SETTINGS, mode="job")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", **template["metadata"]},
        "spec": template["spec"],
    }
    admitted = apply(devcluster, namespace, pod)
    assert admitted.returncode == 0, admitted.stderr
    # The namespace really enforces: the same pod with privilege escalation allowed is refused.
    loose = copy.deepcopy(pod)
    loose["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    refused = apply(devcluster, namespace, loose)
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr
