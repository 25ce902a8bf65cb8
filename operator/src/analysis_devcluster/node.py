"""A local node for the dev cluster: registers a Node, schedules pods onto it and runs them as processes.

Started as ``python -m analysis_devcluster.node --kubeconfig PATH --state-dir
DIR [--name NAME] [--image REPOSITORY=ARGV ...] [--tls-cert-file PEM
--tls-private-key-file PEM] [--client-ca-file PEM] [--port N]`` by
:class:`analysis_devcluster.cluster.DevCluster` (``node=True``) and by
``analysis-devcluster up`` (unless ``--no-node``). There is no kubelet, no
scheduler and no container runtime in the dev cluster; this process plays
all three, well enough for Jobs and Deployments to behave for real:

* **Node.** It registers a Ready Node (default ``devcluster-node``, address
  127.0.0.1, large allocatable cpu/memory/pods), renews its Lease in
  ``kube-node-lease`` every 10 s and its Ready heartbeat every 30 s, well
  inside kube-controller-manager's ``--node-monitor-grace-period`` (50 s by
  default), so the node lifecycle controller never marks it NotReady.
* **Scheduler.** Every pod in any namespace with no ``nodeName`` (default
  scheduler, no scheduling gates) is bound to this node through the
  ``pods/binding`` subresource the moment a watch reports it.
* **Kubelet.** Each bound pod's containers run as local processes
  (:mod:`analysis_devcluster.podrun`); phase, conditions and
  containerStatuses are patched into ``pods/status``; deletion sends SIGTERM,
  SIGKILL after the grace period, then deletes the object with grace 0.
* **Kubelet endpoint.** ``containerLogs`` over HTTPS on 127.0.0.1 (a free
  port unless ``--port``), advertised in the Node's
  ``daemonEndpoints.kubeletEndpoint``, so ``kubectl logs`` (``-f``,
  ``--tail``, ``--since``, ``--timestamps``, ``--limit-bytes``,
  ``--previous``, ``-l``) works through the apiserver
  (:mod:`analysis_devcluster.kubeletapi`). It serves ``--tls-cert-file`` (a
  self-signed certificate without one) and accepts clients whose certificate
  ``--client-ca-file`` (default: the kubeconfig's CA) signed.

What a container runs (:mod:`analysis_devcluster.podspec`): ``command`` +
``args`` with ``$(VAR)`` expansion; without ``command``, the entrypoint the
image table gives for the image's *repository* (the last path component,
tag and digest stripped): ``analysis-worker`` → ``analysis-worker``,
``analysis-operator`` → ``analysis-operator``, plus ``--image`` entries. An
image not in the table is never run: the container waits with reason
``ImageNotLocal`` and a message naming the image and the known ones, and the
pod stays Pending. Executables resolve on a PATH that starts with the
directory of the interpreter running the node (the venv's ``bin``).

Its environment is exactly what the pod spec gives (values, Secret and
ConfigMap refs, ``envFrom``, the downward API, resource refs), on top of
``PATH``, ``HOME`` (the pod's ``home`` directory), ``LANG=C.UTF-8``, the
``KUBERNETES_SERVICE_HOST``/``_PORT`` family a kubelet sets from the
``kubernetes`` Service (here the loopback apiserver) and, with a
service-account token, ``KUBECONFIG`` (below); nothing else of the node's own
environment leaks in. A missing Secret, ConfigMap or key that is not optional
gives ``CreateContainerConfigError``, retried about every second until it
appears.

**In-cluster credentials: a difference from a kubelet.** A process here
cannot read ``/var/run/secrets/kubernetes.io/serviceaccount/``, where
in-cluster clients (client-go, Kopf's ``login_with_service_account``) look
for the token: that path is translated only where the spec names it. So a
container that mounts a service-account token there (the
``kube-api-access-*`` volume the ServiceAccount admission plugin adds unless
``automountServiceAccountToken: false``, or a projected token volume of its
own at that path) also gets ``KUBECONFIG=<pod dir>/<container>.kubeconfig``,
unless its spec sets ``KUBECONFIG`` itself. That kubeconfig names the
apiserver, the mounted ``ca.crt`` (else the cluster's CA), the mounted token
file (``tokenFile``) and the same token inline (Kopf's
``login_with_kubeconfig`` reads only ``token``), and the pod's namespace:
the process acts as ``system:serviceaccount:<namespace>:<account>``, with
exactly that account's RBAC. Tokens are written once per pod and not
refreshed; the default ``expirationSeconds: 3607`` of the admission plugin's
volume is one the apiserver extends to a year.

**Path translation.** There are no mount namespaces, so volumes (emptyDir,
configMap, secret, downwardAPI, projected including service-account tokens,
hostPath, persistentVolumeClaim) are materialised as directories under the
pod's directory, ``<state>/pods/<namespace>_<pod>_<uid>/volumes/<volume>``,
and every string a container is given that names a path under one of its
``volumeMounts`` is rewritten to the local directory: an env value, a
command or args element, or ``workingDir`` that *equals* a ``mountPath`` or
*starts with* ``mountPath/`` (longest mountPath first; ``subPath``
appended). So a ConfigMap mounted at ``/etc/analysis`` with
``ANALYSIS_PLAN_PATH=/etc/analysis/plan.json`` gives the process
``ANALYSIS_PLAN_PATH=<pod dir>/volumes/plan/plan.json``. ``TMPDIR`` points at
the volume mounted at ``/tmp``, if any. Paths inside file contents, or built
by the program at run time from other strings, are *not* translated; the
working directory defaults to the pod's ``home``.

Logs: each container's stdout and stderr go through a pipe the node drains,
appended across restarts, to
``<state>/pods/<namespace>_<pod>_<uid>/<container>.log`` (:func:`pod_log_path`,
:func:`find_pod_log`), with ``.log.runs`` and ``.log.times`` beside it (where
each run starts and when each part arrived: :mod:`analysis_devcluster.podlogs`).
Every process runs in its own process group with ``PR_SET_PDEATHSIG``, and a
watchdog process kills every pod's process group if the node dies, so
nothing outlives it.

It deliberately serves no other kubelet API (no ``exec``, ``attach``,
``port-forward``, stats), gives pods no network of their own (every pod is
127.0.0.1 and shares the host's ports), enforces no resource limits and runs
no images: only commands.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import platform
import resource
import shlex
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import analysis_core
from analysis_devcluster import kubeapi, kubeletapi, pki, podrun, podspec

Obj = dict[str, Any]
log = logging.getLogger("analysis_devcluster.node")

DEFAULT_NAME = "devcluster-node"
DEFAULT_IMAGES: Mapping[str, tuple[str, ...]] = {
    "analysis-worker": ("analysis-worker",),
    "analysis-operator": ("analysis-operator",),
}
NODE_IP = "127.0.0.1"
ALLOCATABLE = {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"}
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40  # as the kubelet's
RENEW_EVERY_S = 10.0  # a quarter of the lease, as the kubelet's
STATUS_EVERY_S = 30.0
SHUTDOWN_GRACE_S = 3.0
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_RETRY_MAX_S = 2.0


# ------------------------------------------------------------------ where things are


def pods_dir(state_dir: Path) -> Path:
    """Where the node keeps one directory per pod."""
    return Path(state_dir) / "pods"


def pod_log_path(state_dir: Path, namespace: str, pod: str, uid: str, container: str) -> Path:
    """``<state>/pods/<namespace>_<pod>_<uid>/<container>.log`` (it may not exist yet)."""
    return podrun.pod_dir(pods_dir(state_dir), namespace, pod, uid) / f"{container}.log"


def find_pod_log(state_dir: Path, namespace: str, pod: str, container: str | None = None) -> Path:
    """The log of ``container`` (or of the pod's only container) of the newest pod so named.

    Raises FileNotFoundError when the node has no such pod or log (yet).
    """
    candidates = sorted(pods_dir(state_dir).glob(f"{namespace}_{pod}_*"), key=lambda path: path.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"the node at {state_dir} has run no pod {namespace}/{pod}")
    directory = candidates[-1]
    if container is not None:
        path = directory / f"{container}.log"
        if not path.exists():
            raise FileNotFoundError(f"no log of container {container!r} in {directory}")
        return path
    logs = sorted(directory.glob("*.log"))
    if len(logs) != 1:
        raise FileNotFoundError(f"{directory} has {len(logs)} container logs; name the container")
    return logs[0]


def search_path() -> str:
    """The PATH of every container: the running interpreter's directory, then the node's own PATH."""
    own = os.environ.get("PATH") or _DEFAULT_PATH
    return os.pathsep.join([str(Path(sys.executable).parent), own])


def _micro_now() -> str:
    """The current time as the API's ``metav1.MicroTime``."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ------------------------------------------------------------------ the node


class LocalNode:
    """Node registration and heartbeats, binding, and one :class:`podrun.PodRuntime` per bound pod."""

    def __init__(
        self,
        client: kubeapi.Client,
        *,
        name: str,
        state_dir: Path,
        images: Mapping[str, Sequence[str]],
        watchdog: podrun.Watchdog,
        kubelet_tls: ssl.SSLContext,
        kubelet_port: int = 0,
    ) -> None:
        self.client = client
        self.name = name
        self.state_dir = Path(state_dir)
        self.context = podrun.NodeContext(
            client=client,
            placement=podspec.Placement(node_name=name, host_ip=NODE_IP, pod_ip=NODE_IP, allocatable=ALLOCATABLE),
            images=dict(images),
            search_path=search_path(),
            pods_dir=pods_dir(self.state_dir),
            claims_dir=self.state_dir / "claims",
            watchdog=watchdog,
            server=client.server,
            ca_pem=client.ca_pem,
        )
        self.kubelet = kubeletapi.KubeletServer(self.find_pod, kubelet_tls, kubelet_port)
        self.kubelet_port = 0
        self.pods: dict[str, podrun.PodRuntime] = {}
        self._binding: set[str] = set()
        self._node_uid = ""
        self._ready_since = podrun.now()
        self._kubelet_version = "v0.0.0"
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve, register, then schedule and run pods until ``stopping`` is set; then stop every pod's processes."""
        self.kubelet_port = await self.kubelet.start()
        log.info("node %s: kubelet endpoint on https://%s:%d", self.name, NODE_IP, self.kubelet_port)
        try:
            await self._register()
            log.info("node %s registered and Ready", self.name)
            loops = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._watch_pods())]
            try:
                await stopping.wait()
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                await self.shutdown(SHUTDOWN_GRACE_S)
        finally:
            await self.kubelet.stop()

    def find_pod(self, namespace: str, name: str) -> podrun.PodRuntime | None:
        """The runtime of the newest pod so named on this node, as the kubelet finds a pod by name."""
        found = [r for r in self.pods.values() if r.namespace == namespace and r.name == name]
        return found[-1] if found else None

    async def shutdown(self, grace: float) -> None:
        """Stop every pod's processes (SIGTERM, SIGKILL after ``grace``); pod objects are left as they are."""
        await asyncio.gather(*(runtime.shutdown(grace) for runtime in list(self.pods.values())))
        for task in list(self._tasks):
            task.cancel()

    # ------------------------------------------------------------ Node and Lease

    async def _register(self) -> None:
        """Create (or adopt) the Node, report it Ready and take its Lease; retry until the apiserver answers."""
        delay = 0.1
        while True:
            try:
                with contextlib.suppress(kubeapi.ApiError):
                    version = await self.client.request("GET", "/version")
                    self._kubelet_version = str(version.get("gitVersion", self._kubelet_version))
                try:
                    created = await self.client.request("POST", "/api/v1/nodes", body=self._node_object())
                except kubeapi.ApiError as error:
                    if error.status != 409:
                        raise
                    created = await self.client.request("GET", f"/api/v1/nodes/{self.name}")
                self._node_uid = created["metadata"]["uid"]
                await self._report_node()
                await self._renew_lease()
                return
            except kubeapi.FAILURES as error:
                log.warning("registering node %s: %s", self.name, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    def _node_object(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": _arch(),
                    "node.kubernetes.io/instance-type": "analysis-devcluster",
                },
            },
            "spec": {},
            "status": self._node_status(),
        }

    def _node_status(self) -> Obj:
        heartbeat = podrun.now()

        def condition(kind: str, status: str, reason: str, message: str) -> Obj:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": heartbeat,
                "lastTransitionTime": self._ready_since,
            }

        return {
            "capacity": dict(ALLOCATABLE),
            "allocatable": dict(ALLOCATABLE),
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
                condition("Ready", "True", "KubeletReady", "the analysis-devcluster local node is running pods"),
            ],
            "addresses": [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": platform.release(),
                "osImage": f"analysis-devcluster local node {analysis_core.__version__}",
                "containerRuntimeVersion": f"devcluster://{analysis_core.__version__}",
                "kubeletVersion": self._kubelet_version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
        }

    async def _report_node(self) -> None:
        await self.client.request(
            "PATCH", f"/api/v1/nodes/{self.name}/status", body={"status": self._node_status()}, patch="strategic"
        )

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION_S, "renewTime": _micro_now()}
        try:
            await self.client.request("PATCH", f"{path}/{self.name}", body={"spec": spec}, patch="merge")
        except kubeapi.ApiError as error:
            if error.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self._node_uid}
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": LEASE_NAMESPACE, "ownerReferences": [owner]},
                "spec": spec,
            }
            await self.client.request("POST", path, body=lease)

    async def _heartbeat(self) -> None:
        """Renew the Lease every RENEW_EVERY_S and the Ready heartbeat every STATUS_EVERY_S, forever."""
        loop = asyncio.get_running_loop()
        reported = loop.time()
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                await self._renew_lease()
                if loop.time() - reported >= STATUS_EVERY_S:
                    await self._report_node()
                    reported = loop.time()
            except kubeapi.ApiError as error:
                log.warning("node heartbeat: %s", error)
                if error.status == 404:  # someone deleted the Node: register again
                    await self._register()
            except kubeapi.TRANSIENT as error:
                log.warning("node heartbeat: %s", error)

    # ------------------------------------------------------------ pods

    async def _watch_pods(self) -> None:
        """List then watch every pod; relist after a 410 Gone or a lost apiserver."""
        delay = 0.1
        while True:
            try:
                version = await self._relist()
                delay = 0.1
                while True:
                    async for event in self.client.watch("/api/v1/pods", version):
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        if event["type"] != "BOOKMARK":
                            self._dispatch(event["type"], event["object"])
            except kubeapi.ApiError as error:
                if error.status != 410:
                    log.warning("pod watch: %s", error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)
            except kubeapi.TRANSIENT as error:
                log.warning("pod watch: %s (%s); relisting", error, type(error).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _relist(self) -> str:
        """Dispatch every pod as it is now, forget pods that are gone; the list's resourceVersion."""
        listed = await self.client.request("GET", "/api/v1/pods")
        present = set()
        for pod in listed.get("items", []):
            present.add(pod["metadata"]["uid"])
            self._dispatch("ADDED", pod)
        for uid, runtime in list(self.pods.items()):
            if uid not in present:
                runtime.vanish()
        version: str = listed["metadata"]["resourceVersion"]
        return version

    def _dispatch(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        runtime = self.pods.get(uid)
        if kind == "DELETED":
            if runtime is not None:
                runtime.vanish()
            return
        node_name = pod["spec"].get("nodeName")
        if not node_name:
            if _schedulable(pod) and uid not in self._binding:
                self._binding.add(uid)
                self._spawn_task(self._bind(pod))
        elif node_name == self.name:
            self._track(pod)

    def _spawn_task(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bind(self, pod: Obj) -> None:
        """Bind ``pod`` to this node and start it at once (the watch confirms it a moment later)."""
        metadata = pod["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": metadata["name"], "namespace": metadata["namespace"], "uid": metadata["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        }
        path = f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}/binding"
        delay = 0.1
        try:
            for _ in range(10):
                try:
                    await self.client.request("POST", path, body=binding)
                except kubeapi.ApiError as error:
                    if error.status in (404, 409):  # gone, or bound already
                        return
                    log.warning("binding %s/%s: %s", metadata["namespace"], metadata["name"], error)
                except kubeapi.TRANSIENT as error:
                    log.warning("binding %s/%s: %s", metadata["namespace"], metadata["name"], error)
                else:
                    log.info("bound %s/%s to %s", metadata["namespace"], metadata["name"], self.name)
                    self._track({**pod, "spec": {**pod["spec"], "nodeName": self.name}})
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
        finally:
            self._binding.discard(metadata["uid"])

    def _track(self, pod: Obj) -> None:
        """Hand ``pod`` to its runtime, creating and starting one for a pod new to this node."""
        uid = pod["metadata"]["uid"]
        runtime = self.pods.get(uid)
        if runtime is not None:
            runtime.update(pod)
            return
        runtime = podrun.PodRuntime(self.context, pod)
        self.pods[uid] = runtime
        runtime.start().add_done_callback(lambda task: self._forget(uid, task))

    def _forget(self, uid: str, task: asyncio.Task[None]) -> None:
        runtime = self.pods.pop(uid, None)
        if not task.cancelled() and task.exception() is not None:
            key = runtime.key if runtime else uid
            log.error("pod %s: runtime failed", key, exc_info=task.exception())


def _schedulable(pod: Obj) -> bool:
    """Whether this node should bind ``pod``: the default scheduler's, not gated, not over, not being deleted."""
    spec, metadata = pod["spec"], pod["metadata"]
    return (
        spec.get("schedulerName", "default-scheduler") == "default-scheduler"
        and not spec.get("schedulingGates")
        and not metadata.get("deletionTimestamp")
        and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    )


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


# ------------------------------------------------------------------ entry point


def parse_images(entries: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``REPOSITORY=ARGV`` entries (ARGV split like a shell would) over the default image table."""
    images = dict(DEFAULT_IMAGES)
    for entry in entries:
        repository, separator, command = entry.partition("=")
        argv = tuple(shlex.split(command))
        if not separator or not repository or not argv:
            raise ValueError(f"--image wants REPOSITORY=COMMAND, got {entry!r}")
        images[repository] = argv
    return images


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis_devcluster.node", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--kubeconfig", type=Path, required=True, help="admin kubeconfig of the cluster")
    parser.add_argument("--state-dir", type=Path, required=True, help="where pod directories and logs go")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"the Node's name (default {DEFAULT_NAME})")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="REPOSITORY=COMMAND",
        help="an image repository the node can run and its entrypoint, e.g. python=/usr/bin/python3 (repeatable)",
    )
    # Named as the kubelet's flags are.
    parser.add_argument("--tls-cert-file", type=Path, help="the kubelet endpoint's certificate (default: self-signed)")
    parser.add_argument("--tls-private-key-file", type=Path, help="its key")
    parser.add_argument(
        "--client-ca-file", type=Path, help="CA of the clients it accepts (default: the kubeconfig's CA)"
    )
    parser.add_argument("--port", type=int, default=0, help="the kubelet endpoint's port (default: a free one)")
    return parser


def _kubelet_tls(args: argparse.Namespace, cluster_ca: bytes | None) -> ssl.SSLContext:
    """The kubelet endpoint's TLS: the given certificate, else a self-signed one written to the state directory."""
    cert, key = args.tls_cert_file, args.tls_private_key_file
    if cert is None:
        directory = args.state_dir / "kubelet"
        directory.mkdir(mode=0o700, exist_ok=True)
        cert, key = pki.write_pair(
            pki.self_signed_serving(args.name), directory / "kubelet.crt", directory / "kubelet.key"
        )
    client_ca = args.client_ca_file.read_bytes() if args.client_ca_file else cluster_ca
    return kubeletapi.tls_context(cert, key, client_ca)


def _raise_open_files_limit() -> None:
    """Every running container holds a few descriptors here (its pipe, log and pidfd): allow many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def _serve(args: argparse.Namespace, images: Mapping[str, Sequence[str]]) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stopping.set)
    state_dir: Path = args.state_dir
    watchdog = podrun.Watchdog()
    watchdog.start()
    try:
        async with kubeapi.Client.from_kubeconfig(args.kubeconfig, state_dir / "client") as client:
            node = LocalNode(
                client,
                name=args.name,
                state_dir=state_dir,
                images=images,
                watchdog=watchdog,
                kubelet_tls=_kubelet_tls(args, client.ca_pem),
                kubelet_port=args.port,
            )
            await node.run(stopping)
    finally:
        watchdog.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        images = parse_images(args.image)
    except ValueError as error:
        _parser().error(str(error))
    if (args.tls_cert_file is None) != (args.tls_private_key_file is None):
        _parser().error("--tls-cert-file and --tls-private-key-file go together")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    args.state_dir = args.state_dir.absolute()
    args.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _raise_open_files_limit()
    asyncio.run(_serve(args, images))
    log.info("node %s stopped", args.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
