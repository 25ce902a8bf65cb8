"""``python -m analysis_devcluster``: the same as the ``analysis-devcluster`` command.

The detached supervisor started by ``analysis-devcluster up`` runs this way,
so it needs no console script on PATH. Nothing else lives here.
"""

from analysis_devcluster import cli

raise SystemExit(cli.main())
