"""``analysis-operator``: start Kopf on the operator's handler module.

A thin front over ``kopf run -m analysis_operator.handlers`` (module mode, so
sibling modules never compete with the standard library on ``sys.path``).
Extra arguments pass through to ``kopf run`` (``--namespace``, ``--all-namespaces``,
``--liveness``, ``--log-format``, ``--verbose``).
"""

import sys
from collections.abc import Sequence

import analysis_core
from analysis_operator import config

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
    kopf_cli.main(["run", "--standalone", "-m", "analysis_operator.handlers", *args], standalone_mode=True)
