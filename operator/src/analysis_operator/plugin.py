"""``kubectl analysis`` (installed as ``kubectl-analysis``): the kubectl plugin.

For now it only reports its version; the verbs (status, results, approve,
retry-failed, suspend, resume, logs) arrive with the shipping issue.
"""

import argparse

import analysis_core


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kubectl analysis", description="Inspect and control AnalysisBatch resources."
    )
    parser.add_argument("--version", action="version", version=f"kubectl-analysis {analysis_core.__version__}")
    sub = parser.add_subparsers(dest="verb")
    sub.add_parser("version", help="print the plugin's version")
    args = parser.parse_args(argv)
    if args.verb in (None, "version"):
        print(f"kubectl-analysis {analysis_core.__version__}")
