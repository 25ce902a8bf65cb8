"""``analysis-operator``: start Kopf on the operator's handler module.

A thin front over ``kopf run -m analysis_operator.handlers`` (module mode, so
sibling modules never compete with the standard library on ``sys.path``).
Extra arguments pass through to ``kopf run`` (``--namespace``, ``--all-namespaces``,
``--liveness``, ``--log-format``, ``--verbose``).

With ``ANALYSIS_OPERATOR_LEADER_LEASE`` set (the chart's replicas), Kopf starts
only once this process holds that Lease (``leader.Elector``); it ends the
process the moment it cannot renew it, and gives it up when Kopf exits.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import analysis_core
from analysis_operator import config

if TYPE_CHECKING:
    from analysis_operator import leader

GLOB = frozenset("*?[!")


def needs_cluster_scanning(args: Sequence[str]) -> bool:
    """Whether Kopf must watch namespaces and CRDs cluster-wide: unless it serves a fixed list of namespaces.

    A fixed list is what the Helm chart gives an operator with only namespaced
    Roles. Scanning there would be refused and retried for about a minute at
    every start before Kopf falls back to the list; turned off, it serves the
    list at once. Cluster-wide (``-A``, or no namespace at all) and patterns
    (``--namespace=team-*``) need scanning to find the namespaces.
    """
    names: list[str] = []
    wanted = False
    for arg in args:
        if wanted:
            names.append(arg)
            wanted = False
        elif arg in ("-A", "--all-namespaces"):
            return True
        elif arg in ("-n", "--namespace"):
            wanted = True
        elif arg.startswith("--namespace="):
            names.append(arg.removeprefix("--namespace="))
        elif arg.startswith("-n") and len(arg) > 2:
            names.append(arg[2:])
    return not names or any(GLOB & set(name) for name in names)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        print(f"analysis-operator {analysis_core.__version__}")
        return
    from kopf import cli as kopf_cli

    config.CLUSTER_SCANNING = needs_cluster_scanning(args)
    elector = _elect(args)
    try:
        kopf_cli.main(["run", "--standalone", "-m", "analysis_operator.handlers", *args], standalone_mode=True)
    finally:
        if elector is not None:
            elector.release()


def _elect(args: Sequence[str]) -> leader.Elector | None:
    """Hold the leader Lease before Kopf starts, if the replicas elect one; None when they do not."""
    if not os.environ.get(config.LEADER_LEASE):
        return None
    cfg = config.OperatorConfig.from_env()  # at once: a standby with a broken configuration fails now, not later
    if cfg.leader_lease is None or cfg.namespace is None:
        return None
    import lightkube

    from analysis_operator import kube, leader  # imported when used: the CLI starts fast

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s")
    for chatty in ("httpx", "httpx2"):  # a line per request: a renewal every 2 s
        logging.getLogger(chatty).setLevel(logging.WARNING)
    identity = f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    client = lightkube.Client(kube.config(), field_manager=kube.FIELD_MANAGER)
    elector = leader.Elector(client, cfg.namespace, cfg.leader_lease, identity)
    # While it waits: the kubelet's liveness probe, and a scrape of the metrics port, are answered.
    metrics = ("0.0.0.0", cfg.metrics_port) if cfg.metrics_port else None
    with leader.standby_health(leader.liveness_address(args), metrics):
        elector.acquire()

    def lost(why: str) -> None:
        # Stop handling at once, before any standby may take over: no cleanup, no last writes.
        logging.getLogger(__name__).error(f"lost the leadership ({why}); exiting")
        logging.shutdown()
        os._exit(3)

    elector.keep(lost)
    return elector
