"""Make a built detector traceable without changing its numbers.

Tracing (``torch.onnx.export(dynamo=False)``, ``torch.jit.trace``) records tensor operations
and freezes every Python ``int`` it meets. torchvision's ``BoxCoder.decode`` sums the per-image
box counts in Python, so the traced graph would keep the export image's proposal count and
fail on any image with another count; ``ShapeBoxCoder`` reads the count from the tensor's
shape instead (same arithmetic). The RoIAlign kernel is torchvision's (``pooler.kernel=
torchvision``, see ``build_deploy_detector``): its forward is the one the vectorised kernel
calls anyway, and the exporters know its ONNX form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder


class ShapeBoxCoder(BoxCoder):
    """``BoxCoder`` whose ``decode`` keeps the box count symbolic under tracing."""

    @classmethod
    def like(cls, coder: BoxCoder) -> ShapeBoxCoder:
        return cls(coder.weights, coder.bbox_xform_clip)

    def decode(self, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
        if not torch.jit.is_tracing():
            return super().decode(rel_codes, boxes)
        concat_boxes = torch.cat(boxes, dim=0)
        count = concat_boxes.shape[0]
        pred_boxes = self.decode_single(rel_codes.reshape(count, -1), concat_boxes)
        return pred_boxes.reshape(count, -1, 4)


def make_traceable(detector: nn.Module) -> nn.Module:
    """Swap the box coders of the RPN and the RoI heads for ``ShapeBoxCoder`` (in place)."""
    for part in (getattr(detector, "rpn", None), getattr(detector, "roi_heads", None)):
        coder = getattr(part, "box_coder", None)
        if isinstance(coder, BoxCoder):
            part.box_coder = ShapeBoxCoder.like(coder)
    return detector
