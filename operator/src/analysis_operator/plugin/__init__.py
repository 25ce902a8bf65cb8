"""``kubectl analysis`` (installed as ``kubectl-analysis``): the kubectl plugin.

Verbs, each taking ``-n/--namespace``, ``--context`` and ``--kubeconfig``:

- ``status <batch>``: per-stage progress bars, rates, retries, judge
  verdicts, tokens, cost and the conditions that matter, redrawn until the
  batch finishes (``--once``: one snapshot);
- ``get <batch>`` and ``list [-A]``: a table richer than ``kubectl get``
  (``-o wide|json|yaml|name``);
- ``results <batch> [-o jsonl|json|table]``: what each item ended with, read
  from the result ConfigMaps the operator writes (``analysis_operator.results``);
- ``approve <batch> --stage S [--items a,b]``, ``retry-failed <batch>``,
  ``suspend <batch>``, ``resume <batch>``: the writes a human would make;
- ``logs <batch> [--stage S] [-f] [--tail N]``: the worker pods' logs;
- ``version``.

It runs kubectl for every call, so it uses exactly the user's kubeconfig, and
never talks to Redis: everything it shows is in the batch's status, its
result ConfigMaps and its pods.

Exit codes: 0 done; 1 the batch does not exist; 2 bad usage (including a
request the batch cannot take, such as approving a stage that is not an
approval stage); 3 the batch has no results yet; 4 kubectl could not be run
or failed otherwise; 5 the batch has failed (``status``). Errors go to
stderr, one line, ``error: ...`` like kubectl's own.

The public surface is :func:`main`, the console script's entry point. The
modules behind it, from the command line down:

- ``cli``: the argument parser, one function per verb, ``main``;
- ``logs``: which pods' logs, in which order, and following them;
- ``progress``: what ``status`` shows, its rates, and when following ends (pure);
- ``control``: the writes as merge patches (pure);
- ``render``: durations, bars, columns and the ``get``/``list`` table (pure);
- ``kubectl``: running kubectl, and the exit codes its failures map to.

The plugin is installed where only kubectl is, and starts on every call:
it imports neither kopf, aiohttp, Redis, pydantic, the worker, nor any
module of the operator but its result format, ``analysis_operator.results``
(import-linter contracts). The names it shares with the operator (labels,
the retry-failed annotation, phases, condition and stage types) come from
``analysis_core.api.wellknown``, which needs nothing but the standard
library.
"""

from analysis_operator.plugin.cli import main

__all__ = ["main"]
