"""``rcnn-eval compress.fc6=T6 compress.fc7=T7``: truncated SVD of the box head (Fast R-CNN
§3.1), measured before and after: box-head parameters, RoI-head and total time per image, AP.
``compress.save=true`` writes the compressed model as a checkpoint whose config records the
ranks (``model.box_head.fc6_rank`` / ``fc7_rank``), so it rebuilds and loads like any other.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import torch

from rcnn_cli.engine.checkpoint import CheckpointStore
from rcnn_cli.evaluation.coco import CocoEvaluator
from rcnn_cli.evaluation.inference import predict
from rcnn_cli.modeling.svd import box_head_of, box_head_parameters, compress_box_head

log = logging.getLogger("rcnn_cli")


class RoIHeadTimer:
    """Wall time spent inside ``model.roi_heads`` (synchronised on CUDA)."""

    def __init__(self, model, device: torch.device):
        self.seconds, self.device = 0.0, device
        self._t0 = 0.0
        heads = model.roi_heads
        self._hooks = [heads.register_forward_pre_hook(self._start),
                       heads.register_forward_hook(self._stop)]

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _start(self, *_):
        self._sync()
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self._sync()
        self.seconds += time.perf_counter() - self._t0

    def remove(self):
        for h in self._hooks:
            h.remove()


def timed_eval(model, loader, device, category_ids, coco_gt: dict) -> dict:
    timer = RoIHeadTimer(model, device)
    t0 = time.perf_counter()
    dets = predict(model, loader, device, category_ids)
    total = time.perf_counter() - t0
    timer.remove()
    n = len(loader.dataset)
    m = CocoEvaluator(coco_gt).evaluate(dets)
    return {"AP": m["bbox/AP"], "AP50": m["bbox/AP50"], "roi_head_ms": 1000 * timer.seconds / n,
            "total_ms": 1000 * total / n, "params": box_head_parameters(model)}


def compress_and_compare(model, fc6: int | None, fc7: int | None, loader, device,
                         category_ids, coco_gt: dict,
                         warm_up: bool = True) -> tuple[dict, torch.nn.Module]:
    """Returns ``svd/*`` metrics and the compressed copy of ``model``. ``warm_up=False`` when
    the caller has just run the model on the loader (allocator, caches and threads are warm)."""
    if warm_up:
        predict(model, loader, device, category_ids)
    before = timed_eval(model, loader, device, category_ids, coco_gt)
    small = copy.deepcopy(model)
    compress_box_head(small, fc6, fc7)
    after = timed_eval(small, loader, device, category_ids, coco_gt)
    out = {f"svd/{k}_before": v for k, v in before.items()}
    out.update({f"svd/{k}_after": v for k, v in after.items()})
    out["svd/fc6_rank"], out["svd/fc7_rank"] = fc6, fc7
    out["svd/roi_head_time_saved"] = 1 - after["roi_head_ms"] / max(before["roi_head_ms"], 1e-9)
    head = box_head_of(model)
    log.info("truncated SVD fc6=%s fc7=%s (fc6 %s, fc7 %s): box-head params %d -> %d, RoI head "
             "%.2f -> %.2f ms/img, total %.2f -> %.2f ms/img, AP50 %.4f -> %.4f", fc6, fc7,
             tuple(head.fc6.weight.shape), tuple(head.fc7.weight.shape), before["params"],
             after["params"], before["roi_head_ms"], after["roi_head_ms"], before["total_ms"],
             after["total_ms"], before["AP50"] or 0, after["AP50"] or 0)
    return out, small


def save_compressed(ckpt: dict, model, fc6: int | None, fc7: int | None, run_dir: Path) -> Path:
    """The original checkpoint with the compressed weights and the ranks in its config."""
    config = copy.deepcopy(ckpt["config"])
    box_head = config["model"]["box_head"]
    box_head["fc6_rank"] = fc6 if fc6 is not None else box_head.get("fc6_rank")
    box_head["fc7_rank"] = fc7 if fc7 is not None else box_head.get("fc7_rank")
    state = {k: v for k, v in ckpt.items() if k not in ("format", "optimizer", "scheduler",
                                                         "scaler")}
    state.update(model=model.state_dict(), config=config)
    path = CheckpointStore(Path(run_dir) / "checkpoints").save_named("compressed", state)
    log.info("compressed checkpoint: %s", path)
    return path
