"""The dev cluster's node: containerd, runc and the CNI plugins from Debian, kubelet, kube-proxy, kube-scheduler and CoreDNS.

Called by :mod:`analysis_devcluster.cluster` when a cluster has a node, in
four steps. :meth:`Node.prepare`, before the control plane (whose servers
listen on the pod bridge): the lock, a sweep, the pod network
(:mod:`analysis_devcluster.podnet`), containerd and the images
(:mod:`analysis_devcluster.images`). :meth:`Node.start`, once the apiserver
serves: the node's components as child processes of the caller
(:mod:`analysis_devcluster.processes`), each with a credential of its own
from the cluster's PKI (the kubelet is ``system:node:<name>``, so the Node
authorizer and NodeRestriction apply). :meth:`Node.stop_components`, before
the control plane stops; :meth:`Node.release`, after it: every trace of the
node swept, the lock let go.

Where things live: a node is a machine-wide thing (a bridge, routes, iptables
rules, cgroups, mounts), so only one runs per machine. :data:`LOCK` is held
(flock) for the node's whole life, and the node's runtime state is in fixed
places: :data:`RUN_DIR` (sockets, containerd's state, network namespaces)
and :data:`VAR_DIR` (containerd's root, the kubelet's root, pod addresses),
with the pods' cgroups under :data:`CGROUP_ROOT`. Logs and configuration go
to the cluster's state directory. Because these places are fixed,
:func:`sweep` can remove what a crashed run left: :meth:`Node.prepare` calls
it before anything else, :meth:`Node.release` last.

The host: cgroup v1 or v2 is detected and the kubelet configured for it
(``cgroupfs`` driver; the ``failCgroupV1`` opt-out on v1); the sandbox may
lack CAP_SYS_RESOURCE, hence containerd's ``restrict_oom_score_adj``.
It deliberately enforces no NetworkPolicy (the bridge plugin has no policy
engine) and runs no static pods.
"""

import contextlib
import dataclasses
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import yaml

from analysis_devcluster import binaries, images, pki, podnet, processes

RUN_DIR = Path("/run/analysis-devcluster")
VAR_DIR = Path("/var/lib/analysis-devcluster")
LOCK = Path("/run/analysis-devcluster.lock")
CONTAINERD_SOCKET = RUN_DIR / "containerd.sock"
CGROUP_ROOT = "analysis-devcluster"
CGROUP_FS = Path("/sys/fs/cgroup")
CLUSTER_DOMAIN = "cluster.local"
CONTAINERD_NAMESPACE = "k8s.io"  # the namespace the CRI plugin keeps its images and containers in
SYSTEM_PACKAGES_HINT = "run `tools/system-packages.sh`"
MAX_PODS_ENV = "ANALYSIS_DEVCLUSTER_MAX_PODS"  # the kubelet's maxPods (default 110)
# CoreDNS reads Services and their endpoints; the apiserver's kubelet client (kubectl logs, exec) may use
# the kubelet's API, which the kubelet asks the apiserver about (webhook authorization), as kubeadm grants it.
NODE_RBAC = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "devcluster:apiserver-kubelet-client"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "%(kubelet_client)s"}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "devcluster:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "devcluster:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "devcluster:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "%(coredns)s"}]
"""


# Storage: pre-created `local` PersistentVolumes on this node under a no-provisioner StorageClass that
# binds on first use (a hostPath volume would ignore the pod's fsGroup; a local one honours it).
STORAGE_CLASS = "devcluster-local"
VOLUMES = 6
VOLUME_SIZE = "2Gi"


class NodeError(RuntimeError):
    """The node cannot start here; the message says why and what to do."""


class NodeBusy(NodeError):
    """Another dev cluster's node runs on this machine (it holds :data:`LOCK`)."""


def cgroup_version() -> int:
    """2 on a unified hierarchy, 1 on a legacy or hybrid one (the kubelet then needs ``failCgroupV1: false``)."""
    return 2 if (CGROUP_FS / "cgroup.controllers").exists() else 1


def _cgroup_roots() -> list[Path]:
    """Our cgroup root in each hierarchy the kubelet uses."""
    if cgroup_version() == 2:
        return [CGROUP_FS / CGROUP_ROOT]
    found = []
    for hierarchy in sorted(CGROUP_FS.iterdir()):
        # Skip the named systemd hierarchy and the comma-joined aliases (cpu,cpuacct -> cpu and cpuacct).
        if hierarchy.is_dir() and not hierarchy.is_symlink() and (hierarchy / "cgroup.procs").exists():
            found.append(hierarchy / CGROUP_ROOT)
    return found


def _make_cgroup_root() -> None:
    for root in _cgroup_roots():
        root.mkdir(exist_ok=True)
        if root.parent.name == "cpuset":
            # A v1 cpuset starts empty and admits no task until it is given CPUs and memory nodes.
            for name in ("cpuset.cpus", "cpuset.mems"):
                (root / name).write_text((root.parent / name).read_text())
    if cgroup_version() == 2:
        controllers = (CGROUP_FS / "cgroup.subtree_control").read_text().split()
        root = CGROUP_FS / CGROUP_ROOT
        with contextlib.suppress(OSError):
            (root / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in controllers))


def _cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for root in _cgroup_roots():
        if root.exists():
            for procs in root.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
    return pids


def _remove_cgroups() -> None:
    for root in _cgroup_roots():
        if root.exists():
            deepest_first = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for directory in deepest_first:
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()


def _our_processes() -> set[int]:
    """Processes of a node: anything in our cgroups, and anything whose command line names our directories.

    That covers containerd, its shims (``-address /run/analysis-devcluster/...``),
    the containers and the node components, but never another containerd.
    """
    found = _cgroup_pids()
    markers = (str(RUN_DIR).encode(), str(VAR_DIR).encode())
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if any(marker in (entry / "cmdline").read_bytes() for marker in markers):
                    found.add(int(entry.name))
    found.discard(os.getpid())
    return found


def sweep(ranges: podnet.Ranges, kube_proxy: Path | None = None) -> None:
    """Remove every trace of a node: processes, mounts, network namespaces, iptables rules, routes, cgroups, state.

    Safe on a clean machine and on what a crashed run left. Must be called with :data:`LOCK` held.
    """
    for _ in range(20):
        pids = _our_processes()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    else:
        raise NodeError(f"processes of an earlier node do not die: {sorted(_our_processes())}")
    for directory in (RUN_DIR, VAR_DIR):
        podnet.remove_tree(directory)
    if kube_proxy is not None:
        # kube-proxy's own clean-up of its iptables chains (KUBE-SERVICES, KUBE-POSTROUTING, ...).
        subprocess.run([str(kube_proxy), "--cleanup"], capture_output=True, timeout=60, check=False)
    podnet.remove_kubelet_chains()
    podnet.teardown(ranges)
    _remove_cgroups()


@contextlib.contextmanager
def machine_lock() -> Iterator[IO[str]]:
    """Hold :data:`LOCK`, or raise NodeBusy naming the holder."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    handle = LOCK.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise NodeBusy(
                f"a dev cluster node already runs on this machine ({holder} holds {LOCK}); "
                "stop it (`make dev-cluster-down`, or end the test run) first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield handle
    finally:
        handle.close()


@dataclasses.dataclass(frozen=True)
class Ports:
    """The node components' local ports (the kubelet's serving port is on the gateway)."""

    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int
    scheduler: int
    coredns_health: int
    coredns_ready: int

    @classmethod
    def pick(cls) -> "Ports":
        return cls(*processes.free_ports(len(dataclasses.fields(cls))))


class Node:
    """One real node, named ``name``, for the apiserver at ``server_url``; its files in ``state_dir``."""

    def __init__(
        self,
        *,
        name: str,
        state_dir: Path,
        server_url: str,
        admin_kubeconfig: Path,
        files: pki.Files,
        ranges: podnet.Ranges,
        ready_timeout: float = 120.0,
    ) -> None:
        self.name = name
        self.state_dir = state_dir
        self.server_url = server_url
        self.admin_kubeconfig = admin_kubeconfig
        self.files = files
        self.ranges = ranges
        self.ready_timeout = ready_timeout
        self.ports = Ports.pick()
        self.components: list[processes.Component] = []
        self.images: list[images.Built] = []
        self.timings: dict[str, float] = {}
        self._lock: contextlib.ExitStack | None = None

    # ------------------------------------------------------------ life cycle

    def prepare(self) -> None:
        """What needs no apiserver: the lock, the sweep, the network, containerd and the images."""
        check_host()
        started = time.monotonic()
        lock = contextlib.ExitStack()
        lock.enter_context(machine_lock())
        # Only a node that holds the lock may sweep: stop() after a refused start must touch nothing.
        self._lock = lock
        sweep(self.ranges, binaries.find("kube-proxy"))
        podnet.setup(self.ranges)
        _make_cgroup_root()
        for directory in (RUN_DIR, VAR_DIR):
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.images = images.build_all()
        self.timings["images"] = round(time.monotonic() - started, 3)
        containerd = self._spawn("containerd", [_which("containerd"), "--config", str(self._containerd_config())])
        self._wait(containerd, "serving its socket", CONTAINERD_SOCKET.exists)
        self._wait(containerd, "answering", lambda: self._ctr("version").returncode == 0)
        # Seconds of disk work (about 1 GB of layers); overlapping it with the control plane's start gained
        # nothing on 2 cores, so it stays sequential.
        for built in self.images:
            self.load_image(built)
        self.timings["containerd"] = round(time.monotonic() - started, 3)

    def start(self) -> None:
        """The node's components, once the apiserver serves; returns when the Node is Ready is up to the caller."""
        self._apply_cluster_objects()
        self._spawn("kube-scheduler", self._scheduler_argv())
        self._spawn("kube-proxy", [str(binaries.find("kube-proxy")), f"--config={self._proxy_config()}"])
        self._spawn("coredns", [str(binaries.find("coredns")), "-conf", str(self._corefile())])
        self._spawn("kubelet", self._kubelet_argv())

    def stop_components(self, grace: float = 10.0) -> None:
        """Stop the node's components (pods keep running until :meth:`release` sweeps them). Idempotent."""
        while self.components:
            self.components.pop().stop(grace)

    def release(self) -> None:
        """Remove every trace of the node, then let go of the lock. Idempotent.

        Call it last, once nothing of the cluster that could still send to the
        pod bridge's gateway runs (the apiserver and Redis listen there): the
        blackhole routes go with the bridge, and after that such an address
        would be routed like any other.
        """
        try:
            self.stop_components()
            if self._lock is not None:
                sweep(self.ranges, binaries.find("kube-proxy"))
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def component(self, name: str) -> processes.Component:
        return next(c for c in self.components if c.name == name)

    def dead_components(self) -> list[str]:
        return [c.name for c in self.components if not c.running()]

    # ------------------------------------------------------------ helpers

    def _spawn(self, name: str, argv: list[str]) -> processes.Component:
        component = processes.spawn(name, argv, self.state_dir / "logs" / f"{name}.log", cwd=self.state_dir)
        self.components.append(component)
        return component

    def _wait(self, component: processes.Component, what: str, probe: Callable[[], bool]) -> None:
        processes.wait_until(component, what, probe, time.monotonic() + self.ready_timeout, self.ready_timeout)

    def tag_image(self, source: str, target: str) -> None:
        """Give the image ``source`` (as a pod names it, ``analysis-worker:0.1.0``) the name ``target`` too.

        What a release of other images looks like to the node without building any: pods that name
        ``target`` run the same content (tests of ``helm upgrade``).
        """
        known = self._ctr("images", "list", "--quiet").stdout.split()
        matches = [ref for ref in known if ref == source or ref.endswith("/" + source)]
        if not matches:
            raise NodeError(f"no image {source} in containerd (it has: {', '.join(sorted(known))})")
        prefix = matches[0].removesuffix(source)  # e.g. docker.io/library/, as the kubelet resolves short names
        tagged = self._ctr("images", "tag", "--force", matches[0], prefix + target)
        if tagged.returncode != 0:
            raise NodeError(f"ctr images tag {matches[0]} {prefix + target} failed: {tagged.stderr.strip()}")

    def _ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [_which("ctr"), "--address", str(CONTAINERD_SOCKET), "--namespace", CONTAINERD_NAMESPACE, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def load_image(self, built: images.Built) -> None:
        """Import the archive of ``built`` into containerd, where pods find it by its name."""
        imported = self._ctr("images", "import", "--snapshotter=overlayfs", str(built.archive))
        if imported.returncode != 0:
            raise NodeError(f"ctr images import {built.archive} failed: {imported.stderr.strip()}")

    def _kubeconfig(self, user: str, path: Path) -> Path:
        """A kubeconfig for ``user`` with its client certificate from the PKI."""
        cert, key = self.files.client(user)
        cluster = {"server": self.server_url, "certificate-authority": str(self.files.ca_cert)}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "devcluster", "cluster": cluster}],
            "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user}}],
            "current-context": "devcluster",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)
        return path

    def _apply_cluster_objects(self) -> None:
        """The node's RBAC, its StorageClass (the cluster's default) and its local volumes."""
        manifests = [NODE_RBAC % {"coredns": pki.COREDNS_USER, "kubelet_client": pki.KUBELET_CLIENT_USER}]
        storage_class = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Retain",
        }
        manifests.append(yaml.safe_dump(storage_class))
        for index in range(VOLUMES):
            path = VAR_DIR / "volumes" / f"pv-{index}"
            path.mkdir(mode=0o755, parents=True, exist_ok=True)
            manifests.append(yaml.safe_dump(self._volume(f"{STORAGE_CLASS}-{index}", path)))
        result = subprocess.run(
            [str(binaries.find("kubectl")), "--kubeconfig", str(self.admin_kubeconfig), "apply", "-f", "-"],
            input="\n---\n".join(manifests),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise NodeError(f"applying the node's RBAC, StorageClass and volumes failed: {result.stderr.strip()}")

    def _volume(self, name: str, path: Path) -> dict[str, object]:
        selector = {"key": "kubernetes.io/hostname", "operator": "In", "values": [self.name]}
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": VOLUME_SIZE},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "local": {"path": str(path)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [selector]}]}},
            },
        }

    # ------------------------------------------------------------ configuration files

    def _containerd_config(self) -> Path:
        cni_conf = self.state_dir / "cni"
        podnet.write_cni_config(self.ranges, cni_conf, VAR_DIR / "cni-networks")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""# Written by analysis_devcluster.node for one run; see that module.
version = 2
root = "{VAR_DIR / "containerd"}"
state = "{RUN_DIR / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{RUN_DIR / "containerd-ttrpc.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{VAR_DIR / "opt"}"

[{cri}]
  sandbox_image = "{images.PAUSE_IMAGE}"
  # The sandbox may lack CAP_SYS_RESOURCE: without this every pod sandbox fails in runc
  # ("can't get final child's PID from pipe: EOF") on the kubelet's OOM score adjustment.
  restrict_oom_score_adj = true
  # Network namespaces under the state directory, so that nothing of ours is in /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{podnet.cni_bin_dir()}"
  conf_dir = "{cni_conf}"
  max_conf_num = 1
"""
        path = self.state_dir / "containerd.toml"
        path.write_text(text, encoding="utf-8")
        return path

    def _kubelet_argv(self) -> list[str]:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ranges.gateway,
            "port": self.ports.kubelet,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.ports.kubelet_healthz,
            "tlsCertFile": str(self.files.kubelet_cert),
            "tlsPrivateKeyFile": str(self.files.kubelet_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.files.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "clusterDNS": [self.ranges.gateway],
            "clusterDomain": CLUSTER_DOMAIN,
            # Pods get only the cluster's DNS: nothing of this host's resolver configuration.
            "resolvConf": "",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            # A developer's disk is often fuller than a node's; evict only when it is really full.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            # The images were imported, not pulled: nothing could pull them back after a garbage collection.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "shutdownGracePeriod": "0s",
            # The kubelet's default; a benchmark of many batches at once raises it (bench/scale_batches.py).
            "maxPods": int(os.environ.get(MAX_PODS_ENV) or 110),
        }
        path = self.state_dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        kubeconfig = self._kubeconfig(pki.node_user(self.name), self.state_dir / "kubelet.kubeconfig")
        return [
            str(binaries.find("kubelet")),
            f"--config={path}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={VAR_DIR / 'kubelet'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.ranges.gateway}",
            "--v=1",
        ]

    def _proxy_config(self) -> Path:
        kubeconfig = self._kubeconfig(pki.KUBE_PROXY_USER, self.state_dir / "kube-proxy.kubeconfig")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": str(self.ranges.pods),
            "hostnameOverride": self.name,
            "bindAddress": self.ranges.gateway,
            "healthzBindAddress": f"127.0.0.1:{self.ports.proxy_healthz}",
            "metricsBindAddress": f"127.0.0.1:{self.ports.proxy_metrics}",
            # NodePorts answer only on the bridge's address, never on the host's other interfaces.
            "nodePortAddresses": [f"{self.ranges.gateway}/32"],
            # Zeros leave the host's conntrack sysctls alone (a sandbox may not write them).
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
        }
        path = self.state_dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def _scheduler_argv(self) -> list[str]:
        kubeconfig = self._kubeconfig(pki.SCHEDULER_USER, self.state_dir / "kube-scheduler.kubeconfig")
        return [
            str(binaries.find("kube-scheduler")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            "--profiling=false",
        ]

    def _corefile(self) -> Path:
        kubeconfig = self._kubeconfig(pki.COREDNS_USER, self.state_dir / "coredns.kubeconfig")
        text = f""".:53 {{
    bind {self.ranges.gateway}
    errors
    health 127.0.0.1:{self.ports.coredns_health}
    ready 127.0.0.1:{self.ports.coredns_ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} devcluster
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        path = self.state_dir / "Corefile"
        path.write_text(text, encoding="utf-8")
        return path


def _which(tool: str) -> str:
    for directory in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/bin", "/sbin"):
        candidate = Path(directory) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise NodeError(f"{tool} not found: {SYSTEM_PACKAGES_HINT} (Debian packages containerd, runc, iptables)")


def check_host() -> None:
    """Fail fast, naming the fix, when the node cannot run here."""
    if os.geteuid() != 0:
        raise NodeError("a node needs root (containerd, network namespaces, routes and iptables rules)")
    for tool in ("containerd", "ctr", "runc", "iptables", "ip", "conntrack", "buildah", "debootstrap", "gcc"):
        _which(tool)
    podnet.cni_bin_dir()
    for tool in ("kubelet", "kube-proxy", "kube-scheduler", "coredns"):
        binaries.find(tool)
