"""Metric tables: rich on the console, markdown in the run directory."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rcnn_cli.console import table_console
from rcnn_cli.evaluation.build import PerClass
from rcnn_cli.evaluation.coco import STAT_NAMES


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def metrics_table(metrics: dict, title: str) -> Table:
    """The summary numbers: COCO's 12 stats per IoU type, VOC mAP, dropped detections."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = [f"{p}/{n}" for p in ("bbox", "segm") for n in STAT_NAMES]
    keys += ["voc07/mAP", "voc/mAP", "bbox/dropped_nonfinite"]
    for key in keys:
        if key in metrics:
            v = metrics[key]
            table.add_row(key, str(v) if isinstance(v, int) else _fmt(v))
    return table


def per_class_table(pc: PerClass) -> Table:
    table = Table(title=pc.title)
    table.add_column("class")
    for c in pc.columns:
        table.add_column(c, justify="right")
    for name, values in pc.rows:
        table.add_row(name, *[_fmt(v) for v in values])
    return table


def per_class_markdown(tables: list[PerClass], heading: str) -> str:
    lines = [f"# {heading}", ""]
    for pc in tables:
        lines += [f"## {pc.title}", "", "| class | " + " | ".join(pc.columns) + " |",
                  "|---|" + "---:|" * len(pc.columns)]
        lines += [f"| {name} | " + " | ".join(_fmt(v) for v in values) + " |"
                  for name, values in pc.rows]
        lines.append("")
    return "\n".join(lines)


def print_metrics(metrics: dict, title: str, per_class: list[PerClass] | None = None,
                  console: Console | None = None) -> None:
    console = console or table_console()
    console.print(metrics_table(metrics, title))
    for pc in per_class or []:
        console.print(per_class_table(pc))
