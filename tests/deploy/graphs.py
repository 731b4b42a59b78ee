"""Seeded random-weight detectors wrapped for export, and helpers to run exported files."""

from __future__ import annotations

import io

import numpy as np
import torch

from rcnn_cli.data.shapes import CLASSES
from rcnn_cli.deploy.graph import DeployGraph, build_deploy_graph
from tests.conftest import TINY, compose_cfg

# The default model and the three R50-FPN families (shapes images: min/max size 64).
FAMILIES = {
    "default": [],
    "r50_fpn_faster": ["backbone=r50_fpn", "anchors=fpn_small"],
    "r50_fpn_mask": ["model=mask", "backbone=r50_fpn", "anchors=fpn_small"],
    "r50_fpn_cascade": ["model=cascade", "backbone=r50_fpn", "anchors=fpn_small"],
}
# (H, W) of the example image the graph is traced with, and three others it must handle:
# inside the graph they resize to 51x64, 32x64 and 64x45.
EXAMPLE_SIZE = (64, 85)
SIZES = [(64, 80), (48, 96), (100, 70)]


def train_config(overrides: list[str]):
    return compose_cfg("train", TINY + overrides)


def deploy_graph(overrides: list[str], seed: int = 0) -> DeployGraph:
    from rcnn_cli.modeling.build import build_detector

    cfg = train_config(overrides)
    torch.manual_seed(seed)
    state = build_detector(cfg, len(CLASSES)).state_dict()
    return build_deploy_graph({"model": state, "classes": list(CLASSES)}, cfg, "test")


def image(size: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def eager(graph: DeployGraph, *inputs: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in zip(graph.output_names, graph(*inputs))}


def onnx_session(graph: DeployGraph, example: torch.Tensor, opset: int = 17):
    import onnxruntime as ort

    from rcnn_cli.deploy.onnx import onnx_bytes

    return ort.InferenceSession(onnx_bytes(graph, example, opset),
                                providers=["CPUExecutionProvider"])


def run_session(session, *inputs: torch.Tensor) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return dict(zip(names, session.run(None, feed)))


def torchscript_module(graph: DeployGraph, example: torch.Tensor):
    from rcnn_cli.deploy.torchscript import torchscript_bytes

    return torch.jit.load(io.BytesIO(torchscript_bytes(graph, example)))


def run_module(module, names: list[str], *inputs: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in zip(names, module(*inputs))}
