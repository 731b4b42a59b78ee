"""``rcnn-export``'s schema (rcnn_cli.deploy)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from omegaconf import MISSING


class ExportFormat(Enum):
    onnx = "onnx"
    torchscript = "torchscript"


@dataclass
class ExportMainConf:
    """``ckpt``: a checkpoint, a run directory or an export directory. ``output``: the folder
    for the model file and ``model.json`` (default: the Hydra run directory). ``image_size``:
    the example image's shorter side used for tracing (0: the training ``dataset.min_size``;
    the graph is not tied to it). ``check``: run the file on two image sizes against the eager
    model and refuse a file that differs (boxes > 1e-3 px, scores > 1e-4, other labels)."""

    ckpt: str = MISSING
    format: ExportFormat = ExportFormat.onnx
    output: str | None = None
    opset: int = 17
    image_size: int = 0
    check: bool = True
    threads: int = 0
    ckpt_trust: bool = False  # load pickles that need arbitrary globals (runs their code)
