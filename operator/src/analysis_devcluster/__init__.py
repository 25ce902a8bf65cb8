"""A throwaway local Kubernetes control plane plus Redis, for tests and demos.

``analysis_devcluster`` starts real etcd, kube-apiserver, kube-controller-manager
(built by ``tools/controlplane/build.sh`` into ``.devcluster/bin``) and a real
``redis-server`` as plain child processes on free loopback ports, with a
private PKI and an admin kubeconfig. Callers: ``tests/conftest.py`` (through
:class:`analysis_devcluster.cluster.DevCluster`) and developers (through the
``analysis-devcluster`` command, :mod:`analysis_devcluster.cli`).

It deliberately has no kubelet, no scheduler and no container runtime: Pods
stay Pending. Nothing in the operator, the worker or the core imports it
(an import-linter contract enforces that).

Modules: ``binaries`` (finding the tools), ``pki`` (certificates and keys),
``processes`` (spawning and stopping components), ``cluster`` (the cluster
itself), ``cli`` (the command).
"""
