"""A batch whose status the API server keeps refusing ends Failed, saying why, instead of Running for ever.

The refusal is real: a ValidatingAdmissionPolicy (CEL, run by the dev
cluster's kube-apiserver) denies every write of the test batch's status that
does not report it Failed, as a cluster would deny a status grown past its
limits. The real ``analysis-operator`` runs the batch: after its status was
refused ``reconciler.STATUS_REFUSALS`` times over ``STATUS_REFUSED_S``, it
writes the small Failed status (``status.unwritable``), posts a
``StatusWriteFailed`` Event and stops the batch's claims.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_sync

from analysis_core import keys, wire
from analysis_devcluster import cluster, processes
from analysis_operator import reconciler

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("crds_installed")]

OPERATOR = Path(sys.executable).parent / "analysis-operator"
DENIAL = "this cluster takes no status of this batch but Failed (a test's policy)"


def policy(namespace: str) -> list[dict[str, object]]:
    name = f"refuse-status-{namespace}"
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["analysis.dev"],
                            "apiVersions": ["v1alpha1"],
                            "operations": ["UPDATE"],
                            "resources": ["analysisbatches/status"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"object.metadata.namespace != '{namespace}' || "
                        "(has(object.status) && has(object.status.phase) && object.status.phase == 'Failed')",
                        "message": DENIAL,
                    }
                ],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        },
    ]


@pytest.mark.timeout(240)
def test_a_status_the_api_server_keeps_refusing_fails_the_batch_with_the_reason(
    devcluster: cluster.DevCluster, namespace: str, tmp_path: Path
) -> None:
    for obj in policy(namespace):
        devcluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    log = tmp_path / "operator.log"
    name = "refused"
    operator: subprocess.Popen[bytes] | None = None
    try:
        with log.open("ab") as out:
            operator = subprocess.Popen(
                [str(OPERATOR), f"--namespace={namespace}"],
                env={
                    "PATH": f"{OPERATOR.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}",
                    **{key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ},
                    "HOME": os.environ.get("HOME", "/tmp"),
                    "KUBECONFIG": str(devcluster.kubeconfig),
                    "ANALYSIS_OPERATOR_REDIS_URL": devcluster.redis_url,
                    "ANALYSIS_OPERATOR_METRICS_PORT": "0",
                    "ANALYSIS_OPERATOR_STATUS_INTERVAL": "0.5",
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        manifest = {
            "apiVersion": "analysis.dev/v1alpha1",
            "kind": "AnalysisBatch",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "items": [f"I{n}" for n in range(5)],
                "providers": {"local": {"type": "offline"}},
                "stages": [{"name": "only", "provider": "local", "prompt": "{{ item }}"}],
            },
        }
        devcluster.kubectl("create", "-f", "-", input=json.dumps(manifest))

        def batch() -> dict[str, object]:
            got = devcluster.kubectl("get", "analysisbatch", name, "-n", namespace, "-o", "json")
            return dict(json.loads(got.stdout))

        def failed() -> dict[str, object] | None:
            status = batch().get("status")
            return status if isinstance(status, dict) and status.get("phase") == "Failed" else None

        budget = reconciler.STATUS_REFUSED_S + 60
        status = processes.eventually(
            failed, budget, "the batch Failed", interval=1.0, details=lambda: log.read_text(errors="replace")[-3000:]
        )
        conditions = {c["type"]: c for c in status["conditions"]}  # type: ignore[index]
        assert conditions["Failed"]["status"] == "True"
        assert conditions["Failed"]["reason"] == "StatusWriteFailed"
        assert DENIAL in conditions["Failed"]["message"]
        assert (conditions["Stalled"]["status"], conditions["Ready"]["status"]) == ("True", "False")
        assert conditions["Complete"]["status"] == "False"
        assert DENIAL in str(status["message"])
        assert status["completionTime"]
        events = json.loads(
            devcluster.kubectl(
                "get", "events", "-n", namespace, "--field-selector", "reason=StatusWriteFailed", "-o", "json"
            ).stdout
        )["items"]
        assert [e["involvedObject"]["name"] for e in events] == [name]
        # Its workers may claim nothing more.
        uid = str(batch()["metadata"]["uid"])  # type: ignore[index]
        client = cluster.redis_client(devcluster.redis_url, timeout=5.0)
        try:
            assert isinstance(client, redis_sync.Redis)
            assert client.hget(keys.BatchKeys(uid).flags, wire.FLAG_SUSPENDED)
        finally:
            client.close()
        # Terminal: nothing writes it back to Running.
        time.sleep(3)
        assert failed() is not None
    finally:
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGKILL)
            operator.wait(10)
        devcluster.kubectl("delete", "analysisbatch", name, "-n", namespace, "--wait=false", check=False)
        for obj in reversed(policy(namespace)):
            devcluster.kubectl("delete", str(obj["kind"]).lower(), str(obj["metadata"]["name"]), check=False)  # type: ignore[index]
