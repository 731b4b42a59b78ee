"""A training view whose targets also carry each image's stored proposals.

``DetectionView`` moves ``view.proposals`` through the training transforms as
``tv_tensors.BoundingBoxes`` (a flip or resize moves them exactly as the ground-truth boxes);
this view adds the size of the image they then refer to, for ``FixedProposals``.
Same ``(index, seed)`` items as the view it copies: identical images and boxes.
"""

from __future__ import annotations

import torch

from rcnn_cli.data.loader import DetectionView
from rcnn_cli.errors import DataError


class WithProposals(DetectionView):
    """``view`` plus ``target["proposals"]`` (N, 4 XYXY) and ``target["proposals_size"]``
    (h, w of the transformed image); ``proposals`` maps image id -> boxes."""

    def __init__(self, view: DetectionView, proposals: dict[int, torch.Tensor]):
        self.__dict__.update(view.__dict__)  # raw, transforms, grouping: the same view
        self.proposals = proposals
        missing = [i for i in view.raw.image_ids if int(i) not in proposals]
        if missing:
            raise DataError(f"the proposal file has no boxes for {len(missing)} image id(s), "
                            f"e.g. {missing[:5]}")

    def __getitem__(self, item):
        image, target = super().__getitem__(item)
        target["proposals_size"] = torch.tensor(image.shape[-2:])
        return image, target
