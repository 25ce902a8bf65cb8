"""A throwaway local Kubernetes control plane plus Redis, for tests and demos.

``analysis_devcluster`` starts real etcd, kube-apiserver, kube-controller-manager
(built by ``tools/controlplane/build.sh`` into ``.devcluster/bin``) and a real
``redis-server`` as plain child processes on free loopback ports, with a
private PKI and an admin kubeconfig. Callers: ``tests/conftest.py`` (through
:class:`analysis_devcluster.cluster.DevCluster`) and developers (through the
``analysis-devcluster`` command, :mod:`analysis_devcluster.cli`).

There is no kubelet, scheduler or container runtime; instead an optional
local node (``node``, on with ``DevCluster(node=True)`` and by default in
``analysis-devcluster up``) registers a Node, binds every pod to it and runs
each container's command as a local process. Without it Pods stay Pending.
Nothing in the operator, the worker or the core imports this package (an
import-linter contract enforces that).

Modules: ``binaries`` (finding the tools), ``pki`` (certificates and keys),
``processes`` (spawning and stopping components), ``cluster`` (the cluster
itself), ``cli`` (the command), ``node`` (the local node), with ``podrun``
(one pod's processes and status), ``podspec`` (what a pod spec means for a
local process) and ``kubeapi`` (its apiserver client); ``standin`` (the LLM
API stand-in).
"""
