"""The deployable graph: one image in, detections in original-image pixels out.

``DeployGraph`` wraps a trained ``GeneralizedRCNN`` so that everything a user would otherwise
re-implement runs inside the exported graph: normalisation, resize to ``min_size``/``max_size``
(``GeneralizedRCNNTransform``), the detector, and the rescaling of boxes (and pasting of masks)
back to the input image. Input: one ``(3, H, W)`` float32 RGB image with values in [0, 1], any
H and W (the batch is fixed at one image, torchvision's export constraint). Outputs: ``boxes``
``(N, 4)`` x1 y1 x2 y2 in input pixels, ``labels`` ``(N,)`` int64 (1..K, index into
``model.json`` ``classes`` after subtracting 1), ``scores`` ``(N,)``; mask models add ``masks``
``(N, 1, H, W)`` per-pixel probabilities of the detected class.
"""

from __future__ import annotations

from torch import Tensor, nn

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
