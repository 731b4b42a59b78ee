"""Eager vs ONNX Runtime vs TorchScript: same labels, boxes within 1e-3 px, scores within 1e-4,
on three image sizes other than the export size; an empty image, then a normal one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rcnn_cli.deploy.parity import differences, within_tolerance
from rcnn_cli.errors import ConfigError
from tests.deploy.graphs import (
    EXAMPLE_SIZE,
    FAMILIES,
    SIZES,
    deploy_graph,
    eager,
    image,
    onnx_session,
    run_module,
    run_session,
    torchscript_module,
)


def test_differences_pair_tied_detections_and_catch_real_ones():
    a = {"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]]), "labels": np.array([1, 1]),
         "scores": np.array([0.25, 0.25 + 1e-7])}
    swapped = {k: v[::-1] for k, v in a.items()}  # a near-tie in the other order: the same
    assert within_tolerance(differences(a, swapped))
    moved = {**a, "boxes": a["boxes"] + np.array([0, 0, 0, 2e-3])}
    assert differences(a, moved)["max_boxes_diff"] == pytest.approx(2e-3)
    assert not within_tolerance(differences(a, moved))
    assert not differences(a, {**a, "labels": np.array([1, 2])})["labels_equal"]
    assert not within_tolerance(differences(a, {k: v[:1] for k, v in a.items()}))


@pytest.fixture(scope="module", params=list(FAMILIES))
def graph(request):
    return deploy_graph(FAMILIES[request.param])


def check(graph, run) -> None:
    for k, size in enumerate(SIZES):
        x = image(size, seed=10 + k)
        ref = eager(graph, x)
        assert len(ref["boxes"]) > 0, "a random-weight model detects something"
        diff = differences(ref, run(x))
        assert within_tolerance(diff), (size, diff)
        if graph.masks:
            assert ref["masks"].shape[2:] == size and diff["max_masks_diff"] <= 1e-3


def test_onnx_runtime_matches_eager_on_three_sizes(graph):
    session = onnx_session(graph, image(EXAMPLE_SIZE, seed=0))
    check(graph, lambda x: run_session(session, x))


def test_torchscript_matches_eager_on_three_sizes(graph):
    module = torchscript_module(graph, image(EXAMPLE_SIZE, seed=0))
    check(graph, lambda x: run_module(module, graph.output_names, x))


def split(graph, images: list[torch.Tensor]) -> tuple[float, torch.Tensor, torch.Tensor]:
    """A score threshold between two images' best scores: (threshold, empty, busy image)."""
    (low, empty), (high, busy) = sorted(
        ((float(eager(graph, x)["scores"].max()), x) for x in images), key=lambda t: t[0])
    assert low < high - 1e-3, f"the two images' best scores are too close: {low}, {high}"
    return (low + high) / 2, empty, busy


@pytest.mark.parametrize("family", ["default", "r50_fpn_mask"])
def test_an_image_without_detections_then_a_normal_one_in_one_session(family):
    """vision #2251: Mask R-CNN's exported graph failed on the run after an empty one."""
    graph = deploy_graph(FAMILIES[family])
    thresh, empty, busy = split(graph, [torch.zeros(3, 64, 80), image((64, 80), seed=3)])
    graph.detector.roi_heads.score_thresh = thresh  # a Python float: the trace bakes it in
    assert len(eager(graph, empty)["boxes"]) == 0 and len(eager(graph, busy)["boxes"]) > 0
    session = onnx_session(graph, image(EXAMPLE_SIZE, seed=0))
    for x in (empty, busy, empty, image((48, 96), seed=4)):
        ref = eager(graph, x)
        got = run_session(session, x)
        assert within_tolerance(differences(ref, got)), differences(ref, got)
        if graph.masks:
            assert got["masks"].shape == (len(ref["boxes"]), 1, *x.shape[1:])


# Few RoIs and narrow heads: the export paths are the same, the arithmetic much smaller.
SMALL = ["model.rpn.pre_nms_top_n_test=200", "model.rpn.post_nms_top_n_test=50",
         "model.box_head.representation_size=64"]


@pytest.mark.parametrize("overrides", [
    ["backbone=r50_c4", "anchors=paper_small"],
    ["backbone=vgg16", "anchors=paper_small", "pooler=roi_pool"],
    ["backbone=mobilenet_v3_fpn", "anchors=mobilenet_fpn"],
    ["model=cascade_mask", "model.mask_head.layers=[32,32]", "model.mask_head.dim_reduced=32"],
    ["model=htc", "model.mask_head.layers=[32,32]", "model.mask_head.dim_reduced=32"],
], ids=["r50_c4", "vgg16_roi_pool", "mobilenet_v3_fpn", "cascade_mask", "htc"])
def test_other_backbones_and_models_export_to_onnx(overrides):
    graph = deploy_graph(overrides + SMALL)
    session = onnx_session(graph, image(EXAMPLE_SIZE, seed=0))
    for k, size in enumerate(SIZES[1:]):
        x = image(size, seed=20 + k)
        diff = differences(eager(graph, x), run_session(session, x))
        assert diff["count"][0] > 0 and within_tolerance(diff), (size, diff)


def test_fast_rcnn_exports_with_proposals_as_an_input(tmp_path):
    """model=fast: the image's external proposals (input pixels) are the graph's 2nd input;
    ``OnnxDetector`` (rcnn-predict / rcnn-eval) passes them as the torch model takes them."""
    from rcnn_cli.deploy.onnx import export_onnx
    from rcnn_cli.deploy.onnx_runtime import OnnxDetector

    graph = deploy_graph(["model=fast", "proposals=selective_search", *SMALL])
    assert graph.input_names == ["image", "proposals"]
    example = image(EXAMPLE_SIZE, seed=0)
    detector = OnnxDetector(export_onnx(graph, example, tmp_path / "model.onnx", 17),
                            torch.device("cpu"))
    module = torchscript_module(graph, example)
    for k, size in enumerate(SIZES):
        x, proposals = graph.example_inputs(image(size, seed=30 + k), seed=k)
        proposals = proposals[:20 + 10 * k]  # the proposal count is dynamic too
        ref = eager(graph, x, proposals)
        onnx = {n: v.numpy() for n, v in detector([x], proposals=[proposals])[0].items()}
        for got in (onnx, run_module(module, graph.output_names, x, proposals)):
            diff = differences(ref, got)
            assert diff["count"][0] > 0 and within_tolerance(diff), (size, diff)
    with pytest.raises(ConfigError, match="proposals are missing"):
        detector([x])
