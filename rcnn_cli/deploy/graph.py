"""The deployable graph: one image in, detections in original-image pixels out.

``DeployGraph`` wraps a trained ``GeneralizedRCNN`` so that everything a user would otherwise
re-implement runs inside the exported graph: normalisation, resize to ``min_size``/``max_size``
(``GeneralizedRCNNTransform``), the detector, and the rescaling of boxes (and pasting of masks)
back to the input image. Input: one ``(3, H, W)`` float32 RGB image with values in [0, 1], any
H and W (the batch is fixed at one image, torchvision's export constraint). Outputs: ``boxes``
``(N, 4)`` x1 y1 x2 y2 in input pixels, ``labels`` ``(N,)`` int64 (1..K; ``classes[label - 1]``
in ``model.json``), ``scores`` ``(N,)``; mask models add ``masks`` ``(N, 1, H, W)``, per-pixel
probabilities of the detected class. ``model=fast`` (Fast R-CNN on external proposals) takes
a second input, ``proposals`` ``(P, 4)`` float32 x1 y1 x2 y2 in input pixels: selective search
or a proposal file stays outside the graph.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from rcnn_cli.deploy.traceable import make_traceable
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import build_detector, uses_masks

INPUT, PROPOSALS = "image", "proposals"
OUTPUTS = ("boxes", "labels", "scores")
MASK_OUTPUT = "masks"
REGION_MODELS = ("rcnn", "sppnet")  # warped crops, per-class SVMs: no single graph


class DeployGraph(nn.Module):
    def __init__(self, detector: nn.Module, masks: bool, proposals: bool = False):
        super().__init__()
        self.detector = detector.eval()
        self.masks, self.proposals = masks, proposals

    @property
    def input_names(self) -> list[str]:
        return [INPUT] + ([PROPOSALS] if self.proposals else [])

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUTS) + ([MASK_OUTPUT] if self.masks else [])

    def forward(self, image: Tensor, proposals: Tensor | None = None) -> tuple[Tensor, ...]:
        extra = {"proposals": [proposals]} if self.proposals else {}
        out = self.detector([image], **extra)[0]
        return tuple(out[k] for k in self.output_names)

    def example_inputs(self, image: Tensor, seed: int = 0) -> tuple[Tensor, ...]:
        """``(image,)``, or ``(image, proposals)``: 64 seeded boxes inside the image."""
        if not self.proposals:
            return (image,)
        gen = torch.Generator().manual_seed(seed)
        h, w = image.shape[1:]
        corners = torch.rand(64, 2, 2, generator=gen) * torch.tensor([w - 1.0, h - 1.0])
        lo, hi = corners.min(dim=1).values, corners.max(dim=1).values + 1
        return image, torch.cat([lo, hi], dim=1)


def check_exportable(train_cfg: DictConfig, source: str) -> None:
    """Refuse, naming the model, what has no single-image graph."""
    name = train_cfg.model.name
    if name in REGION_MODELS:
        raise ConfigError(
            f"{source}: model={name} warps each proposal into its own CNN input and scores it "
            f"with per-class SVMs outside one network; rcnn-export supports faster, mask, "
            f"cascade, cascade_mask and fast (proposals as an input); model={name} cannot be "
            "exported")


def build_deploy_graph(ckpt: dict, train_cfg: DictConfig, source: str) -> DeployGraph:
    """The trained detector (CPU, eval mode) wrapped for export, with torchvision's RoIAlign
    kernel (the vectorised one differs only in its backward) and shape-read box counts."""
    check_exportable(train_cfg, source)
    cfg = copy.deepcopy(train_cfg)
    cfg.pooler.kernel = "torchvision"
    cfg.model.weights = cfg.backbone.weights = None  # the checkpoint's state replaces them
    detector = build_detector(cfg, len(ckpt["classes"]))
    detector.load_state_dict(ckpt["model"])
    return DeployGraph(make_traceable(detector.eval()), uses_masks(cfg.model.name),
                       proposals=cfg.model.name == "fast").eval()
