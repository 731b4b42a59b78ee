"""Write a ``DeployGraph`` as TorchScript by tracing (``torch.jit.trace``).

Tracing takes the same export-friendly paths as the ONNX exporter (torchvision checks
``_is_tracing``), so the file runs on any image size. Loading it needs ``torch`` and
``torchvision`` imported (for the ``torchvision::nms`` / ``roi_align`` ops), not rcnn-cli.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from rcnn_cli.deploy.graph import DeployGraph
from rcnn_cli.io import atomic_write_bytes


def torchscript_bytes(graph: DeployGraph, example: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notices about frozen Python values, expected
        traced = torch.jit.trace(graph, graph.example_inputs(example), check_trace=False)
        torch.jit.save(traced, buf)
    return buf.getvalue()


def export_torchscript(graph: DeployGraph, example: torch.Tensor, path: Path) -> Path:
    return atomic_write_bytes(path, torchscript_bytes(graph, example))
