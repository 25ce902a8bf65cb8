"""Provider account egress through the whole loop: worker processes, the real SDKs, real TLS, a real proxy.

An AnalysisProvider's ``egress`` says how its workers reach the provider
(docs/design.md, Provider accounts): ``caBundle``, CA certificates to trust
besides the system's (a gateway with its own CA), which the operator copies
into the batch's ConfigMap ``<batch>-ca`` and mounts in the worker pods as
``<provider>.pem``; and ``proxyURL``, a forward proxy for every call. Here
the gateway is the stand-in serving HTTPS with a certificate from a CA made
for the test, and the proxy a forward proxy on loopback
(``analysis_devcluster.forwardproxy``) that records what it forwards. The
operator's allocator grants the account's allowances, as its daemon does.

A worker on an account with the CA bundle completes every item; on the same
account without it, with the same file on disk, every call fails on the
certificate, classified ``Network``, saying so; a running worker whose
mounted bundle changes trusts the new one from its next call. A worker on an account with
the proxy reaches the stand-in only through it, over plain HTTP
(absolute-form requests) or HTTPS (CONNECT tunnels): every connection the
stand-in saw is one the proxy opened. Without ``proxyURL`` the proxy sees
nothing.

On the operator's side, the operator itself runs as a process against the
session's kube-apiserver (no node): it copies the account's CA ConfigMap key
from its own namespace into the batch's ``<batch>-ca``, owned by the batch,
and the stage's workload mounts it; a ConfigMap or key that is not there, or
an operator that does not know its namespace, is the batch's condition
naming the account's field, until the admin fixes it.
"""

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis_core import env, errors, keys, queue, wire
from analysis_core.api import v1alpha1, wellknown
from analysis_devcluster import forwardproxy, pki, processes, standin
from analysis_devcluster.cluster import DevCluster
from analysis_operator import builders
from analysis_operator.config import PREFIX
from analysis_worker import consumer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "sk-test-egress-7c2e91"  # what both stand-ins want
ACCOUNT = "gateway"
NAMESPACE = "team-egress"
APIS = ["anthropic", "openai"]
ITEMS = [f"EG{i}" for i in range(4)]
# Where the account's CA bundle lives in the operator's namespace; only its presence reaches the plan.
CA_REF = {"name": "gateway-ca", "key": "ca.pem"}


@pytest.fixture(scope="module")
def gateway_pki(tmp_path_factory: pytest.TempPathFactory) -> pki.Serving:
    """A CA made for this module (so no system store trusts it) and the stand-in's certificate, for 127.0.0.1."""
    return pki.write_serving(tmp_path_factory.mktemp("gateway-pki"), "gateway")


@pytest.fixture(scope="module")
def tls_server(gateway_pki: pki.Serving) -> Iterator[standin.StandIn]:
    with standin.StandIn(api_key=API_KEY, tls=(gateway_pki.cert, gateway_pki.key)) as running:
        yield running


@pytest.fixture
def tls_stand_in(tls_server: standin.StandIn) -> standin.StandIn:
    """The stand-in behind the private CA, with no fault plan and no recorded requests."""
    tls_server.reset()
    return tls_server


@pytest.fixture
def proxy() -> Iterator[forwardproxy.ForwardProxy]:
    with forwardproxy.ForwardProxy() as running:
        yield running


def account(
    api: str, base_url: str, *, proxy_url: str | None = None, ca_bundle: bool = False
) -> v1alpha1.AnalysisProviderSpec:
    egress: dict[str, Any] = {}
    if proxy_url is not None:
        egress["proxyURL"] = proxy_url
    if ca_bundle:
        egress["caBundle"] = CA_REF
    return v1alpha1.AnalysisProviderSpec.model_validate(
        {
            "type": api,
            "baseURL": base_url,
            "limits": {"requestsPerMinute": 6000},
            "namespaces": [{"name": NAMESPACE}],
            **({"egress": egress} if egress else {}),
        }
    )


def mount_ca_bundle(batch: Any, ca_pem: str, directory: Path) -> Path:
    """What the kubelet makes of the operator's objects: the keys of the CA ConfigMap (``ca_bundle_configmap``),
    as the worker pod mounts them, in ``directory`` (the worker's ANALYSIS_CA_BUNDLE_DIR for the mount path)."""
    named = builders.Batch("egress", NAMESPACE, batch.uid)
    stage = batch.plan.stage("analyze")
    configmap = builders.ca_bundle_configmap(named, {stage.provider: ca_pem})
    settings = builders.WorkerSettings(image="analysis-worker:test", redis_url="redis://unused:6379/0")
    pod = builders.worker_pod_template(named, batch.plan, stage, settings, mode="deployment")
    name = configmap["metadata"]["name"]
    [volume] = [v for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == name]
    [mount] = [m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == env.DEFAULT_CA_BUNDLE_DIR
    directory.mkdir(exist_ok=True)
    for item in volume["configMap"]["items"]:
        (directory / item["path"]).write_text(configmap["data"][item["key"]], encoding="utf-8")
    return directory


def batch_on(
    workers: Any,
    stand_in: standin.StandIn,
    api: str,
    spec: v1alpha1.AnalysisProviderSpec,
    retry: dict[str, Any] | None = None,
) -> Any:
    """A batch of ITEMS whose one stage calls through the account ``spec`` (by default one attempt per item)."""
    batch_spec = stand_in.batch_spec(api, ITEMS, concurrency=2, retry=retry or {"maxAttempts": 1})
    provider = batch_spec["providers"]["llm"]
    del provider["type"], provider["baseURL"]
    provider["providerRef"] = {"name": ACCOUNT}
    return workers.batch(batch_spec, accounts={ACCOUNT: spec})


async def run(
    workers: Any,
    allocate: Callable[..., Any],
    redis: queue.Redis,
    batch: Any,
    spec: v1alpha1.AnalysisProviderSpec,
    ca_dir: Path,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the batch through one worker process, the allocator granting the account; each item's outcome.

    ``meanwhile``: what happens to the running worker before the items settle.
    """
    allocating = allocate(ACCOUNT, spec)
    async with allocating.running():
        await batch.seed()
        allocating.use(NAMESPACE, "egress", batch)
        workers.start(batch, "analyze", **{env.API_KEY: API_KEY, env.CA_BUNDLE_DIR: str(ca_dir)})
        if meanwhile is not None:
            await meanwhile()

        async def settled() -> bool:
            counts = await consumer.stage_counts(redis, batch.uid, "analyze")
            ended = counts.counters.get(wire.COUNT_SUCCEEDED, 0) + counts.counters.get(wire.COUNT_FAILED, 0)
            return ended == len(ITEMS) and counts.drained

        await workers.eventually(settled, 60, "every item settled")
    raw = await redis.hgetall(keys.BatchKeys(batch.uid).outcomes)
    # <uid>/<stage>/<item>/...; an item's earlier attempts are spent once it ended with a success
    return {key.split("/")[2]: json.loads(value) for key, value in raw.items() if value != wire.OUTCOME_SPENT}


def statuses(outcomes: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {item: outcome[wire.OUTCOME_STATUS] for item, outcome in outcomes.items()}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.timeout(120)
async def test_a_worker_trusts_its_accounts_ca_bundle(
    api: str,
    tls_stand_in: standin.StandIn,
    gateway_pki: pki.Serving,
    workers: Any,
    allocate: Callable[..., Any],
    redis: queue.Redis,
    tmp_path: Path,
) -> None:
    assert tls_stand_in.url.startswith("https://")
    spec = account(api, tls_stand_in.base_url(api), ca_bundle=True)
    batch = batch_on(workers, tls_stand_in, api, spec)
    ca_dir = mount_ca_bundle(batch, gateway_pki.ca_cert.read_text(encoding="utf-8"), tmp_path / "ca")
    outcomes = await run(workers, allocate, redis, batch, spec, ca_dir)
    assert statuses(outcomes) == dict.fromkeys(ITEMS, wire.STATUS_SUCCEEDED)
    assert sorted(call["prompt"] for call in tls_stand_in.requests()) == [f"Analyze {item}" for item in ITEMS]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.timeout(120)
async def test_without_the_accounts_ca_bundle_every_call_fails_on_the_certificate(
    api: str,
    tls_stand_in: standin.StandIn,
    gateway_pki: pki.Serving,
    workers: Any,
    allocate: Callable[..., Any],
    redis: queue.Redis,
    tmp_path: Path,
) -> None:
    spec = account(api, tls_stand_in.base_url(api))  # no egress.caBundle
    batch = batch_on(workers, tls_stand_in, api, spec)
    # The CA is on disk where a bundle would be: only the account's setting decides whether the worker trusts it.
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / f"{batch.plan.stage('analyze').provider}.pem").write_bytes(gateway_pki.ca_cert.read_bytes())
    outcomes = await run(workers, allocate, redis, batch, spec, ca_dir)
    assert statuses(outcomes) == dict.fromkeys(ITEMS, wire.STATUS_FAILED)
    for outcome in outcomes.values():
        # A connection failure, retried with backoff where attempts remain; the error names the certificate.
        assert outcome[wire.OUTCOME_ERROR_CLASS] == str(errors.ErrorClass.NETWORK)
        assert "CERTIFICATE_VERIFY_FAILED" in outcome[wire.OUTCOME_ERROR]
    assert tls_stand_in.requests() == []  # no request got past the handshake


@pytest.mark.timeout(120)
async def test_a_running_worker_trusts_a_rotated_ca_bundle_once_it_is_mounted(
    tls_stand_in: standin.StandIn,
    gateway_pki: pki.Serving,
    workers: Any,
    allocate: Callable[..., Any],
    redis: queue.Redis,
    tmp_path: Path,
) -> None:
    """The account's bundle names another CA at first (the gateway's certificate was rotated, the bundle not yet):
    calls fail on the certificate and are retried. Once the right CA is in the mounted file, as the kubelet writes
    it after the operator updates the copy, the same worker process trusts it and every item succeeds."""
    api = "openai"
    spec = account(api, tls_stand_in.base_url(api), ca_bundle=True)
    retry = {"maxAttempts": 20, "backoff": {"initialSeconds": 1, "factor": 1}}
    batch = batch_on(workers, tls_stand_in, api, spec, retry)
    stale = pki.write_serving(tmp_path / "old-pki", "gateway-before-rotation")
    ca_dir = mount_ca_bundle(batch, stale.ca_cert.read_text(encoding="utf-8"), tmp_path / "ca")

    async def rotate() -> None:
        async def refused_on_the_certificate() -> bool:
            counts = await consumer.stage_counts(redis, batch.uid, "analyze")
            return counts.counters.get(wire.COUNT_RETRIES, 0) >= len(ITEMS)

        await workers.eventually(refused_on_the_certificate, 30, "every item retried after a certificate error")
        assert tls_stand_in.requests() == []
        # The kubelet swaps a ConfigMap volume's files whole; so does this.
        mounted = ca_dir / f"{batch.plan.stage('analyze').provider}.pem"
        staged = mounted.with_suffix(".new")
        staged.write_bytes(gateway_pki.ca_cert.read_bytes())
        os.replace(staged, mounted)

    await run(workers, allocate, redis, batch, spec, ca_dir, meanwhile=rotate)
    # Every item succeeded at last (its earlier attempts' outcomes say retry).
    counts = await consumer.stage_counts(redis, batch.uid, "analyze")
    assert counts.counters.get(wire.COUNT_SUCCEEDED, 0) == len(ITEMS)
    assert counts.drained
    assert sorted(call["prompt"] for call in tls_stand_in.requests()) == [f"Analyze {item}" for item in ITEMS]
    (worker,) = workers.started  # the one worker process, never restarted
    assert any(line.get("msg") == "CA bundle changed: calls from now on trust it" for line in worker.lines())


def through(proxy: forwardproxy.ForwardProxy, stand_in: standin.StandIn) -> set[str]:
    """The stand-in's connections that the proxy opened (its requests' peers among the proxy's upstream ends)."""
    opened = {forwarded.upstream for forwarded in proxy.requests()}
    return {call["peer"] for call in stand_in.requests()} & opened


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.timeout(120)
async def test_a_worker_reaches_the_provider_only_through_its_accounts_proxy(
    api: str,
    scheme: str,
    stand_in: standin.StandIn,
    tls_stand_in: standin.StandIn,
    gateway_pki: pki.Serving,
    proxy: forwardproxy.ForwardProxy,
    workers: Any,
    allocate: Callable[..., Any],
    redis: queue.Redis,
    tmp_path: Path,
) -> None:
    target = tls_stand_in if scheme == "https" else stand_in
    spec = account(api, target.base_url(api), proxy_url=proxy.url, ca_bundle=scheme == "https")
    batch = batch_on(workers, target, api, spec)
    ca_dir = tmp_path
    if scheme == "https":
        ca_dir = mount_ca_bundle(batch, gateway_pki.ca_cert.read_text(encoding="utf-8"), tmp_path / "ca")
    outcomes = await run(workers, allocate, redis, batch, spec, ca_dir)
    assert statuses(outcomes) == dict.fromkeys(ITEMS, wire.STATUS_SUCCEEDED)
    calls = target.requests()
    assert len(calls) == len(ITEMS)
    forwarded = proxy.requests()
    if scheme == "http":
        # One absolute-form request per call, each on a connection of its own to the stand-in.
        path = "/v1/messages" if api == "anthropic" else "/v1/chat/completions"
        assert [(f.method, f.target) for f in forwarded] == [("POST", target.url + path)] * len(ITEMS)
    else:
        # Tunnels to the stand-in's address, which may carry several calls each.
        assert forwarded
        assert {(f.method, f.target) for f in forwarded} == {("CONNECT", target.url.removeprefix("https://"))}
    # Every connection the stand-in was called over is one the proxy opened.
    assert through(proxy, target) == {call["peer"] for call in calls}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.timeout(120)
async def test_without_the_accounts_proxy_the_proxy_sees_nothing(
    api: str,
    stand_in: standin.StandIn,
    proxy: forwardproxy.ForwardProxy,
    workers: Any,
    allocate: Callable[..., Any],
    redis: queue.Redis,
    tmp_path: Path,
) -> None:
    spec = account(api, stand_in.base_url(api))  # no egress.proxyURL
    batch = batch_on(workers, stand_in, api, spec)
    outcomes = await run(workers, allocate, redis, batch, spec, tmp_path)
    assert statuses(outcomes) == dict.fromkeys(ITEMS, wire.STATUS_SUCCEEDED)
    assert len(stand_in.requests()) == len(ITEMS)
    assert proxy.requests() == []
    assert through(proxy, stand_in) == set()


# ---------------------------------------------------------------- the operator's copy of the bundle

OPERATOR = Path(sys.executable).parent / "analysis-operator"


@pytest.fixture
def operator_namespace(devcluster: DevCluster) -> Iterator[str]:
    """The operator's own namespace, where the platform admin keeps the accounts' CA bundles."""
    name = f"operator-{uuid.uuid4().hex[:8]}"
    devcluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        devcluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture
def start_operator(
    devcluster: DevCluster, crds_installed: Path, namespace: str, tmp_path: Path
) -> Iterator[Callable[[str | None], Path]]:
    """``start_operator(own_namespace)``: ``analysis-operator --namespace=<the test's>`` against the session's
    control plane and Redis, told its own namespace as the chart tells it (None: not told); returns its log.
    There is no node: the workers' pods stay Pending, which is all these tests need."""
    started: list[subprocess.Popen[bytes]] = []

    def start(own_namespace: str | None) -> Path:
        log = tmp_path / f"operator-{len(started)}.log"
        environment = {
            "PATH": f"{OPERATOR.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin')}",
            **{name: os.environ[name] for name in ("PYTHONPATH",) if name in os.environ},
            "HOME": os.environ.get("HOME", "/tmp"),
            "KUBECONFIG": str(devcluster.kubeconfig),
            PREFIX + "REDIS_URL": devcluster.redis_url,
            PREFIX + "METRICS_PORT": "0",
            PREFIX + "STATUS_INTERVAL": "0.2",
            **({PREFIX + "NAMESPACE": own_namespace} if own_namespace is not None else {}),
        }
        with log.open("ab") as out:
            started.append(
                subprocess.Popen(
                    [str(OPERATOR), f"--namespace={namespace}"],
                    env=environment,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return log

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)


class Objects:
    """Accounts, ConfigMaps and batches through the pinned kubectl; the batches and accounts made are deleted
    afterwards (the accounts are cluster-scoped: no namespace's deletion takes them)."""

    def __init__(self, devcluster: DevCluster, namespace: str) -> None:
        self.dev, self.namespace = devcluster, namespace
        self.accounts: list[str] = []
        self.batches: list[str] = []

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        made: dict[str, Any] = json.loads(
            self.dev.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(manifest)).stdout
        )
        return made

    def get(self, namespace: str, *args: str) -> Any:
        return json.loads(self.dev.kubectl("-n", namespace, "get", *args, "-o", "json").stdout)

    def configmap(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}
        )

    def account(self, ca_ref: dict[str, str]) -> str:
        name = f"gateway-{uuid.uuid4().hex[:8]}"
        self.accounts.append(name)
        spec = {
            "type": "openai",
            "baseURL": "https://llm-gateway.example/v1",
            "limits": {"requestsPerMinute": 60},
            "namespaces": [{"name": self.namespace}],
            "egress": {"caBundle": ca_ref},
        }
        self.create(
            {
                "apiVersion": "analysis.dev/v1alpha1",
                "kind": "AnalysisProvider",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
        return name

    def batch(self, name: str, account_name: str) -> builders.Batch:
        spec = {
            "items": ["NVDA"],
            "providers": {
                "llm": {
                    "providerRef": {"name": account_name},
                    "model": "gpt-test",
                    "apiKeySecretRef": {"name": "llm-keys", "key": "openai"},
                }
            },
            "stages": [{"name": "analyze", "provider": "llm", "prompt": "Analyze {{ item }}"}],
        }
        made = self.create(
            {
                "apiVersion": "analysis.dev/v1alpha1",
                "kind": "AnalysisBatch",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": spec,
            }
        )
        self.batches.append(name)
        return builders.Batch(name, self.namespace, made["metadata"]["uid"])

    def condition(self, batch: builders.Batch, reason: str) -> dict[str, Any] | None:
        conditions = self.get(batch.namespace, "analysisbatch", batch.name).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c.get("reason") == reason), None)

    def ca_copy(self, batch: builders.Batch) -> dict[str, Any] | None:
        selector = f"{wellknown.LABEL_BATCH_UID}={batch.uid}"
        copies = self.get(batch.namespace, "configmaps", "-l", selector)["items"]
        name = builders.child_name(batch, "ca")
        return next((c for c in copies if c["metadata"]["name"] == name), None)

    def delete_all(self) -> None:
        for name in self.batches:
            self.dev.kubectl(
                "-n", self.namespace, "delete", "analysisbatch", name, "--wait=false", "--ignore-not-found"
            )
        for name in self.accounts:
            self.dev.kubectl("delete", "analysisprovider", name, "--wait=false", "--ignore-not-found")


@pytest.fixture
def objects(devcluster: DevCluster, namespace: str, start_operator: Callable[[str | None], Path]) -> Iterator[Objects]:
    """Deleted before the operator stops (this fixture needs it), so its finalizers can let them go."""
    made = Objects(devcluster, namespace)
    try:
        yield made
    finally:
        made.delete_all()


def bundle_problem(account_name: str) -> str:
    return f"AnalysisProvider {account_name} spec.egress.caBundle (for spec.providers.llm.providerRef): "


@pytest.mark.timeout(180)
def test_the_operator_copies_the_accounts_ca_bundle_into_the_batchs_namespace_and_mounts_it(
    objects: Objects, start_operator: Callable[[str | None], Path], operator_namespace: str, gateway_pki: pki.Serving
) -> None:
    pem = gateway_pki.ca_cert.read_text(encoding="utf-8")
    objects.configmap(operator_namespace, CA_REF["name"], {CA_REF["key"]: pem, "other.pem": "not this one"})
    good = objects.batch("egress-good", objects.account(CA_REF))
    absent = objects.account({"name": "rotated-ca", "key": "ca.pem"})
    no_configmap = objects.batch("egress-no-configmap", absent)
    keyless = objects.account({"name": CA_REF["name"], "key": "missing.pem"})
    no_key = objects.batch("egress-no-key", keyless)
    log = start_operator(operator_namespace)

    def details() -> str:
        return log.read_text(encoding="utf-8", errors="replace")[-3000:]

    copy = processes.eventually(lambda: objects.ca_copy(good), 90, "the CA bundle copied", details=details)
    # The account's key alone, as <provider>.pem, owned by the batch (deleted with it).
    assert copy["data"] == {"llm.pem": pem}
    [owner] = copy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "AnalysisBatch",
        good.name,
        good.uid,
        True,
    )
    # The stage's workload mounts exactly that key where the worker reads it.
    selector = f"{wellknown.LABEL_BATCH_UID}={good.uid}"
    workloads = processes.eventually(
        lambda: objects.get(good.namespace, "deployments,jobs", "-l", selector)["items"], 60, "the stage's workload"
    )
    [workload] = workloads
    pod = workload["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == copy["metadata"]["name"]]
    assert volume["configMap"]["items"] == [{"key": "llm.pem", "path": "llm.pem"}]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert (mount["mountPath"], mount["readOnly"]) == (env.DEFAULT_CA_BUNDLE_DIR, True)
    assert objects.condition(good, wellknown.Reason.CONFIGMAP_NOT_FOUND) is None

    # What cannot be copied is the batch's condition, naming the account's field and what is missing.
    missing = processes.eventually(
        lambda: objects.condition(no_configmap, wellknown.Reason.CONFIGMAP_NOT_FOUND), 60, "ConfigMapNotFound"
    )
    assert missing["message"] == bundle_problem(absent) + f"ConfigMap {operator_namespace}/rotated-ca not found"
    keyed = processes.eventually(
        lambda: objects.condition(no_key, wellknown.Reason.CONFIGMAP_KEY_NOT_FOUND), 60, "ConfigMapKeyNotFound"
    )
    assert (
        keyed["message"]
        == bundle_problem(keyless) + f"ConfigMap {operator_namespace}/{CA_REF['name']} has no key 'missing.pem'"
    )
    assert objects.ca_copy(no_configmap) is None
    assert objects.ca_copy(no_key) is None

    # The admin adds the ConfigMap: the next steps copy it, and the condition goes.
    objects.configmap(operator_namespace, "rotated-ca", {"ca.pem": pem})
    fixed = processes.eventually(lambda: objects.ca_copy(no_configmap), 60, "the CA bundle copied after the fix")
    assert fixed["data"] == {"llm.pem": pem}
    processes.eventually(
        lambda: objects.condition(no_configmap, wellknown.Reason.CONFIGMAP_NOT_FOUND) is None, 60, "the condition gone"
    )


@pytest.mark.timeout(180)
def test_an_operator_that_does_not_know_its_namespace_says_so_on_the_batch(
    objects: Objects, start_operator: Callable[[str | None], Path], operator_namespace: str, gateway_pki: pki.Serving
) -> None:
    objects.configmap(
        operator_namespace, CA_REF["name"], {CA_REF["key"]: gateway_pki.ca_cert.read_text(encoding="utf-8")}
    )
    account_name = objects.account(CA_REF)
    batch = objects.batch("egress-lost", account_name)
    start_operator(None)
    found = processes.eventually(
        lambda: objects.condition(batch, wellknown.Reason.CONFIGMAP_NOT_FOUND), 90, "ConfigMapNotFound"
    )
    assert found["message"] == bundle_problem(account_name) + (
        f"the operator does not know its namespace ({PREFIX}NAMESPACE is unset)"
    )
    assert objects.ca_copy(batch) is None
