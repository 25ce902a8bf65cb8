"""``analysis-worker``: the worker's entry point.

The queue loop arrives with the worker issue; until then the command answers
``--version`` and refuses to start rather than pretending to work.
"""

import argparse
import sys

import analysis_core


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="analysis-worker", description="Process AnalysisBatch items of one stage.")
    parser.add_argument("--version", action="version", version=f"analysis-worker {analysis_core.__version__}")
    parser.parse_args(argv)
    print("analysis-worker: the worker loop is not built yet", file=sys.stderr)
    raise SystemExit(2)
