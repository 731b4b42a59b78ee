"""The deployable graph: one image in, detections in original-image pixels out.

``DeployGraph`` wraps a trained ``GeneralizedRCNN`` so that everything a user would otherwise
re-implement runs inside the exported graph: normalisation, resize to ``min_size``/``max_size``
(``GeneralizedRCNNTransform``), the detector, and the rescaling of boxes (and pasting of masks)
back to the input image. Input: one ``(3, H, W)`` float32 RGB image with values in [0, 1], any
H and W (the batch is fixed at one image, torchvision's export constraint). Outputs: ``boxes``
``(N, 4)`` x1 y1 x2 y2 in input pixels, ``labels`` ``(N,)`` int64 (1..K; ``classes[label - 1]``
in ``model.json``), ``scores`` ``(N,)``; mask models add ``masks`` ``(N, 1, H, W)``, per-pixel
probabilities of the detected class.
"""

from __future__ import annotations

import copy

from omegaconf import DictConfig
from torch import Tensor, nn

from rcnn_cli.deploy.traceable import make_traceable
from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.build import EXTERNAL_PROPOSALS, build_detector, uses_masks

OUTPUTS = ("boxes", "labels", "scores")
MASK_OUTPUT = "masks"


class DeployGraph(nn.Module):
    def __init__(self, detector: nn.Module, masks: bool):
        super().__init__()
        self.detector = detector.eval()
        self.masks = masks

    @property
    def output_names(self) -> list[str]:
        return list(OUTPUTS) + ([MASK_OUTPUT] if self.masks else [])

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        out = self.detector([image])[0]
        return tuple(out[k] for k in self.output_names)


def check_exportable(train_cfg: DictConfig, source: str) -> None:
    """Refuse, naming the model, what has no single-image graph."""
    name = train_cfg.model.name
    if name in EXTERNAL_PROPOSALS:
        raise ConfigError(
            f"{source}: model={name} classifies external proposals (selective search or a "
            f"proposal file) computed outside the network; rcnn-export supports the RPN "
            f"models (faster, mask, cascade, cascade_mask), model={name} cannot be exported")


def build_deploy_graph(ckpt: dict, train_cfg: DictConfig, source: str) -> DeployGraph:
    """The trained detector (CPU, eval mode) wrapped for export, with torchvision's RoIAlign
    kernel (the vectorised one differs only in its backward) and shape-read box counts."""
    check_exportable(train_cfg, source)
    cfg = copy.deepcopy(train_cfg)
    cfg.pooler.kernel = "torchvision"
    cfg.model.weights = cfg.backbone.weights = None  # the checkpoint's state replaces them
    detector = build_detector(cfg, len(ckpt["classes"]))
    detector.load_state_dict(ckpt["model"])
    return DeployGraph(make_traceable(detector.eval()), uses_masks(cfg.model.name)).eval()
