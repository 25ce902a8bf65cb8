"""``helm install`` of the chart into the dev cluster, and batches run by the operator it installed.

On the session's cluster and its real node (one node per machine): the
operator pod runs from the ``analysis-operator`` image built from
``Dockerfile``, as the ServiceAccount the chart made, and creates worker pods
from the ``analysis-worker`` image. The e2e tier's own operator process is
stopped for this module (two operators must not serve one namespace), and the
CRD that the session applied with kubectl is taken over by the release, as
Helm adopts an object that carries its release annotations.

Redis is external in the first two tests: a ``redis-server`` on the pod
bridge's gateway started here with ``--requirepass``, its password in a Secret
the chart refers to, which the operator reads as a mounted file; it sets each
batch's own Redis user and writes that user's password (never the admin's)
into the batch's Secret, which the workers mount. The others run the chart's
bundled Redis: a StatefulSet from the ``analysis-redis`` image (Debian's
redis-server) on a local PersistentVolume. The upgrade test starts from the
release before per-batch users (its chart and images built from the
repository's history) with a batch running, and ends on this checkout's.
Every namespace enforces the "restricted" Pod Security Standard (the
cluster's admission configuration). The README's dev-cluster steps run as written, the chart after them
on the CRD ``kubectl apply`` made. The operator's own log, read with
``kubectl logs`` as a user would, shows no request its RBAC refused.
"""

import base64
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

import analysis_core
from analysis_core import keys, tenancy
from analysis_core.api import wellknown
from analysis_devcluster import binaries, cluster, images, node, processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "analysis-operator"
EXAMPLE = ROOT / "examples" / "ticker-summary.yaml"
README = ROOT / "README.md"
RELEASE, SYSTEM = "analysis-operator", "analysis-system"
CRD = "analysisbatches.analysis.dev"
CRDS = (CRD, "analysisproviders.analysis.dev")  # every CRD the session applied and the chart installs
PASSWORD = "helm-e2e-redis-pw-7d41c0"
# The release before per-batch Redis users and Redis Functions (the last commit before them): the upgrade test
# installs its chart and images, then upgrades to this checkout's.
EARLIER, EARLIER_TAG = "647840b05d5cce8b2e063cec33b2d7e0d43d36b1", f"{analysis_core.__version__}-647840b"
# Without any cluster-scoped right (a namespaced install), Kopf's observers are refused listing and watching
# namespaces and CRDs at the cluster scope; it retries, then falls back to the exact namespaces it was given.
KOPF_CLUSTER_SCOPED = re.compile(
    r"GET https://[^/ ]+/(api/v1/namespaces|apis/apiextensions\.k8s\.io/v1/customresourcedefinitions)[? ]"
    r"|Not enough permissions to (list namespaces|watch for namespaces|watch for resources)"
)
# A 403 as a status code, not the milliseconds of a log line's timestamp (",403").
REFUSED = re.compile(r"forbidden|(?<![,.:])\b403\b|not enough permissions|failed to post an event", re.IGNORECASE)


@dataclasses.dataclass
class Setting:
    dev: cluster.DevCluster
    redis_url: str
    helm_env: dict[str, str]
    bundled: bool = False  # the installed release runs the chart's own Redis
    installed_with: list[str] = dataclasses.field(default_factory=list)  # helm's --set arguments of the install

    def kubectl(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.dev.kubectl(*args, timeout=timeout, check=check)

    def helm(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        argv = [str(binaries.find("helm")), *args]
        result = subprocess.run(argv, env=self.helm_env, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            pods = self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}\n{pods}\n{self.operator_log()}")
        return result

    def namespace(self, name: str) -> None:
        """A namespace that enforces the "restricted" Pod Security Standard, with its default ServiceAccount."""
        labels = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
        manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        self.dev.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        self.kubectl("wait", "--for", "create", "--timeout=30s", "-n", name, "serviceaccount/default", timeout=45)

    def install(self, *sets: str, bundled: bool = False, chart: Path = CHART) -> str:
        """``helm install --wait`` of ``chart``, with the external Redis unless ``bundled``; returns the NOTES."""
        if bundled:
            redis = [
                f"redis.bundled.image.repository={images.REDIS.repository}",
                f"redis.bundled.image.tag={analysis_core.__version__}",
            ]
        else:
            redis = [
                "redis.bundled.enabled=false",
                f"redis.external.url={self.redis_url}",
                "redis.external.existingSecret.name=redis-auth",
            ]
        self.bundled = bundled
        self.installed_with = [f"--set={value}" for value in [*redis, "operator.resultsInterval=1", *sets]]
        return self.helm(
            "install", RELEASE, str(chart), "-n", SYSTEM, "--wait", "--timeout=180s", *self.installed_with
        ).stdout

    def upgrade(self, *sets: str) -> None:
        """``helm upgrade --wait`` to this checkout's chart: the values of the install, ``sets`` over them."""
        extra = [f"--set={value}" for value in sets]
        self.helm(
            "upgrade", RELEASE, str(CHART), "-n", SYSTEM, "--wait", "--timeout=240s", *self.installed_with, *extra
        )

    def slow_example(self, namespace: str, items: list[str]) -> str:
        """The example batch over ``items`` in a new namespace, slowed down (1.5 s a call, 2 at once) to last through
        what a test does to the install meanwhile; returns its name."""
        self.namespace(namespace)
        manifest = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
        manifest["metadata"]["namespace"] = namespace
        manifest["spec"]["items"] = items
        manifest["spec"]["providers"]["summarizer"]["offline"]["latencyMilliseconds"] = 1500
        manifest["spec"]["stages"][0]["concurrency"] = 2
        self.dev.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
        return str(manifest["metadata"]["name"])

    def uninstall(self) -> None:
        self.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout=120s")

    def operator_log(self) -> str:
        """The logs of every operator pod there is (the active one and the standbys), each line named by its pod."""
        selector = "app.kubernetes.io/component=operator"
        result = self.kubectl("logs", "-n", SYSTEM, "-l", selector, "--tail=-1", "--prefix", check=False)
        return result.stdout if result.returncode == 0 else f"(no operator log: {result.stderr.strip()})"

    def leader(self) -> str:
        """The name of the operator pod that holds the leader Lease (its identity is ``<pod>_<suffix>``)."""
        lease = self.get(SYSTEM, "lease", f"{RELEASE}-leader")
        return str(lease["spec"].get("holderIdentity") or "").rsplit("_", 1)[0]

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout))

    def wait(self, namespace: str, name: str, condition: str, timeout_s: int = 150) -> None:
        result = self.kubectl(
            "wait",
            f"--for=condition={condition}",
            f"analysisbatch/{name}",
            "-n",
            namespace,
            f"--timeout={timeout_s}s",
            timeout=timeout_s + 15,
            check=False,
        )
        if result.returncode != 0:
            status = json.dumps(self.get(namespace, "analysisbatch", name).get("status"), indent=1)[-2500:]
            pods = self.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            pytest.fail(f"{name} not {condition}: {result.stderr}\nstatus: {status}\n{pods}\n{self.operator_log()}")

    def redis_keys(self, uid: str) -> list[str]:
        client = redis.Redis.from_url(self.redis_url, password=PASSWORD, decode_responses=True, socket_timeout=5)
        try:
            return sorted(client.scan_iter(match=keys.BatchKeys(uid).pattern, count=1000))
        finally:
            client.close()

    def redis_admin(self) -> tuple[str, str]:
        """The installed release's Redis as its admin reaches it: URL (the bundled one's pod) and password."""
        if not self.bundled:
            return self.redis_url, PASSWORD
        pod = self.get(SYSTEM, "pod", f"{RELEASE}-redis-0")
        secret = self.get(SYSTEM, "secret", f"{RELEASE}-redis")
        return f"redis://{pod['status']['podIP']}:6379/0", base64.b64decode(secret["data"]["password"]).decode()

    def redis_user(self, uid: str) -> dict[str, Any] | None:
        """The batch's Redis ACL user, as the admin sees it (None: there is none)."""
        url, password = self.redis_admin()
        client = redis.Redis.from_url(url, password=password, decode_responses=True, socket_timeout=5)
        try:
            found = client.acl_getuser(tenancy.username(uid))
            return None if found is None else dict(found)
        finally:
            client.close()

    def batch_credential(self, namespace: str, uid: str) -> dict[str, str]:
        """The data of the batch's one Secret (what its workers log in to Redis with), decoded."""
        listed = self.kubectl(
            "get", "secrets", "-n", namespace, "-l", f"{wellknown.LABEL_BATCH_UID}={uid}", "-o", "json"
        )
        secrets = json.loads(listed.stdout)["items"]
        assert [s["metadata"]["ownerReferences"][0]["uid"] for s in secrets] == [uid], secrets
        return {key: base64.b64decode(value).decode() for key, value in secrets[0]["data"].items()}

    def event_reasons(self, namespace: str, name: str) -> set[str]:
        """The reasons of the Events about the object ``name`` in ``namespace``."""
        listed = self.kubectl(
            "get", "events", "-n", namespace, f"--field-selector=involvedObject.name={name}", "-o", "json"
        )
        return {event.get("reason", "") for event in json.loads(listed.stdout)["items"]}


@pytest.fixture(scope="module")
def setting(
    node_cluster: cluster.DevCluster, operator: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setting]:
    root = tmp_path_factory.mktemp("helm-e2e")
    dev = node_cluster
    # The installed operator serves every namespace (or its own): the session's must not compete with it.
    # The next test that needs the session's operator starts it again (the `batches` fixture).
    operator.stop()
    # The session applied the CRDs with kubectl; the release takes them over, as Helm adopts what names it.
    dev.kubectl(
        "annotate",
        "--overwrite",
        "crd",
        *CRDS,
        f"meta.helm.sh/release-name={RELEASE}",
        f"meta.helm.sh/release-namespace={SYSTEM}",
    )
    dev.kubectl("label", "--overwrite", "crd", *CRDS, "app.kubernetes.io/managed-by=Helm")
    with cluster.private_redis(root, password=PASSWORD, host=dev.host) as redis_url:
        # kubectl finds the kubectl-analysis plugin on PATH, as it would for a user who installed it.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}"
        helm_env = {
            **os.environ,
            "PATH": path,
            "KUBECONFIG": str(dev.kubeconfig),
            "HELM_CACHE_HOME": str(root / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(root / "helm" / "config"),
            "HELM_DATA_HOME": str(root / "helm" / "data"),
        }
        here = Setting(dev, redis_url, helm_env)
        here.namespace(SYSTEM)
        here.kubectl("create", "secret", "generic", "redis-auth", "-n", SYSTEM, f"--from-literal=password={PASSWORD}")
        yield here


def refusals(log: str) -> list[str]:
    """Lines of the operator's log that report a request its RBAC refused."""
    return [line for line in log.splitlines() if REFUSED.search(line)]


def results(setting: Setting, namespace: str, name: str) -> list[dict[str, Any]]:
    """``kubectl analysis results`` as a user runs it."""
    shown = subprocess.run(
        [str(binaries.find("kubectl")), "analysis", "results", name, "-n", namespace, "-o", "jsonl"],
        env=setting.helm_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    return [json.loads(line) for line in shown.stdout.splitlines()]


@pytest.mark.timeout(420)
def test_helm_install_runs_a_batch_and_uninstall_keeps_the_crd(setting: Setting) -> None:
    notes = setting.install()
    assert "kubectl get analysisbatches -A -w" in notes
    assert "kubectl analysis status ticker-summary" in notes
    # The chart installed the CRD, with its keep policy.
    crd = setting.get("", "crd", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE
    # The operator runs from its image name, as the service account the chart made.
    deployment = setting.get(SYSTEM, "deployment", RELEASE)
    assert deployment["status"]["readyReplicas"] == 2  # one active, one standing by
    pod = json.loads(
        setting.kubectl("get", "pods", "-n", SYSTEM, "-l", "app.kubernetes.io/component=operator", "-o", "json").stdout
    )["items"][0]
    assert pod["spec"]["containers"][0]["image"] == f"analysis-operator:{analysis_core.__version__}"
    assert pod["spec"]["serviceAccountName"] == RELEASE

    setting.namespace("team-r")
    setting.kubectl("apply", "-n", "team-r", "-f", str(EXAMPLE))
    setting.wait("team-r", "ticker-summary", "Complete")
    batch = setting.get("team-r", "analysisbatch", "ticker-summary")
    assert batch["status"]["items"]["succeeded"] == 3
    rows = results(setting, "team-r", "ticker-summary")
    assert sorted(row["item"] for row in rows) == ["AMD", "NVDA", "TSM"]
    assert {row["status"] for row in rows} == {"succeeded"}
    uid = batch["metadata"]["uid"]
    # The workers reached the password-protected Redis as the batch's own user, from the batch's Secret, which
    # holds that user's password and not the admin's; the user may touch the batch's keys only.
    assert setting.redis_keys(uid)
    assert setting.batch_credential("team-r", uid) == {
        tenancy.SECRET_USERNAME: tenancy.username(uid),
        tenancy.SECRET_PASSWORD: tenancy.password(PASSWORD, uid),
    }
    user = setting.redis_user(uid)
    assert user is not None
    assert user["keys"] == [f"~{keys.BatchKeys(uid).tag}:*"] or user["keys"] == f"~{keys.BatchKeys(uid).tag}:*"
    # Nothing the operator asked for was refused, and the password appears in none of what a user reads.
    log = setting.operator_log()
    assert "ticker-summary" in log
    assert refusals(log) == []
    events = setting.kubectl("get", "events", "-n", "team-r", "-o", "json").stdout
    described = setting.kubectl("describe", "jobs,pods,configmaps,serviceaccounts", "-n", "team-r").stdout
    pods = json.loads(setting.kubectl("get", "pods", "-n", "team-r", "-o", "json").stdout)["items"]
    worker_logs = "".join(
        setting.kubectl("logs", p["metadata"]["name"], "-n", "team-r", "--all-containers", check=False).stdout
        for p in pods
    )
    # Neither the admin password nor the batch's own is in anything but the Secrets.
    for secret in (PASSWORD, tenancy.password(PASSWORD, uid)):
        assert secret not in log + json.dumps(batch) + events + described + worker_logs

    # Deleting the batch: the installed operator tears it down (workers, children, Redis keys) and lets go.
    setting.kubectl("delete", "analysisbatch", "ticker-summary", "-n", "team-r", "--timeout=120s", timeout=150)
    assert setting.redis_keys(uid) == []
    assert setting.redis_user(uid) is None

    setting.uninstall()
    assert setting.kubectl("get", "deployment", RELEASE, "-n", SYSTEM, check=False).returncode != 0
    assert setting.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0
    # The CRD stays (and with it any batch): uninstalling must not delete users' resources.
    assert setting.get("", "crd", CRD)["metadata"]["name"] == CRD


@pytest.mark.timeout(420)
def test_a_namespaced_install_runs_batches_of_its_namespaces_only(setting: Setting) -> None:
    """Roles in the watched namespace only: its batch completes, a batch elsewhere is never touched.

    Also a reinstall under the same release name after an uninstall, which
    takes over the CRD the earlier release kept (if the test above ran first).
    """
    for name in ("team-a", "team-b"):
        setting.namespace(name)
    setting.install("watch.allNamespaces=false", "watch.namespaces={team-a}")
    roles = json.loads(
        setting.kubectl("get", "roles", "-A", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "json").stdout
    )["items"]
    # The watched namespace's Role, and in the release's own one for the AnalysisProviders' Events and CA bundles
    # and one for the replicas' leader Lease.
    assert sorted((role["metadata"]["namespace"], role["metadata"]["name"]) for role in roles) == [
        (SYSTEM, f"{RELEASE}-accounts"),
        (SYSTEM, f"{RELEASE}-leader"),
        ("team-a", RELEASE),
    ]
    # Cluster-wide, only the AnalysisProviders' rules (they are cluster-scoped).
    assert setting.kubectl("get", "clusterrole", RELEASE, check=False).returncode != 0
    assert setting.get("", "clusterrole", f"{RELEASE}-accounts")["rules"]
    # The unwatched one first: by the time the watched one is done, the operator had every chance to touch it.
    setting.kubectl("apply", "-n", "team-b", "-f", str(EXAMPLE))
    setting.kubectl("apply", "-n", "team-a", "-f", str(EXAMPLE))
    setting.wait("team-a", "ticker-summary", "Complete")
    assert setting.get("team-a", "analysisbatch", "ticker-summary")["status"]["items"]["succeeded"] == 3
    untouched = setting.get("team-b", "analysisbatch", "ticker-summary")
    assert "status" not in untouched
    assert not untouched["metadata"].get("finalizers")
    # Whatever the operator does in its namespace, its Role allows; only Kopf's cluster-wide observers are refused.
    refused = refusals(setting.operator_log())
    assert [line for line in refused if not KOPF_CLUSTER_SCOPED.search(line)] == []
    setting.kubectl("delete", "analysisbatch", "ticker-summary", "-n", "team-a", "--timeout=120s", timeout=150)
    setting.kubectl("delete", "analysisbatch", "ticker-summary", "-n", "team-b", "--timeout=30s")
    setting.uninstall()


@pytest.mark.timeout(420)
def test_the_bundled_redis_runs_from_its_image_on_a_local_volume(setting: Setting) -> None:
    """The chart's own Redis: a StatefulSet pod from the ``analysis-redis`` image, its AOF on a local volume."""
    setting.install(bundled=True)
    statefulset = f"{RELEASE}-redis"
    pod = setting.get(SYSTEM, "pod", f"{statefulset}-0")
    assert pod["spec"]["containers"][0]["image"] == f"{images.REDIS.repository}:{analysis_core.__version__}"
    assert all(s["ready"] for s in pod["status"]["containerStatuses"])
    # The claim from the volumeClaimTemplate was bound, on first use, to one of the node's local volumes.
    claim = setting.get(SYSTEM, "pvc", f"data-{statefulset}-0")
    assert claim["status"]["phase"] == "Bound"
    assert claim["spec"]["storageClassName"] == node.STORAGE_CLASS
    volume = Path(setting.get("", "pv", claim["spec"]["volumeName"])["spec"]["local"]["path"])
    # Inside the container: the chart's uid, and a Redis that wants the password it was given.
    whoami = setting.kubectl("exec", "-n", SYSTEM, f"{statefulset}-0", "--", "id", "-u").stdout.strip()
    assert whoami == "10001"
    with_file = 'REDISCLI_AUTH="$(cat /etc/redis/auth/password)" redis-cli ping'  # as the probes do
    pong = setting.kubectl("exec", "-n", SYSTEM, f"{statefulset}-0", "--", "sh", "-c", with_file).stdout.strip()
    assert pong == "PONG"
    # The password is in no variable of the container: a plain redis-cli is refused.
    refused = setting.kubectl("exec", "-n", SYSTEM, f"{statefulset}-0", "--", "redis-cli", "ping", check=False)
    assert "NOAUTH" in refused.stdout + refused.stderr

    setting.namespace("bundled")
    setting.kubectl("apply", "-n", "bundled", "-f", str(EXAMPLE))
    setting.wait("bundled", "ticker-summary", "Complete")
    assert setting.get("bundled", "analysisbatch", "ticker-summary")["status"]["items"]["succeeded"] == 3
    # Redis wrote its append-only file onto the volume, owned through the pod's fsGroup.
    aof = [path for path in volume.rglob("*.aof") if path.stat().st_size > 0]
    assert aof, f"no append-only file under {volume}: {sorted(volume.rglob('*'))}"
    assert all(path.stat().st_gid == 10001 for path in aof)
    assert refusals(setting.operator_log()) == []

    setting.kubectl("delete", "analysisbatch", "ticker-summary", "-n", "bundled", "--timeout=120s", timeout=150)
    setting.uninstall()
    setting.kubectl("delete", "pvc", "-n", SYSTEM, "-l", "app.kubernetes.io/component=redis", "--timeout=60s")


def readme_walkthrough() -> list[str]:
    """The shell commands of the README's kind walkthrough, continuation lines joined, comments dropped."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Running on a real cluster with kind", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


@pytest.mark.timeout(600)
def test_the_readme_kind_walkthrough_runs_here_but_for_kind_itself(setting: Setting) -> None:
    """Every step of "Running on a real cluster with kind" but kind's own, on the dev cluster's node.

    ``make images`` builds on the Debian base here (no registry to pull the
    public base from); the archives it leaves are what ``kind load
    image-archive`` would load, and the node imported the same images.
    """
    commands = readme_walkthrough()
    skipped = [c for c in commands if c.startswith("kind ")]
    assert [c.split()[1] for c in skipped] == ["create", "load", "load", "load", "delete"], commands
    loaded = [c.split()[3] for c in skipped if c.split()[1] == "load"]
    env = {**setting.helm_env, "PATH": f"{binaries.bin_dir()}{os.pathsep}{setting.helm_env['PATH']}"}
    watcher: subprocess.Popen[str] | None = None
    try:
        for command in commands:
            if command.startswith("kind "):
                continue
            if command == "make images":
                command = "make images BASE_IMAGE=debian"
            if command.endswith(" -w"):
                # A watch, left to a user's Ctrl-C: it runs beside the next steps and must show the batch complete.
                watcher = subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                continue
            ran = subprocess.run(
                ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=420, check=False
            )
            assert ran.returncode == 0, f"{command}\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
            if command.startswith("kubectl analysis results"):
                assert all(ticker in ran.stdout for ticker in ("NVDA", "AMD", "TSM")), ran.stdout
        for archive in loaded:
            manifest = json.loads(
                subprocess.run(
                    ["tar", "-xOf", str(ROOT / archive), "manifest.json"], capture_output=True, text=True, check=True
                ).stdout
            )
            assert manifest[0]["RepoTags"], archive
    finally:
        if watcher is not None:
            watcher.kill()
            watched = watcher.communicate(timeout=10)[0]
    assert re.search(r"ticker-summary\s+Complete", watched), watched
    setting.kubectl("delete", "analysisbatch", "ticker-summary", "-n", "research", "--timeout=120s", timeout=150)
    setting.uninstall()
    setting.kubectl("delete", "pvc", "-n", SYSTEM, "-l", "app.kubernetes.io/component=redis", "--timeout=60s")


def readme_dev_cluster_blocks() -> list[list[str]]:
    """The shell blocks of the README's "Working with a dev cluster", each as its commands (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Working with a dev cluster", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.DOTALL):
        lines = [line.split("  #", 1)[0].strip() for line in block.replace("\\\n", " ").splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


@pytest.mark.timeout(600)
def test_the_readme_dev_cluster_steps_then_its_chart_run_as_written(setting: Setting, tmp_path: Path) -> None:
    """The README's dev-cluster steps (the operator on the host), then its chart on the same cluster.

    The reader's CRD was made by ``kubectl apply`` and carries no Helm ownership, so the release must take it
    over. Starting and stopping the dev cluster are left out (the tests hold it), and its env file is the
    session cluster's ``env()``.
    """
    on_host, chart = readme_dev_cluster_blocks()
    assert (on_host[0], chart[-1]) == ("make dev-cluster", "make dev-cluster-down"), (on_host, chart)
    assert on_host[1] == "set -a; . .devcluster/env; set +a", on_host
    # What the session's fixture gave the CRD for Helm, taken away again: as the reader's is, kubectl's only.
    setting.kubectl("label", "crd", *CRDS, "app.kubernetes.io/managed-by-")
    setting.kubectl("annotate", "crd", *CRDS, "meta.helm.sh/release-name-", "meta.helm.sh/release-namespace-")
    env = {**setting.helm_env, **setting.dev.env()}
    log = tmp_path / "host-operator.log"
    log.touch()

    def run(command: str) -> str:
        ran = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert ran.returncode == 0, f"{command}\n{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}\n{log.read_text()[-3000:]}"
        return ran.stdout

    host_operator: subprocess.Popen[bytes] | None = None
    try:
        for command in on_host[2:]:
            if "analysis-operator --all-namespaces" in command:  # the second terminal
                with log.open("wb") as out:
                    host_operator = subprocess.Popen(
                        ["bash", "-c", f"exec {command}"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
                    )
                continue
            shown = run(command)
            if "kubectl analysis results" in command:
                assert all(ticker in shown for ticker in ("NVDA", "AMD", "TSM")), shown
    finally:
        if host_operator is not None:  # Ctrl-C, before the chart
            host_operator.send_signal(2)
            host_operator.wait(60)
    assert host_operator is not None, on_host
    for command in chart[:-1]:
        run(command)
    crd = setting.get("", "crd", CRD)["metadata"]
    assert crd["annotations"]["meta.helm.sh/release-name"] == RELEASE, crd
    assert setting.kubectl("get", "analysisbatch", "-n", "default", "-o", "name").stdout == ""
    setting.kubectl("delete", "pvc", "-n", SYSTEM, "-l", "app.kubernetes.io/component=redis", "--timeout=60s")


@pytest.fixture(scope="module")
def earlier_release(setting: Setting, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release before per-batch Redis users: its chart, and its operator and worker images in the node.

    Built from the repository's history (commit :data:`EARLIER`), the images named ``<repository>:<EARLIER_TAG>``
    beside this checkout's (cached by their inputs, as the node's own images are).
    """
    tree = tmp_path_factory.mktemp("earlier-release")
    archived = subprocess.run(["git", "-C", str(ROOT), "archive", EARLIER], capture_output=True, check=False)
    assert archived.returncode == 0, f"this test needs the history of the repository: {archived.stderr.decode()}"
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archived.stdout, check=True)
    base = images.base_image()
    for spec in (images.OPERATOR, images.WORKER):
        setting.dev.load_image(images.build(spec, base=base.name, tool="buildah", root=tree, tag=EARLIER_TAG))
    return tree / "charts" / "analysis-operator"


@pytest.mark.timeout(1200)
def test_helm_upgrade_to_per_batch_users_mid_batch_then_a_redis_restart(
    setting: Setting, earlier_release: Path
) -> None:
    """From the release before per-batch Redis users to this one, in the middle of a batch; then Redis restarts.

    The earlier release gave every batch's workers the admin password (a copy in the batch's Secret, an
    environment variable of the workers). ``helm upgrade`` replaces the operator (strategy Recreate) and restarts
    the bundled Redis (its probes changed); the new operator sets the batch's own user, rewrites the batch's Secret
    with that user's password and moves the running stage onto the new worker image, whose pods log in as the user.
    Then the Redis pod is deleted: Redis comes back from its AOF without the user, the operator sets it again
    (Event RedisUserRestored) and the workers carry on. Every item is done exactly once.
    """
    earlier = [f"operator.image.tag={EARLIER_TAG}", f"worker.image.tag={EARLIER_TAG}"]
    setting.install(*earlier, bundled=True, chart=earlier_release)
    items = [f"T{i:02d}" for i in range(60)]
    name = setting.slow_example("upgrade", items)

    def done() -> int:
        return int((setting.get("upgrade", "analysisbatch", name).get("status") or {}).get("items", {}).get("done", 0))

    def pods(label: str) -> list[dict[str, Any]]:
        listed = setting.kubectl("get", "pods", "-A", "-l", label, "-o", "json").stdout
        return list(json.loads(listed)["items"])

    processes.eventually(lambda: done() >= 2, 180, "two items done before the upgrade", interval=0.5)
    uid = setting.get("upgrade", "analysisbatch", name)["metadata"]["uid"]
    admin = setting.redis_admin()[1]
    # Before: the batch's workers held the admin password, and Redis had no user of the batch's.
    assert setting.batch_credential("upgrade", uid) == {"password": admin}
    assert setting.redis_user(uid) is None
    operator_pods = {p["metadata"]["uid"] for p in pods("app.kubernetes.io/component=operator")}
    redis_pods = {p["metadata"]["uid"] for p in pods("app.kubernetes.io/component=redis")}

    current = [f"operator.image.tag={analysis_core.__version__}", f"worker.image.tag={analysis_core.__version__}"]
    setting.upgrade(*current)
    assert done() < len(items), "the batch finished before the upgrade: give it more work"
    # The earlier operator elects no leader, so this one upgrade recreates (it would not step aside otherwise).
    assert setting.get(SYSTEM, "deployment", RELEASE)["spec"]["strategy"] == {"type": "Recreate"}
    now = [p for p in pods("app.kubernetes.io/component=operator") if not p["metadata"].get("deletionTimestamp")]
    assert [p["spec"]["containers"][0]["image"] for p in now] == [images.OPERATOR.name()] * 2, now
    assert not operator_pods & {p["metadata"]["uid"] for p in now}
    names = {p["metadata"]["name"] for p in now}
    processes.eventually(lambda: setting.leader() in names, 60, "one of the new pods leads", interval=0.5)
    assert not redis_pods & {p["metadata"]["uid"] for p in pods("app.kubernetes.io/component=redis")}

    def on_new_workers() -> bool:
        running = [p for p in pods(f"{wellknown.LABEL_BATCH_UID}={uid}") if p["status"].get("phase") == "Running"]
        return any(p["spec"]["containers"][0]["image"] == images.WORKER.name() for p in running)

    processes.eventually(on_new_workers, 120, "a worker pod of the new release runs the stage", interval=0.5)
    # After: the batch's own user, its password (not the admin's) in the batch's Secret.
    assert setting.batch_credential("upgrade", uid) == {
        tenancy.SECRET_USERNAME: tenancy.username(uid),
        tenancy.SECRET_PASSWORD: tenancy.password(admin, uid),
    }
    assert setting.redis_user(uid) is not None
    assert done() < len(items), "the batch finished before Redis restarted: give it more work"

    setting.kubectl("delete", "pod", "-n", SYSTEM, f"{RELEASE}-redis-0", "--wait=true", timeout=90)
    processes.eventually(
        lambda: wellknown.Reason.REDIS_USER_RESTORED in setting.event_reasons("upgrade", name),
        120,
        "the operator set the batch's user again after Redis restarted",
        interval=1.0,
    )
    setting.wait("upgrade", name, "Complete", timeout_s=300)
    status = setting.get("upgrade", "analysisbatch", name)["status"]
    assert (status["items"]["succeeded"], status["items"].get("failed", 0)) == (len(items), 0), status["items"]
    rows = results(setting, "upgrade", name)
    assert sorted(row["item"] for row in rows) == items, rows  # each item once
    assert {row["status"] for row in rows} == {"succeeded"}, rows
    assert refusals(setting.operator_log()) == []
    # What the new workers logged: no secret, and no login the operator did not make good.
    worker_logs = "".join(
        setting.kubectl("logs", p["metadata"]["name"], "-n", "upgrade", check=False).stdout
        for p in pods(f"{wellknown.LABEL_BATCH_UID}={uid}")
    )
    assert admin not in worker_logs
    assert tenancy.password(admin, uid) not in worker_logs

    setting.kubectl("delete", "analysisbatch", name, "-n", "upgrade", "--timeout=120s", timeout=150)
    assert setting.redis_user(uid) is None
    # The next upgrade, from an operator that elects, rolls.
    setting.upgrade(*current, "operator.statusInterval=3")
    assert setting.get(SYSTEM, "deployment", RELEASE)["spec"]["strategy"]["type"] == "RollingUpdate"
    setting.uninstall()
    setting.kubectl("delete", "pvc", "-n", SYSTEM, "-l", "app.kubernetes.io/component=redis", "--timeout=60s")


@pytest.mark.timeout(600)
def test_killing_the_active_operator_mid_batch_hands_the_batch_to_the_standby(setting: Setting) -> None:
    """Two operator pods, one active: the active one is killed (no grace) halfway through a batch.

    The standby takes the leader Lease once it has run out (it was not given up) and carries the batch to its
    end: the stage's Job is the one the first leader made, every item is done once, nothing was refused.
    """
    setting.install()
    items = [f"F{i:02d}" for i in range(24)]
    name = setting.slow_example("failover", items)

    def status() -> dict[str, Any]:
        return dict(setting.get("failover", "analysisbatch", name).get("status") or {})

    def jobs() -> list[str]:
        listed = json.loads(setting.kubectl("get", "jobs", "-n", "failover", "-o", "json").stdout)["items"]
        return sorted(job["metadata"]["name"] for job in listed)

    processes.eventually(lambda: status().get("items", {}).get("done", 0) >= 2, 120, "two items done", interval=0.5)
    first = setting.leader()
    made = jobs()
    setting.kubectl("delete", "pod", first, "-n", SYSTEM, "--grace-period=0", "--force", timeout=60)
    processes.eventually(lambda: setting.leader() not in ("", first), 60, "the standby holds the Lease", interval=0.5)
    assert status().get("items", {}).get("done", 0) < len(items), "the batch finished before the failover"
    setting.wait("failover", name, "Complete", timeout_s=300)
    final = status()
    assert (final["items"]["succeeded"], final["items"].get("failed", 0)) == (len(items), 0), final["items"]
    assert sorted(row["item"] for row in results(setting, "failover", name)) == items  # each item once
    assert jobs() == made  # the new leader made no stage's Job again
    assert refusals(setting.operator_log()) == []
    setting.kubectl("delete", "analysisbatch", name, "-n", "failover", "--timeout=120s", timeout=150)
    setting.uninstall()
