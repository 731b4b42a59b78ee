"""Metric tables on the console (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rcnn_cli.evaluation.coco import STAT_NAMES


def metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for prefix in ("bbox", "segm"):
        for name in STAT_NAMES:
            key = f"{prefix}/{name}"
            if key in metrics:
                v = metrics[key]
                table.add_row(key, "n/a" if v is None else f"{v:.4f}")
    return table


def print_metrics(metrics: dict, title: str, console: Console | None = None) -> None:
    (console or Console()).print(metrics_table(metrics, title))
