"""``analysis-operator``: start Kopf on the operator's handler module.

A thin front over ``kopf run -m analysis_operator.handlers`` (module mode, so
sibling modules never compete with the standard library on ``sys.path``).
Extra arguments pass through to ``kopf run`` (``--namespace``, ``--all-namespaces``,
``--liveness``, ``--verbose``).
"""

import sys

import analysis_core


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        print(f"analysis-operator {analysis_core.__version__}")
        return
    from kopf import cli as kopf_cli

    kopf_cli.main(["run", "--standalone", "-m", "analysis_operator.handlers", *args], standalone_mode=True)
