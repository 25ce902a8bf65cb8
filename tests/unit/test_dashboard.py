"""The Grafana dashboard the chart ships: well formed, on its datasource variable, and querying real metrics.

Metric names come from the registries of ``analysis_worker.metrics`` and
``analysis_operator.metrics`` (what the processes actually expose), not from
a list kept here, so renaming a metric without fixing its panel fails.
"""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from analysis_operator import metrics as operator_metrics
from analysis_worker import metrics as worker_metrics

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/analysis-operator/dashboards/analysis-operator.json"
# The sample names a family of each type exposes (created series are turned off in both modules).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
PROMQL_WORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "group_left", "group_right"}


def exposed(registry: CollectorRegistry) -> dict[str, str]:
    """Sample name -> family name, for every family the registry collects."""
    names = {}
    for family in registry.collect():
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.name
    return names


EXPOSED = {**exposed(worker_metrics.REGISTRY), **exposed(operator_metrics.REGISTRY)}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, labels or keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery windows
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    found = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function call, or an operator keyword
        found.add(match.group())
    return found


def load() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every query variable."""
    found = [(p["title"], t["expr"]) for p in panels(dashboard) for t in p.get("targets") or []]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<series selector>, <label>): Grafana's function, not PromQL; the selector is the query.
            call = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", variable["query"]["query"])
            assert call, f"${variable['name']}: not a label_values() query"
            found.append((f"${variable['name']}", call.group(1)))
    return found


def test_the_metric_name_extractor_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_seconds_bucket{x=~"y|z", q="sum(b)"}[5m]))) '
        "/ on (model) group_left c_total offset 1h + 1e3 and bool d"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "c_total", "d"}
    assert metric_names('sum(rate(x_total{a="b"}[$__rate_interval])) * 3600') == {"x_total"}


def test_panels_have_unique_ids_and_query_through_the_datasource_variable() -> None:
    dashboard = load()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "batch"} <= set(variables)
    all_panels = panels(dashboard)
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids))
    uses_variable = {"type": "prometheus", "uid": "${datasource}"}
    for variable in (variables["namespace"], variables["batch"]):
        assert variable["datasource"] == uses_variable
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == uses_variable, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", uses_variable) == uses_variable, panel["title"]
            assert target["expr"].strip(), panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_do_not_overlap_on_the_grid() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(load()):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken.get((x, y))}"
                taken[x, y] = panel["title"]


def test_every_query_names_metrics_that_exist() -> None:
    for where, expr in queries(load()):
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        missing = sorted(used - set(EXPOSED))
        assert not missing, f"{where}: {missing} not defined by either module; {expr!r}"


def test_the_dashboard_shows_every_metric_of_ours() -> None:
    shown = {EXPOSED[name] for _where, expr in queries(load()) for name in metric_names(expr) if name in EXPOSED}
    ours = {family for family in EXPOSED.values() if family.startswith("analysis_")}
    assert sorted(ours - shown) == []
