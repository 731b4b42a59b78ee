"""Run a detector over a loader and return COCO-format results (original category ids)."""

from __future__ import annotations

import torch
from torch import nn

from rcnn_cli.evaluation.coco import encode_binary_masks

MASK_THRESHOLD = 0.5


def external_proposals(targets, device: torch.device) -> dict:
    """``{"proposals": [...]}`` when the batch carries external proposals (model=fast)."""
    if targets and "proposals" in targets[0]:
        return {"proposals": [t["proposals"].to(device) for t in targets]}
    return {}


@torch.inference_mode()
def predict(model: nn.Module, loader, device: torch.device, category_ids: list[int],
            progress=None) -> list[dict]:
    """``category_ids[label - 1]`` maps a contiguous label back to the dataset's category id."""
    model.eval()
    results: list[dict] = []
    task = (progress.add_task("evaluate", total=len(loader), speed="", losses="")
            if progress is not None else None)
    for images, targets in loader:
        outputs = model([img.to(device) for img in images], **external_proposals(targets, device))
        for out, tgt in zip(outputs, targets):
            results += to_coco_results(out, tgt["image_id"], category_ids)
        if progress is not None:
            progress.advance(task)
    if progress is not None:
        progress.remove_task(task)
    return results


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """(N, 1, H, W) mask probabilities -> COCO compressed RLEs (``counts`` as str)."""
    return encode_binary_masks((masks[:, 0] >= MASK_THRESHOLD).cpu().numpy())


def to_coco_results(output: dict, image_id: int, category_ids: list[int]) -> list[dict]:
    boxes = output["boxes"].float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].float().cpu().tolist()
    labels = output["labels"].cpu().tolist()
    results = [{"image_id": int(image_id), "category_id": int(category_ids[lab - 1]), "bbox": box,
                "score": score} for box, score, lab in zip(xywh, scores, labels)]
    if "masks" in output:
        for r, rle in zip(results, encode_masks(output["masks"])):
            r["segmentation"] = rle
    return results
