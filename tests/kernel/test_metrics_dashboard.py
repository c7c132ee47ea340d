"""The Grafana dashboard (`deploy/grafana/billing.json`) asks only for series the services
export (`shared.metrics`), and every exported series has a panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from shared import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "billing.json"


def exported() -> dict[str, set[str]]:
    """Each metric's name, with the series names Prometheus shows for it."""
    found: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            found[value._name] = {f"{value._name}_total"}
        elif isinstance(value, Histogram):
            found[value._name] = {f"{value._name}_{s}" for s in ("bucket", "count", "sum")}
        elif isinstance(value, Gauge):
            found[value._name] = {value._name}
    return found


def test_the_dashboard_and_the_metrics_agree() -> None:
    board = json.loads(DASHBOARD.read_text())
    asked = {
        name
        for panel in board["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bbilling_[a-z_]+", target["expr"])
    }
    series = exported()
    every = set().union(*series.values())
    assert asked <= every, f"the dashboard asks for series nobody exports: {asked - every}"
    unshown = [name for name, names in series.items() if not names & asked]
    assert unshown == [], f"exported but on no panel: {unshown}"
