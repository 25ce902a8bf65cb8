"""Start and stop one dev cluster: etcd, kube-apiserver, kube-controller-manager, redis-server and a node.

Called by ``tests/conftest.py`` (a private cluster per test session), by tests
that need a cluster of their own, and by :mod:`analysis_devcluster.cli` (the
long-running supervisor behind ``analysis-devcluster up``).

:class:`DevCluster` owns a state directory, wiped at every start: the PKI, etcd
data, Redis data, one log per component, ``kubeconfig`` (admin, context
``devcluster``) and ``env`` (``KUBECONFIG=...`` and ``REDIS_URL=...`` lines).
``start()`` returns only when every component is really usable, including
kube-controller-manager running its controllers (the ``default``
ServiceAccount exists), and fails with the tail of the guilty component's log
otherwise.

With ``node=True`` it also runs a real node (:mod:`analysis_devcluster.node`,
its configuration and logs in ``<state>/node``): kubelet, containerd,
kube-proxy, kube-scheduler and CoreDNS, running pods as containers from the
project's images; ``start()`` then also waits for the Node to be Ready and
for CoreDNS. ``kubectl logs`` reaches the kubelet: the apiserver gets the
``--kubelet-client-*`` certificate from this PKI, and the kubelet a serving
certificate for the gateway address that the apiserver verifies. Without a
node, as by default, there is no kubelet and no scheduler: Pods stay Pending,
and every server listens on loopback only.

It deliberately does not reuse state across starts, and keeps the
ServiceAccount and PodSecurity admission plugins enabled, as a real cluster does.

The apiserver keeps an audit log (``logs/audit.log``) of what ServiceAccounts
ask of it, one JSON event per request at the Metadata level, so a test can
read which verbs on which resources an operator running as a ServiceAccount
used (:meth:`DevCluster.audited`). The cluster's own components log in with
certificates and are not recorded.
"""

import atexit
import base64
import contextlib
import dataclasses
import http.client
import json
import os
import shlex
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
import redis.backoff
import redis.retry
import yaml

from analysis_devcluster import binaries, images, pki, podnet, processes
from analysis_devcluster.node import Node  # a name: `node` is DevCluster's flag

CONTEXT_NAME = "devcluster"
NODE_NAME = "devcluster-node"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Written at the top of a state directory we created, so that start() never
# wipes a directory that merely happens to be passed by mistake.
_STATE_MARKER = ".analysis-devcluster-state"
# With a real node: the "restricted" Pod Security Standard for every namespace but the system ones.
_ADMISSION = {
    "apiVersion": "apiserver.config.k8s.io/v1",
    "kind": "AdmissionConfiguration",
    "plugins": [
        {
            "name": "PodSecurity",
            "configuration": {
                "apiVersion": "pod-security.admission.config.k8s.io/v1",
                "kind": "PodSecurityConfiguration",
                "defaults": {
                    level: value
                    for mode in ("enforce", "audit", "warn")
                    for level, value in ((mode, "restricted"), (f"{mode}-version", "latest"))
                },
                "exemptions": {
                    "usernames": [],
                    "runtimeClasses": [],
                    "namespaces": ["kube-system", "kube-public", "kube-node-lease"],
                },
            },
        }
    ],
}
# What the apiserver records: every request of a ServiceAccount, once it is answered (who, verb, resource,
# response code; no bodies), and nothing of anyone else.
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
}
_POLL_INTERVAL = 0.1


StartupError = processes.StartupError


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; unlike CalledProcessError, str() includes its stderr."""

    def __str__(self) -> str:
        command = shlex.join(str(arg) for arg in self.cmd)
        stderr = (self.stderr or "").strip()
        return f"`{command}` exited with {self.returncode}: {stderr}"


@dataclasses.dataclass(frozen=True)
class Ports:
    """The loopback ports of one cluster, chosen free at start."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    redis: int

    @classmethod
    def pick(cls) -> "Ports":
        return cls(*processes.free_ports(len(dataclasses.fields(cls))))


def _https_status(
    port: int, path: str, context: ssl.SSLContext, timeout: float = 2.0, host: str = "127.0.0.1"
) -> int | None:
    """The HTTP status of GET https://host:port/path, or None if there is no answer yet."""
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _node_ready(port: int, name: str, context: ssl.SSLContext, host: str = "127.0.0.1") -> bool:
    """Whether the Node ``name`` exists with condition Ready=True."""
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=2.0)
    try:
        connection.request("GET", f"/api/v1/nodes/{name}")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            return False
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        connection.close()


def _http_get(port: int, path: str) -> tuple[int, bytes] | None:
    """The status and body of GET http://127.0.0.1:port/path, or None if there is no answer yet."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def _http_ok(port: int, path: str) -> bool:
    """Whether GET http://127.0.0.1:port/path answers 200."""
    answer = _http_get(port, path)
    return answer is not None and answer[0] == 200


def _etcd_healthy(port: int) -> bool:
    answer = _http_get(port, "/health")
    return answer is not None and answer[0] == 200 and b'"health":"true"' in answer[1].replace(b" ", b"")


def redis_client(url: str, timeout: float = 1.0) -> redis.Redis:
    """A client that fails fast: redis-py 8 otherwise retries 10 times with backoff."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )


def _redis_pong(url: str) -> bool:
    client = redis_client(url)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_argv(port: int, data: Path, *, hosts: tuple[str, ...] = ("127.0.0.1",), persist: bool = True) -> list[str]:
    """How every test Redis runs: in the foreground, on ``port``, listening on ``hosts``, its files in ``data``.

    ``persist``: an append-only file, as in production (no RDB snapshots). Protected mode, which refuses every
    client but loopback when there is no password, stays on unless a host other than loopback is listened on
    (pods reach a node's Redis over the bridge, which only this host and its pods are on).
    """
    return [
        str(binaries.redis_server()),
        "--bind",
        *dict.fromkeys(hosts),
        "--port",
        str(port),
        "--dir",
        str(data),
        "--appendonly",
        "yes" if persist else "no",
        "--save",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes" if set(hosts) <= {"127.0.0.1"} else "no",
    ]


@contextlib.contextmanager
def private_redis(
    directory: Path, *, password: str | None = None, timeout: float = 10.0, host: str = "127.0.0.1"
) -> Iterator[str]:
    """A redis-server of its own on a free port, without persistence; yields its URL (without the password).

    For tests that need a Redis unlike the cluster's, e.g. one that wants a
    password (``--requirepass``, which its log under ``directory`` shows). It
    listens on loopback and on ``host`` (a cluster's :attr:`DevCluster.host`,
    for pods to reach it); the URL names ``host``.
    """
    port = processes.free_port()
    argv = redis_argv(port, directory, hosts=("127.0.0.1", host), persist=False)
    if password is not None:
        argv += ["--requirepass", password]
    server = processes.spawn("redis-server", argv, directory / "redis.log")
    try:
        deadline = time.monotonic() + timeout
        while not processes.port_open(port):
            if time.monotonic() > deadline or not server.running():
                raise StartupError(f"redis-server did not listen on port {port} within {timeout:g}s; see {directory}")
            time.sleep(0.05)
        yield f"redis://{host}:{port}/0"
    finally:
        server.stop(grace=5)


class DevCluster:
    """One local control plane plus Redis, rooted in ``state_dir``.

    Use as ``with DevCluster(path) as cluster: ...`` or call ``start()`` and
    ``stop()``. ``kubeconfig_path`` and ``env_path`` default to files inside
    the state directory; the CLI puts them next to it instead.

    ``node=True`` adds a real node named ``node_name`` (:mod:`analysis_devcluster.node`):
    kubelet, containerd, kube-proxy, kube-scheduler and CoreDNS, running the
    project's images; one per machine, and it needs root. Its servers then
    listen on the pod bridge's gateway (:attr:`host`) as well as loopback,
    so that pods reach the apiserver (through the ``kubernetes`` Service) and
    Redis, and the apiserver enforces the "restricted" Pod Security Standard
    in every namespace but the system ones, with NodeRestriction on.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        kubeconfig_path: Path | None = None,
        env_path: Path | None = None,
        ready_timeout: float = 60.0,
        stop_grace: float = 10.0,
        node: bool = False,
        node_name: str = NODE_NAME,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.kubeconfig = (kubeconfig_path or self.state_dir / "kubeconfig").absolute()
        self.env_file = (env_path or self.state_dir / "env").absolute()
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.node = node
        self.node_name = node_name
        self.ranges = podnet.Ranges.from_env()
        # Where this host's servers are for clients: loopback, or the bridge's gateway when pods must reach them too.
        self.host = self.ranges.gateway if node else "127.0.0.1"
        self.ports: Ports | None = None
        self.ready_seconds: float | None = None
        # Seconds from the start of start() at which each component was ready.
        self.timings: dict[str, float] = {}
        self._components: list[processes.Component] = []
        self._pki: pki.Files | None = None
        self._node: Node | None = None
        self._kubectl = binaries.find("kubectl")

    # ------------------------------------------------------------ public

    @property
    def server_url(self) -> str:
        return f"https://{self.host}:{self._ports().apiserver}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self._ports().redis}/0"

    @property
    def audit_log(self) -> Path:
        """The apiserver's audit log: a JSON event per request of any ServiceAccount (see the module's notes)."""
        return self.state_dir / "logs" / "audit.log"

    def audited(self, username: str) -> list[dict[str, Any]]:
        """The audit events of the requests ``username`` (``system:serviceaccount:<ns>:<name>``) made so far."""
        if not self.audit_log.exists():
            return []
        with self.audit_log.open(encoding="utf-8") as lines:
            events = (json.loads(line) for line in lines if username in line)
            return [event for event in events if event.get("user", {}).get("username") == username]

    @property
    def pids(self) -> dict[str, int]:
        """Component name → pid, for the components started so far."""
        return {component.name: component.pid for component in self._components}

    @property
    def node_state_dir(self) -> Path:
        """The node's configuration and its components' logs (``logs/kubelet.log``, ...)."""
        return self.state_dir / "node"

    def env(self) -> dict[str, str]:
        """The variables a client needs: KUBECONFIG and REDIS_URL."""
        return {"KUBECONFIG": str(self.kubeconfig), "REDIS_URL": self.redis_url}

    def dead_components(self) -> list[str]:
        """Names of components that have exited since start."""
        dead = [component.name for component in self._components if not component.running()]
        return dead + (self._node.dead_components() if self._node is not None else [])

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,  # noqa: A002 (mirrors subprocess.run)
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this cluster; raises KubectlError on failure if ``check``."""
        argv = [str(self._kubectl), "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def tag_image(self, source: str, target: str) -> None:
        """Name the node's image ``source`` also ``target`` (see :meth:`Node.tag_image`); needs the node."""
        if self._node is None:
            raise RuntimeError("tag_image needs the node: start the DevCluster with node=True")
        self._node.tag_image(source, target)

    def kubeconfig_as(self, namespace: str, account: str, path: Path, duration: str = "10m") -> Path:
        """A kubeconfig at ``path`` that logs in to this cluster as the ServiceAccount ``namespace/account``, with
        a token of ``duration`` (``kubectl create token``); its file mode 0600."""
        token = self.kubectl("create", "token", account, "-n", namespace, f"--duration={duration}").stdout.strip()
        config = yaml.safe_load(self.kubeconfig.read_text(encoding="utf-8"))
        config["users"] = [{"name": account, "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = account
        _write_private(path, yaml.safe_dump(config, sort_keys=False))
        return path

    def load_image(self, built: images.Built) -> None:
        """Import an image built here (:func:`images.build`) into the node; needs the node."""
        if self._node is None:
            raise RuntimeError("load_image needs the node: start the DevCluster with node=True")
        self._node.load_image(built)

    def install_crds(self, directory: Path, timeout: float = 60.0) -> None:
        """Server-side apply every manifest in ``directory`` and wait until all CRDs are Established.

        ``kubectl wait`` fails at once ("conditions accessor error") on a CRD
        that has no conditions yet, which a CRD just created may not; such a
        wait is simply tried again until ``timeout``.
        """
        self.kubectl("apply", "--server-side", "-f", str(directory), timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            left = max(1.0, deadline - time.monotonic())
            waited = self.kubectl(
                "wait",
                "--for=condition=established",
                f"--timeout={left:.0f}s",
                "crd",
                "--all",
                timeout=left + 15,
                check=False,
            )
            if waited.returncode == 0:
                return
            if "accessor error" not in waited.stderr or time.monotonic() > deadline:
                raise KubectlError(waited.returncode, list(map(str, waited.args)), waited.stdout, waited.stderr)
            time.sleep(0.1)

    def start(self) -> Self:
        """Start every component and return once all are ready; on failure stop them and raise."""
        started = time.monotonic()
        binaries.check_all()
        self._reset_state_dir()
        self._pki = pki.write_all(
            self.state_dir / "pki",
            node_name=self.node_name,
            host_ips=(self.host,),
            kubernetes_service_ip=self.ranges.kubernetes_service_ip,
        )
        self.ports = Ports.pick()
        self._write_kubeconfig()
        # A fallback for callers that forget stop(); PDEATHSIG covers the cases atexit cannot.
        atexit.register(self.stop)
        try:
            if self.node:
                self._node = Node(
                    name=self.node_name,
                    state_dir=self.node_state_dir,
                    server_url=self.server_url,
                    admin_kubeconfig=self.kubeconfig,
                    files=self._files(),
                    ranges=self.ranges,
                )
                # The bridge (which the apiserver and Redis bind to), containerd and the images come first.
                self._node.prepare()
                self.timings.update({f"node-{key}": value for key, value in self._node.timings.items()})
                started = time.monotonic()
            self._start_components(started)
        except BaseException:
            self.stop()
            raise
        self._write_env()
        self.ready_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every component, newest first. Idempotent; the state directory is kept for its logs."""
        atexit.unregister(self.stop)
        try:
            if self._node is not None:
                self._node.stop_components(self.stop_grace)
            while self._components:
                self._components.pop().stop(self.stop_grace)
        finally:
            # The pod network goes last: the apiserver and Redis listened on its gateway until now.
            if self._node is not None:
                self._node.release()
            self._node = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ start-up

    def _start_components(self, started: float) -> None:
        ports = self._ports()
        # Redis is independent of everything else; starting it first lets it
        # come up while the control plane does.
        redis_server = self._spawn("redis-server", self._redis_argv())
        etcd = self._spawn("etcd", self._etcd_argv())
        self._wait(etcd, "healthy", lambda: _etcd_healthy(ports.etcd_client), started)

        apiserver = self._spawn("kube-apiserver", self._apiserver_argv())
        client = self._client_context()
        self._wait(
            apiserver,
            "ready",
            lambda: _https_status(ports.apiserver, "/readyz", client, host=self.host) == 200,
            started,
        )

        # Started only now: kube-controller-manager gives the apiserver ten
        # seconds to become healthy, polling once a second, and exits after
        # that; a slow machine would turn a cold apiserver into a flaky start.
        controller_manager = self._spawn("kube-controller-manager", self._controller_manager_argv())
        # The node needs only the apiserver; it registers while the controllers start.
        kubelet = None
        if self._node is not None:
            self._node.start()
            kubelet = self._node.component("kubelet")
        self._wait(redis_server, "answering PING", lambda: _redis_pong(self.redis_url), started)
        # Its serving certificate is self-signed in memory; /healthz is an always-allowed path.
        insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            controller_manager,
            "healthy",
            lambda: _https_status(ports.controller_manager, "/healthz", insecure) == 200,
            started,
        )
        # /healthz says the process serves, not that controllers run: the
        # default ServiceAccount is created by its serviceaccount controller.
        self._wait(
            controller_manager,
            "running controllers (ServiceAccount default/default)",
            lambda: (
                _https_status(
                    ports.apiserver, "/api/v1/namespaces/default/serviceaccounts/default", client, host=self.host
                )
                == 200
            ),
            started,
            timing_key="controllers",
        )
        if kubelet is not None:
            self._wait(
                kubelet,
                f"Ready (Node {self.node_name})",
                lambda: _node_ready(ports.apiserver, self.node_name, client, host=self.host),
                started,
            )
        if self._node is not None:
            ready_port = self._node.ports.coredns_ready
            self._wait(self._node.component("coredns"), "ready", lambda: _http_ok(ready_port, "/ready"), started)

    def _spawn(self, name: str, argv: list[str]) -> processes.Component:
        component = processes.spawn(name, argv, self.state_dir / "logs" / f"{name}.log", cwd=self.state_dir)
        self._components.append(component)
        return component

    def _wait(
        self,
        component: processes.Component,
        what: str,
        probe: Callable[[], bool],
        started: float,
        timing_key: str | None = None,
    ) -> None:
        processes.wait_until(component, what, probe, started + self.ready_timeout, self.ready_timeout, _POLL_INTERVAL)
        self.timings[timing_key or component.name] = round(time.monotonic() - started, 3)

    def _reset_state_dir(self) -> None:
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            if not (self.state_dir / _STATE_MARKER).exists():
                raise StartupError(
                    f"{self.state_dir} is not empty and was not created by analysis_devcluster; refusing to wipe it"
                )
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.state_dir / _STATE_MARKER).touch()

    def _ports(self) -> Ports:
        if self.ports is None:
            raise RuntimeError("the dev cluster has not been started")
        return self.ports

    def _files(self) -> pki.Files:
        if self._pki is None:
            raise RuntimeError("the dev cluster has not been started")
        return self._pki

    def _client_context(self) -> ssl.SSLContext:
        """TLS as the admin user, trusting only our CA."""
        files = self._files()
        context = ssl.create_default_context(cafile=str(files.ca_cert))
        context.load_cert_chain(files.admin_cert, files.admin_key)
        return context

    # ------------------------------------------------------------ command lines

    def _etcd_argv(self) -> list[str]:
        ports = self._ports()
        client_url = f"http://127.0.0.1:{ports.etcd_client}"
        peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
        return [
            str(binaries.find("etcd")),
            "--name=devcluster",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            # The defaults name localhost:2380, which another etcd on this host may hold.
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=devcluster={peer_url}",
            # Durability is worthless for a throwaway cluster; fsync is most of etcd's write latency.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        ports = self._ports()
        files = self._files()
        return [
            str(binaries.find("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={ports.apiserver}",
            f"--cert-dir={self.state_dir / 'apiserver-certs'}",
            f"--tls-cert-file={files.apiserver_cert}",
            f"--tls-private-key-file={files.apiserver_key}",
            f"--client-ca-file={files.ca_cert}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={files.sa_public_key}",
            f"--service-account-signing-key-file={files.sa_private_key}",
            f"--service-cluster-ip-range={self.ranges.services}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            *self._apiserver_node_argv(),
            # pods/log and exec are proxied to the kubelet with this client certificate, verifying the
            # kubelet's serving certificate. The node's Hostname address does not resolve, so only its
            # InternalIP (the pod bridge's gateway, where the kubelet serves).
            f"--kubelet-client-certificate={files.kubelet_client_cert}",
            f"--kubelet-client-key={files.kubelet_client_key}",
            f"--kubelet-certificate-authority={files.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
            *self._audit_argv(),
        ]

    def _audit_argv(self) -> list[str]:
        policy = self.state_dir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(_AUDIT_POLICY, sort_keys=False), encoding="utf-8")
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxbackup=0",  # one file: a session writes a few MB
        ]

    def _apiserver_node_argv(self) -> list[str]:
        if not self.node:
            # The endpoint reconciler rejects a loopback advertise address
            # ("may not be in the loopback range") and logs that every 10 s;
            # nothing in a node-less cluster can reach the Service anyway.
            return ["--endpoint-reconciler-type=none"]
        config = self.state_dir / "admission.yaml"
        config.write_text(yaml.safe_dump(_ADMISSION, sort_keys=False), encoding="utf-8")
        # The endpoint reconciler (lease) publishes the gateway address as the `kubernetes` Service's endpoint.
        return ["--enable-admission-plugins=NodeRestriction", f"--admission-control-config-file={config}"]

    def _controller_manager_argv(self) -> list[str]:
        ports = self._ports()
        files = self._files()
        return [
            str(binaries.find("kube-controller-manager")),
            f"--kubeconfig={self.kubeconfig}",
            # A single instance: leader election would only add a lease wait on restart.
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            f"--service-account-private-key-file={files.sa_private_key}",
            f"--root-ca-file={files.ca_cert}",
            "--profiling=false",
            # Otherwise it creates /usr/libexec/kubernetes/kubelet-plugins/volume/exec/ on the host.
            f"--flex-volume-plugin-dir={self.state_dir / 'flexvolume'}",
        ]

    def _redis_argv(self) -> list[str]:
        ports = self._ports()
        data = self.state_dir / "redis"
        data.mkdir(mode=0o700, exist_ok=True)
        return redis_argv(ports.redis, data, hosts=("127.0.0.1", self.host))

    # ------------------------------------------------------------ client files

    def _write_kubeconfig(self) -> None:
        files = self._files()

        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CONTEXT_NAME,
                    "cluster": {"server": self.server_url, "certificate-authority-data": b64(files.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": pki.ADMIN_USER,
                    "user": {
                        "client-certificate-data": b64(files.admin_cert),
                        "client-key-data": b64(files.admin_key),
                    },
                }
            ],
            "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": pki.ADMIN_USER}}],
            "current-context": CONTEXT_NAME,
        }
        _write_private(self.kubeconfig, yaml.safe_dump(config, sort_keys=False))

    def _write_env(self) -> None:
        lines = [f"{key}={shlex.quote(value)}" for key, value in self.env().items()]
        _write_private(self.env_file, "\n".join(lines) + "\n")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 (it may hold the admin key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(partial, path)
