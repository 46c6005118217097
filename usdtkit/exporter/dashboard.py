"""A Grafana dashboard for a configuration: one row of panels per metric, as importable JSON.

Counters get their per-second rate by label set; histograms get a heatmap of their bucket rates and
their p50 and p99 over time.  Every panel is a PromQL query on the data source chosen at import (the
``datasource`` variable), so the same JSON serves any Prometheus that scrapes the exporter.
"""
from __future__ import annotations

import json
from typing import Dict, List

from .config import ExporterConfig
from .metrics import MetricSpec

RATE_WINDOW = "1m"
WIDTH = 24
HEIGHT = 8
_SOURCE = {"type": "prometheus", "uid": "${datasource}"}


def queries(spec: MetricSpec) -> Dict[str, List[str]]:
    """The PromQL of each panel of ``spec``, by panel kind (``rate``, ``heatmap``, ``quantiles``)."""
    labels = [label for label, _ in spec.labels]
    if spec.type == "counter":
        by = f" by ({', '.join(labels)})" if labels else ""
        return {"rate": [f"sum{by} (rate({spec.name}_total[{RATE_WINDOW}]))"]}
    by = ", ".join(["le", *labels])
    bucket_rate = f"rate({spec.name}_bucket[{RATE_WINDOW}])"
    return {"heatmap": [f"sum by (le) ({bucket_rate})"],
            "quantiles": [f"histogram_quantile({q}, sum by ({by}) ({bucket_rate}))" for q in (0.5, 0.99)]}


def _panel(pid: int, title: str, kind: str, exprs: List[str], spec: MetricSpec, y: int, x: int, w: int) -> dict:
    unit = "s" if spec.measures_latency else ("ops" if spec.type == "counter" else "none")
    legend = " ".join("{{%s}}" % label for label, _ in spec.labels) or spec.name
    if kind == "heatmap":
        legends = ["{{le}}"]
    elif kind == "quantiles":
        legends = [f"p50 {legend}", f"p99 {legend}"]
    else:
        legends = [legend]
    panel = {"id": pid, "title": title, "datasource": _SOURCE, "gridPos": {"x": x, "y": y, "w": w, "h": HEIGHT},
             "targets": [{"refId": chr(ord("A") + i), "datasource": _SOURCE, "expr": expr, "legendFormat": text}
                         for i, (expr, text) in enumerate(zip(exprs, legends))]}
    if kind == "heatmap":
        panel.update(type="heatmap", options={"calculate": False, "yAxis": {"unit": unit}})
        panel["targets"][0]["format"] = "heatmap"
    else:
        panel.update(type="timeseries", fieldConfig={"defaults": {"unit": unit}, "overrides": []})
    return panel


def dashboard(config: ExporterConfig) -> dict:
    """The dashboard of ``config`` (Grafana's JSON model)."""
    panels = []
    for row, spec in enumerate(config.metrics):
        y = row * HEIGHT
        title = spec.help or spec.name
        kinds = queries(spec)
        if "rate" in kinds:
            panels.append(_panel(len(panels) + 1, f"{title} (per second)", "rate", kinds["rate"], spec, y, 0, WIDTH))
            continue
        panels.append(_panel(len(panels) + 1, f"{title} (heatmap)", "heatmap", kinds["heatmap"], spec, y, 0, WIDTH // 2))
        panels.append(_panel(len(panels) + 1, f"{title} (p50, p99)", "quantiles", kinds["quantiles"], spec, y,
                             WIDTH // 2, WIDTH // 2))
    return {"title": "usdtkit exporter", "uid": None, "schemaVersion": 39, "editable": True,
            "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                     "label": "Prometheus"}]},
            "panels": panels}


def render(config: ExporterConfig) -> str:
    return json.dumps(dashboard(config), indent=2)
