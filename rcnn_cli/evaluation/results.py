"""What an evaluation leaves behind: results files, tables and PR curves.

``run_dir/predictions/detections.json`` (COCO results, original category ids),
``run_dir/metrics.json`` (every number printed), ``run_dir/per_class.md`` (AP / AP50 per
class), ``run_dir/pr_curves/<iou type or metric>.png`` and ``run_dir/confusion.{md,png}``
(``evaluation.confusion``); the same tables on the console.
"""

from __future__ import annotations

from pathlib import Path

from rcnn_cli.evaluation import confusion as cm
from rcnn_cli.evaluation import curves as pr
from rcnn_cli.evaluation.build import DetectionEvaluator
from rcnn_cli.evaluation.report import per_class_markdown, print_metrics
from rcnn_cli.io import atomic_write_json, atomic_write_text


def save_evaluation(run_dir: Path, evaluator: DetectionEvaluator, metrics: dict,
                    detections: list[dict], title: str,
                    confusion_score: float = 0.5) -> cm.Confusion:
    """Also ``run_dir/confusion.{md,png}`` (detections scoring >= ``confusion_score``);
    returns that matrix."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "predictions" / "detections.json", detections)
    atomic_write_json(run_dir / "metrics.json", metrics)
    tables = evaluator.per_class()
    atomic_write_text(run_dir / "per_class.md", per_class_markdown(tables, title))
    for c in evaluator.curves():
        pr.write_png(c, run_dir / "pr_curves" / f"{c.tag}.png", f"{title}: {c.tag} PR, IoU 0.5")
    print_metrics(metrics, title, tables)
    matrix = cm.confusion_matrix(evaluator.gt, detections, confusion_score)
    cm.write(matrix, run_dir, f"{title}: confusion (score >= {confusion_score:g}, IoU >= 0.5)")
    return matrix


def log_curves(writer, evaluator: DetectionEvaluator, iteration: int) -> None:
    """PR curves of the last evaluation into TensorBoard (``pr_curves/<tag>/<class>``)."""
    if writer is None:
        return
    for c in evaluator.curves():
        pr.add_to_tensorboard(writer, c, iteration)
