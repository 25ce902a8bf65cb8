"""A throwaway local Kubernetes cluster plus Redis, for tests and demos.

``analysis_devcluster`` starts real etcd, kube-apiserver and
kube-controller-manager (built by ``tools/controlplane/build.sh`` into
``.devcluster/bin``) and a real ``redis-server`` as plain child processes,
with a private PKI and an admin kubeconfig. Callers: ``tests/conftest.py``
(through :class:`analysis_devcluster.cluster.DevCluster`), the demo and
developers (through the ``analysis-devcluster`` command,
:mod:`analysis_devcluster.cli`).

With a node (``DevCluster(node=True)``, and by default in ``analysis-devcluster
up``) it is a real one: kubelet, kube-proxy and kube-scheduler from the same
Kubernetes module, CoreDNS, and Debian's containerd, runc and CNI plugins,
running the project's images built with buildah. Without one, Pods stay
Pending and every server listens on loopback only. Nothing in the operator,
the worker or the core imports this package (an import-linter contract
enforces that).

Modules: ``binaries`` (finding the tools), ``pki`` (certificates and keys),
``processes`` (spawning and stopping components), ``cluster`` (the cluster
itself), ``cli`` (the command), ``node`` (the node and its machine-wide
life cycle), ``podnet`` (its pod network on this host), ``images`` (building
the images it runs), ``standin`` (the LLM API stand-in), ``forwardproxy``
(an HTTP forward proxy, a provider account's egress in tests) and ``demo``.
"""
