"""The Grafana dashboard in deploy/ and the metric names its queries use."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"


def grafana_metric_names(dashboard: dict) -> set[str]:
    """Every `ray_*` metric named in the dashboard's panel queries and variables."""
    texts = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    texts += [json.dumps(v.get("query", "")) for v in dashboard["templating"]["list"]]
    return {m for text in texts for m in re.findall(r"\bray_[a-z0-9_]+", text)}


def load_grafana_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())
