"""A training view whose targets also carry each image's stored proposals.

The proposals are ``tv_tensors.BoundingBoxes`` on the image's canvas, so the training
transforms (e.g. a horizontal flip) move them exactly as they move the ground-truth boxes.
Same ``(index, seed)`` items as ``DetectionView``: the image and boxes are identical to it.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from rcnn_cli.data.loader import DetectionView, index_seed
from rcnn_cli.data.transforms import to_sample
from rcnn_cli.errors import DataError


class WithProposals(DetectionView):
    """``view`` plus ``target["proposals"]`` (N, 4 XYXY) and ``target["proposals_size"]``
    (h, w of the image the boxes refer to); ``proposals`` maps image id -> boxes."""

    def __init__(self, view: DetectionView, proposals: dict[int, torch.Tensor]):
        self.__dict__.update(view.__dict__)  # raw, transforms, grouping: the same view
        self.proposals = proposals
        missing = [i for i in view.raw.image_ids if int(i) not in proposals]
        if missing:
            raise DataError(f"the proposal file has no boxes for {len(missing)} image id(s), "
                            f"e.g. {missing[:5]}")

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        image, target = to_sample(*self.raw.raw(index))
        h, w = image.shape[-2:]
        target["proposals"] = tv_tensors.BoundingBoxes(
            self.proposals[int(target["image_id"])].float(), format="XYXY", canvas_size=(h, w))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, target = self.transforms(image, target)
        for key in ("boxes", "proposals"):
            target[key] = target[key].as_subclass(torch.Tensor)
        if "masks" in target:
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        target["proposals_size"] = torch.tensor(image.shape[-2:])
        return image.as_subclass(torch.Tensor), target
