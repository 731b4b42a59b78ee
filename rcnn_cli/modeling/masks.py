"""Mask R-CNN mask branch (He et al. 2017, §3 and Fig. 4).

RoIAlign 14x14 -> four 3x3 convs -> 2x deconv -> one 28x28 mask per class; the loss is the
per-pixel binary cross-entropy of the ground-truth class's mask on positive RoIs. torchvision's
``MaskRCNNHeads``/``MaskRCNNPredictor``, ``maskrcnn_loss`` and ``maskrcnn_inference`` do the
work; its ``RoIHeads`` runs them for the standard detector, ``mask_losses``/``mask_predictions``
run them for Cascade R-CNN's last-stage branch and ``MaskStage`` is one head + predictor of the
per-stage variant (``rcnn_cli.modeling.cascade``). Pasting the 28x28 masks back into the image happens in
``GeneralizedRCNNTransform.postprocess``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, maskrcnn_loss

from rcnn_cli.errors import ConfigError
from rcnn_cli.modeling.poolers import build_pooler


def build_mask_branch(feature_names: list[str], in_channels: int, num_classes: int, *,
                      output_size: int, sampling_ratio: int, layers: list[int], dilation: int,
                      dim_reduced: int, canonical_scale: int,
                      canonical_level: int,
                      kernel: str = "auto") -> tuple[nn.Module, nn.Module, nn.Module]:
    """(mask pooler, mask head, mask predictor); ``num_classes`` counts the background."""
    if not layers or any(c < 1 for c in layers) or dilation < 1 or dim_reduced < 1:
        raise ConfigError("model.mask_head: need at least one conv layer, positive widths and "
                          "dilation >= 1")
    pooler = build_pooler("roi_align", feature_names, output_size, sampling_ratio,
                          canonical_scale, canonical_level, kernel=kernel)
    head = MaskRCNNHeads(in_channels, list(layers), dilation)
    predictor = MaskRCNNPredictor(layers[-1], dim_reduced, num_classes)
    return pooler, head, predictor


class MaskStage(nn.Module):
    """One mask head and its predictor (Cascade Mask R-CNN: one per stage)."""

    def __init__(self, head: nn.Module, predictor: nn.Module):
        super().__init__()
        self.head = head
        self.predictor = predictor

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.head(x))


def positive_rois(proposals: list[Tensor], labels: list[Tensor],
                  matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """The foreground RoIs of a sampled minibatch and the ground truth each one matched."""
    pos = [torch.where(lab > 0)[0] for lab in labels]
    return ([p[i] for p, i in zip(proposals, pos)],
            [m[i] for m, i in zip(matched_idxs, pos)])


def check_mask_targets(targets: list[dict]) -> None:
    if any("masks" not in t for t in targets):
        raise ConfigError("a mask model needs targets with 'masks' (dataset without masks?)")


def head_layout(x: Tensor) -> Tensor:
    """Pooled mask features in the layout the mask head runs fastest on: channels-last on the
    CPU, where oneDNN's 3x3 convs and 2x deconv of the head are slower on NCHW (4-conv 128-wide
    head + predictor, 104 RoIs of 14x14, fwd+bwd on one thread: 0.70 s vs 0.85 s). The same
    values; the convs keep the layout through the head."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x


def mask_logits(heads: nn.Module, features: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
    x = head_layout(heads.mask_roi_pool(features, boxes, image_shapes))
    return heads.mask_predictor(heads.mask_head(x))


def mask_losses(heads: nn.Module, features: dict[str, Tensor], proposals: list[Tensor],
                labels: list[Tensor], matched_idxs: list[Tensor], targets: list[dict],
                image_shapes: list[tuple[int, int]]) -> dict[str, Tensor]:
    """Mask loss on the positive RoIs of a sampled minibatch."""
    check_mask_targets(targets)
    boxes, idxs = positive_rois(proposals, labels, matched_idxs)
    logits = mask_logits(heads, features, boxes, image_shapes)
    loss = maskrcnn_loss(logits, boxes, [t["masks"] for t in targets],
                         [t["labels"] for t in targets], idxs)
    return {"loss_mask": loss}


def mask_predictions(heads: nn.Module, features: dict[str, Tensor], results: list[dict],
                     image_shapes: list[tuple[int, int]]) -> None:
    """Add ``masks`` (N, 1, 28, 28 probabilities of the predicted class) to each result."""
    logits = mask_logits(heads, features, [r["boxes"] for r in results], image_shapes)
    probs = maskrcnn_inference(logits, [r["labels"] for r in results])
    for prob, r in zip(probs, results):
        r["masks"] = prob
