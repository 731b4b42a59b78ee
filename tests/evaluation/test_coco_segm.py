"""Mask AP (COCO ``segm``): RLE encoding of predictions and of the shapes ground truth."""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils

from rcnn_cli.data.shapes import ShapesDataset
from rcnn_cli.evaluation.coco import CocoEvaluator
from rcnn_cli.evaluation.inference import encode_masks, to_coco_results


def test_shapes_ground_truth_carries_the_visible_masks_as_rle():
    ds = ShapesDataset("val", 3, 64, with_masks=True)
    gt = ds.coco_gt()
    _, target = ds.raw(0)
    first = [a for a in gt["annotations"] if a["image_id"] == ds.image_ids[0]]
    assert len(first) == len(target["masks"])
    for ann, mask in zip(first, target["masks"]):
        decoded = mask_utils.decode({**ann["segmentation"],
                                     "counts": ann["segmentation"]["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), mask)
        assert ann["area"] == mask.sum()
    assert "segmentation" not in ShapesDataset("val", 3, 64).coco_gt()["annotations"][0]


def test_perfect_masks_score_ap_1_and_shifted_masks_lower():
    ds = ShapesDataset("val", 4, 64, with_masks=True)
    evaluator = CocoEvaluator(ds.coco_gt(), ("bbox", "segm"))
    perfect, shifted = [], []
    for i in range(len(ds)):
        _, t = ds.raw(i)
        masks = torch.from_numpy(t["masks"]).float()[:, None]
        out = {"boxes": torch.from_numpy(t["boxes"]), "scores": torch.ones(len(masks)),
               "labels": torch.from_numpy(t["labels"]), "masks": masks}
        perfect += to_coco_results(out, t["image_id"], ds.category_ids)
        # Same boxes, masks moved by half their size: box AP stays, mask AP drops.
        moved = torch.zeros_like(masks)
        moved[..., 8:] = masks[..., :-8]
        shifted += to_coco_results({**out, "masks": moved}, t["image_id"], ds.category_ids)
    good, bad = evaluator.evaluate(perfect), evaluator.evaluate(shifted)
    assert good["segm/AP"] == 1.0 and good["bbox/AP"] == 1.0
    assert bad["bbox/AP"] == 1.0 and bad["segm/AP"] < 0.9


def test_encode_masks_of_no_objects():
    assert encode_masks(torch.zeros(0, 1, 8, 8)) == []
