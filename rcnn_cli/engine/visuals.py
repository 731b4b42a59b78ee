"""Pictures during training: fixed validation images, ground truth | predictions, in TensorBoard.

Every ``log.images_every`` iterations (and at the final evaluation) the first
``log.images_count`` validation images go to ``images/val``: each row is the ground truth
(green) next to the predictions scored at least ``log.images_score_thresh``.
"""

from __future__ import annotations

import torch

from rcnn_cli.evaluation.draw import draw_output, draw_target, grid
from rcnn_cli.evaluation.inference import external_proposals

TAG = "images/val"


class ValImages:
    def __init__(self, val_set, classes: list[str], count: int, score_thresh: float):
        self.samples = [val_set[i] for i in range(min(count, len(val_set)))]
        self.classes, self.score_thresh = classes, score_thresh
        self.last_iteration: int | None = None

    @torch.inference_mode()
    def render(self, model, device: torch.device) -> torch.Tensor:
        """(3, H, W) uint8 grid: one (ground truth, predictions) pair per row."""
        was_training = model.training
        model.eval()
        outputs = model([img.to(device) for img, _ in self.samples],
                        **external_proposals([t for _, t in self.samples], device))
        model.train(was_training)
        tiles = []
        for (img, tgt), out in zip(self.samples, outputs):
            out = {k: v.cpu() for k, v in out.items()}
            tiles += [draw_target(img, tgt, self.classes),
                      draw_output(img, out, self.classes, self.score_thresh)]
        return grid(tiles, ncol=2)

    def log(self, model, device: torch.device, writer, iteration: int) -> None:
        if writer is not None and self.samples and iteration != self.last_iteration:
            self.last_iteration = iteration
            writer.add_image(TAG, self.render(model, device), iteration, dataformats="CHW")
