"""``python -m analysis_worker``: the same as the ``analysis-worker`` command."""

from analysis_worker import cli

cli.main()
