"""Write a ``DeployGraph`` as ONNX with the TorchScript-based exporter.

torch's default (dynamo) exporter fails on torchvision's detection models (vision #9306,
#9321), so ``dynamo=False``: the graph is traced on one example image; height and width are
dynamic axes, the batch is one image (vision #2311, #8937), and every output's first axis is
the detection count.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from rcnn_cli.deploy.graph import INPUT, PROPOSALS, DeployGraph
from rcnn_cli.errors import ConfigError
from rcnn_cli.io import atomic_write_bytes

MIN_OPSET = 11  # torchvision's RoIAlign / NMS symbolics start here


def onnx_bytes(graph: DeployGraph, example: torch.Tensor, opset: int) -> bytes:
    if opset < MIN_OPSET:
        raise ConfigError(f"opset={opset}: torchvision's RoIAlign and NMS need opset >= "
                          f"{MIN_OPSET}")
    names = graph.output_names
    dynamic = {INPUT: {1: "height", 2: "width"}, PROPOSALS: {0: "proposals"},
               **{k: {0: "detections"} for k in names}}
    dynamic = {k: v for k, v in dynamic.items() if k in graph.input_names + names}
    if graph.masks:
        dynamic["masks"] = {0: "detections", 2: "height", 3: "width"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter notices, all expected
        torch.onnx.export(graph, graph.example_inputs(example), buf, dynamo=False,
                          opset_version=opset, input_names=graph.input_names,
                          output_names=names, dynamic_axes=dynamic, do_constant_folding=True)
    return buf.getvalue()


def export_onnx(graph: DeployGraph, example: torch.Tensor, path: Path, opset: int) -> Path:
    return atomic_write_bytes(path, onnx_bytes(graph, example, opset))
