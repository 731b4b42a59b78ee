"""An untrained (random-init) detector exported like a run's final weights: fast to make, and
its near-uniform class scores give plenty of detections to draw and evaluate."""

from __future__ import annotations

from pathlib import Path

import torch

from rcnn_cli.data.shapes import CLASSES
from rcnn_cli.engine.export import export_model
from rcnn_cli.engine.runtime import config_dict
from rcnn_cli.modeling.build import build_detector
from tests.conftest import TINY, compose_cfg


def make_export(out_dir: Path, overrides: list[str] | None = None, seed: int = 0) -> Path:
    cfg = compose_cfg("train", TINY + (overrides or []))
    torch.manual_seed(seed)
    model = build_detector(cfg, len(CLASSES))
    export_model(out_dir, model.state_dict(), list(CLASSES), [1, 2, 3], config_dict(cfg), 0)
    return out_dir
